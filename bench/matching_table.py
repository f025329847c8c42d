"""CPU matcher vs torch mm + max vs bare torch.mm: time and peak extra memory, as a markdown table.

    python bench/matching_table.py            # N = M in {784, 3136}, D in {384, 768}
    python bench/matching_table.py --full     # adds N = M = 12544
    python bench/matching_table.py --full --data patches   # photo descriptors instead of random rows
    MKL_ENABLE_INSTRUCTIONS=AVX2 LIFT_MATCH_ISA=avx2 LIFT_MATCH_VNNI=0 python bench/matching_table.py --full
                                              # both sides held to AVX2 (a stand-in for an AVX2-only CPU)
    MKL_ENABLE_INSTRUCTIONS=AVX2 LIFT_MATCH_ISA=avx2 python bench/matching_table.py --full
                                              # the same with AVX-VNNI where the CPU has it (-avxvnni file)
"matcher" is the default (int8 screening with exact rescoring, LIFT_MATCH_SCREEN=auto), "exact"
the fp32 kernel alone. Writes bench/results/matching-<isa>[-full]-<date>.json (device, ISA, MKL setting, commit, date,
numbers; -avxvnni when screening ran on the AVX-VNNI kernel) and prints the table.
Also the shared definitions of bench/test_bench_matching.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchlib import commit, cpu_name
from lift_rt import matching

SIZES = [784, 3136]
FULL_SIZES = SIZES + [12544]
DIMS = [384, 768]


def sizes() -> list[int]:
    return FULL_SIZES if os.environ.get("LIFT_BENCH_FULL") == "1" else SIZES


DATA = ("random", "patches")


def inputs(n: int, d: int, data: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """N x D source and target rows: independent Gaussians ("random"), or descriptors of a photo and
    its warped copy ("patches": mean-removed 16 x 16 pixel patches every 4 px, randomly projected to D;
    neighbouring rows are similar, as in dense ViT features, unlike random rows)."""
    g = torch.Generator().manual_seed(0)
    if data == "random":
        return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    if data != "patches":
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    import numpy as np
    from lift_rt.eval.synthetic import make_pair

    side = round(n ** 0.5)
    if side * side != n:
        raise ValueError(f"patches need a square N, got {n}")
    pair = make_pair(0, image_size=4 * side)
    projection = torch.randn(768, d, generator=g) / d ** 0.5

    def descriptors(image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(4 * side + 12, 4 * side + 12), mode="bilinear")
        patches = torch.nn.functional.unfold(x, 16, stride=4)[0].T  # side^2 x 768
        return ((patches - patches.mean(1, keepdim=True)) @ projection).contiguous()

    return descriptors(pair.src_image), descriptors(pair.trg_image)


def run_lift(a, b):  # the default: int8 screening with exact fp32 rescoring where it pays
    return matching.nearest(a, b)


def run_lift_exact(a, b):  # the fp32 kernel alone (LIFT_MATCH_SCREEN=off)
    saved = os.environ.get("LIFT_MATCH_SCREEN")
    os.environ["LIFT_MATCH_SCREEN"] = "off"
    try:
        return matching.nearest(a, b)
    finally:
        if saved is None:
            del os.environ["LIFT_MATCH_SCREEN"]
        else:
            os.environ["LIFT_MATCH_SCREEN"] = saved


def run_mm_max(a, b):  # cosine similarity the plain way: normalise, full matrix, max
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return (a @ b.T).max(dim=1)


def run_mm(a, b):  # the GEMM alone: the lower bound the matcher is measured against
    return a @ b.T


IMPLS = {"lift": run_lift, "lift_exact": run_lift_exact, "mm_max": run_mm_max, "mm": run_mm}

_PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
import matching_table as mt
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
a, b = mt.inputs({n}, {d}, {data!r})
for name, fn in mt.IMPLS.items():
    fn(a[:64], b[:64])  # load kernels, spin up threads
    open('/proc/self/clear_refs', 'w').write('5')  # reset the peak RSS to the current RSS
    base = status('VmRSS:')
    out = fn(a, b)
    print(name, status('VmHWM:') - base)
    del out
"""


def peak_extra_mb(n: int, d: int, data: str = "random") -> dict[str, float]:
    """Peak resident memory above the inputs while each implementation runs once (fresh process)."""
    script = _PEAK_SCRIPT.format(bench=str(Path(__file__).parent), n=n, d=d, data=data)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return {name: int(v) / 2**20 for name, v in (line.split() for line in out.strip().splitlines())}


def best_time(fn, a, b, rounds: int = 3) -> float:
    fn(a, b)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(a, b)
        times.append(time.perf_counter() - t0)
    return min(times)


def markdown(rows: list[dict]) -> str:
    lines = ["| N = M | D | matcher (ms) | exact fp32 kernel alone (ms) | mm + max (ms) | mm (ms) | "
             "speed-up vs mm + max | matcher / mm | extra MB matcher | extra MB mm + max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, m = r["time_ms"], r["peak_extra_mb"]
        lines.append(f"| {r['n']} | {r['d']} | {t['lift']:.1f} | {t['lift_exact']:.1f} | {t['mm_max']:.1f} | {t['mm']:.1f} | "
                     f"{t['mm_max'] / t['lift']:.2f}x | {t['lift'] / t['mm']:.2f} | {m['lift']:.1f} | {m['mm_max']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="include N = M = 12544")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case; the best counts (default 3)")
    parser.add_argument("--data", choices=DATA, default="random",
                        help="random Gaussian rows (default, the issue's benchmark) or photo patch descriptors")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rows = []
    for n in FULL_SIZES if args.full else SIZES:
        for d in DIMS:
            a, b = inputs(n, d, args.data)
            rows.append({"n": n, "d": d, "time_ms": {k: 1e3 * best_time(f, a, b, args.rounds) for k, f in IMPLS.items()},
                         "peak_extra_mb": peak_extra_mb(n, d, args.data)})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    isa = matching.cpu_isa()
    result = {"device": f"{cpu_name()}, {isa}", "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "default"),
              "data": args.data, "screen": matching.cpu_screen(), "screen_kernel": matching.cpu_screen_kernel(),
              "commit": commit(), "date": date, "torch": torch.__version__, "rows": rows}
    kernel = matching.cpu_screen_kernel()
    tags = ("-full" if args.full else "") + ("-patches" if args.data == "patches" else "")
    tags += "-avxvnni" if kernel == "avxvnni" else ""  # AVX2 with AVX-VNNI; LIFT_MATCH_VNNI=0 gives plain AVX2
    out = Path(__file__).parent / "results" / f"matching-{isa}{tags}-{date}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['device']}, commit {result['commit']}, {date}\n\n{markdown(rows)}\n\nsaved {out}")


if __name__ == "__main__":
    main()
