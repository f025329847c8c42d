// lift_rt's CUDA matching kernels (csrc/matching_cuda_kernels.cuh, csrc/matching_cuda_nearest.cuh)
// run on the CPU through cuda_on_cpu.h: the kernels' own source, launched as matching_cuda.cu's
// launch_topk / soft_argmax_cuda launch them. Built and called (ctypes) by
// tests/test_matching_cuda_emulated.py, which compares the results with lift_rt.matching_reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_on_cpu.h"
#include "matching.h"

namespace lift {
namespace {
using std::isfinite;
using std::isnan;
using std::max;
using std::min;

alignas(128) unsigned char emulated_dynamic_smem[160 * 1024];
inline unsigned char* dynamic_smem() { return emulated_dynamic_smem; }

#include "matching_cuda_kernels.cuh"
#include "matching_cuda_nearest.cuh"

unsigned blocks_for(int64_t threads, int per_block) { return unsigned((threads + per_block - 1) / per_block); }

// As launch_topk; returns 1 where the tensor-core top-1 kernel ran, 0 for the top-k kernel.
template <typename T>
int topk(const TopKProblem& p, int splits) {
  std::vector<float> inv_norm(size_t(std::max<int64_t>(1, p.B * (p.N + p.M))));
  std::vector<float> part_val(size_t(p.B * p.N * splits * p.k));
  std::vector<int64_t> part_idx(part_val.size());
  if (p.normalize) {
    const int64_t rows = p.B * (p.N + p.M);
    emu::launch({blocks_for(rows * 32, 256), 1, 1}, 256,
                [&] { inv_norm_kernel<T>(p.src, p.tgt, p.B, p.N, p.M, p.D, p.eps, inv_norm.data()); });
  }
  const bool mma = mma_path<T>(p);
  if constexpr (!std::is_same<T, float>::value) {
    if (mma) {
      static_assert(nn::smem_bytes<T>() <= sizeof(emulated_dynamic_smem), "emulated shared memory too small");
      emu::launch({unsigned((p.N + nn::kBM - 1) / nn::kBM), unsigned(splits), unsigned(p.B)}, nn::kThreads,
                  [&] { nearest_mma_kernel<T>(p, inv_norm.data(), splits, part_val.data(), part_idx.data()); });
    }
  }
  if (!mma) {
    const dim3 grid{unsigned((p.N + kBM - 1) / kBM), unsigned(splits), unsigned(p.B)};
    if (p.k == 1)
      emu::launch(grid, kThreads, [&] { topk_kernel<T, 1>(p, inv_norm.data(), splits, part_val.data(), part_idx.data()); });
    else
      emu::launch(grid, kThreads, [&] { topk_kernel<T, 0>(p, inv_norm.data(), splits, part_val.data(), part_idx.data()); });
  }
  const dim3 merge_grid{blocks_for(p.B * p.N, 128), 1, 1};
  if (p.k == 1)
    emu::launch(merge_grid, 128, [&] { merge_splits_kernel<1>(p, splits, part_val.data(), part_idx.data()); });
  else
    emu::launch(merge_grid, 128, [&] { merge_splits_kernel<0>(p, splits, part_val.data(), part_idx.data()); });
  return mma ? 1 : 0;
}

template <typename T>
void soft_argmax(const SoftArgmaxProblem& p) {
  emu::launch({blocks_for(p.B * p.N * 32, 256), 1, 1}, 256, [&] { soft_argmax_kernel<T>(p); });
}

}  // namespace
}  // namespace lift

// dtype: lift::DType codes; strides in elements; mask may be null.
extern "C" int lift_emulated_topk(const void* src, const void* tgt, const uint8_t* mask, int dtype, int64_t B,
                                  int64_t N, int64_t M, int64_t D, int64_t ssb, int64_t ssn, int64_t ssd, int64_t tsb,
                                  int64_t tsn, int64_t tsd, int64_t msb, int64_t msm, int k, int normalize, float eps,
                                  int splits, int64_t* out_index, float* out_sim) {
  const lift::TopKProblem p{{src, dtype, ssb, ssn, ssd}, {tgt, dtype, tsb, tsn, tsd}, {mask, msb, msm},
                            B, N, M, D, k, normalize != 0, eps, out_index, out_sim};
  switch (dtype) {
    case lift::kFloat32: return lift::topk<float>(p, splits);
    case lift::kFloat16: return lift::topk<__half>(p, splits);
    default: return lift::topk<__nv_bfloat16>(p, splits);
  }
}

extern "C" void lift_emulated_soft_argmax(const void* src, const void* tgt, const uint8_t* mask, int dtype,
                                          const int64_t* index, int64_t B, int64_t N, int64_t h, int64_t w, int64_t D,
                                          int64_t ssb, int64_t ssn, int64_t ssd, int64_t tsb, int64_t tsn, int64_t tsd,
                                          int64_t msb, int64_t msm, int radius, float temperature, int normalize,
                                          float eps, float* out_xy) {
  const lift::SoftArgmaxProblem p{{src, dtype, ssb, ssn, ssd}, {tgt, dtype, tsb, tsn, tsd}, {mask, msb, msm}, index,
                                  B, N, h, w, D, radius, temperature, normalize != 0, eps, out_xy};
  switch (dtype) {
    case lift::kFloat32: return lift::soft_argmax<float>(p);
    case lift::kFloat16: return lift::soft_argmax<__half>(p);
    default: return lift::soft_argmax<__nv_bfloat16>(p);
  }
}
