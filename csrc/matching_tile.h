// Register-blocked micro-kernel of the CPU matcher, shared by the per-ISA translation units.
// Computes an MR x NR block of dot products over the full depth D from packed panels
// (a: D x MR, b: D x NR), adds the column bias (0 or -inf), and reports in a bitmask which rows
// hold a value above that row's threshold; only those rows are stored to `out` (MR x NR).
#pragma once
#include <cstdint>

namespace lift {

using TileFn = uint32_t (*)(const float* a, const float* b, int64_t D, const float* bias,
                            const float* thr, float* out);

// Register blocking of each ISA's kernel; the packing in matching_cpu.cpp follows these.
struct TileShape { int mr, nr; };
constexpr TileShape kScalarTile{4, 4};
constexpr TileShape kAvx2Tile{6, 16};
constexpr TileShape kAvx512Tile{12, 32};

TileFn tile_scalar();
TileFn tile_avx2();    // nullptr when not compiled in
TileFn tile_avx512();  // nullptr when not compiled in

// Ops: V (vector type), W (lanes), zero, load, store, set1, fma, add, any_gt.
template <class Ops, int MR, int NV>
inline uint32_t tile_impl(const float* a, const float* b, int64_t D, const float* bias,
                          const float* thr, float* out) {
  using V = typename Ops::V;
  constexpr int W = Ops::W;
  V c[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[i][v] = Ops::zero();
  for (int64_t k = 0; k < D; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Ops::load(b + k * NV * W + v * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V av = Ops::set1(a[k * MR + i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[i][v] = Ops::fma(av, bv[v], c[i][v]);
    }
  }
  uint32_t hits = 0;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const V t = Ops::set1(thr[i]);
    bool hit = false;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      c[i][v] = Ops::add(c[i][v], Ops::load(bias + v * W));
      hit |= Ops::any_gt(c[i][v], t);
    }
    if (hit) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) Ops::store(out + i * NV * W + v * W, c[i][v]);
      hits |= 1u << i;
    }
  }
  return hits;
}

}  // namespace lift
