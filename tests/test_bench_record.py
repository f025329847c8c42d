"""bench/record.py --import-session: what bench/gpu_session.sh brings back becomes records."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import record  # noqa: E402  (bench/ is not a package)

MACHINE = """2026-11-27T10:00:00Z
abc1234
name, memory.total [MiB], driver_version, clocks.current.sm [MHz], clocks.current.memory [MHz]
NVIDIA H200, 143771 MiB, 580.159.04, 1980 MHz, 3201 MHz
torch 2.11.0+cu130 cuda 13.0 | triton 3.6.0 | onnxruntime 1.30.0 ['CPUExecutionProvider']
"""


def head_benchmark(variant: str, device_ms: float) -> dict:
    info = {"kind": "lift_head", "variant": variant, "height": 224, "batch": 1, "dtype": "torch.bfloat16",
            "device_ms": device_ms, "floor_ms": 0.0058, "bytes": 5686176, "flops": 5781078016}
    return {"name": f"test_lift_head_gpu[{variant}]", "group": None, "extra_info": info,
            "stats": {"mean": 1e-3, "stddev": 1e-5, "rounds": 50}}


def reimport(session: Path, work: Path, tmp_path: Path, monkeypatch) -> Path:
    """Pack ``work`` as the session's session.tgz again, import it into a fresh results folder; return that folder."""
    (session / "session.tgz").unlink()
    with tarfile.open(session / "session.tgz", "w:gz") as archive:
        archive.add(work, arcname=".")
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(record, "RESULTS", results)
    record.import_session(session)
    return results


@pytest.fixture
def session(tmp_path: Path) -> Path:
    """A $OUT as gpu_session.sh leaves it: machine.txt, stages.txt, session.tgz."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    (out / "machine.txt").write_text(MACHINE)
    (out / "stages.txt").write_text("build            rc=0     61s  ok\ntests            rc=1    120s  1 failed\n")
    raw = {"datetime": "2026-11-27T10:05:00.000000+00:00", "commit_info": {"id": "0123456789abcdef", "dirty": False},
           "machine_info": {"node": "gpu"}, "benchmarks": [head_benchmark("triton", 0.081), head_benchmark("eager", 0.412)]}
    (work / "lift_head.json").write_text(json.dumps(raw))
    (work / "matching-cuda-nvidia-h200-2026-11-27.json").write_text(json.dumps({"device": "NVIDIA H200", "rows": []}))
    (work / "tests.log").write_text("..F\nFAILED tests/test_matching.py::test_x - AssertionError\n1 failed, 2 passed\n")
    with tarfile.open(out / "session.tgz", "w:gz") as archive:
        archive.add(work, arcname=".")
    return out


def test_import_session_records_the_gpu_run(session, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(record, "RESULTS", results)
    written = {path.name for path in record.import_session(session)}
    assert written == {"matching-cuda-nvidia-h200-2026-11-27.json", "bench-nvidia-h200-2026-11-27.json",
                       "gpu-session-nvidia-h200-2026-11-27.txt"}
    rec = json.loads((results / "bench-nvidia-h200-2026-11-27.json").read_text())
    assert rec["device"] == "NVIDIA H200" and rec["commit"] == "0123456" and rec["torch"] == "2.11.0+cu130"
    assert rec["date"].startswith("2026-11-27T10:05")
    summary = (results / "gpu-session-nvidia-h200-2026-11-27.txt").read_text()
    assert "tests            rc=1" in summary and "FAILED tests/test_matching.py::test_x" in summary
    table = "\n".join(record.render_device(rec))
    assert "| triton | bfloat16 | 224 | 1 | 0.0810 | 0.0058 | 14.0x |" in table
    assert "| eager | bfloat16 | 224 | 1 | 0.4120 |" in table


def test_import_session_cli_says_what_is_missing(tmp_path):
    run = subprocess.run([sys.executable, str(BENCH / "record.py"), "--import-session", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "holds no machine.txt, stages.txt, session.tgz" in run.stderr
    assert "Traceback" not in run.stderr


def test_import_session_keeps_what_a_stopped_stage_printed(session, tmp_path, monkeypatch):
    """A stage stopped at its limit leaves an empty JSON: the head lines it printed and the training log still count."""
    work = tmp_path / "work"
    (work / "pipeline.json").write_text("")
    (work / "head.log").write_text(
        "[triton bfloat16 224px b1] floor 0.0058 ms (5.69 MB, 5.78 GFLOP on H100), CUDA-event median 0.0900 ms = 15.5x floor, "
        "relative error vs eager fp32 2.5e-03\n.\n"
        "[eager float32 448px b32] floor 1.4958 ms (852.52 MB, 739.98 GFLOP on H100), CUDA-event median 7.4870 ms = 5.0x floor, "
        "relative error vs eager fp32 3.8e-04\n!!!! KeyboardInterrupt !!!!\n")
    steps = [{"event": "start", "config": {"backbone": "dino_s8", "batch": 64, "imsize": 448}}]
    steps += [{"event": "step", "step": i, "images_per_s": rate} for i, rate in enumerate([26.0, 570.0, 575.0, 580.0], 1)]
    (work / "train-log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in steps))
    line = {"name": "test_pipeline_throughput[torch-bf16-224px-b1]", "group": "pipeline 224px batch 1", "passed": True,
            "stats": {"mean": 2e-3, "stddev": 1e-5, "rounds": 20},
            "extra_info": {"kind": "pipeline", "backend": "torch", "precision": "bf16", "size": 224, "batch": 1,
                           "gflops": 47.6, "images_per_s": 500.0}}
    (work / "pipeline-bench.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(line)[:40])  # killed mid-line
    results = reimport(session, work, tmp_path, monkeypatch)
    rec = json.loads((results / "bench-nvidia-h200-2026-11-27.json").read_text())
    heads = {(b["extra_info"]["variant"], b["extra_info"]["height"], b["extra_info"]["batch"]): b
             for b in rec["benchmarks"] if b["extra_info"]["kind"] == "lift_head"}
    assert set(heads) == {("triton", 224, 1), ("eager", 224, 1), ("eager", 448, 32)}
    pipeline = [b for b in rec["benchmarks"] if b["extra_info"]["kind"] == "pipeline"]
    assert len(pipeline) == 1 and pipeline[0]["mean_s"] == 2e-3  # from the per-benchmark log of a stopped stage
    assert "| torch bf16 | 500.0 |" in "\n".join(record.render_device(rec))
    assert heads[("triton", 224, 1)]["extra_info"]["device_ms"] == 0.081  # the JSON wins over the printed line
    printed = heads[("eager", 448, 32)]
    assert printed["extra_info"]["device_ms"] == 7.487 and printed["mean_s"] == pytest.approx(7.487e-3)
    assert printed["extra_info"]["dtype"] == "torch.float32" and printed["extra_info"]["rel_err_vs_eager_fp32"] == 3.8e-4
    summary = (results / "gpu-session-nvidia-h200-2026-11-27.txt").read_text()
    assert "pipeline.json: empty or cut off" in summary and "pipeline-bench.jsonl: a cut-off line skipped" in summary
    assert "test_lift_head_gpu[eager_fp32-448-32]" in {b["name"] for b in rec["benchmarks"]}  # pytest's own id
    assert "backbone dino_s8, batch 64, imsize 448): 4 steps, median 575 images/s, slowest step 26 images/s" in summary


def test_a_second_import_keeps_the_first_and_names_the_tested_commit(session, tmp_path, monkeypatch):
    """Two device calls on one day: both records stay. The commit is the tree sent (LIFT_GPU_COMMIT), not the device's git."""
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(record, "RESULTS", results)
    record.import_session(session)
    (session / "machine.txt").write_text(MACHINE + "tested commit: abcdef1\n")
    written = {path.name for path in record.import_session(session)}
    assert written == {"matching-cuda-nvidia-h200-2026-11-27-run.json", "bench-nvidia-h200-2026-11-27-abcdef1.json",
                       "gpu-session-nvidia-h200-2026-11-27-abcdef1.txt"}
    assert json.loads((results / "bench-nvidia-h200-2026-11-27.json").read_text())["commit"] == "0123456"
    assert json.loads((results / "bench-nvidia-h200-2026-11-27-abcdef1.json").read_text())["commit"] == "abcdef1"


def test_import_without_any_json_dates_the_record_from_machine_txt(session, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "lift_head.json").write_text("")  # the stage was stopped: only its printed lines remain
    (work / "head.log").write_text(
        "[tritonflat bfloat16 224px b1] floor 0.0058 ms (5.69 MB, 5.78 GFLOP on H100), CUDA-event median 0.0700 ms = 12.0x floor, "
        "relative error vs eager fp32 2.5e-03\n")
    results = reimport(session, work, tmp_path, monkeypatch)
    rec = json.loads((results / "bench-nvidia-h200-2026-11-27.json").read_text())
    assert rec["date"].startswith("2026-11-27T10:00")
    assert [b["name"] for b in rec["benchmarks"]] == ["test_lift_head_gpu[tritonflat_bf16-224-1]"]


def test_benchmark_records_are_written_only_when_asked(tmp_path, monkeypatch, capsys):
    import benchlib

    monkeypatch.setattr(benchlib, "RESULTS", tmp_path / "results")
    monkeypatch.delenv("LIFT_BENCH_RECORD", raising=False)
    assert benchlib.write_record("export-cpu-x.json", {"a": 1}) is None
    assert not (tmp_path / "results").exists() and '"a": 1' in capsys.readouterr().out
    monkeypatch.setenv("LIFT_BENCH_RECORD", "1")
    path = benchlib.write_record("export-cpu-x.json", {"a": 1})
    assert path == tmp_path / "results" / "export-cpu-x.json" and json.loads(path.read_text()) == {"a": 1}


def test_skip_reasons_and_notes_stand_alone():
    """Tests and benchmarks cite no notes that users do not have."""
    private = ("platform" + "-facts", "lift" + "-facts", "../" + "shared/")
    root = BENCH.parent
    citing = [str(path.relative_to(root)) for folder in ("tests", "bench") for path in sorted((root / folder).rglob("*.py"))
              if any(name in path.read_text(encoding="utf-8") for name in private)]
    assert citing == []
