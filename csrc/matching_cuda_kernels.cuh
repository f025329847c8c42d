// The CUDA matching kernels other than the tensor-core top-1 (matching_cuda_nearest.cuh): inverse
// norms, the 64 x 64 top-k kernel (any k, fp32 and any layout), the split merge and soft-argmax,
// with the candidate rules they all share. Included inside lift's anonymous namespace by
// matching_cuda.cu, and by tests/cuda_emulation, which runs these kernels on the CPU.
#pragma once

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kPadH = 8, kPadC = 4;

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T zero_of();
template <> __device__ __forceinline__ float zero_of<float>() { return 0.f; }
template <> __device__ __forceinline__ __half zero_of<__half>() { return __float2half(0.f); }
template <> __device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16(0.f); }

// The candidate rules: masked-out targets do not exist; (v, i) beats (w, j) by larger similarity,
// ties to the lower index; NaN and -inf are never candidates (as lift_rt.matching_reference, whose
// rows without one get index -1).
__device__ __forceinline__ bool valid_mask(const MaskView& m, int64_t b, int64_t j) {
  return m.data == nullptr || m.data[b * m.stride_b + j * m.stride_m] != 0;
}

__device__ __forceinline__ bool better(float v, int64_t i, float w, int64_t j) {
  return v > w || (v == w && v > -INFINITY && i >= 0 && (j < 0 || i < j));
}

__device__ __forceinline__ void insert(float* vals, int64_t* idx, int k, float v, int64_t i) {
  if (!better(v, i, vals[k - 1], idx[k - 1])) return;
  int pos = k - 1;
  while (pos > 0 && better(v, i, vals[pos - 1], idx[pos - 1])) {
    vals[pos] = vals[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  vals[pos] = v;
  idx[pos] = i;
}

// One warp per row: inverse L2 norms of all src rows then all tgt rows (out: B*N then B*M).
template <typename T>
__global__ void inv_norm_kernel(Operand src, Operand tgt, int64_t B, int64_t N, int64_t M, int64_t D, float eps,
                                float* out) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= B * (N + M)) return;
  const bool is_src = row < B * N;
  const Operand& x = is_src ? src : tgt;
  const int64_t r = is_src ? row : row - B * N, rows = is_src ? N : M;
  const T* p = static_cast<const T*>(x.data) + (r / rows) * x.stride_b + (r % rows) * x.stride_n;
  float ss = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float v = to_f(p[d * x.stride_d]);
    ss += v * v;
  }
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) out[row] = 1.f / fmaxf(sqrtf(ss), eps);
}

// True when every 16-byte group of an operand's rows can be read with one vector load: depth
// contiguous, row and batch strides in whole groups, base pointer 16-byte aligned.
template <typename T>
__host__ __device__ __forceinline__ bool vector_loads_ok(const Operand& x) {
  constexpr int64_t V = 16 / sizeof(T);
  return x.stride_d == 1 && x.stride_n % V == 0 && x.stride_b % V == 0 &&
         reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
}

// Loads a 64-row x kBK tile of rows [r0, r0 + 64), depth [k0, k0 + kBK) into shared memory,
// zero-filled out of range. With `vec`, 16-byte loads where a whole group is in range (element
// loads at the depth tail); otherwise threads walk the operand's contiguous axis for coalescing.
template <typename T, int LD>
__device__ __forceinline__ void load_tile(T (*dst)[LD], const Operand& x, int64_t b, int64_t r0, int64_t rows,
                                          int64_t k0, int64_t D, bool vec) {
  const T* base = static_cast<const T*>(x.data) + b * x.stride_b;
  if (vec) {
    constexpr int V = 16 / sizeof(T), G = kBK / V;  // elements per group, groups per tile row
    for (int e = threadIdx.x; e < 64 * G; e += kThreads) {
      const int r = e / G, kk = (e % G) * V;
      const int64_t row = r0 + r, k = k0 + kk;
      const T* src = base + row * x.stride_n + k;
      if (row < rows && k + V <= D) {
        union { uint4 raw; T v[V]; } group;
        group.raw = *reinterpret_cast<const uint4*>(src);
#pragma unroll
        for (int j = 0; j < V; ++j) dst[r][kk + j] = group.v[j];
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[r][kk + j] = (row < rows && k + j < D) ? src[j] : zero_of<T>();
      }
    }
    return;
  }
  const bool depth_fast = x.stride_d == 1;
  for (int e = threadIdx.x; e < 64 * kBK; e += kThreads) {
    const int r = depth_fast ? e / kBK : e % 64, kk = depth_fast ? e % kBK : e / 64;
    const int64_t row = r0 + r, k = k0 + kk;
    dst[r][kk] = (row < rows && k < D) ? base[row * x.stride_n + k * x.stride_d] : zero_of<T>();
  }
}

// Grid: (row blocks, column splits, B). Each block owns 64 source rows and sweeps its share of
// the target columns tile by tile, keeping a top-k per (row, half). K > 0 fixes k at compile time
// (the lists then live in registers; K = 1 is nearest-neighbour matching); K = 0 reads p.k and
// keeps kMaxK-long lists in local memory.
template <typename T, int K>
__global__ void __launch_bounds__(kThreads) topk_kernel(TopKProblem p, const float* inv_norm, int splits,
                                                       float* part_val, int64_t* part_idx) {
  using namespace nvcuda;
  constexpr bool kTensorCores = !std::is_same<T, float>::value;
  constexpr int LD = kBK + (kTensorCores ? kPadH : 1);
  __shared__ __align__(128) T As[kBM][LD];
  __shared__ __align__(128) T Bs[kBN][LD];
  __shared__ __align__(128) float Cs[kBM][kBN + kPadC];

  const int64_t b = blockIdx.z, r0 = int64_t(blockIdx.x) * kBM;
  constexpr int kCap = K > 0 ? K : kMaxK;
  const int split = blockIdx.y, tid = threadIdx.x, k = K > 0 ? K : p.k;
  const int64_t tiles = (p.M + kBN - 1) / kBN, per_split = (tiles + splits - 1) / splits;
  const int64_t t_begin = split * per_split, t_end = min(tiles, t_begin + per_split);
  const int my_row = tid / 2, my_half = tid % 2;
  const int64_t grow = r0 + my_row;
  const float row_scale = (p.normalize && grow < p.N) ? inv_norm[b * p.N + grow] : 1.f;
  const float* inv_t = p.normalize ? inv_norm + p.B * p.N + b * p.M : nullptr;

  const bool vec_src = vector_loads_ok<T>(p.src), vec_tgt = vector_loads_ok<T>(p.tgt);
  float vals[kCap];
  int64_t idx[kCap];
  for (int e = 0; e < k; ++e) { vals[e] = -INFINITY; idx[e] = -1; }

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c0 = t * kBN;
    if constexpr (kTensorCores) {
      const int wr = (tid / 32) / 2, wc = (tid / 32) % 2;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
      for (int64_t k0 = 0; k0 < p.D; k0 += kBK) {
        load_tile<T, LD>(As, p.src, b, r0, p.N, k0, p.D, vec_src);
        load_tile<T, LD>(Bs, p.tgt, b, c0, p.M, k0, p.D, vec_tgt);
        __syncthreads();
        for (int kk = 0; kk < kBK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
          for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &As[wr * 32 + i * 16][kk], LD);
          for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &Bs[wc * 32 + j * 16][kk], LD);
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
      }
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
          wmma::store_matrix_sync(&Cs[wr * 32 + i * 16][wc * 32 + j * 16], acc[i][j], kBN + kPadC,
                                  wmma::mem_row_major);
    } else {
      // fp32: each thread computes a 4 x 8 block with plain FMAs (keeps full fp32 accuracy).
      const int tr = tid / 8, tc = tid % 8;
      float acc[4][8] = {};
      for (int64_t k0 = 0; k0 < p.D; k0 += kBK) {
        load_tile<T, LD>(As, p.src, b, r0, p.N, k0, p.D, vec_src);
        load_tile<T, LD>(Bs, p.tgt, b, c0, p.M, k0, p.D, vec_tgt);
        __syncthreads();
        for (int kk = 0; kk < kBK; ++kk) {
          float av[4], bv[8];
          for (int i = 0; i < 4; ++i) av[i] = As[tr * 4 + i][kk];
          for (int j = 0; j < 8; ++j) bv[j] = Bs[tc + 8 * j][kk];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 8; ++j) Cs[tr * 4 + i][tc + 8 * j] = acc[i][j];
    }
    __syncthreads();
    if (grow < p.N) {
      for (int c = my_half * (kBN / 2); c < (my_half + 1) * (kBN / 2); ++c) {
        const int64_t col = c0 + c;
        if (col >= p.M || !valid_mask(p.mask, b, col)) continue;
        float v = Cs[my_row][c];
        if (p.normalize) v = (v * row_scale) * inv_t[col];  // not row_scale * inv_t: may overflow for tiny rows
        insert(vals, idx, k, v, col);
      }
    }
    // The next tile's store_matrix_sync / Cs writes happen after the k-loop's barriers.
  }

  // Merge the two halves of each row (neighbouring lanes), then write this split's partial list.
  float ov[kCap];
  int64_t oi[kCap];
  for (int e = 0; e < k; ++e) { ov[e] = vals[e]; oi[e] = idx[e]; }
  for (int e = 0; e < k; ++e) {
    const float v = __shfl_xor_sync(0xffffffffu, ov[e], 1);
    const int64_t i = __shfl_xor_sync(0xffffffffu, oi[e], 1);
    insert(vals, idx, k, v, i);
  }
  if (my_half == 0 && grow < p.N) {
    const int64_t o = ((b * p.N + grow) * splits + split) * k;
    for (int e = 0; e < k; ++e) { part_val[o + e] = vals[e]; part_idx[o + e] = idx[e]; }
  }
}

template <int K>
__global__ void merge_splits_kernel(TopKProblem p, int splits, const float* part_val, const int64_t* part_idx) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.B * p.N) return;
  constexpr int kCap = K > 0 ? K : kMaxK;
  const int k = K > 0 ? K : p.k;
  float vals[kCap];
  int64_t idx[kCap];
  for (int e = 0; e < k; ++e) { vals[e] = -INFINITY; idx[e] = -1; }
  for (int64_t e = 0; e < int64_t(splits) * k; ++e) insert(vals, idx, k, part_val[row * splits * k + e], part_idx[row * splits * k + e]);
  for (int e = 0; e < k; ++e) { p.out_sim[row * k + e] = vals[e]; p.out_index[row * k + e] = idx[e]; }
}

// One warp per (b, n): similarities over the window, then the softmax-weighted mean position.
template <typename T>
__global__ void soft_argmax_kernel(SoftArgmaxProblem p) {
  const int64_t bn = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (bn >= p.B * p.N) return;
  const int64_t b = bn / p.N, n = bn % p.N, j = p.index[bn];
  float* out = p.out_xy + bn * 2;
  if (j < 0 || j >= p.h * p.w) {
    if (lane == 0) out[0] = out[1] = NAN;
    return;
  }
  const T* a = static_cast<const T*>(p.src.data) + b * p.src.stride_b + n * p.src.stride_n;
  float aa = 0.f;
  for (int64_t d = lane; d < p.D; d += 32) { const float v = to_f(a[d * p.src.stride_d]); aa += v * v; }
  for (int o = 16; o > 0; o /= 2) aa += __shfl_xor_sync(0xffffffffu, aa, o);
  const float sa = p.normalize ? 1.f / fmaxf(sqrtf(aa), p.eps) : 1.f;
  const int64_t cy = j / p.w, cx = j % p.w;
  // Two passes (max, then weighted sums) keep exp() in range without storing the window.
  float smax = -INFINITY, wsum = 0.f, sx = 0.f, sy = 0.f;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t y = max(cy - p.radius, int64_t(0)); y <= min(cy + p.radius, p.h - 1); ++y)
      for (int64_t x = max(cx - p.radius, int64_t(0)); x <= min(cx + p.radius, p.w - 1); ++x) {
        const int64_t jj = y * p.w + x;
        if (!valid_mask(p.mask, b, jj)) continue;
        const T* t = static_cast<const T*>(p.tgt.data) + b * p.tgt.stride_b + jj * p.tgt.stride_n;
        float dot = 0.f, tt = 0.f;
        for (int64_t d = lane; d < p.D; d += 32) {
          const float av = to_f(a[d * p.src.stride_d]), tv = to_f(t[d * p.tgt.stride_d]);
          dot += av * tv;
          tt += tv * tv;
        }
        for (int o = 16; o > 0; o /= 2) {
          dot += __shfl_xor_sync(0xffffffffu, dot, o);
          tt += __shfl_xor_sync(0xffffffffu, tt, o);
        }
        const float s = dot * sa * (p.normalize ? 1.f / fmaxf(sqrtf(tt), p.eps) : 1.f);
        if (isnan(s)) continue;
        if (pass == 0) {
          smax = fmaxf(smax, s);
        } else {
          const float wgt = expf((s - smax) / p.temperature);
          wsum += wgt; sx += wgt * float(x); sy += wgt * float(y);
        }
      }
    if (!isfinite(smax)) break;
  }
  if (lane == 0) {
    const bool ok = isfinite(smax) && wsum > 0.f;
    out[0] = ok ? sx / wsum : NAN;
    out[1] = ok ? sy / wsum : NAN;
  }
}
