// Python bindings of lift_rt._C. Torch-free: tensors arrive as (data_ptr, dtype code, strides)
// tuples built by lift_rt/matching.py, which also validates shapes, dtypes and devices.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <tuple>

#include "matching.h"

namespace py = pybind11;

namespace {

using OperandTuple = std::tuple<int64_t, int, int64_t, int64_t, int64_t>;  // ptr, dtype, strides b/n/d
using MaskTuple = std::tuple<int64_t, int64_t, int64_t>;                   // ptr (0: none), strides b/m

lift::Operand operand(const OperandTuple& t) {
  const int dtype = std::get<1>(t);
  if (dtype < lift::kFloat32 || dtype > lift::kBFloat16) throw std::invalid_argument("unsupported dtype code");
  return {reinterpret_cast<const void*>(std::get<0>(t)), dtype, std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

lift::MaskView mask_view(const MaskTuple& t) {
  return {reinterpret_cast<const uint8_t*>(std::get<0>(t)), std::get<1>(t), std::get<2>(t)};
}

lift::TopKProblem topk_problem(const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask,
                               int64_t B, int64_t N, int64_t M, int64_t D, int k, bool normalize, float eps,
                               int64_t out_index, int64_t out_sim) {
  if (k < 1 || k > lift::kMaxK) throw std::invalid_argument("k must be in [1, 16]");
  if (B < 0 || N < 0 || M < 1 || D < 1) throw std::invalid_argument("bad problem shape");
  return {operand(src), operand(tgt), mask_view(mask), B, N, M, D, k, normalize, eps,
          reinterpret_cast<int64_t*>(out_index), reinterpret_cast<float*>(out_sim)};
}

lift::SoftArgmaxProblem soft_argmax_problem(const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask,
                                            int64_t index, int64_t B, int64_t N, int64_t h, int64_t w, int64_t D,
                                            int radius, float temperature, bool normalize, float eps, int64_t out_xy) {
  if (radius < 0 || !(temperature > 0.f)) throw std::invalid_argument("radius must be >= 0 and temperature > 0");
  // A window past the grid adds no cells; clamping keeps the kernels' (2 radius + 1)^2 buffers grid-sized.
  const int window = static_cast<int>(std::min<int64_t>(radius, std::max<int64_t>(std::max(h, w) - 1, 0)));
  return {operand(src), operand(tgt), mask_view(mask), reinterpret_cast<const int64_t*>(index),
          B, N, h, w, D, window, temperature, normalize, eps, reinterpret_cast<float*>(out_xy)};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lift_rt native kernels (batched cosine-similarity matching)";
  m.def("has_cuda", []() {
#ifdef LIFT_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the extension was compiled with its CUDA path.");
  m.def("cpu_isa", &lift::cpu_best_isa, "Best CPU micro-kernel available: 0 scalar, 1 AVX2, 2 AVX-512.");
  m.def("cpu_screen_kernel", &lift::cpu_screen_kernel, py::arg("isa"), py::arg("allow_vnni") = true,
        "The int8 screening kernel top-1 uses with this ISA code: 'avx512vnni', 'avx512bw', 'avxvnni', 'avx2' or ''.");
  m.attr("MAX_K") = lift::kMaxK;
  m.attr("SCREEN_CANDIDATES") = lift::kScreenCandidates;

  m.def("topk_cpu",
        [](const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask, int64_t B, int64_t N, int64_t M,
           int64_t D, int k, bool normalize, float eps, int64_t out_index, int64_t out_sim, int n_threads, int isa,
           int screen, bool allow_vnni) {
          if (screen < lift::kScreenOff || screen > lift::kScreenOn) throw std::invalid_argument("bad screen mode");
          const auto p = topk_problem(src, tgt, mask, B, N, M, D, k, normalize, eps, out_index, out_sim);
          py::gil_scoped_release release;
          lift::topk_cpu(p, isa, n_threads, screen, allow_vnni);
        });
  m.def("cpu_work_split",
        [](int64_t B, int64_t N, int64_t M, int64_t D, int isa, int n_threads) {
          if (B < 1 || N < 1 || M < 1 || D < 1) throw std::invalid_argument("bad problem shape");
          const lift::CpuWorkSplit w = lift::cpu_work_split(B, N, M, D, isa, n_threads);
          return py::dict(py::arg("mc") = w.mc, py::arg("row_blocks") = w.row_blocks, py::arg("chunks") = w.chunks,
                          py::arg("chunk_panels") = w.chunk_panels);
        },
        "How topk_cpu cuts one batch element: source rows per block, row blocks, column chunks, panels per chunk.");
  m.def("soft_argmax_cpu",
        [](const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask, int64_t index, int64_t B,
           int64_t N, int64_t h, int64_t w, int64_t D, int radius, float temperature, bool normalize, float eps,
           int64_t out_xy, int n_threads) {
          const auto p = soft_argmax_problem(src, tgt, mask, index, B, N, h, w, D, radius, temperature, normalize,
                                             eps, out_xy);
          py::gil_scoped_release release;
          lift::soft_argmax_cpu(p, n_threads);
        });
#ifdef LIFT_WITH_CUDA
  m.def("topk_cuda_splits",
        [](const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask, int64_t B, int64_t N, int64_t M,
           int64_t D, int k, bool normalize, float eps, int64_t out_index, int64_t out_sim) {
          return lift::topk_cuda_splits(topk_problem(src, tgt, mask, B, N, M, D, k, normalize, eps, out_index, out_sim));
        },
        "Column splits topk_cuda wants for this problem on the current CUDA device (part buffers hold splits per row).");
  m.def("topk_cuda",
        [](const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask, int64_t B, int64_t N, int64_t M,
           int64_t D, int k, bool normalize, float eps, int64_t out_index, int64_t out_sim, int splits,
           int64_t inv_norm, int64_t part_val, int64_t part_idx, int64_t stream) {
          const auto p = topk_problem(src, tgt, mask, B, N, M, D, k, normalize, eps, out_index, out_sim);
          py::gil_scoped_release release;
          lift::topk_cuda(p, splits, reinterpret_cast<float*>(inv_norm), reinterpret_cast<float*>(part_val),
                          reinterpret_cast<int64_t*>(part_idx), reinterpret_cast<void*>(stream));
        });
  m.def("soft_argmax_cuda",
        [](const OperandTuple& src, const OperandTuple& tgt, const MaskTuple& mask, int64_t index, int64_t B,
           int64_t N, int64_t h, int64_t w, int64_t D, int radius, float temperature, bool normalize, float eps,
           int64_t out_xy, int64_t stream) {
          const auto p = soft_argmax_problem(src, tgt, mask, index, B, N, h, w, D, radius, temperature, normalize,
                                             eps, out_xy);
          py::gil_scoped_release release;
          lift::soft_argmax_cuda(p, reinterpret_cast<void*>(stream));
        });
#endif
}
