// AVX-512BW int8 screening micro-kernel (8 x 32). Compiled with -mavx512f -mavx512bw; only called
// after a run-time check.
#include "matching_qtile.h"

#if defined(LIFT_TILE_AVX512)
#include "matching_qtile_avx512_ops.h"
namespace lift {
namespace {
uint32_t qtile(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols, const float* scale_a,
               const float* thr, float* out) {
  return qtile_impl<Avx512QOps, kQAvx512Tile.mr, kQAvx512Tile.nr / Avx512QOps::W>(a, b, D4, cols, scale_a, thr,
                                                                                   out);
}
}  // namespace
QTileFn qtile_avx512() { return &qtile; }
}  // namespace lift
#else
namespace lift { QTileFn qtile_avx512() { return nullptr; } }
#endif
