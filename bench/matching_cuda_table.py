"""CUDA matchers (csrc tensor-core kernel, Triton GEMM + fused argmax) against cuBLAS: time and peak memory.

    python bench/matching_cuda_table.py                 # N = M in {784, 3136, 12544}, D in {384, 768}, bf16/fp16
    python bench/matching_cuda_table.py --dtypes fp32   # another dtype
Needs a CUDA GPU and lift_rt built with its CUDA path. Each case first checks both matchers
against a chunked fp32 reference on the chosen similarities (a failure is recorded, marked in the
table and ends the run with a nonzero status after every row is measured), then times (median of
``triton.testing.do_bench``, ms) the two matchers, the bare GEMM ``a @ b.T`` in the same dtype
(cuBLAS; the issue's target is matcher <= 1.2x this) and normalise + GEMM + max; then each again
as a replayed CUDA graph (device time without host costs: the H100 run of 2026-11-26 showed the
Triton matcher's plain timing bound by ~0.3-0.5 ms of launches at every size). Peak extra memory
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


# csrc last: a CUDA fault there (a kernel changed since its last GPU run, say) would stop the run after the others.
IMPLS = {"mm": run_mm, "mm_max": run_mm_max, "triton": run_matcher("triton"), "csrc": run_matcher("csrc")}
MATCHERS = ("triton", "csrc")


def similarity_gap(impl: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest gap between a matcher's similarity (and the reference's at its index) and the reference's best,
    on the first 512 rows; inf where it returns no index."""
    rows = slice(0, 512)
    _, ref_sim = ref.nearest_reference(a[:, rows].float().cpu(), b.float().cpu())
    index, sim = IMPLS[impl](a, b)
    index, sim = index[:, rows].cpu(), sim[:, rows].cpu()
    if (index < 0).any():
        return float("inf")
    picked = ref.similarities(a[:, rows].float().cpu(), b.float().cpu()).gather(-1, index.unsqueeze(-1))[..., 0]
    return max((sim - ref_sim).abs().max().item(), (picked - ref_sim).abs().max().item())


def graph_replay_ms(fn, a, b) -> float:
    """Median time of ``fn(a, b)`` captured once in a CUDA graph and replayed: the device's time
    without Python, op dispatch and launch costs (which dominate the plain timing of small cases)."""
    fn(a, b)  # compiled and autotuned outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(a, b)
    return triton.testing.do_bench(graph.replay, warmup=10, rep=50, return_mode="median")


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
    """One row, one implementation after another (IMPLS order). One that raises or misses the reference is
    recorded as such (errors / parity_ok) and the rest still run; after a CUDA fault that breaks the context
    they fail too and are recorded, and the next row stops the run (the JSON keeps the rows before)."""
    g = torch.Generator(device="cuda").manual_seed(n + d)
    a = torch.randn(1, n, d, device="cuda", generator=g).to(dtype)
    b = torch.randn(1, n, d, device="cuda", generator=g).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    row = {"n": n, "d": d, "dtype": str(dtype).removeprefix("torch."), "time_ms": {}, "graph_ms": {}, "graph_errors": {}, "peak_extra_mb": {},
           "max_sim_gap": {}, "tolerance": tol, "parity_ok": {}, "errors": {}}
    for impl, fn in IMPLS.items():
        try:
            if impl in MATCHERS:
                row["max_sim_gap"][impl] = similarity_gap(impl, a, b)
                row["parity_ok"][impl] = row["max_sim_gap"][impl] <= tol
            row["time_ms"][impl] = triton.testing.do_bench(lambda f=fn: f(a, b), warmup=25, rep=100,
                                                           return_mode="median")
            row["peak_extra_mb"][impl] = peak_extra_mb(fn, a, b)
        except Exception as exc:  # noqa: BLE001 - recorded; the other implementations still run
            row["errors"][impl] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            continue
        try:
            row["graph_ms"][impl] = graph_replay_ms(fn, a, b)
        except Exception as exc:  # noqa: BLE001 - a path that cannot be captured is recorded, not fatal
            row["graph_errors"][impl] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    row["tflops_mm"] = 2 * n * n * d / row["time_ms"]["mm"] / 1e9 if "mm" in row["time_ms"] else None
    return row


def row_problems(row: dict) -> list[str]:
    return ([f"{k}: {e}" for k, e in row["errors"].items()] +
            [f"{k}: similarity gap {row['max_sim_gap'][k]:.2e} > {row['tolerance']}"
             for k, ok in row["parity_ok"].items() if not ok])


def markdown(rows: list[dict]) -> str:
    lines = ["| N = M | D | dtype | csrc (ms) | triton (ms) | cuBLAS mm (ms) | mm + max (ms) | csrc / mm | triton / mm | "
             "graph replay ms csrc / triton / mm | extra MB csrc / triton / mm + max |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, m = r["time_ms"], r["peak_extra_mb"]

        def ms(k: str) -> str:
            if k not in t:
                return "error"
            return f"{t[k]:.3f}" + ("" if r["parity_ok"].get(k, True) else " (wrong)")

        def ratio(k: str) -> str:
            return f"{t[k] / t['mm']:.2f}" if k in t and "mm" in t else "-"

        def graph(k: str) -> str:
            return f"{r.get('graph_ms', {})[k]:.3f}" if k in r.get("graph_ms", {}) else "-"

        def mb(k: str) -> str:
            return f"{m[k]:.1f}" if k in m else "-"

        lines.append(f"| {r['n']} | {r['d']} | {r['dtype']} | {ms('csrc')} | {ms('triton')} | {ms('mm')} | "
                     f"{ms('mm_max')} | {ratio('csrc')} | {ratio('triton')} | "
                     f"{graph('csrc')} / {graph('triton')} / {graph('mm')} | "
                     f"{mb('csrc')} / {mb('triton')} / {mb('mm_max')} |")
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
    # On a lent machine the checkout's git names the session's first commit, not the tree sent: gpu_session.sh
    # passes the real one in LIFT_GPU_COMMIT.
    result = {"device": device, "commit": os.environ.get("LIFT_GPU_COMMIT") or commit(), "date": date,
              "torch": torch.__version__, "rows": []}
    for dtype in args.dtypes:
        for n in args.sizes:
            for d in DIMS:
                result["rows"].append(case(n, d, DTYPES[dtype]))
                partial = out.with_name(out.name + ".tmp")  # written aside and renamed: a kill mid-write keeps the last whole file
                partial.write_text(json.dumps(result, indent=2))
                os.replace(partial, out)
                print(markdown(result["rows"][-1:]).splitlines()[-1], flush=True)
    print(f"\n{device}, commit {result['commit']}, {date}\n\n{markdown(result['rows'])}\n\nsaved {out}")
    for r in result["rows"]:
        for impl, error in r.get("graph_errors", {}).items():
            print(f"note: N={r['n']} D={r['d']} {r['dtype']}: {impl} could not be captured in a CUDA graph: {error}")
    problems = [f"N={r['n']} D={r['d']} {r['dtype']}: {p}" for r in result["rows"] for p in row_problems(r)]
    if problems:
        raise SystemExit("matchers that failed or missed the reference:\n" + "\n".join(problems))


if __name__ == "__main__":
    main()
