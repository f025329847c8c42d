// CPU matcher: packs normalised fp32 panels, runs the per-ISA micro-kernel over cache-sized row
// blocks (OpenMP over row blocks, and over column chunks when the row blocks are fewer than the
// threads) and keeps a running top-k per row, so memory stays O((N_block + M) * D) instead of N x M.
// When all source rows fit one block (keypoints against a grid) nothing M x D is allocated: each
// thread packs the target panels of its column chunk where it scans them.
#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "matching.h"
#include "matching_cpu_util.h"
#include "matching_tile.h"

namespace lift {
namespace cpu {
namespace {

constexpr int64_t kBlockBytes = 512 * 1024;  // packed source block, sized for a 1-2 MB L2

// Inserts candidate (x, j) into a descending top-k list whose k-th value is *thr. Only values
// strictly greater than *thr enter (NaN never does) and an equal value goes after those present,
// so when candidates come in ascending index order, ties keep the lowest index.
inline void insert(float x, int64_t j, float* vals, int64_t* idx, int k, float* thr) {
  if (!(x > *thr)) return;
  int pos = k - 1;
  while (pos > 0 && vals[pos - 1] < x) {
    vals[pos] = vals[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  vals[pos] = x;
  idx[pos] = j;
  *thr = vals[k - 1];
}

// Inserts the candidates of one tile row (columns j0 .. j0 + nr - 1) into a sorted top-k list.
void insert_row(const float* v, int nr, int64_t j0, float* vals, int64_t* idx, int k, float* thr) {
  for (int l = 0; l < nr; ++l) insert(v[l], j0 + l, vals, idx, k, thr);
}

}  // namespace

// See matching_cpu_util.h.
void merge_chunks(const float* part_vals, const int64_t* part_idx, int64_t parts, int64_t stride, int k,
                  float* vals, int64_t* idx) {
  std::fill(vals, vals + k, -kInf);
  std::fill(idx, idx + k, int64_t(-1));
  float thr = -kInf;
  for (int64_t c = 0; c < parts; ++c)
    for (int l = 0; l < k; ++l) insert(part_vals[c * stride + l], part_idx[c * stride + l], vals, idx, k, &thr);
}

namespace {

struct ThreadScratch {
  Buffer apack, thr, tile, vals, rows, panel, panel_bias;
  std::vector<int64_t> idx;
};

// Packs targets pn * NR .. pn * NR + NR - 1 of batch b into panel `dst` (D x NR, zero columns past
// M) and their column biases `bias[0 .. NR)` (0, or -inf when masked or past M). Rows are read and normalised
// contiguously into `rows` (NR x D) first, then transposed: every pass over memory is sequential.
void pack_target_panel(const TopKProblem& p, int64_t b, int64_t pn, int NR, float* rows, float* dst, float* bias) {
  const int64_t D = p.D;
  for (int l = 0; l < NR; ++l) {
    const int64_t j = pn * NR + l;
    if (j < p.M) {
      load_row(p.tgt, b, j, D, p.normalize, p.eps, rows + l * D, 1);
      bias[l] = mask_valid(p.mask, b, j) ? 0.f : -kInf;
    } else {
      std::fill(rows + l * D, rows + (l + 1) * D, 0.f);
      bias[l] = -kInf;
    }
  }
  constexpr int64_t kStrip = 16;  // depth strip: the NR source rows' strips stay in L1
  for (int64_t d0 = 0; d0 < D; d0 += kStrip)
    for (int l = 0; l < NR; ++l)
      for (int64_t d = d0; d < std::min(D, d0 + kStrip); ++d) dst[d * NR + l] = rows[l * D + d];
}

// Packs rows r0 .. r0 + rows - 1 of batch b's sources into MR-row panels (zero padding rows) and
// resets their top-k lists; padding rows get threshold +inf so they never report hits.
void pack_source_block(const TopKProblem& p, int64_t b, int64_t r0, int64_t rows, int MR, ThreadScratch& s) {
  const int64_t D = p.D, padded = (rows + MR - 1) / MR * MR;
  for (int64_t r = 0; r < padded; ++r) {
    float* dst = s.apack.get() + (r / MR) * MR * D + r % MR;
    if (r < rows) {
      load_row(p.src, b, r0 + r, D, p.normalize, p.eps, dst, MR);
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d * MR] = 0.f;
    }
    s.thr[r] = r < rows ? -kInf : kInf;
  }
  std::fill(s.vals.get(), s.vals.get() + rows * p.k, -kInf);
  std::fill(s.idx.begin(), s.idx.begin() + rows * p.k, int64_t(-1));
}

// Runs the packed source block in `s` against target panel pn (`bp`: D x NR, `bias`: its NR column
// biases), updating the block's running top-k lists.
void scan_panel(const TopKProblem& p, TileFn tile, TileShape ts, const float* bp, const float* bias, int64_t pn,
                int64_t rows, ThreadScratch& s) {
  const int MR = ts.mr, NR = ts.nr, k = p.k;
  const int64_t D = p.D, mpan = (rows + MR - 1) / MR;
  for (int64_t ip = 0; ip < mpan; ++ip) {
    uint32_t hits = tile(s.apack.get() + ip * MR * D, bp, D, bias, s.thr.get() + ip * MR, s.tile.get());
    while (hits) {
      const int i = __builtin_ctz(hits);
      hits &= hits - 1;
      const int64_t r = ip * MR + i;
      insert_row(s.tile.get() + i * NR, NR, pn * NR, s.vals.get() + r * k, s.idx.data() + r * k, k, s.thr.get() + r);
    }
  }
}

}  // namespace

CpuWorkSplit plan_work(int64_t B, int64_t N, int64_t M, int64_t D, int mr, int nr, int n_threads) {
  const int MR = mr;
  const int64_t panels = (M + nr - 1) / nr;
  // Row blocks: as large as the cache budget allows, but enough of them to feed every thread.
  int64_t mc = std::max<int64_t>(MR, kBlockBytes / (D * 4) / MR * MR);
  if (N <= mc) {  // every source row fits one block: one pass over the targets, cut into thread chunks
    const int64_t chunks = std::min<int64_t>(panels, n_threads), chunk_panels = (panels + chunks - 1) / chunks;
    return {(N + MR - 1) / MR * MR, 1, (panels + chunk_panels - 1) / chunk_panels, chunk_panels};
  }
  const int64_t want_blocks = (4 * int64_t(n_threads) + B - 1) / B;
  mc = std::min(mc, std::max<int64_t>(MR, ((N + want_blocks - 1) / want_blocks + MR - 1) / MR * MR));
  const int64_t row_blocks = (N + mc - 1) / mc;
  // The batch loop is serial, so one parallel region has row_blocks items before any column cut.
  int64_t chunks = row_blocks < n_threads ? std::min(panels, (n_threads + row_blocks - 1) / row_blocks) : 1;
  const int64_t chunk_panels = (panels + chunks - 1) / chunks;
  chunks = (panels + chunk_panels - 1) / chunk_panels;
  return {mc, row_blocks, chunks, chunk_panels};
}

namespace {

void topk_cpu_tiled(const TopKProblem& p, TileFn tile, TileShape ts, int n_threads) {
  const int MR = ts.mr, NR = ts.nr, k = p.k;
  const int64_t D = p.D, panels = (p.M + NR - 1) / NR;
  const CpuWorkSplit w = plan_work(p.B, p.N, p.M, D, ts.mr, ts.nr, n_threads);
  const int64_t items = w.row_blocks * w.chunks, slot = w.mc * k;  // slot: the lists of one work item

  // One row block: each target panel is read once, so it is packed where it is scanned (in cache)
  // instead of into a shared M x D copy first.
  const bool stream_targets = w.row_blocks == 1;
  const int64_t shared_panels = stream_targets ? 0 : panels;
  Buffer tpack = alloc_floats(shared_panels * NR * D), bias = alloc_floats(shared_panels * NR);
  std::vector<ThreadScratch> scratch(n_threads);
  for (auto& s : scratch) {
    s.apack = alloc_floats(w.mc * D);
    s.thr = alloc_floats(w.mc);
    s.tile = alloc_floats(int64_t(MR) * NR);
    s.vals = alloc_floats(slot);
    s.rows = alloc_floats(int64_t(NR) * D);
    s.panel = alloc_floats(stream_targets ? int64_t(NR) * D : 0);
    s.panel_bias = alloc_floats(stream_targets ? NR : 0);
    s.idx.resize(size_t(slot));
  }
  // Per-chunk lists when columns are cut (item-major, chunks x N x k entries), merged per row.
  const int64_t part_size = w.chunks > 1 ? items * slot : 0;
  Buffer part_vals = alloc_floats(part_size);
  std::vector<int64_t> part_idx(static_cast<size_t>(part_size));

  for (int64_t b = 0; b < p.B; ++b) {
#pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
      ThreadScratch& s = scratch[omp_get_thread_num()];
#else
      ThreadScratch& s = scratch[0];
#endif
#pragma omp for schedule(static)
      for (int64_t pn = 0; pn < shared_panels; ++pn)
        pack_target_panel(p, b, pn, NR, s.rows.get(), tpack.get() + pn * NR * D, bias.get() + pn * NR);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t rb = item / w.chunks, c = item % w.chunks;
        const int64_t r0 = rb * w.mc, rows = std::min(w.mc, p.N - r0);
        pack_source_block(p, b, r0, rows, MR, s);
        for (int64_t pn = c * w.chunk_panels; pn < std::min(panels, (c + 1) * w.chunk_panels); ++pn) {
          if (stream_targets) {
            pack_target_panel(p, b, pn, NR, s.rows.get(), s.panel.get(), s.panel_bias.get());
            scan_panel(p, tile, ts, s.panel.get(), s.panel_bias.get(), pn, rows, s);
          } else {
            scan_panel(p, tile, ts, tpack.get() + pn * NR * D, bias.get() + pn * NR, pn, rows, s);
          }
        }
        const bool cut = w.chunks > 1;
        float* out_vals = cut ? part_vals.get() + item * slot : p.out_sim + (b * p.N + r0) * k;
        int64_t* out_idx = cut ? part_idx.data() + item * slot : p.out_index + (b * p.N + r0) * k;
        std::copy(s.vals.get(), s.vals.get() + rows * k, out_vals);
        std::copy(s.idx.begin(), s.idx.begin() + rows * k, out_idx);
      }
      if (w.chunks > 1) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < p.N; ++n) {
          const int64_t first = ((n / w.mc) * w.chunks * w.mc + n % w.mc) * k, out0 = (b * p.N + n) * k;
          merge_chunks(part_vals.get() + first, part_idx.data() + first, w.chunks, slot, k, p.out_sim + out0,
                       p.out_index + out0);
        }
      }
    }
  }
}

TileShape tile_shape(int isa) {
  return isa == kIsaAvx512 ? kAvx512Tile : isa == kIsaAvx2 ? kAvx2Tile : kScalarTile;
}

}  // namespace

void topk_cpu_exact(const TopKProblem& p, int isa, int n_threads) {
  switch (isa) {
    case kIsaAvx512: return topk_cpu_tiled(p, tile_avx512(), kAvx512Tile, n_threads);
    case kIsaAvx2: return topk_cpu_tiled(p, tile_avx2(), kAvx2Tile, n_threads);
    default: return topk_cpu_tiled(p, tile_scalar(), kScalarTile, n_threads);
  }
}

}  // namespace cpu

int cpu_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (tile_avx512() && __builtin_cpu_supports("avx512f")) return kIsaAvx512;
  if (tile_avx2() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaScalar;
}

namespace {

// kIsaAuto -> the best ISA here; refuses one this CPU or build cannot run.
int resolve_isa(int isa) {
  const int best = cpu_best_isa();
  if (isa == kIsaAuto) return best;
  if (isa > best) throw std::invalid_argument("lift_rt matching: requested ISA not supported by this CPU/build");
  return isa;
}

}  // namespace

CpuWorkSplit cpu_work_split(int64_t B, int64_t N, int64_t M, int64_t D, int isa, int n_threads) {
  const TileShape ts = cpu::tile_shape(resolve_isa(isa));
  return cpu::plan_work(B, N, M, D, ts.mr, ts.nr, std::max(n_threads, 1));
}

const char* cpu_screen_kernel(int isa, bool allow_vnni) {
  return cpu::screen_kernel_name(resolve_isa(isa), allow_vnni);
}

void topk_cpu(const TopKProblem& p, int isa, int n_threads, int screen, bool allow_vnni) {
  if (p.k < 1 || p.k > kMaxK) throw std::invalid_argument("lift_rt matching: k out of range");
  if (p.B == 0 || p.N == 0) return;
  isa = resolve_isa(isa);
  n_threads = std::max(n_threads, 1);
  // Screening pays once its fixed costs (packing every target twice, probing a sample of rows) are
  // small against the scan: a few million pairs, and source rows spanning several cache blocks (below
  // that the exact kernel streams the targets without packing them all).
  const auto big = [&] {
    const TileShape ts = cpu::tile_shape(isa);
    return p.N * p.M >= (int64_t(1) << 22) && cpu::plan_work(p.B, p.N, p.M, p.D, ts.mr, ts.nr, n_threads).row_blocks > 1;
  };
  const bool screen_here = p.k == 1 && (screen == kScreenOn || (screen == kScreenAuto && big()));
  const bool adaptive = screen == kScreenAuto;
  if (screen_here && cpu::nearest_cpu_screened(p, isa, n_threads, adaptive, allow_vnni)) return;
  cpu::topk_cpu_exact(p, isa, n_threads);
}

void soft_argmax_cpu(const SoftArgmaxProblem& p, int n_threads) {
  using cpu::kInf;
  using cpu::load_row;
  using cpu::mask_valid;
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
