"""Shared command-line checks: argparse types, the device, output paths, torch.load messages."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from lift_rt.arguments import check_writable
from lift_rt.cli import non_negative_int, positive_float, positive_int
from lift_rt.devices import device_arg
from lift_rt.errors import load_error_reason


def test_argparse_types_accept_their_range_and_reject_the_rest():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_float("0.5") == 0.5
    for parse, bad in ((positive_int, "0"), (positive_int, "1.5"), (non_negative_int, "-1"), (positive_float, "0"),
                       (positive_float, "inf"), (positive_float, "nan"), (positive_float, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_device_arg_turns_a_missing_cuda_device_into_a_value_error(monkeypatch):
    assert device_arg("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda:1: .*no CUDA device"):
        device_arg("cuda:1")


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("")
    check_writable(tmp_path / "new" / "deeper" / "x.json", "--json")  # missing parents are created later
    check_writable(tmp_path / "file", "--json")  # an existing file is overwritten
    check_writable(tmp_path / "new" / "run", "--out", folder=True)
    check_writable(tmp_path, "--out", folder=True)
    with pytest.raises(ValueError, match=r"--json .*x.json cannot be created: .*file is not a folder"):
        check_writable(tmp_path / "file" / "x.json", "--json")
    with pytest.raises(ValueError, match="is a folder, not a file"):
        check_writable(tmp_path, "--json")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable(tmp_path / "file", "--out", folder=True)


def test_load_error_reason_keeps_one_line_and_drops_the_weights_only_advice():
    advice = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed\n\nmore"
    )
    assert load_error_reason(advice) == "UnpicklingError"
    assert load_error_reason(RuntimeError("PytorchStreamReader failed\nline two")) == "RuntimeError: PytorchStreamReader failed"
    assert load_error_reason(EOFError()) == "EOFError"


@pytest.mark.parametrize("command", [
    "lift_rt.train", "lift_rt.data sample", "lift_rt.eval", "lift_rt.eval fidelity", "lift_rt.eval pck",
    "lift_rt.eval davis", "lift_rt.eval corloc", "lift_rt.viz similarity", "lift_rt.export", "lift_rt.extract",
])
def test_help_is_plain_text(command, capsys):
    """No reST double backticks in any command's --help."""
    import importlib

    module, *sub = command.split()
    package = importlib.import_module(module)
    main = (importlib.import_module(f"{module}.__main__") if hasattr(package, "__path__") else package).main
    with pytest.raises(SystemExit) as exit_info:
        main([*sub, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usage: python -m " in out and "``" not in out
