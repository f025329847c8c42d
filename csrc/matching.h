// Batched cosine-similarity matching: shared problem descriptions for the CPU and CUDA paths.
// Every kernel returns, per source row, the k best target columns (descending similarity, ties to
// the lowest index) without ever materialising the N x M similarity matrix.
#pragma once
#include <cstdint>

namespace lift {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// A strided B x rows x D view (element strides) of float32 / float16 / bfloat16 data.
struct Operand {
  const void* data;
  int dtype;
  int64_t stride_b, stride_n, stride_d;
};

// Optional B x M bool mask of valid target positions (data == nullptr: all valid).
struct MaskView {
  const uint8_t* data;
  int64_t stride_b, stride_m;
};

// Outputs B x N x k, contiguous. Rows with fewer than k valid candidates are padded with
// index -1 and similarity -inf. NaN similarities never win (they count as invalid).
struct TopKProblem {
  Operand src, tgt;
  MaskView mask;
  int64_t B, N, M, D;
  int k;
  bool normalize;
  float eps;
  int64_t* out_index;
  float* out_sim;
};

// Soft-argmax over a (2 radius + 1)^2 window of the target grid (h x w, M = h * w) centred on
// index[b, n]. Outputs B x N x 2 (x, y) in grid cells; NaN where index is -1.
struct SoftArgmaxProblem {
  Operand src, tgt;
  MaskView mask;
  const int64_t* index;
  int64_t B, N, h, w, D;
  int radius;
  float temperature;
  bool normalize;
  float eps;
  float* out_xy;
};

constexpr int kMaxK = 16;  // largest k of the top-k kernels

enum Isa : int { kIsaAuto = -1, kIsaScalar = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
int cpu_best_isa();
// Top-1 on the CPU may screen candidates with int8 dot products and rescore them in fp32 (same
// result, 1.2-2x the speed on large problems): off; auto (a few million pairs or more, several
// source row blocks, and a sample of rows says it pays); on (always, where an int8 kernel exists).
// allow_vnni = false keeps screening off the VNNI kernels (AVX-512 VNNI, AVX-VNNI): the
// vpmaddubsw kernel of the same width runs instead (tests and comparisons on VNNI machines).
constexpr int kScreenCandidates = 512;  // screening candidates per row and column chunk before a row falls back
enum Screen : int { kScreenOff = 0, kScreenAuto = 1, kScreenOn = 2 };
void topk_cpu(const TopKProblem& p, int isa, int n_threads, int screen, bool allow_vnni = true);
// The int8 kernel screening would use with `isa` here: "avx512vnni", "avx512bw", "avxvnni", "avx2",
// or "" for none.
const char* cpu_screen_kernel(int isa, bool allow_vnni = true);

// How topk_cpu cuts one batch element's work: row blocks of `mc` source rows, each scanned against
// `chunks` column chunks of `chunk_panels` target panels; one (row block, chunk) pair is one OpenMP
// work item. Columns are cut only when there are fewer row blocks than threads.
struct CpuWorkSplit {
  int64_t mc, row_blocks, chunks, chunk_panels;
};
CpuWorkSplit cpu_work_split(int64_t B, int64_t N, int64_t M, int64_t D, int isa, int n_threads);
void soft_argmax_cpu(const SoftArgmaxProblem& p, int n_threads);

#ifdef LIFT_WITH_CUDA
// Column splits topk_cuda wants for p on the current device (the kernel p runs on, its
// occupancy and the SM count decide).
int topk_cuda_splits(const TopKProblem& p);
// Workspace (device memory, from the caller's allocator): inv_norm B * (N + M) floats when
// normalising; part_val / part_idx B * N * splits * k entries.
void topk_cuda(const TopKProblem& p, int splits, float* inv_norm, float* part_val, int64_t* part_idx,
               void* stream);
void soft_argmax_cuda(const SoftArgmaxProblem& p, void* stream);
#endif

}  // namespace lift
