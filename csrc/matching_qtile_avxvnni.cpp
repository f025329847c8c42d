// AVX-VNNI int8 screening micro-kernel (4 x 16, 256-bit): one vpdpbusd per 32 byte products, int32
// accumulation without the int16 saturation of vpmaddubsw (for AVX2 CPUs with VNNI but no AVX-512,
// e.g. Intel's hybrid client cores). Compiled with -mavxvnni; only called after a run-time check.
#include "matching_qtile.h"

#if defined(LIFT_TILE_AVXVNNI)
#include "matching_qtile_avx2_ops.h"
namespace lift {
namespace {
struct AvxVnniQOps : Avx2QOps {
  static I dot4(I acc, I a, I b) { return _mm256_dpbusd_avx_epi32(acc, a, b); }
};
uint32_t qtile(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols, const float* scale_a,
               const float* thr, float* out) {
  return qtile_impl<AvxVnniQOps, kQAvxVnniTile.mr, kQAvxVnniTile.nr / AvxVnniQOps::W>(a, b, D4, cols, scale_a, thr,
                                                                                      out);
}
}  // namespace
QTileFn qtile_avxvnni() { return &qtile; }
}  // namespace lift
#else
namespace lift { QTileFn qtile_avxvnni() { return nullptr; } }
#endif
