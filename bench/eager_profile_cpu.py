"""Where eager PyTorch spends its time on the CPU (dino_s8 + LiFT, 224 px, batch 1, fp32), and the most
any other runtime could gain over it without doing less arithmetic.

    python bench/eager_profile_cpu.py [--rounds 5]

Profiles one Engine call with torch.profiler (after warm-up) and sorts the self time of every aten op
into GEMM-class work (matrix products, attention, convolutions: compute-bound at the cores' FMA rate)
and the rest (elementwise, normalisation, copies). If another runtime ran the GEMM-class ops at the
same rate and everything else for free, it would be total / gemm_class times faster: the ceiling on
onnxruntime's speed-up over eager in fp32. Also reports the GEMMs' achieved GFLOP/s. Writes
bench/results/eager-profile-cpu-<date>.json (device, commit, date) and prints a summary.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchlib import commit, cpu_name
from lift_rt.engine import Engine

GEMM_CLASS = ("addmm", "mm", "bmm", "matmul", "linear", "convolution", "scaled_dot_product", "flash_attention")


def is_gemm_class(name: str) -> bool:
    return any(key in name for key in GEMM_CLASS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="profiled calls; the one with the least total counts")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.manual_seed(0)
    engine = Engine("dino_s8", random_init=True, backend="torch", device="cpu")
    images = torch.rand(1, 3, 224, 224)
    for _ in range(2):
        engine(images)
    best = None
    for _ in range(args.rounds):
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            engine(images)
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events)
        if best is None or total < best[0]:
            best = (total, events)
    total, events = best
    gemm = sum(e.self_cpu_time_total for e in events if is_gemm_class(e.key))
    mm_events = [e for e in events if e.key in ("aten::addmm", "aten::mm") and e.flops]
    mm_time = sum(e.self_cpu_time_total for e in mm_events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    record = {
        "bench": "eager_profile_cpu", "backbone": "dino_s8", "resolution": 224, "batch": 1, "precision": "fp32",
        "device": f"cpu: {cpu_name()}", "threads": torch.get_num_threads(), "commit": commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
        "total_self_ms": total / 1e3, "gemm_class_ms": gemm / 1e3, "gemm_class_share": gemm / total,
        "ceiling_speedup_without_less_arithmetic": total / gemm,
        "mm_gflops_per_s": sum(e.flops for e in mm_events) / (mm_time / 1e6) / 1e9 if mm_time else None,
        "top_ops_ms": {e.key: e.self_cpu_time_total / 1e3 for e in top},
    }
    out = Path(__file__).parent / "results" / f"eager-profile-cpu-{datetime.date.today():%Y%m%d}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{record['device']}, {record['threads']} threads, commit {record['commit']}")
    print(f"total {record['total_self_ms']:.1f} ms, GEMM-class {record['gemm_class_ms']:.1f} ms "
          f"({100 * record['gemm_class_share']:.0f}%): ceiling {record['ceiling_speedup_without_less_arithmetic']:.2f}x; "
          f"GEMMs at {record['mm_gflops_per_s'] or float('nan'):.0f} GFLOP/s")
    for name, ms in record["top_ops_ms"].items():
        print(f"  {name:60s} {ms:8.2f} ms")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
