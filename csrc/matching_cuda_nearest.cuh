// Top-1 matching on tensor cores for fp16/bf16 rows that can be read 16 bytes at a time (depth
// contiguous and a multiple of 8). Included by matching_cuda.cu after matching_cuda_kernels.cuh and
// the names it uses (cp_async16 / cp_async_commit / cp_async_wait, dynamic_smem, nvcuda::wmma), and
// by tests/cuda_emulation, which defines those for the CPU and runs this kernel there.
#pragma once

namespace nn {
constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 3;
constexpr int kLD = kBK + 8;                   // shared row length in elements: 80 bytes, 16-byte aligned
constexpr int kWarpRows = 64, kWarpCols = 64;  // 4 warps as 2 x 2, two blocks per SM
constexpr int kWarpsN = kBN / kWarpCols, kThreads = 32 * (kBM / kWarpRows) * kWarpsN;
constexpr int kFragRows = kWarpRows / 16, kFragCols = kWarpCols / 16;
constexpr int kScratchLD = 16 + 4;             // floats per scratch row (16-byte aligned rows)
constexpr int kStageElems = (kBM + kBN) * kLD;

template <typename T>
constexpr size_t smem_bytes() {
  return size_t(kStages) * kStageElems * sizeof(T) + size_t(kThreads / 32) * 16 * kScratchLD * sizeof(float);
}
static_assert(kWarpsN * kBM * (sizeof(float) + sizeof(int64_t)) <= kStages * kStageElems * 2,
              "the row reductions reuse the stage buffers");
}  // namespace nn

// One pipeline stage: depth slice [k0, k0 + kBK) of source rows [r0, r0 + kBM) and of target rows
// [c0, c0 + kBN), copied asynchronously; out-of-range rows and depths are zero-filled.
template <typename T>
__device__ __forceinline__ void nn_load_stage(T* dst, const TopKProblem& p, const T* src, const T* tgt, int64_t r0,
                                              int64_t c0, int64_t k0) {
  constexpr int V = 16 / sizeof(T), G = nn::kBK / V;  // elements per 16-byte group, groups per tile row
  static_assert((nn::kBM + nn::kBN) * G % nn::kThreads == 0, "whole groups per thread");
#pragma unroll
  for (int q = 0; q < (nn::kBM + nn::kBN) * G / nn::kThreads; ++q) {
    const int e = threadIdx.x + q * nn::kThreads, r = e / G, kk = (e % G) * V;
    const bool is_src = r < nn::kBM;  // rows [0, kBM) of a stage are source rows, the rest target rows
    const int64_t row = is_src ? r0 + r : c0 + (r - nn::kBM), k = k0 + kk;
    const T* base = is_src ? src : tgt;
    const bool in = row < (is_src ? p.N : p.M) && k < p.D;
    cp_async16(dst + r * nn::kLD + kk, in ? base + row * (is_src ? p.src.stride_n : p.tgt.stride_n) + k : base, in);
  }
}

// Grid: (source row blocks of 128, column splits, B); 128 threads. Each warp owns 64 rows x 64
// columns of every 128 x 128 tile; its lanes keep, for 4 rows each, the best (value, column) of
// one 8-column half of each of the warp's 16-column fragments, reduced over lanes and warps at the end.
template <typename T>
__global__ void __launch_bounds__(nn::kThreads, 2) nearest_mma_kernel(TopKProblem p, const float* inv_norm, int splits,
                                                                      float* part_val, int64_t* part_idx) {
  using namespace nvcuda;
  unsigned char* smem = dynamic_smem();
  T* stages = reinterpret_cast<T*>(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wr = warp / nn::kWarpsN, wc = warp % nn::kWarpsN;
  float* scratch =
      reinterpret_cast<float*>(smem + nn::kStages * nn::kStageElems * sizeof(T)) + warp * 16 * nn::kScratchLD;

  const int64_t b = blockIdx.z, r0 = int64_t(blockIdx.x) * nn::kBM;
  const int split = blockIdx.y;
  const int64_t tiles = (p.M + nn::kBN - 1) / nn::kBN, per_split = (tiles + splits - 1) / splits;
  const int64_t t_begin = min(tiles, split * per_split), t_end = min(tiles, t_begin + per_split);
  const int KT = int((p.D + nn::kBK - 1) / nn::kBK);
  const T* src = static_cast<const T*>(p.src.data) + b * p.src.stride_b;
  const T* tgt = static_cast<const T*>(p.tgt.data) + b * p.tgt.stride_b;

  const int er = lane / 2, eh = lane % 2;  // epilogue: row of a 16 x 16 fragment, 8-column half
  float best_v[nn::kFragRows], row_scale[nn::kFragRows];
  int best_i[nn::kFragRows];  // column indices fit in 32 bits (mma_path checks M)
#pragma unroll
  for (int i = 0; i < nn::kFragRows; ++i) {
    const int64_t row = r0 + wr * nn::kWarpRows + i * 16 + er;
    best_v[i] = -INFINITY;
    best_i[i] = -1;
    row_scale[i] = (p.normalize && row < p.N) ? inv_norm[b * p.N + row] : 1.f;
  }
  const float* inv_t = p.normalize ? inv_norm + p.B * p.N + b * p.M : nullptr;

  // The block's work is one stream of (column tile, depth slice) steps, kStages - 1 copies ahead
  // of the tensor cores. Every step commits one copy group (possibly empty), so "all but the
  // newest kStages - 2 groups landed" always means "the step about to be computed landed".
  int64_t fill_tile = t_begin;
  int fill_kt = 0, fill_stage = 0;
  auto fill_next = [&]() {
    if (fill_tile < t_end) {
      nn_load_stage<T>(stages + fill_stage * nn::kStageElems, p, src, tgt, r0, fill_tile * nn::kBN,
                       int64_t(fill_kt) * nn::kBK);
      if (++fill_kt == KT) {
        fill_kt = 0;
        ++fill_tile;
      }
    }
    fill_stage = fill_stage + 1 == nn::kStages ? 0 : fill_stage + 1;
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < nn::kStages - 1; ++s) fill_next();

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[nn::kFragRows][nn::kFragCols];
  int stage = 0, kt = 0;
  for (int64_t tile = t_begin; tile < t_end;) {
    cp_async_wait<nn::kStages - 2>();  // this thread's copies of this step have landed
    __syncthreads();                   // everyone's have, and everyone is done with the previous step
    fill_next();                       // into the previous step's stage

    if (kt == 0) {
#pragma unroll
      for (int i = 0; i < nn::kFragRows; ++i)
#pragma unroll
        for (int j = 0; j < nn::kFragCols; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    }
    const T* As = stages + stage * nn::kStageElems;
    const T* Bs = As + nn::kBM * nn::kLD;
#pragma unroll
    for (int kk = 0; kk < nn::kBK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[nn::kFragCols];
#pragma unroll
      for (int j = 0; j < nn::kFragCols; ++j)
        wmma::load_matrix_sync(fb[j], Bs + (wc * nn::kWarpCols + j * 16) * nn::kLD + kk, nn::kLD);
#pragma unroll
      for (int i = 0; i < nn::kFragRows; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, As + (wr * nn::kWarpRows + i * 16) * nn::kLD + kk, nn::kLD);
#pragma unroll
        for (int j = 0; j < nn::kFragCols; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }

    if (kt == KT - 1) {  // the tile's similarities are complete: fold them into the running best
      const int64_t c0 = tile * nn::kBN + wc * nn::kWarpCols + eh * 8;
#pragma unroll
      for (int j = 0; j < nn::kFragCols; ++j) {
        // One factor per column of this lane's 8: the target's inverse norm (1 without
        // normalisation), NaN past M or where masked out (NaN never wins).
        float col_scale[8];
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const int64_t col = c0 + j * 16 + c;
          const bool ok = col < p.M && valid_mask(p.mask, b, col);
          col_scale[c] = ok ? (p.normalize ? inv_t[col] : 1.f) : NAN;
        }
#pragma unroll
        for (int i = 0; i < nn::kFragRows; ++i) {
          wmma::store_matrix_sync(scratch, acc[i][j], nn::kScratchLD, wmma::mem_row_major);
          __syncwarp();
          const float4* half_row = reinterpret_cast<const float4*>(scratch + er * nn::kScratchLD + eh * 8);
          const float4 lo = half_row[0], hi = half_row[1];
          const float v8[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
          for (int c = 0; c < 8; ++c) {  // a row's columns ascend per lane: strict > keeps the lowest on ties
            // (dot x row scale) x column scale: the product of two inverse norms of tiny rows could overflow
            const float v = (v8[c] * row_scale[i]) * col_scale[c];
            if (v > best_v[i]) {
              best_v[i] = v;
              best_i[i] = int(c0 + j * 16 + c);
            }
          }
          __syncwarp();
        }
      }
    }
    stage = stage + 1 == nn::kStages ? 0 : stage + 1;
    if (++kt == KT) {
      kt = 0;
      ++tile;
    }
  }

  // Reduce: the two halves of a row (neighbouring lanes), then the warps of a row band
  // through shared memory (the stage buffers, free once every copy has landed and every warp is here).
  cp_async_wait<0>();
  __syncthreads();
  float* red_v = reinterpret_cast<float*>(smem);
  int64_t* red_i = reinterpret_cast<int64_t*>(smem + nn::kWarpsN * nn::kBM * sizeof(float));
#pragma unroll
  for (int i = 0; i < nn::kFragRows; ++i) {
    const float v = __shfl_xor_sync(0xffffffffu, best_v[i], 1);
    const int j = __shfl_xor_sync(0xffffffffu, best_i[i], 1);
    if (better(v, j, best_v[i], best_i[i])) {
      best_v[i] = v;
      best_i[i] = j;
    }
    if (eh == 0) {
      const int r = wr * nn::kWarpRows + i * 16 + er;
      red_v[wc * nn::kBM + r] = best_v[i];
      red_i[wc * nn::kBM + r] = best_i[i];
    }
  }
  __syncthreads();
  if (tid < nn::kBM && r0 + tid < p.N) {
    float v = red_v[tid];
    int64_t j = red_i[tid];
    for (int w = 1; w < nn::kWarpsN; ++w) {
      if (better(red_v[w * nn::kBM + tid], red_i[w * nn::kBM + tid], v, j)) {
        v = red_v[w * nn::kBM + tid];
        j = red_i[w * nn::kBM + tid];
      }
    }
    const int64_t o = (b * p.N + r0 + tid) * splits + split;
    part_val[o] = v;
    part_idx[o] = j;
  }
}

// True when top-1 of p runs on nearest_mma_kernel (else topk_kernel).
template <typename T>
bool mma_path(const TopKProblem& p) {
  if constexpr (std::is_same<T, float>::value) {
    return false;
  } else {
    return p.k == 1 && p.D > 0 && p.D % 8 == 0 && p.M < (int64_t(1) << 31) && vector_loads_ok<T>(p.src) &&
           vector_loads_ok<T>(p.tgt);
  }
}
