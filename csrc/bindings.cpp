// Python bindings of lift_rt._C. The matching kernels live beside this file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "lift_rt native kernels (batched cosine-similarity matching)";
  m.def("has_cuda", []() {
#ifdef LIFT_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the extension was compiled with its CUDA path.");
}
