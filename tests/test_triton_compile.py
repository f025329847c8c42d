"""The Triton kernels compile for sm_90 (H100 / H200) without a GPU: no spills, software-pipelined loads.

The interpreter tests check the kernels' numbers; this checks what only the GPU compiler shows
(bench/triton_compile_report.py, in a subprocess because the kernel tests switch this process to the
interpreter): a loop whose loads lost their contiguity, say, is no longer pipelined, which no CPU
test would notice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "bench" / "triton_compile_report.py"


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    pytest.importorskip("triton", reason="Triton is not installed (Linux only)")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LIFT_TRITON_AUTOTUNE")}
    run = subprocess.run([sys.executable, str(REPORT), "--first-config"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line.strip("| ").split(" | ") for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return table[1:]  # without the header


def test_every_kernel_compiles_pipelined_without_spills(rows):
    names = [r[0] for r in rows]
    assert names == ["conv2d 3x3 nested", "up_conv nested", "conv2d 3x3 flat", "up_conv flat", "match_nearest"]
    for name, _, registers, spill_bytes, _, copies, wgmma, _ in rows:
        assert 0 < int(registers) <= 255, name
        assert int(spill_bytes) == 0, name
        assert int(copies) > 0, f"{name}: no cp.async copies, so its loop is not software-pipelined"
        assert int(wgmma) > 0, f"{name}: no wgmma on sm_90"


def test_flat_form_has_one_pipelined_loop_per_operand_kind(rows):
    loops = {r[0]: int(r[7]) for r in rows}
    assert loops["conv2d 3x3 flat"] == 1 and loops["conv2d 3x3 nested"] == 9
    assert loops["up_conv flat"] == 3
