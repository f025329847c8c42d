"""Run the benchmarks, keep the results as JSON under bench/results/, render the README table.

    python bench/record.py                      # each bench file with --benchmark-only, record, render
    python bench/record.py -k pipeline          # extra arguments go to pytest
    python bench/record.py --render-only        # re-render from the recorded files

Writes ``bench/results/bench-<device>-<date>.json`` (device, commit, date, torch
version, one entry per benchmark with its mean time and extra_info) and
``bench/results/README_table.md`` (the newest record per device), and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
PREFIX = "bench-"


def run_benchmarks(pytest_args: list[str]) -> dict:
    """``pytest <file> --benchmark-only --benchmark-json`` for each bench file -> merged JSON.

    One process per file: thread pools and compile workers left by one file
    (onnxruntime, torch.compile) otherwise slow down the next file's timings.
    """
    merged: dict = {"benchmarks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(HERE.glob("test_*.py")):
            out = Path(tmp) / f"{path.stem}.json"
            cmd = [sys.executable, "-m", "pytest", str(path), "--benchmark-only", f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider", *pytest_args]
            print("$", " ".join(cmd), flush=True)
            code = subprocess.run(cmd, cwd=ROOT).returncode
            if code not in (0, 5):  # 5: nothing collected (e.g. deselected by -k)
                print(f"warning: {path.name}: pytest exited with {code}; recording the benchmarks that ran", file=sys.stderr)
            if out.exists():
                raw = json.loads(out.read_text())
                merged.setdefault("machine_info", raw.get("machine_info", {}))
                merged["benchmarks"] += raw["benchmarks"]
    if not merged["benchmarks"]:
        raise SystemExit("no benchmark ran")
    return merged


def record(raw: dict, note: str = "") -> Path:
    """Keep what the table needs (and the machine) from pytest-benchmark's JSON; write it."""
    import torch

    sys.path.insert(0, str(HERE))
    from benchlib import commit, device_name

    entries = [
        {"name": b["name"], "group": b.get("group"), "mean_s": b["stats"]["mean"], "stddev_s": b["stats"]["stddev"],
         "rounds": b["stats"]["rounds"], "extra_info": b.get("extra_info", {})}
        for b in raw["benchmarks"]
    ]
    now = datetime.datetime.now(datetime.timezone.utc)
    device = device_name()
    data = {"device": device, "commit": commit(), "date": now.isoformat(timespec="seconds"), "torch": torch.__version__,
            "note": note, "machine_info": raw.get("machine_info", {}), "benchmarks": entries}
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower().split(",")[0]).strip("-")[:40]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{PREFIX}{slug}-{now:%Y-%m-%d}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def latest_per_device() -> list[dict]:
    """The newest record of each device, newest first."""
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{PREFIX}*.json"))]
    newest: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["date"]):
        newest[rec["device"]] = rec
    return sorted(newest.values(), key=lambda r: r["date"], reverse=True)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def render_device(rec: dict) -> list[str]:
    by_kind: dict[str, list[dict]] = {}
    for b in rec["benchmarks"]:
        by_kind.setdefault(b["extra_info"].get("kind", "other"), []).append(b)
    note = f"; {rec['note']}" if rec.get("note") else ""
    lines = [f"### {rec['device']}", "", f"commit {rec['commit']}, {rec['date']}, torch {rec['torch']}{note}", ""]
    pipeline = by_kind.get("pipeline", [])
    if pipeline:
        cases = sorted({(b["extra_info"]["size"], b["extra_info"]["batch"]) for b in pipeline})
        configs = sorted({(b["extra_info"]["backend"], b["extra_info"]["precision"]) for b in pipeline}, key=lambda c: (c != ("torch", "fp32"), c))
        ips = {(e["backend"], e["precision"], e["size"], e["batch"]): e["images_per_s"] for e in (b["extra_info"] for b in pipeline)}
        flops = {(e["size"], e["batch"]): e["gflops"] / e["batch"] for e in (b["extra_info"] for b in pipeline)}
        rows = [[f"{b} {p}" + (" (reference)" if (b, p) == ("torch", "fp32") else "")]
                + [f"{ips[(b, p, s, n)]:.1f}" if (b, p, s, n) in ips else "-" for s, n in cases] for b, p in configs]
        rows.append(["GFLOPs / image"] + [f"{flops[c]:.1f}" for c in cases])
        lines += ["Images/s, dino_s8 + LiFT (one 2x step), higher is better:", ""]
        lines += _table(["backend"] + [f"{s} px b{n}" for s, n in cases], rows) + [""]
    pcks = by_kind.get("pck", [])
    if pcks:
        sizes = sorted({b["extra_info"]["size"] for b in pcks})
        cell = {(e["upsampler"], e["size"]): e for e in (b["extra_info"] for b in pcks)}
        names = list(dict.fromkeys(b["extra_info"]["upsampler"] for b in pcks))
        first = pcks[0]["extra_info"]
        rows = [[n] + [f"{cell[(n, s)]['pck'][a]:.1f}" if (n, s) in cell else "-" for a in ("0.1", "0.05") for s in sizes]
                + [f"{cell[(n, s)]['gflops']:.1f}" if (n, s) in cell else "-" for s in sizes] for n in names]
        lines += [f"PCK on synthetic warped pairs ({first['pairs']} pairs, {first['keypoints']} keypoints), dino_s8 with "
                  f"{first.get('weights', 'random')} weights (checks the harness, not the paper's numbers); GFLOPs per image:", ""]
        lines += _table(["upsampler"] + [f"PCK@{a} {s}px" for a in ("0.1", "0.05") for s in sizes] + [f"GFLOPs {s}px" for s in sizes], rows) + [""]
    parity = by_kind.get("parity", [])
    if parity:
        rows = [[e["backend"], e["precision"], f"{e['reference']['0.1']:.2f}", f"{e['runtime']['0.1']:.2f}", f"{e['max_diff']:.2f}"]
                for e in (b["extra_info"] for b in parity)]
        lines += [f"PCK parity at {parity[0]['extra_info']['size']} px (runtime = Engine + C++ matcher, reference = eager + PyTorch matching):", ""]
        lines += _table(["backend", "precision", "reference PCK@0.1", "runtime PCK@0.1", "max diff (points)"], rows) + [""]
    other = by_kind.get("other", [])
    if other:
        rows = [[b["group"] or "-", b["name"], f"{b['mean_s'] * 1e3:.3f}"] for b in other]
        lines += ["Other benchmarks (mean time):", ""] + _table(["group", "benchmark", "ms"], rows) + [""]
    return lines


def render() -> str:
    records = latest_per_device()
    if not records:
        raise SystemExit(f"no {PREFIX}*.json under {RESULTS}; run python bench/record.py first")
    lines = ["<!-- generated by bench/record.py from bench/results/ -->", ""]
    for rec in records:
        lines += render_device(rec)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true", help="skip running; render from bench/results/")
    parser.add_argument("--note", default="", help="a remark stored with the record (e.g. 'machine loaded by other jobs')")
    args, pytest_args = parser.parse_known_args(argv)
    if not args.render_only:
        print(f"recorded {record(run_benchmarks(pytest_args), args.note)}")
    table = render()
    (RESULTS / "README_table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
