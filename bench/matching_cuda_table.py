"""CUDA matchers (csrc tensor-core kernel, Triton GEMM + fused argmax) against cuBLAS: time and peak memory.

    python bench/matching_cuda_table.py                 # N = M in {784, 3136, 12544}, D in {384, 768}, bf16/fp16
    python bench/matching_cuda_table.py --dtypes fp32   # another dtype
Needs a CUDA GPU and lift_rt built with its CUDA path. Each case first checks that both
matchers agree with a chunked fp32 reference on the chosen similarities, then times (median of
``triton.testing.do_bench``, ms) the two matchers, the bare GEMM ``a @ b.T`` in the same dtype
(cuBLAS; the issue's target is matcher <= 1.2x this) and normalise + GEMM + max. Peak extra memory
is ``torch.cuda.max_memory_allocated`` above the inputs. Matcher times include the Python
dispatch and, for Triton, the norm and merge launches: at N = 784 that overhead is most of it.
Writes bench/results/matching-cuda-<gpu>-<date>.json (rewritten after every case, so a run
stopped early keeps what it measured) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from pathlib import Path

import torch
import triton.testing

from benchlib import commit
from lift_rt import matching
from lift_rt import matching_reference as ref

SIZES = [12544, 3136, 784]  # the target size first: a run stopped early has it
DIMS = [384, 768]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def run_matcher(impl: str):
    def run(a, b):
        os.environ["LIFT_MATCH_CUDA"] = impl
        return matching.nearest(a, b)

    return run


def run_mm_max(a, b):
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return (a @ b.transpose(-1, -2)).max(dim=-1)


def run_mm(a, b):
    return a @ b.transpose(-1, -2)


IMPLS = {"csrc": run_matcher("csrc"), "triton": run_matcher("triton"), "mm": run_mm, "mm_max": run_mm_max}


def agree(a: torch.Tensor, b: torch.Tensor, tol: float) -> dict[str, float]:
    """Largest gap between each matcher's similarity and the reference's best (on 512 rows)."""
    rows = slice(0, 512)
    _, ref_sim = ref.nearest_reference(a[:, rows].float().cpu(), b.float().cpu())
    gaps = {}
    for impl in ("csrc", "triton"):
        index, sim = IMPLS[impl](a, b)
        index, sim = index[:, rows].cpu(), sim[:, rows].cpu()
        picked = ref.similarities(a[:, rows].float().cpu(), b.float().cpu()).gather(-1, index.unsqueeze(-1))[..., 0]
        gaps[impl] = max((sim - ref_sim).abs().max().item(), (picked - ref_sim).abs().max().item())
        assert (index >= 0).all() and gaps[impl] <= tol, f"{impl}: similarity gap {gaps[impl]:.2e} > {tol}"
    return gaps


def peak_extra_mb(fn, a, b) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(a, b)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del out
    return extra / 2**20


def case(n: int, d: int, dtype: torch.dtype) -> dict:
    g = torch.Generator(device="cuda").manual_seed(n + d)
    a = torch.randn(1, n, d, device="cuda", generator=g).to(dtype)
    b = torch.randn(1, n, d, device="cuda", generator=g).to(dtype)
    gaps = agree(a, b, tol=1e-5 if dtype == torch.float32 else 1e-2)
    times = {k: triton.testing.do_bench(lambda f=f: f(a, b), warmup=25, rep=100, return_mode="median") for k, f in IMPLS.items()}
    memory = {k: peak_extra_mb(f, a, b) for k, f in IMPLS.items()}
    flops = 2 * n * n * d
    return {"n": n, "d": d, "dtype": str(dtype).removeprefix("torch."), "time_ms": times, "peak_extra_mb": memory,
            "tflops_mm": flops / times["mm"] / 1e9, "max_sim_gap": gaps}


def markdown(rows: list[dict]) -> str:
    lines = ["| N = M | D | dtype | csrc (ms) | triton (ms) | cuBLAS mm (ms) | mm + max (ms) | csrc / mm | triton / mm | "
             "extra MB csrc / triton / mm + max |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, m = r["time_ms"], r["peak_extra_mb"]
        lines.append(f"| {r['n']} | {r['d']} | {r['dtype']} | {t['csrc']:.3f} | {t['triton']:.3f} | {t['mm']:.3f} | "
                     f"{t['mm_max']:.3f} | {t['csrc'] / t['mm']:.2f} | {t['triton'] / t['mm']:.2f} | "
                     f"{m['csrc']:.1f} / {m['triton']:.1f} / {m['mm_max']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and matching._C.has_cuda()):
        raise SystemExit("needs a CUDA GPU and lift_rt built with CUDA (lift_rt._C.has_cuda())")
    device = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"matching-cuda-{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}-{date}.json"
    result = {"device": device, "commit": commit(), "date": date, "torch": torch.__version__, "rows": []}
    for dtype in args.dtypes:
        for n in args.sizes:
            for d in DIMS:
                result["rows"].append(case(n, d, DTYPES[dtype]))
                out.write_text(json.dumps(result, indent=2))
                print(markdown(result["rows"][-1:]).splitlines()[-1], flush=True)
    print(f"\n{device}, commit {result['commit']}, {date}\n\n{markdown(result['rows'])}\n\nsaved {out}")


if __name__ == "__main__":
    main()
