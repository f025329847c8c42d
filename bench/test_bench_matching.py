"""pytest-benchmark: CPU matcher vs torch mm + max vs bare torch.mm (same shapes).

    pytest bench/test_bench_matching.py --benchmark-only
    LIFT_BENCH_FULL=1 pytest bench/test_bench_matching.py --benchmark-only   # adds N = M = 12544
Peak extra memory (measured in a fresh process) goes to each result's extra_info.
"""
import pytest

import matching_table as mt


@pytest.mark.parametrize("impl", list(mt.IMPLS))
@pytest.mark.parametrize("d", mt.DIMS)
@pytest.mark.parametrize("n", mt.sizes())
def test_matching_cpu(benchmark, impl, n, d):
    a, b = mt.inputs(n, d)
    benchmark.group = f"matching N=M={n} D={d}"
    benchmark.extra_info["peak_extra_mb"] = mt.peak_extra_mb(n, d)[impl]
    rounds = 2 if n > 5000 else 5
    benchmark.pedantic(mt.IMPLS[impl], args=(a, b), rounds=rounds, warmup_rounds=1)
