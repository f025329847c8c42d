// CPU matcher: packs normalised fp32 panels, runs the per-ISA micro-kernel over cache-sized row
// blocks (OpenMP over row blocks) and keeps a running top-k per row, so memory stays
// O((N_block + M) * D) instead of N x M.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "matching.h"
#include "matching_tile.h"

namespace lift {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlockBytes = 512 * 1024;  // packed source block, sized for a 1-2 MB L2

float half_to_float(uint16_t h) {
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

float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Reads row `row` of batch `b` of an operand into fp32 `dst[k * step]`, scaled to unit norm
// when normalising (x / max(||x||, eps), like torch.nn.functional.normalize).
void load_row(const Operand& x, int64_t b, int64_t row, int64_t D, bool normalize, float eps,
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
  float ss = 0.f;
  for (int64_t k = 0; k < D; ++k) ss += dst[k * step] * dst[k * step];
  const float scale = 1.f / std::max(std::sqrt(ss), eps);
  for (int64_t k = 0; k < D; ++k) dst[k * step] *= scale;
}

bool mask_valid(const MaskView& m, int64_t b, int64_t j) {
  return m.data == nullptr || m.data[b * m.stride_b + j * m.stride_m] != 0;
}

struct AlignedFree { void operator()(float* p) const { std::free(p); } };
using Buffer = std::unique_ptr<float[], AlignedFree>;
Buffer alloc_floats(int64_t n) {
  const size_t bytes = ((size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  return Buffer(p);
}

// Inserts the candidates of one tile row (ascending column order) into a sorted top-k list.
// Only strictly greater values enter, so among equal values the lowest index stays.
void insert_row(const float* v, int nr, int64_t j0, float* vals, int64_t* idx, int k, float* thr) {
  for (int l = 0; l < nr; ++l) {
    const float x = v[l];
    if (!(x > *thr)) continue;
    int pos = k - 1;
    while (pos > 0 && vals[pos - 1] < x) {
      vals[pos] = vals[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    vals[pos] = x;
    idx[pos] = j0 + l;
    *thr = vals[k - 1];
  }
}

struct ThreadScratch {
  Buffer apack, thr, tile, vals;
  std::vector<int64_t> idx;
};

void topk_cpu_tiled(const TopKProblem& p, TileFn tile, TileShape ts, int n_threads) {
  const int MR = ts.mr, NR = ts.nr, k = p.k;
  const int64_t D = p.D, panels = (p.M + NR - 1) / NR;
  // Row blocks: as large as the cache budget allows, but enough of them to feed every thread.
  int64_t mc = std::max<int64_t>(MR, kBlockBytes / (D * 4) / MR * MR);
  const int64_t want_blocks = (4 * int64_t(n_threads) + p.B - 1) / p.B;
  mc = std::min(mc, std::max<int64_t>(MR, ((p.N + want_blocks - 1) / want_blocks + MR - 1) / MR * MR));
  const int64_t row_blocks = (p.N + mc - 1) / mc;

  Buffer tpack = alloc_floats(panels * NR * D), bias = alloc_floats(panels * NR);
  std::vector<ThreadScratch> scratch(n_threads);
  for (auto& s : scratch) {
    s.apack = alloc_floats(mc * D);
    s.thr = alloc_floats(mc);
    s.tile = alloc_floats(int64_t(MR) * NR);
    s.vals = alloc_floats(mc * k);
    s.idx.resize(size_t(mc * k));
  }

  for (int64_t b = 0; b < p.B; ++b) {
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
      for (int64_t pn = 0; pn < panels; ++pn) {
        float* dst = tpack.get() + pn * NR * D;
        for (int l = 0; l < NR; ++l) {
          const int64_t j = pn * NR + l;
          if (j < p.M) {
            load_row(p.tgt, b, j, D, p.normalize, p.eps, dst + l, NR);
            bias[j] = mask_valid(p.mask, b, j) ? 0.f : -kInf;
          } else {
            for (int64_t d = 0; d < D; ++d) dst[d * NR + l] = 0.f;
            bias[j] = -kInf;
          }
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
#ifdef _OPENMP
        ThreadScratch& s = scratch[omp_get_thread_num()];
#else
        ThreadScratch& s = scratch[0];
#endif
        const int64_t r0 = rb * mc, rows = std::min(mc, p.N - r0), mpan = (rows + MR - 1) / MR;
        for (int64_t r = 0; r < mpan * MR; ++r) {
          float* dst = s.apack.get() + (r / MR) * MR * D + r % MR;
          if (r < rows) {
            load_row(p.src, b, r0 + r, D, p.normalize, p.eps, dst, MR);
          } else {
            for (int64_t d = 0; d < D; ++d) dst[d * MR] = 0.f;
          }
          s.thr[r] = r < rows ? -kInf : kInf;  // padding rows never report hits
        }
        std::fill(s.vals.get(), s.vals.get() + rows * k, -kInf);
        std::fill(s.idx.begin(), s.idx.begin() + rows * k, int64_t(-1));
        for (int64_t pn = 0; pn < panels; ++pn) {
          const float* bp = tpack.get() + pn * NR * D;
          for (int64_t ip = 0; ip < mpan; ++ip) {
            uint32_t hits = tile(s.apack.get() + ip * MR * D, bp, D, bias.get() + pn * NR,
                                 s.thr.get() + ip * MR, s.tile.get());
            while (hits) {
              const int i = __builtin_ctz(hits);
              hits &= hits - 1;
              const int64_t r = ip * MR + i;
              insert_row(s.tile.get() + i * NR, NR, pn * NR, s.vals.get() + r * k, s.idx.data() + r * k, k,
                         s.thr.get() + r);
            }
          }
        }
        const int64_t out0 = (b * p.N + r0) * k;
        std::copy(s.vals.get(), s.vals.get() + rows * k, p.out_sim + out0);
        std::copy(s.idx.begin(), s.idx.begin() + rows * k, p.out_index + out0);
      }
    }
  }
}

}  // namespace

int cpu_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (tile_avx512() && __builtin_cpu_supports("avx512f")) return kIsaAvx512;
  if (tile_avx2() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaScalar;
}

void topk_cpu(const TopKProblem& p, int isa, int n_threads) {
  if (p.k < 1 || p.k > kMaxK) throw std::invalid_argument("lift_rt matching: k out of range");
  if (p.B == 0 || p.N == 0) return;
  const int best = cpu_best_isa();
  if (isa == kIsaAuto) isa = best;
  if (isa > best) throw std::invalid_argument("lift_rt matching: requested ISA not supported by this CPU/build");
  n_threads = std::max(n_threads, 1);
  switch (isa) {
    case kIsaAvx512: return topk_cpu_tiled(p, tile_avx512(), kAvx512Tile, n_threads);
    case kIsaAvx2: return topk_cpu_tiled(p, tile_avx2(), kAvx2Tile, n_threads);
    default: return topk_cpu_tiled(p, tile_scalar(), kScalarTile, n_threads);
  }
}

void soft_argmax_cpu(const SoftArgmaxProblem& p, int n_threads) {
  const int64_t D = p.D, M = p.h * p.w, win = int64_t(2 * p.radius + 1) * (2 * p.radius + 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma omp parallel num_threads(std::max(n_threads, 1))
  {
    std::vector<float> a(D), t(D), sims(win), xs(win), ys(win);
#pragma omp for schedule(static)
    for (int64_t bn = 0; bn < p.B * p.N; ++bn) {
      const int64_t b = bn / p.N, n = bn % p.N, j = p.index[bn];
      float* out = p.out_xy + bn * 2;
      if (j < 0 || j >= M) { out[0] = out[1] = nan; continue; }
      load_row(p.src, b, n, D, p.normalize, p.eps, a.data(), 1);
      const int64_t cy = j / p.w, cx = j % p.w;
      int64_t cnt = 0;
      float smax = -kInf;
      for (int64_t y = std::max<int64_t>(cy - p.radius, 0); y <= std::min<int64_t>(cy + p.radius, p.h - 1); ++y)
        for (int64_t x = std::max<int64_t>(cx - p.radius, 0); x <= std::min<int64_t>(cx + p.radius, p.w - 1); ++x) {
          const int64_t jj = y * p.w + x;
          if (!mask_valid(p.mask, b, jj)) continue;
          load_row(p.tgt, b, jj, D, p.normalize, p.eps, t.data(), 1);
          float s = 0.f;
          for (int64_t d = 0; d < D; ++d) s += a[d] * t[d];
          if (std::isnan(s)) continue;
          sims[cnt] = s; xs[cnt] = float(x); ys[cnt] = float(y); ++cnt;
          smax = std::max(smax, s);
        }
      if (cnt == 0 || !std::isfinite(smax)) { out[0] = out[1] = nan; continue; }
      float wsum = 0.f, sx = 0.f, sy = 0.f;
      for (int64_t c = 0; c < cnt; ++c) {
        const float wgt = std::exp((sims[c] - smax) / p.temperature);
        wsum += wgt; sx += wgt * xs[c]; sy += wgt * ys[c];
      }
      out[0] = sx / wsum;
      out[1] = sy / wsum;
    }
  }
}

}  // namespace lift
