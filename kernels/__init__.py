"""Triton kernels for LiFT (imported as lift_rt.kernels)."""
