"""pytest-benchmark: CPU matcher vs torch mm + max vs bare torch.mm (same shapes).

    pytest bench/test_bench_matching.py --benchmark-only
    LIFT_BENCH_FULL=1 pytest bench/test_bench_matching.py --benchmark-only   # adds N = M = 12544
Peak extra memory (measured in a fresh process) goes to each result's extra_info. After its timing,
each matcher's answer is checked: the similarity it reports is the best one, and it is the similarity
of the index it returns (near-ties may pick either index).
"""
import pytest
import torch
import torch.nn.functional as F

import matching_table as mt


@pytest.mark.parametrize("impl", list(mt.IMPLS))
@pytest.mark.parametrize("d", mt.DIMS)
@pytest.mark.parametrize("n", mt.sizes())
def test_matching_cpu(benchmark, impl, n, d):
    a, b = mt.inputs(n, d)
    benchmark.group = f"matching N=M={n} D={d}"
    benchmark.extra_info["peak_extra_mb"] = mt.peak_extra_mb(n, d)[impl]
    rounds = 2 if n > 5000 else 5
    result = benchmark.pedantic(mt.IMPLS[impl], args=(a, b), rounds=rounds, warmup_rounds=1)
    if impl == "mm":
        assert result.shape == (n, n)
        return
    sim, index = (result.values, result.indices) if impl == "mm_max" else (result[1], result[0])
    best = torch.cat([(F.normalize(chunk, dim=1) @ F.normalize(b, dim=1).T).amax(1) for chunk in a.split(1024)])
    torch.testing.assert_close(sim.float().flatten(), best, rtol=0, atol=1e-5)
    chosen = (F.normalize(a, dim=1) * F.normalize(b, dim=1)[index.flatten()]).sum(1)
    torch.testing.assert_close(chosen, best, rtol=0, atol=1e-5)
