// Just enough of CUDA to run lift_rt's matching kernels on the CPU, for tests on machines without
// a GPU: one std::thread per CUDA thread, std::barrier for __syncthreads / __syncwarp, static
// __shared__ arrays as function statics (blocks run one after another),
// warp shuffles through a per-warp exchange, cp.async copies deferred until their group is waited
// for (so a kernel that computes on a stage before waiting reads stale data and fails its test),
// and wmma fragments that hold the whole 16 x 16 tile in every lane (their layout is unspecified
// by CUDA; only the collective operations' results matter).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct dim3 { unsigned x = 0, y = 0, z = 0; };

namespace emu {

inline float to_float(float x) { return x; }
inline float to_float(__half x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, 2);
  return float(h);
}
inline float to_float(__nv_bfloat16 x) {
  const uint32_t bits = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Warp {
  std::barrier<> bar{32};
  uint64_t slots[32] = {};
};

struct Block {
  explicit Block(int threads) : bar(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.emplace_back(std::make_unique<Warp>());
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

struct Copy {
  void* dst;
  const void* src;
  bool copy;
};

inline Block* block = nullptr;
inline thread_local dim3 thread_idx, block_idx, block_dim;
inline thread_local std::vector<Copy> pending;
inline thread_local std::deque<std::vector<Copy>> groups;

inline Warp& my_warp() { return *block->warps[thread_idx.x / 32]; }

// Runs kernel() once per thread of every block of `grid`, blocks one after another (the same
// `threads` OS threads serve every block). A thread that returns early must take its whole warp
// with it (as the kernels here do).
inline void launch(dim3 grid, int threads, const std::function<void()>& kernel) {
  Block b(threads);
  block = &b;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            thread_idx = {unsigned(t), 0, 0};
            block_idx = {x, y, z};
            block_dim = {unsigned(threads), 1, 1};
            pending.clear();
            groups.clear();
            kernel();
            b.bar.arrive_and_wait();  // the block is done before the next one starts
          }
    });
  for (auto& th : pool) th.join();
  block = nullptr;
}

}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim

inline float __half2float(__half x) { return emu::to_float(x); }
inline float __bfloat162float(__nv_bfloat16 x) { return emu::to_float(x); }
inline __half __float2half(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}
inline __nv_bfloat16 __float2bfloat16(float x) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return {uint16_t(0x7fc0)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return {uint16_t(bits >> 16)};
}

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::my_warp().bar.arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "one slot per lane");
  emu::Warp& w = emu::my_warp();
  const int lane = int(threadIdx.x % 32);
  std::memcpy(&w.slots[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T out;
  std::memcpy(&out, &w.slots[lane ^ lane_mask], sizeof(T));
  w.bar.arrive_and_wait();
  return out;
}

// cp.async: 16 bytes (or 16 zero bytes), landing when their group is waited for.
inline void cp_async16(void* smem, const void* gmem, bool copy) { emu::pending.push_back({smem, gmem, copy}); }
inline void cp_async_commit() {
  emu::groups.push_back(std::move(emu::pending));
  emu::pending.clear();
}
template <int N>
void cp_async_wait() {
  while (emu::groups.size() > size_t(N)) {
    for (const emu::Copy& c : emu::groups.front()) {
      if (c.copy) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    emu::groups.pop_front();
  }
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float tile[16][16];  // [row][column] of the 16 x 16 operand, in every lane
};

template <typename F>
void fill_fragment(F& f, float v) {
  for (auto& row : f.tile)
    for (float& x : row) x = v;
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ld) {
  constexpr bool row_major_layout = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.tile[r][c] = emu::to_float(row_major_layout ? p[r * ld + c] : p[c * ld + r]);
}

template <typename TA, typename TB, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.tile[r][n];
      for (int k = 0; k < 16; ++k) s += a.tile[r][k] * b.tile[k][n];
      out[r][n] = s;
    }
  std::memcpy(d.tile, out, sizeof(out));
}

// Warp-collective: every lane holds the same tile, one lane writes it.
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ld,
                              layout_t layout) {
  __syncwarp();
  if (threadIdx.x % 32 == 0)
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c) p[layout == mem_row_major ? r * ld + c : c * ld + r] = f.tile[r][c];
  __syncwarp();
}
}  // namespace wmma
}  // namespace nvcuda
