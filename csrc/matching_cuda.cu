// CUDA matchers. Top-1 on fp16/bf16 rows that allow 16-byte loads (depth contiguous, a multiple
// of 8): 128 x 128 tiles on tensor cores (wmma), a 3-stage cp.async pipeline that streams the
// (column tile, depth slice) sequence without a break, and the argmax fused per warp (each warp
// stores one 16 x 16 accumulator at a time to its own scratch). Everything else (top-k, fp32,
// other layouts): 64 x 64 tiles with a running top-k list per row. Column splits fill the GPU and a
// small kernel merges them. Memory: O(B * (N + M)) floats of inverse norms plus B * N * splits * k
// partials; nothing N x M.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "matching.h"

namespace lift {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("lift_rt CUDA ") + what + ": " + cudaGetErrorString(err));
}

// cp.async: 16-byte global -> shared copies that bypass the registers (sm_80+).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool copy) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = copy ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// The block's dynamic shared memory (the tensor-core kernel's stages and scratch).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}

#include "matching_cuda_kernels.cuh"
#include "matching_cuda_nearest.cuh"

// Column splits for `row_blocks` blocks of rows against `col_tiles` column tiles with `slots`
// blocks resident at once: the fewest that minimise waves x (tiles per block + a block's fixed cost).
int choose_splits(int64_t row_blocks, int64_t col_tiles, int64_t slots) {
  constexpr double kBlockCost = 0.5;  // pipeline fill and final reduction, in tiles of work
  int best = 1;
  double best_cost = INFINITY;
  for (int64_t s = 1; s <= std::min<int64_t>(col_tiles, 1024); ++s) {
    const int64_t waves = (row_blocks * s + slots - 1) / slots, per_block = (col_tiles + s - 1) / s;
    const double cost = double(waves) * (double(per_block) + kBlockCost);
    if (cost < best_cost) {
      best = int(s);
      best_cost = cost;
    }
  }
  return best;
}

template <typename T>
void allow_mma_smem() {  // more than the default 48 KB of dynamic shared memory
  if constexpr (!std::is_same<T, float>::value)
    check(cudaFuncSetAttribute(nearest_mma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(nn::smem_bytes<T>())),
          "cudaFuncSetAttribute(nearest_mma_kernel)");
}

template <typename T>
int plan_splits(const TopKProblem& p) {
  int device = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  int64_t rows = kBM, cols = kBN;
  if (mma_path<T>(p)) {
    if constexpr (!std::is_same<T, float>::value) {
      allow_mma_smem<T>();
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, nearest_mma_kernel<T>, nn::kThreads,
                                                          nn::smem_bytes<T>()),
            "occupancy(nearest_mma_kernel)");
      rows = nn::kBM;
      cols = nn::kBN;
    }
  } else if (p.k == 1) {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, topk_kernel<T, 1>, kThreads, 0), "occupancy");
  } else {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, topk_kernel<T, 0>, kThreads, 0), "occupancy");
  }
  const int64_t row_blocks = std::max<int64_t>(1, p.B * ((p.N + rows - 1) / rows));
  return choose_splits(row_blocks, (p.M + cols - 1) / cols, int64_t(std::max(per_sm, 1)) * sms);
}

// One chunk of at most kMaxGridZ batch elements (grid.z): norms, matching, merge.
template <typename T>
void launch_topk_chunk(const TopKProblem& p, int splits, float* inv_norm, float* part_val, int64_t* part_idx,
                       cudaStream_t stream) {
  if (p.normalize) {
    const int64_t rows = p.B * (p.N + p.M);
    inv_norm_kernel<T><<<unsigned((rows * 32 + 255) / 256), 256, 0, stream>>>(p.src, p.tgt, p.B, p.N, p.M, p.D,
                                                                              p.eps, inv_norm);
    check(cudaGetLastError(), "inv_norm_kernel");
  }
  const unsigned merge_blocks = unsigned((p.B * p.N + 127) / 128);
  if (mma_path<T>(p)) {
    if constexpr (!std::is_same<T, float>::value) {
      allow_mma_smem<T>();
      const dim3 grid(unsigned((p.N + nn::kBM - 1) / nn::kBM), unsigned(splits), unsigned(p.B));
      nearest_mma_kernel<T><<<grid, nn::kThreads, nn::smem_bytes<T>(), stream>>>(p, inv_norm, splits, part_val,
                                                                                 part_idx);
      check(cudaGetLastError(), "nearest_mma_kernel");
      merge_splits_kernel<1><<<merge_blocks, 128, 0, stream>>>(p, splits, part_val, part_idx);
    }
  } else {
    const dim3 grid(unsigned((p.N + kBM - 1) / kBM), unsigned(splits), unsigned(p.B));
    if (p.k == 1) {
      topk_kernel<T, 1><<<grid, kThreads, 0, stream>>>(p, inv_norm, splits, part_val, part_idx);
      check(cudaGetLastError(), "topk_kernel");
      merge_splits_kernel<1><<<merge_blocks, 128, 0, stream>>>(p, splits, part_val, part_idx);
    } else {
      topk_kernel<T, 0><<<grid, kThreads, 0, stream>>>(p, inv_norm, splits, part_val, part_idx);
      check(cudaGetLastError(), "topk_kernel");
      merge_splits_kernel<0><<<merge_blocks, 128, 0, stream>>>(p, splits, part_val, part_idx);
    }
  }
  check(cudaGetLastError(), "merge_splits_kernel");
}

constexpr int64_t kMaxGridZ = 65535;

// The batch in chunks that fit grid.z, each reusing the workspace (stream order keeps them apart).
template <typename T>
void launch_topk(const TopKProblem& p, int splits, float* inv_norm, float* part_val, int64_t* part_idx,
                 cudaStream_t stream) {
  for (int64_t b0 = 0; b0 < p.B; b0 += kMaxGridZ) {
    TopKProblem chunk = p;
    chunk.B = std::min(kMaxGridZ, p.B - b0);
    chunk.src.data = static_cast<const T*>(p.src.data) + b0 * p.src.stride_b;
    chunk.tgt.data = static_cast<const T*>(p.tgt.data) + b0 * p.tgt.stride_b;
    if (p.mask.data != nullptr) chunk.mask.data = p.mask.data + b0 * p.mask.stride_b;
    chunk.out_index = p.out_index + b0 * p.N * p.k;
    chunk.out_sim = p.out_sim + b0 * p.N * p.k;
    launch_topk_chunk<T>(chunk, splits, inv_norm, part_val, part_idx, stream);
  }
}

}  // namespace

int topk_cuda_splits(const TopKProblem& p) {
  if (p.src.dtype != p.tgt.dtype) throw std::invalid_argument("CUDA matching needs src and tgt of one dtype");
  switch (p.src.dtype) {
    case kFloat32: return plan_splits<float>(p);
    case kFloat16: return plan_splits<__half>(p);
    default: return plan_splits<__nv_bfloat16>(p);
  }
}

void topk_cuda(const TopKProblem& p, int splits, float* inv_norm, float* part_val, int64_t* part_idx, void* stream) {
  if (p.src.dtype != p.tgt.dtype) throw std::invalid_argument("CUDA matching needs src and tgt of one dtype");
  if (p.k < 1 || p.k > kMaxK || splits < 1) throw std::invalid_argument("bad k or splits");
  if (p.B == 0 || p.N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.src.dtype) {
    case kFloat32: return launch_topk<float>(p, splits, inv_norm, part_val, part_idx, s);
    case kFloat16: return launch_topk<__half>(p, splits, inv_norm, part_val, part_idx, s);
    default: return launch_topk<__nv_bfloat16>(p, splits, inv_norm, part_val, part_idx, s);
  }
}

void soft_argmax_cuda(const SoftArgmaxProblem& p, void* stream) {
  if (p.src.dtype != p.tgt.dtype) throw std::invalid_argument("CUDA matching needs src and tgt of one dtype");
  if (p.B == 0 || p.N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned((p.B * p.N * 32 + 255) / 256);
  switch (p.src.dtype) {
    case kFloat32: soft_argmax_kernel<float><<<blocks, 256, 0, s>>>(p); break;
    case kFloat16: soft_argmax_kernel<__half><<<blocks, 256, 0, s>>>(p); break;
    default: soft_argmax_kernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(p); break;
  }
  check(cudaGetLastError(), "soft_argmax_kernel");
}

}  // namespace lift
