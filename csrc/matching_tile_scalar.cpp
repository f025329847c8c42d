// Portable micro-kernel (no SIMD intrinsics): the fallback when neither AVX2 nor AVX-512 is present.
#include "matching_tile.h"

namespace lift {
namespace {
struct ScalarOps {
  using V = float;
  static constexpr int W = 1;
  static V zero() { return 0.f; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V set1(float x) { return x; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static bool any_gt(V a, V t) { return a > t; }
};
uint32_t tile(const float* a, const float* b, int64_t D, const float* bias, const float* thr, float* out) {
  return tile_impl<ScalarOps, kScalarTile.mr, kScalarTile.nr>(a, b, D, bias, thr, out);
}
}  // namespace
TileFn tile_scalar() { return &tile; }
}  // namespace lift
