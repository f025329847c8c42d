"""Triton kernels for LiFT (imported as lift_rt.kernels).

One op per module, each with its PyTorch reference beside its test
(tests/test_kernels_*.py):

* :mod:`~lift_rt.kernels.fold`: BN folding and the transposed-conv composition (load time, torch only);
* :mod:`~lift_rt.kernels.conv2d`: NHWC K x K conv + bias + ReLU (image branch, second conv, 1x1 head);
* :mod:`~lift_rt.kernels.up_conv`: fused transposed conv + concat + 3x3 conv + BN + ReLU;
* :mod:`~lift_rt.kernels.lift_head`: ``TritonLiFT``, the whole LiFT step on those kernels;
* :mod:`~lift_rt.kernels.match_nearest`: top-1 matching, a GEMM with a fused argmax (large fp16/bf16
  problems by default, see :func:`lift_rt.matching.cuda_impl`).

``Engine(backend="triton")`` runs them through :mod:`lift_rt.backends.triton_kernels`. Nothing is
imported here, so importing the backend to ask why it cannot run compiles no kernel.
"""
