"""Shared setup for the Triton kernel tests (tests/test_kernels_*.py).

Without a CUDA device the kernels run under the Triton interpreter
(``TRITON_INTERPRET=1``, on CPU tensors). The variable is read when
``@triton.jit`` decorates a kernel, so it is set here, before any kernel module
is imported, and kernel modules imported earlier without it are reloaded. It
stays set for the rest of the (CPU-only) process: nothing else there can run
compiled Triton code, and PyTorch's CPU compiler does not use Triton.
With a GPU, the compiled kernels run on it and real sizes are added, each
kernel with its first block config only (``LIFT_TRITON_AUTOTUNE=0``: these
tests check numbers; bench/ times the autotuned kernels).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch

from lift_rt.model import LiFT

if importlib.util.find_spec("triton") is None:  # not importorskip: triton must not be imported before TRITON_INTERPRET is set
    pytest.skip("Triton is not installed (PyPI's torch brings it on Linux; with CPU-only torch wheels, pip install triton)",
                allow_module_level=True)

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
KERNEL_MODULES = ("runtime", "fold", "conv2d", "up_conv", "lift_head", "match_nearest")

if GPU:
    os.environ.setdefault("LIFT_TRITON_AUTOTUNE", "0")
else:
    os.environ["TRITON_INTERPRET"] = "1"
    if "lift_rt.kernels.runtime" in sys.modules and not sys.modules["lift_rt.kernels.runtime"].INTERPRET:
        for name in KERNEL_MODULES:
            if f"lift_rt.kernels.{name}" in sys.modules:
                importlib.reload(sys.modules[f"lift_rt.kernels.{name}"])

BF16_SKIP = "the Triton CPU interpreter (TRITON_INTERPRET=1) computes wrong values for bfloat16 (even a vector add gives NaN): bf16 is checked on a GPU only"

# Relative tolerance by dtype. fp32: IEEE under the interpreter; on a GPU TF32 (cuDNN's default, 10-bit
# mantissa) through up to three chained layers.
TOLERANCE = {torch.float32: 5e-3 if GPU else 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}

DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not GPU, reason=BF16_SKIP)),
]


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """``out`` (kernel, any dtype) against a float64 reference, tolerance relative to the reference's scale."""
    tol = TOLERANCE[dtype]
    ref = ref.double().cpu()
    out = out.double().cpu()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    scale = ref.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * scale)


def random_lift(dim: int, patch_size: int = 8, use_image: bool = True, seed: int = 0) -> LiFT:
    """An eval-mode LiFT with random weights and non-trivial batch-norm statistics and biases."""
    torch.manual_seed(seed)
    lift = LiFT(dim, patch_size, use_image=use_image)
    for module in lift.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    lift.up1.up.bias.data.uniform_(0.5, 1.0)  # large transposed-conv bias: wrong border handling shows
    return lift.eval()
