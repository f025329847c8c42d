"""DAVIS label propagation: lift_rt.matching's masked top-k against the dense PyTorch reference.

    python bench/davis_propagation.py                         # 50 frames at 448 px, S/8: 56 x 56 grid, D = 384
    python bench/davis_propagation.py --frames 10 --json bench/results/davis-propagation-cpu-<date>.json

One DAVIS-like sequence of random features (the timing does not depend on their values) goes
through :class:`lift_rt.eval.davis_propagation.LabelPropagator` (the matcher) and
:class:`lift_rt.eval.davis_reference.DenseLabelPropagator` (the full (context x cells) x cells
affinity: 8 x 3136^2 floats at this size), with the authors' settings (first + 7 previous frames,
12-cell neighbourhood, top-5, temperature 0.1). Prints seconds per frame, the ratio, the peak
memory each needs above what was allocated before it started (CPU: peak resident set, reset
between the two; CUDA: torch's peak allocation) and the largest difference between their labels.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from benchlib import commit, cpu_name
from lift_rt.eval.davis_propagation import LabelPropagator, PropagationSettings
from lift_rt.eval.davis_reference import DenseLabelPropagator


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


class PeakMemory:
    """Peak memory above the level at entry, in MiB (``.mib`` after the block)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # the peak resident set restarts from the current one
            self.base = _status_bytes("VmRSS:")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_bytes("VmHWM:")
        self.mib = (peak - self.base) / 2**20


def frame_features(index: int, dim: int, grid: int, device: torch.device) -> torch.Tensor:
    """Frame ``index``'s random features D x grid x grid (the same for both methods)."""
    g = torch.Generator().manual_seed(index)
    return torch.randn(dim, grid, grid, generator=g).to(device)


def run(propagator_cls, frames: int, dim: int, grid: int, device: torch.device) -> tuple[float, float, list]:
    """-> (seconds per propagated frame, peak MiB, labels of every frame)."""
    first = frame_features(0, dim, grid, device)
    labels = torch.zeros(3, grid, grid, device=device)
    labels[0, :, : grid // 2], labels[1, : grid // 2, grid // 2:], labels[2, grid // 2:, grid // 2:] = 1, 1, 1
    warm = propagator_cls(first[:, :8, :8], labels[:, :8, :8], PropagationSettings())
    warm.step(first[:, 8:16, 8:16])  # loads kernels and starts threads outside the measurement
    outputs, elapsed = [], 0.0
    with PeakMemory(device) as memory:
        propagator = propagator_cls(first, labels, PropagationSettings())
        for index in range(1, frames):
            feats = frame_features(index, dim, grid, device)
            start = time.perf_counter()
            with torch.inference_mode():
                out = propagator.step(feats)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed += time.perf_counter() - start
            outputs.append(out.cpu())
    return elapsed / (frames - 1), memory.mib, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50, help="frames in the sequence (default 50)")
    parser.add_argument("--size", type=int, default=448, help="image size in pixels (default 448)")
    parser.add_argument("--patch", type=int, default=8, help="feature cell size in pixels (default 8: 448 -> 56 x 56)")
    parser.add_argument("--dim", type=int, default=384, help="feature channels (default 384, ViT-S)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the numbers here (with device, commit, date)")
    args = parser.parse_args()
    device, grid = torch.device(args.device), args.size // args.patch
    ours_s, ours_mib, ours = run(LabelPropagator, args.frames, args.dim, grid, device)
    dense_s, dense_mib, dense = run(DenseLabelPropagator, args.frames, args.dim, grid, device)
    difference = max((a - b).abs().max().item() for a, b in zip(ours, dense))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{args.frames} frames, {grid} x {grid} cells, D = {args.dim}, on {name}")
    print(f"matcher: {ours_s:.3f} s/frame, peak +{ours_mib:.0f} MiB")
    print(f"dense:   {dense_s:.3f} s/frame, peak +{dense_mib:.0f} MiB")
    print(f"dense / matcher: {dense_s / ours_s:.2f}x time, {dense_mib / max(ours_mib, 1e-9):.1f}x memory; "
          f"largest label difference {difference:.2e}")
    if args.json:
        record = {"device": name, "commit": commit(), "date": datetime.date.today().isoformat(),
                  "frames": args.frames, "grid": grid, "dim": args.dim, "threads": torch.get_num_threads(),
                  "matcher_s_per_frame": ours_s, "dense_s_per_frame": dense_s, "matcher_peak_mib": ours_mib,
                  "dense_peak_mib": dense_mib, "largest_label_difference": difference}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
