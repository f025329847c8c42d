// Int8 screening micro-kernel of the CPU matcher (top-1 only), shared by the per-ISA units.
// Sources are quantised to unsigned bytes q_a + offset, targets to signed bytes q_b; depth is
// padded to a multiple of 4 and packed in groups of 4 bytes (one 32-bit lane holds 4 depths):
//   a panel: D4 x MR x 4 bytes,  b panel: D4 x NR x 4 bytes.
// The kernel accumulates exact int32 dot products over the full depth, turns them into approximate
// similarities (acc - offset * colsum_j) * scale_a_i * scale_b_j + bias_j, and, like the fp32 tile,
// stores only the rows holding a value above that row's threshold (bitmask returned).
#pragma once
#include <cstdint>

namespace lift {

struct QuantColumns {      // per target column of one panel (NR entries each)
  const int32_t* offset_colsum;  // offset * sum_d q_b[j, d]
  const float* scale;            // scale_b_j
  const float* bias;             // 0, or -inf for masked / padding columns
};

using QTileFn = uint32_t (*)(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols,
                             const float* scale_a, const float* thr, float* out);

struct QTileSpec {
  int mr, nr;
  int offset;  // source bytes hold q_a + offset, |q_a| <= offset - 1
};
// AVX2 / AVX-512BW multiply bytes with vpmaddubsw, whose int16 pair sums saturate: |q_a| <= 63 keeps
// 2 * 127 * 127 in range. VNNI (vpdpbusd) accumulates in int32 directly, so sources get 7 bits.
constexpr QTileSpec kQAvx2Tile{4, 16, 64};
constexpr QTileSpec kQAvxVnniTile{4, 16, 128};
constexpr QTileSpec kQAvx512Tile{8, 32, 64};
constexpr QTileSpec kQVnniTile{8, 32, 128};

QTileFn qtile_avx2();     // nullptr when not compiled in
QTileFn qtile_avxvnni();  // AVX-VNNI (256-bit); nullptr when not compiled in
QTileFn qtile_avx512();   // AVX-512BW; nullptr when not compiled in
QTileFn qtile_vnni();     // AVX-512 VNNI; nullptr when not compiled in

// Ops: I (int vector), F (float vector), W (lanes), izero, iload, bcast4, dot4 (acc += 4-byte dot
// products per lane), isub, to_float, fload, fset1, fmul, fmadd, fstore, any_gt.
template <class Ops, int MR, int NV>
inline uint32_t qtile_impl(const uint8_t* a, const int8_t* b, int64_t D4, const QuantColumns& cols,
                           const float* scale_a, const float* thr, float* out) {
  using I = typename Ops::I;
  using F = typename Ops::F;
  constexpr int W = Ops::W;
  I c[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[i][v] = Ops::izero();
  for (int64_t g = 0; g < D4; ++g) {
    I bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Ops::iload(b + (g * NV + v) * W * 4);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const I av = Ops::bcast4(a + (g * MR + i) * 4);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[i][v] = Ops::dot4(c[i][v], av, bv[v]);
    }
  }
  uint32_t hits = 0;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const F t = Ops::fset1(thr[i]), sa = Ops::fset1(scale_a[i]);
    F s[NV];
    bool hit = false;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const F w = Ops::fmul(sa, Ops::fload(cols.scale + v * W));
      const F x = Ops::to_float(Ops::isub(c[i][v], Ops::iload(cols.offset_colsum + v * W)));
      s[v] = Ops::fmadd(x, w, Ops::fload(cols.bias + v * W));
      hit |= Ops::any_gt(s[v], t);
    }
    if (hit) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) Ops::fstore(out + i * NV * W + v * W, s[v]);
      hits |= 1u << i;
    }
  }
  return hits;
}

}  // namespace lift
