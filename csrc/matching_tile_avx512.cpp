// AVX-512F micro-kernel (12 x 32). Compiled with -mavx512f; only called after a run-time check.
#include "matching_tile.h"

#if defined(LIFT_TILE_AVX512)
#include <immintrin.h>
namespace lift {
namespace {
struct Avx512Ops {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static bool any_gt(V a, V t) { return _mm512_cmp_ps_mask(a, t, _CMP_GT_OQ) != 0; }
};
uint32_t tile(const float* a, const float* b, int64_t D, const float* bias, const float* thr, float* out) {
  return tile_impl<Avx512Ops, kAvx512Tile.mr, kAvx512Tile.nr / Avx512Ops::W>(a, b, D, bias, thr, out);
}
}  // namespace
TileFn tile_avx512() { return &tile; }
}  // namespace lift
#else
namespace lift { TileFn tile_avx512() { return nullptr; } }
#endif
