// Internal helpers of the CPU matcher shared by its exact (fp32 tiles) and screened (int8 tiles)
// drivers: reading rows of any float dtype, masks, aligned buffers and the work split.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

#include "matching.h"

namespace lift {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();

inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 113;
      while (!(mant & 0x400u)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Reads row `row` of batch `b` of an operand into fp32 `dst[k * step]`, scaled to unit norm
// when normalising (x / max(||x||, eps), like torch.nn.functional.normalize).
inline void load_row(const Operand& x, int64_t b, int64_t row, int64_t D, bool normalize, float eps,
              float* dst, int64_t step) {
  const int64_t base = b * x.stride_b + row * x.stride_n;
  switch (x.dtype) {
    case kFloat32: {
      const float* p = static_cast<const float*>(x.data) + base;
      for (int64_t k = 0; k < D; ++k) dst[k * step] = p[k * x.stride_d];
      break;
    }
    case kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(x.data) + base;
      for (int64_t k = 0; k < D; ++k) dst[k * step] = half_to_float(p[k * x.stride_d]);
      break;
    }
    case kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(x.data) + base;
      for (int64_t k = 0; k < D; ++k) dst[k * step] = bf16_to_float(p[k * x.stride_d]);
      break;
    }
    default:
      throw std::invalid_argument("lift_rt matching: unsupported dtype code");
  }
  if (!normalize) return;
  float ss8[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // 8 lanes: no serial chain of adds
  int64_t k = 0;
  for (; k + 8 <= D; k += 8)
    for (int l = 0; l < 8; ++l) ss8[l] += dst[(k + l) * step] * dst[(k + l) * step];
  for (; k < D; ++k) ss8[0] += dst[k * step] * dst[k * step];
  const float ss = ((ss8[0] + ss8[1]) + (ss8[2] + ss8[3])) + ((ss8[4] + ss8[5]) + (ss8[6] + ss8[7]));
  const float scale = 1.f / std::max(std::sqrt(ss), eps);
  for (k = 0; k < D; ++k) dst[k * step] *= scale;
}

inline bool mask_valid(const MaskView& m, int64_t b, int64_t j) {
  return m.data == nullptr || m.data[b * m.stride_b + j * m.stride_m] != 0;
}

template <class T>
struct AlignedArray {  // 64-byte aligned, uninitialised
  std::unique_ptr<T[], void (*)(void*)> p{nullptr, std::free};
  explicit AlignedArray(int64_t n = 0) {
    const size_t bytes = ((size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64) * 64;
    p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!p) throw std::bad_alloc();
  }
  T* get() const { return p.get(); }
  T& operator[](int64_t i) const { return p[i]; }
};

using Buffer = AlignedArray<float>;
inline Buffer alloc_floats(int64_t n) { return Buffer(n); }

// The work split of topk_cpu for a micro-kernel of MR x NR (see CpuWorkSplit).
CpuWorkSplit plan_work(int64_t B, int64_t N, int64_t M, int64_t D, int mr, int nr, int n_threads);

// Merges the top-k lists of one row found in `parts` consecutive column chunks (list c at
// offset c * stride, chunks in ascending column order) into `vals` / `idx`.
void merge_chunks(const float* part_vals, const int64_t* part_idx, int64_t parts, int64_t stride, int k,
                  float* vals, int64_t* idx);

// Exact top-k with the fp32 micro-kernel of `isa` (already resolved against this CPU).
void topk_cpu_exact(const TopKProblem& p, int isa, int n_threads);

// Top-1 by int8 screening and exact fp32 rescoring (matching_screen.cpp): the same result as
// topk_cpu_exact, but for near-ties within fp32 rounding (the rescoring sums in its own order, so such
// a tie may resolve to the other member). Returns false, doing nothing, where no int8 kernel serves
// `isa`. `adaptive`: first screen a sample of rows and hand batch elements whose rows mostly fall back
// to the exact kernel.
bool nearest_cpu_screened(const TopKProblem& p, int isa, int n_threads, bool adaptive, bool allow_vnni);
const char* screen_kernel_name(int isa, bool allow_vnni);  // "" where none serves `isa`

}  // namespace cpu
}  // namespace lift
