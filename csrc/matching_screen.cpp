// Top-1 CPU matching by int8 screening with exact fp32 rescoring.
// Every similarity is first estimated from int8-quantised rows by the int8 micro-kernels (about
// twice the multiply throughput of fp32 FMAs), with a rigorous bound E_i on the estimate's error for
// source row i (quantisation residuals by Cauchy-Schwarz, plus fp32 rounding). Only targets whose
// estimate lies within 2 E_i of the row's best estimate can hold the true maximum; they are rescored
// exactly in fp32 from unit-norm rows kept beside the int8 panels, best estimate first, stopping once
// no estimate left is within E_i of the best exact value. Rows with more such targets than a list
// holds (near-duplicates, all-zero rows), rows holding NaN, inf or extreme magnitudes, and whole batch
// elements whose targets do, go to the exact fp32 kernel, so the result is always the exact top-1
// (ties to the lowest index, as everywhere). In auto mode a sample of rows first decides whether the
// data separate well enough for screening to pay (smooth or degenerate features may not).
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "matching.h"
#include "matching_cpu_util.h"
#include "matching_qtile.h"

namespace lift {
namespace cpu {
namespace {

constexpr int kCandidates = kScreenCandidates;
constexpr int64_t kProbeRows = 32;            // source rows sampled before screening a batch element
constexpr int64_t kMinSizingDepth = 128;      // row blocks sized as if D >= this: at most 1024 rows of
                                              // candidate lists (512 KB each) per thread
constexpr double kUnit = 5.9604644775390625e-8;  // fp32 unit roundoff, 2^-24

struct QKernel {
  QTileFn fn;
  QTileSpec spec;
  const char* name;
};

#if defined(__x86_64__) || defined(__i386__)
// AVX-VNNI (VEX-coded vpdpbusd): CPUID.(EAX=7, ECX=1):EAX bit 4, read directly because some GCC
// versions' __builtin_cpu_supports do not know the feature. Callers have checked AVX2 (OS support).
bool cpu_has_avx_vnni() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 4) & 1u);
}
#endif

QKernel qkernel_for(int isa, bool allow_vnni) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == kIsaAvx512 && __builtin_cpu_supports("avx512bw")) {
    if (allow_vnni && qtile_vnni() && __builtin_cpu_supports("avx512vnni"))
      return {qtile_vnni(), kQVnniTile, "avx512vnni"};
    if (qtile_avx512()) return {qtile_avx512(), kQAvx512Tile, "avx512bw"};
  }
  if (isa >= kIsaAvx2) {
    if (allow_vnni && qtile_avxvnni() && cpu_has_avx_vnni()) return {qtile_avxvnni(), kQAvxVnniTile, "avxvnni"};
    if (qtile_avx2()) return {qtile_avx2(), kQAvx2Tile, "avx2"};
  }
#endif
  return {nullptr, {0, 0, 0}, ""};
}

size_t element_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

// Norms of an fp32 row x, of its quantisation x_hat = scale * q, and of the residual x - x_hat.
struct RowQuant {
  float scale;
  double norm, qnorm, rnorm;
  bool screenable;  // finite, and max|x| zero or within [kMinAbs, kMaxAbs]
};

// Magnitudes screening handles: squares, dot products and bounds of such rows stay normal fp32 numbers
// (no underflow to 0, no overflow to inf) for any D up to 2^40. Other rows go to the exact kernel.
constexpr float kMinAbs = 0x1p-40f, kMaxAbs = 0x1p40f;

// Quantises x (D) to q[d] = round(x[d] / scale), |q| <= levels, scale = max|x| / levels, and writes
// the bytes q + offset at dst[(d / 4) * group_stride + d % 4], depth padded to D4 * 4 with q = 0.
// `qsum` (may be null) receives sum_d q[d]. A row holding NaN or inf, or of a magnitude outside
// [kMinAbs, kMaxAbs] (zero rows are fine), is written as zeros and reported not screenable. Any
// rounding would do (the bound uses the residual actually left); the sums run in 8 lanes so that they
// vectorise.
RowQuant quantize_row(const float* x, int64_t D, int64_t D4, int levels, int offset, uint8_t* dst,
                      int64_t group_stride, int32_t* qsum) {
  float amax8[8] = {}, nan8[8] = {};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int l = 0; l < 8; ++l) {
      amax8[l] = std::max(amax8[l], std::fabs(x[d + l]));
      nan8[l] += x[d + l] * 0.f;  // NaN iff some x is NaN or inf
    }
  for (; d < D; ++d) {
    amax8[0] = std::max(amax8[0], std::fabs(x[d]));
    nan8[0] += x[d] * 0.f;
  }
  float amax = 0.f, nan = 0.f;
  for (int l = 0; l < 8; ++l) {
    amax = std::max(amax, amax8[l]);
    nan += nan8[l];
  }
  const bool screenable = nan == 0.f && (amax == 0.f || (amax >= kMinAbs && amax <= kMaxAbs));
  if (!screenable) amax = 0.f;  // written as zeros, never screened: the caller hands the row to the exact kernel
  const float scale = amax > 0.f ? amax / float(levels) : 0.f, inv = amax > 0.f ? float(levels) / amax : 0.f;
  const float lim = float(levels);
  float xx8[8] = {}, qq8[8] = {}, rr8[8] = {};
  int32_t sum = 0;
  for (d = 0; d < D4 * 4; ++d) {
    const float v = d < D && screenable ? x[d] : 0.f;
    const float y = std::min(std::max(v * inv, -lim), lim);
    const int q = int(y + (y >= 0.f ? 0.5f : -0.5f));  // round half away from zero
    dst[(d / 4) * group_stride + d % 4] = static_cast<uint8_t>(q + offset);
    const float xh = scale * float(q), r = v - xh;
    xx8[d % 8] += v * v;
    qq8[d % 8] += xh * xh;
    rr8[d % 8] += r * r;
    sum += q;
  }
  double xx = 0.0, qq = 0.0, rr = 0.0;
  for (int l = 0; l < 8; ++l) {
    xx += xx8[l];
    qq += qq8[l];
    rr += rr8[l];
  }
  if (qsum) *qsum = sum;
  // fp32 sums of squares carry relative error <= (D / 8 + 8) u, far inside the bound's 1.001 margin;
  // xh and r are rounded too, which the margin also covers.
  return {scale, std::sqrt(xx), std::sqrt(qq), std::sqrt(rr), screenable};
}

// Fixed-order fp32 dot product used for every rescoring, so equal rows score bit-identically.
float dot_fp32(const float* a, const float* b, int64_t D) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[d + l] * b[d + l];
  float tail = 0.f;
  for (; d < D; ++d) tail += a[d] * b[d];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// The targets of one batch element: int8 panels (D4 x NR x 4 bytes each) with their per-column
// terms, and the fp32 rows (M x D, unit norm when normalising) the rescoring reads.
struct TargetPack {
  AlignedArray<uint8_t> q;
  AlignedArray<int32_t> offset_colsum;
  Buffer scale, bias, rows;
  double max_norm = 0.0, max_rnorm = 0.0;
  bool screenable = true;  // every valid target (see RowQuant)

  TargetPack(int64_t panels, int nr, int64_t D4, int64_t M, int64_t D)
      : q(panels * nr * D4 * 4), offset_colsum(panels * nr), scale(panels * nr), bias(panels * nr), rows(M * D) {}
};

void pack_targets(const TopKProblem& p, int64_t b, const QTileSpec& spec, int64_t panels, int64_t D4,
                  TargetPack& t, int n_threads) {
  const int NR = spec.nr;
  const int64_t D = p.D;
  double max_norm = 0.0, max_rnorm = 0.0;
  bool finite = true;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(max : max_norm, max_rnorm) \
    reduction(&& : finite)
  for (int64_t pn = 0; pn < panels; ++pn) {
    uint8_t* panel = t.q.get() + pn * NR * D4 * 4;
    for (int l = 0; l < NR; ++l) {
      const int64_t j = pn * NR + l, col = pn * NR + l;
      float* row = t.rows.get() + std::min(j, p.M - 1) * D;
      const bool real = j < p.M;
      if (real) load_row(p.tgt, b, j, D, p.normalize, p.eps, row, 1);
      int32_t qsum = 0;
      RowQuant rq{0.f, 0.0, 0.0, 0.0, true};
      if (real) {
        rq = quantize_row(row, D, D4, 127, 0, panel + l * 4, int64_t(NR) * 4, &qsum);
      } else {
        for (int64_t g = 0; g < D4; ++g) std::fill_n(panel + (g * NR + l) * 4, 4, uint8_t(0));
      }
      const bool valid = real && mask_valid(p.mask, b, j);
      t.bias[col] = valid ? 0.f : -kInf;
      t.scale[col] = rq.scale;
      t.offset_colsum.get()[col] = spec.offset * qsum;
      if (!valid) continue;  // masked targets never compete, whatever they hold
      finite = finite && rq.screenable;
      max_norm = std::max(max_norm, rq.norm);
      max_rnorm = std::max(max_rnorm, rq.rnorm);
    }
  }
  t.max_norm = max_norm;
  t.max_rnorm = max_rnorm;
  t.screenable = finite;
}

// A thread's source rows (one row block) and their per-row screening state.
struct RowBlock {
  AlignedArray<uint8_t> q;  // MR-row panels, D4 x MR x 4 bytes each
  Buffer rows;              // mc x D fp32
  Buffer scale, thr, best, bound, tile, cand_val;
  AlignedArray<int64_t> cand_idx;
  std::vector<int> count;  // candidates held; -1: the row falls back to the exact kernel

  RowBlock(int64_t mc, const QTileSpec& s, int64_t D4, int64_t D)
      : q(mc * D4 * 4), rows(mc * D), scale(mc), thr(mc), best(mc), bound(mc), tile(int64_t(s.mr) * s.nr),
        cand_val(mc * kCandidates), cand_idx(mc * kCandidates), count(size_t(mc)) {}
};

// Loads source rows r0, r0 + step, ... (`rows` of them, padded to `padded`) of batch b into rb.
void load_row_block(const TopKProblem& p, int64_t b, int64_t r0, int64_t step, int64_t rows, int64_t padded,
                    const QTileSpec& s, int64_t D4, const TargetPack& t, RowBlock& rb) {
  const int MR = s.mr;
  const int64_t D = p.D;
  const double round_terms = (double(D) + 8.0) * kUnit * 1.01;
  for (int64_t r = 0; r < padded; ++r) {
    uint8_t* dst = rb.q.get() + (r / MR) * MR * D4 * 4 + (r % MR) * 4;
    rb.best[r] = -kInf;
    rb.count[r] = 0;
    RowQuant rq{0.f, 0.0, 0.0, 0.0, false};
    if (r < rows) {
      float* row = rb.rows.get() + r * D;
      load_row(p.src, b, r0 + r * step, D, p.normalize, p.eps, row, 1);
      rq = quantize_row(row, D, D4, s.offset - 1, s.offset, dst, int64_t(MR) * 4, nullptr);
    } else {
      for (int64_t g = 0; g < D4; ++g) std::fill_n(dst + g * MR * 4, 4, uint8_t(s.offset));
    }
    rb.scale[r] = rq.scale;
    if (!rq.screenable || rq.norm == 0.0) {  // padding, NaN / inf, extreme or zero rows: nothing to screen
      rb.thr[r] = kInf;
      rb.count[r] = r < rows ? -1 : 0;
      continue;
    }
    // |exact - estimate| <= ||a_hat|| ||r_b|| + ||r_a|| ||b|| (Cauchy-Schwarz on the two residual
    // terms) + the fp32 rounding of the rescoring dot and of the estimate itself.
    const double e = rq.qnorm * t.max_rnorm + rq.rnorm * t.max_norm + round_terms * rq.norm * t.max_norm +
                     4.0 * kUnit * rq.qnorm * (t.max_norm + t.max_rnorm);
    rb.bound[r] = float(2.0 * e * 1.001 + 1e-30);
    rb.thr[r] = -kInf;
  }
}

// a - b rounded towards -inf, so that a threshold never excludes a value the bound admits.
float minus_down(double a, double b) {
  const double v = a - b;
  float f = float(v);
  if (double(f) > v) f = std::nextafter(f, -kInf);
  return f;
}

// Records estimate x of column j for row r; raises the row's threshold when x is a new best.
inline void add_candidate(RowBlock& rb, int64_t r, float x, int64_t j) {
  if (x > rb.best[r]) {
    rb.best[r] = x;
    rb.thr[r] = minus_down(x, rb.bound[r]);
  }
  float* vals = rb.cand_val.get() + r * kCandidates;
  int64_t* idx = rb.cand_idx.get() + r * kCandidates;
  int& n = rb.count[r];
  if (n == kCandidates) {  // drop what the raised threshold excludes (order kept: ascending j)
    int kept = 0;
    for (int c = 0; c < n; ++c)
      if (vals[c] >= rb.thr[r]) { vals[kept] = vals[c]; idx[kept] = idx[c]; ++kept; }
    n = kept;
    if (n == kCandidates) {
      n = -1;
      rb.thr[r] = kInf;
      return;
    }
  }
  vals[n] = x;
  idx[n] = j;
  ++n;
}

void scan_panel(const QKernel& k, const TargetPack& t, int64_t pn, int64_t D4, int64_t padded, RowBlock& rb) {
  const int MR = k.spec.mr, NR = k.spec.nr;
  const QuantColumns cols{t.offset_colsum.get() + pn * NR, t.scale.get() + pn * NR, t.bias.get() + pn * NR};
  const uint8_t* bp = t.q.get() + pn * NR * D4 * 4;
  for (int64_t ip = 0; ip < padded / MR; ++ip) {
    uint32_t hits = k.fn(rb.q.get() + ip * MR * D4 * 4, reinterpret_cast<const int8_t*>(bp), D4, cols,
                         rb.scale.get() + ip * MR, rb.thr.get() + ip * MR, rb.tile.get());
    while (hits) {
      const int i = __builtin_ctz(hits);
      hits &= hits - 1;
      const int64_t r = ip * MR + i;
      const float* v = rb.tile.get() + i * NR;
      for (int l = 0; l < NR; ++l)
        if (v[l] > rb.thr[r] && rb.count[r] >= 0) add_candidate(rb, r, v[l], pn * NR + l);
    }
  }
}

// Exact top-1 of row r among its candidates. They are rescored in descending order of estimate, and
// rescoring stops at the first whose estimate + E is below the best exact value found (no later one
// can reach it): usually a handful of rows instead of all within 2 E of the best estimate. Equal
// exact values go to the lowest index.
void rescore(RowBlock& rb, const TargetPack& t, int64_t r, int64_t D, float* out_sim, int64_t* out_idx) {
  float* vals = rb.cand_val.get() + r * kCandidates;
  int64_t* idx = rb.cand_idx.get() + r * kCandidates;
  int n = 0;
  for (int c = 0; c < rb.count[r]; ++c)  // only those within 2 E of the best estimate can win
    if (vals[c] >= rb.thr[r]) { vals[n] = vals[c]; idx[n] = idx[c]; ++n; }
  const double e = 0.5 * double(rb.bound[r]);
  float best = -kInf;
  int64_t best_j = -1;
  while (n > 0) {
    int top = 0;
    for (int c = 1; c < n; ++c) top = vals[c] > vals[top] ? c : top;
    if (double(vals[top]) + e < double(best)) break;
    const int64_t j = idx[top];
    vals[top] = vals[n - 1];
    idx[top] = idx[n - 1];
    --n;
    const float f = dot_fp32(rb.rows.get() + r * D, t.rows.get() + j * D, D);
    if (f > best || (f == best && j < best_j)) {
      best = f;
      best_j = j;
    }
  }
  *out_sim = best;
  *out_idx = best_j;
}

// Runs source rows `rows` of batch b (empty: all of them, read in place) through the exact fp32
// kernel and writes their results.
void exact_rows(const TopKProblem& p, int64_t b, const std::vector<int64_t>& rows, int isa, int n_threads) {
  const int64_t D = p.D, nf = rows.empty() ? p.N : int64_t(rows.size());
  const auto batch_offset = [b](const Operand& x) {
    return static_cast<const char*>(x.data) + b * x.stride_b * int64_t(element_bytes(x.dtype));
  };
  TopKProblem sub = p;
  Buffer raw(rows.empty() ? 0 : nf * D);
  if (rows.empty()) {
    sub.src.data = batch_offset(p.src);
    sub.src.stride_b = 0;
  } else {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < nf; ++i) load_row(p.src, b, rows[size_t(i)], D, false, p.eps, raw.get() + i * D, 1);
    sub.src = Operand{raw.get(), kFloat32, 0, D, 1};
  }
  sub.tgt.data = batch_offset(p.tgt);
  sub.tgt.stride_b = 0;
  if (p.mask.data) {
    sub.mask.data = p.mask.data + b * p.mask.stride_b;
    sub.mask.stride_b = 0;
  }
  sub.B = 1;
  sub.N = nf;
  if (rows.empty()) {  // straight into the outputs
    sub.out_index = p.out_index + b * p.N;
    sub.out_sim = p.out_sim + b * p.N;
    topk_cpu_exact(sub, isa, n_threads);
    return;
  }
  std::vector<int64_t> idx(static_cast<size_t>(nf));
  std::vector<float> sim(static_cast<size_t>(nf));
  sub.out_index = idx.data();
  sub.out_sim = sim.data();
  topk_cpu_exact(sub, isa, n_threads);
  for (int64_t i = 0; i < nf; ++i) {
    p.out_index[b * p.N + rows[size_t(i)]] = idx[size_t(i)];
    p.out_sim[b * p.N + rows[size_t(i)]] = sim[size_t(i)];
  }
}

// Screening pays while few rows fall back to the exact kernel (each costs a full scan on top of the
// int8 one, which takes about half the fp32 kernel's time): at most 1 row in kFallbackShare.
constexpr int64_t kFallbackShare = 4;

// A first, cheap look before anything is packed: exact similarities of kProbeRows evenly spaced source
// rows against every kProbeStride-th target, and the error bound of those rows and targets. A sampled
// row looks hopeless when its sampled targets within the bound of its sampled best, scaled to all
// targets, would overflow a candidate list. This overestimates (the best over a sample is lower than
// over all targets), so it only turns away data where nearly every row looks hopeless: features so
// smooth (or degenerate) that screening cannot separate them. NaN or inf samples are turned away too.
bool screening_plausible(const TopKProblem& p, int64_t b, const QTileSpec& spec, int n_threads) {
  constexpr int64_t kProbeStride = 16;
  const int64_t D = p.D, D4 = (D + 3) / 4, rows = std::min(p.N, kProbeRows);
  const int64_t cols = (p.M + kProbeStride - 1) / kProbeStride;
  Buffer tgt(cols * D), src(rows * D);
  std::vector<uint8_t> scratch(size_t(D4 * 4));
  double max_norm = 0.0, max_rnorm = 0.0;
  std::vector<char> usable(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t j = c * kProbeStride;
    load_row(p.tgt, b, j, D, p.normalize, p.eps, tgt.get() + c * D, 1);
    const RowQuant q = quantize_row(tgt.get() + c * D, D, D4, 127, 0, scratch.data(), 4, nullptr);
    if (!q.screenable) return false;
    usable[size_t(c)] = mask_valid(p.mask, b, j);
    max_norm = std::max(max_norm, q.norm);
    max_rnorm = std::max(max_rnorm, q.rnorm);
  }
  std::atomic<int64_t> fell{0};
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<uint8_t> bytes(size_t(D4 * 4));
    float* a = src.get() + r * D;
    load_row(p.src, b, r * (p.N / rows) + p.N / rows / 2, D, p.normalize, p.eps, a, 1);
    const RowQuant q = quantize_row(a, D, D4, spec.offset - 1, spec.offset, bytes.data(), 4, nullptr);
    if (!q.screenable) {
      ++fell;
      continue;
    }
    const double bound = 2.0 * (q.qnorm * max_rnorm + q.rnorm * max_norm);
    std::vector<float> sims;
    float top = -kInf;
    for (int64_t c = 0; c < cols; ++c) {
      if (!usable[size_t(c)]) continue;
      sims.push_back(dot_fp32(a, tgt.get() + c * D, D));
      top = std::max(top, sims.back());
    }
    int64_t near = 0;
    for (float x : sims) near += double(x) >= double(top) - bound;
    if (near * kProbeStride > kCandidates) ++fell;
  }
  return 4 * fell.load() < 3 * rows;
}

// The decision proper, once the targets are packed: the same sampled rows screened against every
// target (each thread a slice of the targets). A sampled row counts as falling back when a slice
// overflowed or the slices' candidates within the bound of the row's best estimate over all slices
// overflow one list.
bool screening_pays(const TopKProblem& p, int64_t b, const QKernel& k, const TargetPack& t, int64_t panels,
                    int64_t D4, std::vector<RowBlock>& blocks, int n_threads) {
  const int64_t rows = std::min(p.N, kProbeRows), step = p.N / rows;
  const int64_t padded = (rows + k.spec.mr - 1) / k.spec.mr * k.spec.mr;
  std::vector<float> best(size_t(n_threads * rows), -kInf);
  std::vector<int> live(size_t(n_threads * rows), 0);
#pragma omp parallel num_threads(n_threads)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), threads = omp_get_num_threads();
#else
    const int tid = 0, threads = 1;
#endif
    RowBlock& rb = blocks[size_t(tid)];
    load_row_block(p, b, step / 2, step, rows, padded, k.spec, D4, t, rb);
    const int64_t slice = (panels + threads - 1) / threads;
    for (int64_t pn = tid * slice; pn < std::min(panels, (tid + 1) * slice); ++pn) scan_panel(k, t, pn, D4, padded, rb);
    for (int64_t r = 0; r < rows; ++r) best[size_t(tid * rows + r)] = rb.count[r] < 0 ? kInf : rb.best[r];
#pragma omp barrier
    for (int64_t r = 0; r < rows; ++r) {
      float top = -kInf;
      for (int i = 0; i < threads; ++i) top = std::max(top, best[size_t(i * rows + r)]);
      const float thr = minus_down(top, rb.bound[r]);
      int n = 0;
      for (int c = 0; c < rb.count[r]; ++c) n += rb.cand_val[r * kCandidates + c] >= thr;
      live[size_t(tid * rows + r)] = rb.count[r] < 0 ? kCandidates + 1 : n;
    }
  }
  int64_t fell = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t total = 0;
    for (int i = 0; i < n_threads; ++i) total += live[size_t(i * rows + r)];
    fell += total > kCandidates;
  }
  return kFallbackShare * fell <= rows;
}

}  // namespace

const char* screen_kernel_name(int isa, bool allow_vnni) { return qkernel_for(isa, allow_vnni).name; }

bool nearest_cpu_screened(const TopKProblem& p, int isa, int n_threads, bool adaptive, bool allow_vnni) {
  const QKernel k = qkernel_for(isa, allow_vnni);
  // int32 accumulation: D * 127 * 127 (plus the offset terms) must stay below 2^31.
  if (!k.fn || p.k != 1 || p.D > 65536) return false;
  const int MR = k.spec.mr, NR = k.spec.nr;
  const int64_t D = p.D, D4 = (D + 3) / 4, panels = (p.M + NR - 1) / NR;
  const CpuWorkSplit w = plan_work(p.B, p.N, p.M, std::max(D, kMinSizingDepth), MR, NR, n_threads);
  const int64_t items = w.row_blocks * w.chunks;
  const bool cut = w.chunks > 1;

  // Allocated when first needed and released before the last exact pass, which packs the targets
  // again: the two never add up.
  std::unique_ptr<TargetPack> pack;
  std::vector<RowBlock> blocks;
  const auto release = [&] {
    pack.reset();
    blocks.clear();
    blocks.shrink_to_fit();
  };
  Buffer part_vals(cut ? items * w.mc : 0);
  std::vector<int64_t> part_idx(size_t(cut ? items * w.mc : 0));
  std::vector<std::vector<int64_t>> fallback(static_cast<size_t>(n_threads));

  for (int64_t b = 0; b < p.B; ++b) {
    const bool last = b == p.B - 1;
    bool screen = !adaptive || screening_plausible(p, b, k.spec, n_threads);
    if (screen && !pack) {
      pack = std::make_unique<TargetPack>(panels, NR, D4, p.M, D);
      const int64_t block_rows = std::max(w.mc, (kProbeRows + MR - 1) / MR * MR);  // the probe uses them too
      blocks.reserve(size_t(n_threads));
      for (int i = 0; i < n_threads; ++i) blocks.emplace_back(block_rows, k.spec, D4, D);
    }
    if (screen) pack_targets(p, b, k.spec, panels, D4, *pack, n_threads);
    // NaN / inf or extreme targets belong to the exact kernel; so do data screening cannot separate.
    screen = screen && pack->screenable && (!adaptive || screening_pays(p, b, k, *pack, panels, D4, blocks, n_threads));
    if (!screen) {
      if (last) release();
      exact_rows(p, b, {}, isa, n_threads);
      continue;
    }
    const TargetPack& t = *pack;
    std::vector<int64_t> exact;
    std::atomic<int64_t> rows_done{0}, rows_fell{0};
#pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
      const int tid = omp_get_thread_num();
#else
      const int tid = 0;
#endif
      RowBlock& rb = blocks[size_t(tid)];
      std::vector<int64_t>& fell = fallback[size_t(tid)];
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t blk = item / w.chunks, c = item % w.chunks;
        const int64_t r0 = blk * w.mc, rows = std::min(w.mc, p.N - r0), padded = (rows + MR - 1) / MR * MR;
        float* out_vals = cut ? part_vals.get() + item * w.mc : p.out_sim + b * p.N + r0;
        int64_t* out_idx = cut ? part_idx.data() + item * w.mc : p.out_index + b * p.N + r0;
        // The probe can misjudge: twice its limit of rows falling back means screening costs more than
        // it saves, and the remaining items go to the exact kernel.
        const int64_t done = rows_done.load(), fell_so_far = rows_fell.load();
        const bool give_up = adaptive && done >= 4 * w.mc && kFallbackShare * fell_so_far > 2 * done;
        if (!give_up) {
          load_row_block(p, b, r0, 1, rows, padded, k.spec, D4, t, rb);
          for (int64_t pn = c * w.chunk_panels; pn < std::min(panels, (c + 1) * w.chunk_panels); ++pn)
            scan_panel(k, t, pn, D4, padded, rb);
        }
        int64_t n_fell = 0;
        for (int64_t r = 0; r < rows; ++r) {
          if (give_up || rb.count[r] < 0) {
            out_vals[r] = -kInf;
            out_idx[r] = -1;
            fell.push_back(r0 + r);  // deduplicated below when several chunks of a row fail
            ++n_fell;
          } else {
            rescore(rb, t, r, D, out_vals + r, out_idx + r);
          }
        }
        rows_done += rows;
        rows_fell += n_fell;
      }
      if (cut) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < p.N; ++n) {
          const int64_t first = (n / w.mc) * w.chunks * w.mc + n % w.mc;
          merge_chunks(part_vals.get() + first, part_idx.data() + first, w.chunks, w.mc, 1, p.out_sim + b * p.N + n,
                       p.out_index + b * p.N + n);
        }
      }
    }
    for (auto& f : fallback) {
      exact.insert(exact.end(), f.begin(), f.end());
      f.clear();
    }

    std::sort(exact.begin(), exact.end());
    exact.erase(std::unique(exact.begin(), exact.end()), exact.end());
    if (exact.empty()) continue;
    if (last) release();
    exact_rows(p, b, exact, isa, n_threads);
  }
  return true;
}

}  // namespace cpu
}  // namespace lift
