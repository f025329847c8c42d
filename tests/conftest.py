"""Shared fixtures. No test downloads anything (the Hugging Face cache points at an empty folder)
and no test writes outside pytest's temporary folders (lift_rt's artifact cache included)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernel tests (tests/kernel_utils.py) run under Triton's interpreter here. Triton reads the
    # variable when it is first imported, and other imports bring it in early (torchvision's transforms load
    # torch._dynamo, which imports triton): set it before any test module is imported.
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def _artifact_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lift_rt_cache")


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path_factory, monkeypatch, _artifact_cache):
    monkeypatch.setenv("LIFT_RT_CACHE", str(_artifact_cache))
    cache = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cli_error(capsys):
    """``cli_error(main, argv)``: run a command-line ``main``, assert it ends with exit status 2 and an
    ``error:`` message rather than a traceback, and return what it wrote to stderr."""

    def run(main, argv: list[str]) -> str:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse-level errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "error:" in err and "Traceback" not in err, err
        return err

    return run


@pytest.fixture(params=["nested", "flat"])
def loop_form(request, monkeypatch) -> str:
    """Run a conv kernel test with each loop form (``LIFT_TRITON_LOOP``, lift_rt.kernels.runtime.flat_loops)."""
    monkeypatch.setenv("LIFT_TRITON_LOOP", request.param)
    return request.param
