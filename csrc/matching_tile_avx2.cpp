// AVX2 + FMA micro-kernel (6 x 16). Compiled with -mavx2 -mfma; only called after a run-time check.
#include "matching_tile.h"

#if defined(LIFT_TILE_AVX2)
#include <immintrin.h>
namespace lift {
namespace {
struct Avx2Ops {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static bool any_gt(V a, V t) { return _mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GT_OQ)) != 0; }
};
uint32_t tile(const float* a, const float* b, int64_t D, const float* bias, const float* thr, float* out) {
  return tile_impl<Avx2Ops, kAvx2Tile.mr, kAvx2Tile.nr / Avx2Ops::W>(a, b, D, bias, thr, out);
}
}  // namespace
TileFn tile_avx2() { return &tile; }
}  // namespace lift
#else
namespace lift { TileFn tile_avx2() { return nullptr; } }
#endif
