// AVX2 int8 screening micro-kernel (4 x 16): vpmaddubsw + vpmaddwd. Compiled with -mavx2 -mfma;
// only called after a run-time check.
#include "matching_qtile.h"

#if defined(LIFT_TILE_AVX2)
#include "matching_qtile_avx2_ops.h"
namespace lift {
namespace {
uint32_t qtile(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols, const float* scale_a,
               const float* thr, float* out) {
  return qtile_impl<Avx2QOps, kQAvx2Tile.mr, kQAvx2Tile.nr / Avx2QOps::W>(a, b, D4, cols, scale_a, thr, out);
}
}  // namespace
QTileFn qtile_avx2() { return &qtile; }
}  // namespace lift
#else
namespace lift { QTileFn qtile_avx2() { return nullptr; } }
#endif
