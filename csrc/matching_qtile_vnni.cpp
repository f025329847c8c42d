// AVX-512 VNNI int8 screening micro-kernel (8 x 32): one vpdpbusd per 64 byte products, int32
// accumulation without the int16 saturation of vpmaddubsw. Compiled with -mavx512vnni; only called
// after a run-time check.
#include "matching_qtile.h"

#if defined(LIFT_TILE_VNNI)
#include "matching_qtile_avx512_ops.h"
namespace lift {
namespace {
struct VnniQOps : Avx512QOps {
  static I dot4(I acc, I a, I b) { return _mm512_dpbusd_epi32(acc, a, b); }
};
uint32_t qtile(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols, const float* scale_a,
               const float* thr, float* out) {
  return qtile_impl<VnniQOps, kQVnniTile.mr, kQVnniTile.nr / VnniQOps::W>(a, b, D4, cols, scale_a, thr, out);
}
}  // namespace
QTileFn qtile_vnni() { return &qtile; }
}  // namespace lift
#else
namespace lift { QTileFn qtile_vnni() { return nullptr; } }
#endif
