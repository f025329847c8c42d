"""Run the benchmarks, keep the results as JSON under bench/results/, render the README table.

    python bench/record.py                      # each bench file with --benchmark-only, record, render
    python bench/record.py -k pipeline          # extra arguments go to pytest
    python bench/record.py --render-only        # re-render from the recorded files
    python bench/record.py --import-session DIR # results of bench/gpu_session.sh (its $OUT, fetched)

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


def record(raw: dict, note: str = "", *, device: str | None = None, commit_id: str | None = None,
           torch_version: str | None = None, overwrite: bool = True) -> Path:
    """Keep what the table needs (and the machine) from pytest-benchmark's JSON; write it.

    ``device``, ``commit_id`` and ``torch_version`` default to this machine's (pass them for
    results made elsewhere). ``overwrite=False`` keeps an existing record of the same device and
    day and writes this one beside it, named with its commit.
    """
    import torch

    sys.path.insert(0, str(HERE))
    from benchlib import commit, device_name

    entries = [
        {"name": b["name"], "group": b.get("group"), "mean_s": b["stats"]["mean"], "stddev_s": b["stats"]["stddev"],
         "rounds": b["stats"]["rounds"], "extra_info": b.get("extra_info", {})}
        for b in raw["benchmarks"]
    ]
    now = datetime.datetime.fromisoformat(raw["datetime"]) if "datetime" in raw else datetime.datetime.now(datetime.timezone.utc)
    device = device or device_name()
    data = {"device": device, "commit": commit_id or commit(), "date": now.isoformat(timespec="seconds"),
            "torch": torch_version or torch.__version__, "note": note, "machine_info": raw.get("machine_info", {}),
            "benchmarks": entries}
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower().split(",")[0]).strip("-")[:40]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{PREFIX}{slug}-{now:%Y-%m-%d}.json"
    if not overwrite:
        path = unused_path(path, data["commit"])
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def unused_path(path: Path, tag: str) -> Path:
    """``path``, or ``<stem>-<tag>[-n]<suffix>`` beside it where ``path`` exists already."""
    if not path.exists():
        return path
    base = f"{path.stem}-{re.sub(r'[^A-Za-z0-9]+', '', tag) or 'run'}"
    candidate, n = path.with_name(base + path.suffix), 2
    while candidate.exists():
        candidate, n = path.with_name(f"{base}-{n}{path.suffix}"), n + 1
    return candidate


# The line bench/test_bench_lift_head.py prints per GPU case (kept when a stopped stage writes no JSON).
HEAD_LINE = re.compile(
    r"^\[(?P<variant>\w+) (?P<dtype>\w+) (?P<height>\d+)px b(?P<batch>\d+)\] floor (?P<floor_ms>[\d.]+) ms "
    r"\((?P<mb>[\d.]+) MB, (?P<gflop>[\d.]+) GFLOP on H100\), CUDA-event median (?P<ms>[\d.]+) ms = [\d.]+x floor"
    r"(?:, relative error vs eager fp32 (?P<rel>[\d.e+-]+))?", re.MULTILINE)


def _head_key(info: dict) -> tuple:
    return info.get("variant"), info.get("dtype"), info.get("height"), info.get("batch")


def head_cases_from_log(text: str) -> list[dict]:
    """The LiFT-head cases a log printed, as pytest-benchmark entries (mean = the CUDA-event median)."""
    entries = []
    for m in HEAD_LINE.finditer(text):
        ms = float(m["ms"])
        info = {"kind": "lift_head", "variant": m["variant"], "dtype": f"torch.{m['dtype']}", "height": int(m["height"]),
                "batch": int(m["batch"]), "floor_ms": float(m["floor_ms"]), "bytes": float(m["mb"]) * 1e6,
                "flops": float(m["gflop"]) * 1e9, "device_ms": ms, "source": "printed line"}
        if m["rel"]:
            info["rel_err_vs_eager_fp32"] = float(m["rel"])
        short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(m["dtype"], m["dtype"])
        name = f"test_lift_head_gpu[{m['variant']}_{short}-{m['height']}-{m['batch']}]"  # pytest's own id
        entries.append({"name": name, "group": None, "stats": {"mean": ms / 1e3, "stddev": None, "rounds": None}, "extra_info": info})
    return entries


def training_summary(path: Path) -> str:
    """One line on a lift_rt.train log: median images/s over the steps, and the slowest step."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("event") == "step" and r.get("images_per_s")]
    if not steps:
        return f"{path.name}: no training step logged"
    rates = sorted(r["images_per_s"] for r in steps)
    config = next((r.get("config", {}) for r in rows if r.get("event") == "start"), {})
    what = ", ".join(f"{k} {config[k]}" for k in ("backbone", "batch", "imsize", "amp", "workers") if k in config)
    return (f"training ({what or 'see train-log.jsonl'}): {len(steps)} steps, median {rates[len(rates) // 2]:.0f} images/s, "
            f"slowest step {rates[0]:.0f} images/s")


def import_session(folder: Path) -> list[Path]:
    """Record what ``bash bench/gpu_session.sh`` left in its $OUT (machine.txt, stages.txt, session.tgz).

    The benchmark JSONs become one bench-<gpu>-<date>.json record (device, commit and date of
    the GPU run), the matcher table is copied as it is, and the stage table, machine facts and
    the tests' failure lines go to gpu-session-<gpu>-<date>.txt.
    """
    import tarfile

    missing = [name for name in ("machine.txt", "stages.txt", "session.tgz") if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"{folder} holds no {', '.join(missing)}: not the $OUT of bench/gpu_session.sh")
    machine = (folder / "machine.txt").read_text()
    gpu_line = next((line for line in machine.splitlines()[1:] if line.count(",") >= 2 and not line.startswith("name")), "")
    device = gpu_line.split(",")[0].strip() or "unknown GPU"
    match = re.search(r"^torch (\S+)", machine, re.MULTILINE)
    torch_version = match.group(1) if match else None
    match = re.search(r"^tested commit: (\S+)", machine, re.MULTILINE)  # LIFT_GPU_COMMIT: the tree sent, not the device's git
    tested_commit = match.group(1) if match else None
    match = re.match(r"\s*(\d{4}-\d{2}-\d{2}T[\d:]+)Z?", machine)  # machine.txt opens with the session's UTC time
    session_time = match.group(1) + "+00:00" if match else None
    written = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(folder / "session.tgz") as archive:
        archive.extractall(tmp, filter="data")
        logs = Path(tmp)
        merged: dict = {"benchmarks": []}
        notes = []
        for path in sorted(logs.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError:  # pytest-benchmark writes nothing useful when its stage is stopped
                notes.append(f"{path.name}: empty or cut off (its stage stopped at its limit)")
                continue
            if "benchmarks" in raw:  # pytest-benchmark output
                merged.setdefault("datetime", raw.get("datetime"))
                merged.setdefault("commit_info", raw.get("commit_info", {}))
                merged["benchmarks"] += raw["benchmarks"]
            else:  # bench/matching_cuda_table.py output, already in its final form
                written.append(unused_path(RESULTS / path.name, raw.get("commit", "run")))
                written[-1].write_text(path.read_text())
        named = {b["name"] for b in merged["benchmarks"]}
        for log in sorted(logs.glob("*-bench.jsonl")):  # bench/conftest.py's per-benchmark lines (LIFT_BENCH_LOG)
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:  # the last line of a stage killed mid-write
                    notes.append(f"{log.name}: a cut-off line skipped")
                    continue
                if entry and entry["name"] not in named:
                    named.add(entry["name"])
                    merged["benchmarks"].append(entry)
                    notes.append(f"{entry['name']}: read from {log.name} (its JSON was not written)")
        recorded = {_head_key(b["extra_info"]) for b in merged["benchmarks"] if b.get("extra_info", {}).get("kind") == "lift_head"}
        for log in sorted(logs.glob("*.log")):
            for entry in head_cases_from_log(log.read_text(errors="replace")):
                if _head_key(entry["extra_info"]) not in recorded:
                    recorded.add(_head_key(entry["extra_info"]))
                    merged["benchmarks"].append(entry)
                    notes.append(f"{entry['name']}: read from {log.name} (its JSON was not written)")
        train_log = logs / "train-log.jsonl"
        if train_log.is_file():
            notes.append(training_summary(train_log))
        slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40]
        if not merged.get("datetime") and session_time:
            merged["datetime"] = session_time
        date = (merged.get("datetime") or datetime.date.today().isoformat())[:10]
        info = merged.get("commit_info", {})
        commit_id = tested_commit or (info.get("id") or "unknown")[:7] + ("+dirty" if info.get("dirty") else "")
        if merged["benchmarks"]:
            written.append(record(merged, "bench/gpu_session.sh", device=device, commit_id=commit_id, torch_version=torch_version,
                                  overwrite=False))
        failures = "".join(line for log in sorted(logs.glob("*.log")) for line in log.read_text(errors="replace").splitlines(True)
                           if line.startswith(("FAILED", "ERROR")))
        summary = unused_path(RESULTS / f"gpu-session-{slug}-{date}.txt", commit_id)
        summary.write_text(f"{machine}\n{(folder / 'stages.txt').read_text()}\n{failures or 'no FAILED / ERROR lines'}\n"
                           + "".join(f"{note}\n" for note in notes))
        written.append(summary)
    return written


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
    heads = by_kind.get("lift_head", [])
    if heads:
        rows = [[e["variant"], e["dtype"].removeprefix("torch."), str(e["height"]), str(e["batch"]),
                 f"{e['device_ms']:.4f}" if e.get("device_ms") else f"{b['mean_s'] * 1e3:.3f}", f"{e['floor_ms']:.4f}",
                 f"{(e.get('device_ms') or b['mean_s'] * 1e3) / e['floor_ms']:.1f}x"]
                for b, e in ((b, b["extra_info"]) for b in heads)]
        lines += ["LiFT head alone, dino_s8 geometry (ms: CUDA-event median on a GPU, mean wall time on a CPU; "
                  "floor from H100 datasheet rates):", ""]
        lines += _table(["variant", "dtype", "px", "batch", "ms", "floor ms", "x floor"], rows) + [""]
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
    parser.add_argument("--import-session", type=Path, metavar="DIR",
                        help="record the $OUT of bench/gpu_session.sh (machine.txt, stages.txt, session.tgz) instead of running")
    args, pytest_args = parser.parse_known_args(argv)
    if args.import_session:
        for path in import_session(args.import_session):
            print(f"recorded {path}")
    elif not args.render_only:
        print(f"recorded {record(run_benchmarks(pytest_args), args.note)}")
    table = render()
    (RESULTS / "README_table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
