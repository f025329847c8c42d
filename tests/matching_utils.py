"""Inputs and the index/similarity check shared by the matcher tests (C++/CUDA and Triton)."""
import torch

from lift_rt import matching_reference as ref


def randn(*shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def integer_inputs(b, n, m, d, seed=0):
    """Small integers: every dot product is exact in fp32, and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (b, n, d), generator=g).float(), torch.randint(-2, 3, (b, m, d), generator=g).float())


def assert_topk_close(index, sim, src, tgt, k, *, normalize=True, mask=None, tol=1e-5):
    """Same similarities (to tol) and same indices, except where the reference itself has a near-tie
    (within tol) at that rank, where the kernel's pick must be as good as the reference's."""
    index, sim = index.cpu(), sim.cpu()
    src, tgt = src.cpu(), tgt.cpu()
    mask = None if mask is None else mask.cpu()
    ref_index, ref_sim = ref.topk_reference(src, tgt, k, normalize=normalize, mask=mask)
    torch.testing.assert_close(sim, ref_sim, atol=tol, rtol=0)
    differ = index != ref_index
    if differ.any():
        full = ref.similarities(src, tgt, normalize=normalize, mask=mask)
        picked = torch.gather(full, -1, index.clamp_min(0))
        assert (index[differ] >= 0).all()
        assert ((picked - ref_sim).abs()[differ] <= tol).all(), "index differs without a near-tie"
        assert differ.float().mean() < 0.01
