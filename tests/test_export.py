"""ONNX export of the fused pipeline, the artifact cache, TensorRT glue (fake module) and the CLI."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from lift_rt.backbones import BACKBONES, build_backbone
from lift_rt.engine import build_pipeline
from lift_rt.model import LiFT
from lift_rt.export import cache as cache_mod
from lift_rt.export import onnx_export, trt_engine
from lift_rt.export.__main__ import build_parser, main
from lift_rt.export.cache import ArtifactKey, cached_artifact, invalid_reason, sidecar, weights_hash
from lift_rt.export.onnx_export import OPSET, cached_onnx, check_onnx, export_onnx, validate_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def seeded_pipeline(backbone: str, seed: int = 0, layer: int | None = None):
    """Random weights fixed by ``seed`` (same weights hash in every test module, so graphs are shared)."""
    torch.manual_seed(seed)
    return build_pipeline(backbone, random_init=True, layer=layer)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "lift_rt_onnx_cache"


@pytest.fixture(scope="module")
def pipelines() -> dict:
    """The full dino_s16 (as the CLI builds it), and 4-block pipelines where depth adds only export time."""
    return {
        "dino_s16": seeded_pipeline("dino_s16"),
        "dino_s16/4": seeded_pipeline("dino_s16", layer=3),
        "dino_s8/4": seeded_pipeline("dino_s8", layer=3),
    }


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("backbone,resolution", [("dino_s16", 112), ("dino_s16/4", 224), ("dino_s8/4", 112)])
def test_fp32_graph_matches_pytorch(pipelines, onnx_cache, backbone, resolution):
    pipeline = pipelines[backbone]
    path = cached_onnx(pipeline, resolution, cache_dir=onnx_cache)
    parity = check_onnx(path, pipeline, batch=3, seed=resolution)  # batch 3: not the export example's 2
    assert parity.ok, parity
    assert parity.rel <= 1e-5, parity  # the CLI's pass mark is the 1e-4; fp32 measures ~8e-7
    # Positional embedding precomputed: no (antialiased bicubic) Resize for TensorRT to reject.
    assert "Resize" not in op_types(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "batch must be dynamic"


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_exports_and_matches_pytorch(onnx_cache, backbone):
    # One block and a 2 x 2 patch grid: the smallest graph that still has the backbone's own parts
    # (positional embedding, norm, facet) and, for patch 14, the fixed-window pooling (7 -> 4 cells).
    pipeline = seeded_pipeline(backbone, layer=0)
    size = 2 * BACKBONES[backbone].patch_size
    parity = check_onnx(cached_onnx(pipeline, size, cache_dir=onnx_cache), pipeline, batch=3, seed=1)
    assert parity.ok and parity.rel <= 1e-5, parity


def test_batch_one_runs(pipelines, onnx_cache):
    pipeline = pipelines["dino_s16"]
    parity = check_onnx(cached_onnx(pipeline, 112, cache_dir=onnx_cache), pipeline, batch=1, seed=7)
    assert parity.ok and parity.rel <= 1e-5, parity


def test_fp16_graph_keeps_layernorm_fp32_and_matches(pipelines, onnx_cache):
    pipeline = pipelines["dino_s16/4"]
    path = cached_onnx(pipeline, 112, precision="fp16", cache_dir=onnx_cache)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # images stay fp32
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    produced = {out: node for node in model.graph.node for out in node.output}
    norms = [node for node in model.graph.node if node.op_type == "LayerNormalization"]
    assert norms and all(produced[n.input[0]].op_type == "Cast" for n in norms), "LayerNorm input must be cast to fp32"
    parity = check_onnx(path, pipeline, precision="fp16")
    assert parity.ok and parity.rel <= 1e-2, parity


def test_bf16_graph_is_valid_onnx(pipelines, onnx_cache):
    # onnxruntime has no bf16 Conv, so only the checker runs here; TensorRT consumes this graph.
    path = cached_onnx(pipelines["dino_s16/4"], 112, precision="bf16", cache_dir=onnx_cache)
    validate_onnx(path)
    model = onnx.load(str(path))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET["bf16"]


def test_non_square_two_iterations_match(onnx_cache):
    pipeline = seeded_pipeline("dino_s16", layer=3)
    pipeline.iterations = 2  # the image is bilinearly upsampled inside the graph between LiFT steps
    parity = check_onnx(cached_onnx(pipeline, (64, 96), cache_dir=onnx_cache), pipeline, batch=2)
    assert parity.ok and parity.rel <= 1e-5, parity


def test_export_leaves_pipeline_untouched(pipelines):
    pipeline = pipelines["dino_s16"]
    assert pipeline.backbone.frozen_grid is None
    assert next(pipeline.parameters()).dtype == torch.float32


def test_frozen_pos_embed_matches_interpolation():
    vit = build_backbone("dino_s16", random_init=True, layer=0)
    expected = vit.interpolate_pos_embed(7, 5)
    vit.freeze_pos_embed(112, 80)
    assert vit.frozen_grid == (7, 5)
    torch.testing.assert_close(vit.interpolate_pos_embed(7, 5), expected, rtol=0, atol=0)
    assert vit.interpolate_pos_embed(14, 14) is vit.pos_embed  # other grids are still resized / native
    with pytest.raises(ValueError, match="multiple of 16"):
        vit.freeze_pos_embed(100, 112)


def test_export_rejects_bad_resolution(pipelines, tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        export_onnx(pipelines["dino_s8/4"], tmp_path / "x.onnx", 100)


# --- cache -----------------------------------------------------------------------------------------

@pytest.fixture
def log_lines(caplog):
    """``log_lines()``: the messages lift_rt's loggers wrote so far in this test (INFO and above)."""
    caplog.set_level(logging.INFO, logger="lift_rt")
    return lambda: [record.getMessage() for record in caplog.records]


def make_key(**changes) -> ArtifactKey:
    fields = dict(backbone="dino_s8", facet="key", layer=11, iterations=1, weights="0" * 16, height=224, width=224,
                  precision="fp16", runtime="tensorrt-10.13", max_batch=32, opt_batch=8, device="H100-sm90")
    return ArtifactKey(**{**fields, **changes})


@pytest.mark.parametrize("change", [
    {"backbone": "dino_s16"}, {"facet": "query"}, {"layer": 9}, {"iterations": 2}, {"weights": "1" * 16},
    {"height": 112}, {"width": 112}, {"precision": "bf16"}, {"runtime": "tensorrt-11.4"}, {"max_batch": 16},
    {"opt_batch": 4}, {"device": "A100-sm80"}, {"export_format": 99},
])
def test_every_key_field_changes_the_file_name(change):
    assert make_key(**change).stem != make_key().stem


def test_weights_hash_sees_every_weight():
    lift = LiFT(dim=384, patch_size=16)
    before = weights_hash(lift)
    assert weights_hash(lift) == before
    with torch.no_grad():
        lift.outc.bias[3] += 1e-6
    assert weights_hash(lift) != before


def counting_builder(payload: bytes = b"engine-bytes"):
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(payload)

    return build, calls


def test_cache_builds_once_then_reuses(tmp_path, log_lines):
    build, calls = counting_builder()
    key = make_key()
    first = cached_artifact(tmp_path, key, ".plan", build, "building a test plan")
    assert log_lines()[0] == "building a test plan" and log_lines()[1].startswith(f"wrote {first} (0.0 MiB, ")
    second = cached_artifact(tmp_path, key, ".plan", build, "building a test plan")
    assert first == second and len(calls) == 1
    assert first.read_bytes() == b"engine-bytes"
    assert json.loads(sidecar(first).read_text())["key"] == key.as_dict()
    assert log_lines()[2:] == [f"using cached {first}"]


def test_cached_onnx_announces_an_export_and_a_reuse(monkeypatch, tmp_path, log_lines):
    """A library call that exports for seconds says so (INFO), and says when it reuses a graph."""
    monkeypatch.setattr(onnx_export, "export_onnx", lambda pipeline, path, resolution, precision: Path(path).write_bytes(b"graph"))
    pipeline = seeded_pipeline("dino_s8", layer=0)
    path = cached_onnx(pipeline, (16, 24), cache_dir=tmp_path)
    assert log_lines()[0] == "exporting dino_s8 16x24 fp32 to ONNX (takes 10 s to a minute on a CPU)"
    assert cached_onnx(pipeline, (16, 24), cache_dir=tmp_path) == path
    assert log_lines()[-1] == f"using cached {path}"


@pytest.mark.parametrize("damage,reason", [
    (lambda path: path.write_bytes(path.read_bytes()[:5]), "checksum"),  # truncated plan
    (lambda path: sidecar(path).unlink(), "missing"),  # interrupted build
    (lambda path: sidecar(path).write_text("{not json"), "unreadable"),
    (lambda path: sidecar(path).write_text("[]"), "unreadable"),  # valid JSON, not a record
    (lambda path: sidecar(path).write_text("null"), "unreadable"),
    (lambda path: sidecar(path).write_text(json.dumps({"key": make_key(max_batch=4).as_dict()})), "stale"),
])
def test_corrupt_or_stale_artifact_is_rebuilt_with_a_warning(tmp_path, caplog, damage, reason):
    build, calls = counting_builder()
    key = make_key()
    path = cached_artifact(tmp_path, key, ".plan", build, "building")
    damage(path)
    assert reason in invalid_reason(path, key)
    again = cached_artifact(tmp_path, key, ".plan", build, "building")
    assert len(calls) == 2 and invalid_reason(again, key) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("rebuilding") and reason in warnings[0], warnings


def test_failed_build_leaves_nothing_that_looks_valid(tmp_path):
    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cached_artifact(tmp_path, make_key(), ".plan", broken, "building")
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_that_is_a_file_is_a_value_error(tmp_path):
    build, calls = counting_builder()
    (tmp_path / "taken").write_text("a file")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(ValueError, match="cannot create the cache folder"):
            cached_artifact(folder, make_key(), ".plan", build, "building")
    assert calls == []


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cache_mod.CACHE_ENV, str(tmp_path))
    assert cache_mod.default_cache_dir() == tmp_path


def write_entry(directory: Path, weights: str, mtime: float) -> Path:
    """A 1000-byte fake artifact (a distinct key per ``weights``) whose last use was at ``mtime``."""
    path = cached_artifact(directory, make_key(weights=weights), ".plan", counting_builder(b"x" * 1000)[0], "building")
    os.utime(path, (mtime, mtime))
    return path


def entry_bytes(path: Path) -> int:
    return path.stat().st_size + sidecar(path).stat().st_size


def set_cache_limit(monkeypatch, nbytes: float, cache_dir: Path) -> None:
    """Limit the default cache, ``cache_dir``, to ``nbytes``."""
    monkeypatch.setenv(cache_mod.CACHE_MAX_ENV, repr(nbytes / 2**30))
    monkeypatch.setenv(cache_mod.CACHE_ENV, str(cache_dir))


def test_cache_removes_least_recently_used_entries_over_the_limit(monkeypatch, tmp_path, log_lines):
    old, used = write_entry(tmp_path, "a" * 16, 1000), write_entry(tmp_path, "b" * 16, 2000)
    other = tmp_path / "notes.txt"  # not a cache entry: neither counted nor removed
    other.write_bytes(b"y" * 10_000)
    set_cache_limit(monkeypatch, 2.5 * entry_bytes(old), tmp_path)
    assert cached_artifact(tmp_path, make_key(weights="a" * 16), ".plan", counting_builder()[0], "building") == old
    assert old.stat().st_mtime > 2000  # a cache hit counts as a use
    new = write_entry(tmp_path, "c" * 16, 3000)
    assert not used.exists() and not sidecar(used).exists()
    assert old.exists() and new.exists() and other.exists()
    removals = [m for m in log_lines() if m.startswith("removed")]
    assert len(removals) == 1 and used.name in removals[0] and "MiB" in removals[0]
    assert "least recently used" in removals[0] and cache_mod.CACHE_MAX_ENV in removals[0]


def test_cache_keeps_the_entry_just_written_even_over_the_limit(monkeypatch, tmp_path):
    set_cache_limit(monkeypatch, 100, tmp_path)  # smaller than any entry
    first = write_entry(tmp_path, "a" * 16, 1000)
    second = write_entry(tmp_path, "b" * 16, 2000)
    assert second.exists() and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second.name, sidecar(second).name])


def test_a_folder_named_by_the_user_is_never_pruned(monkeypatch, tmp_path):
    set_cache_limit(monkeypatch, 100, tmp_path / "cache")
    out = tmp_path / "out"  # e.g. python -m lift_rt.export --out DIR
    first = write_entry(out, "a" * 16, 1000)
    second = write_entry(out, "b" * 16, 2000)
    assert first.exists() and second.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cache_limit_zero_or_negative_never_prunes(monkeypatch, tmp_path, value):
    monkeypatch.setenv(cache_mod.CACHE_MAX_ENV, value)
    paths = [write_entry(tmp_path, digit * 16, 1000 + i) for i, digit in enumerate("abc")]
    assert all(path.exists() for path in paths)


def test_cache_limit_default_and_bad_values(monkeypatch):
    monkeypatch.delenv(cache_mod.CACHE_MAX_ENV, raising=False)
    assert cache_mod.cache_limit_bytes() == 8 * 2**30
    monkeypatch.setenv(cache_mod.CACHE_MAX_ENV, "0.5")
    assert cache_mod.cache_limit_bytes() == 2**29
    for bad in ("8GB", "nan", "inf"):
        monkeypatch.setenv(cache_mod.CACHE_MAX_ENV, bad)
        with pytest.raises(ValueError, match=cache_mod.CACHE_MAX_ENV):
            cache_mod.cache_limit_bytes()


# --- TensorRT glue against a fake tensorrt module (no TensorRT here) --------------------------------

class FakeTensorRT(types.ModuleType):
    """Records what the builder is asked for; ``plan`` None mimics a failed build. A timing cache whose bytes
    start with ``DAMAGED`` cannot be read; one starting with ``FOREIGN`` (another TensorRT or GPU) is refused
    by ``set_timing_cache`` unless mismatches are ignored, as TensorRT does."""

    def __init__(self, plan: bytes | None = b"PLAN", parse_ok: bool = True, deserialize_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.99.0"
        self.record: dict = {}
        fake = self

        class Logger:
            WARNING, ERROR = 2, 1

            def __init__(self, level): pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.record["profile"] = (name, lo, opt, hi)

        class Cache:
            def __init__(self, data): self.data = data

            def serialize(self): return b"TIMING" + self.data

        class Config:
            def set_memory_pool_limit(self, pool, size): fake.record["workspace"] = (pool, size)

            def create_timing_cache(self, data):
                fake.record["timing_in"] = data
                if data.startswith(b"DAMAGED"):
                    raise RuntimeError("timing cache is corrupted")
                self.cache = Cache(data)
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.record.setdefault("ignore_mismatch", []).append(ignore_mismatch)
                return ignore_mismatch or not cache.data.startswith(b"FOREIGN")

            def get_timing_cache(self): return self.cache

            def add_optimization_profile(self, profile):
                fake.record["profiles"] = fake.record.get("profiles", 0) + 1
                return 0 if fake.profile_ok else -1

        class Builder:
            def __init__(self, logger): pass

            def create_network(self, flags):
                fake.record["network_flags"] = flags
                return object()

            def create_builder_config(self): return Config()

            def create_optimization_profile(self): return Profile()

            def build_serialized_network(self, network, config):
                fake.record["builds"] = fake.record.get("builds", 0) + 1
                return plan

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger): pass

            def parse_from_file(self, path):
                fake.record["parsed"] = path
                return parse_ok

            def get_error(self, i): return "unsupported operator Foo"

        class Runtime:
            def __init__(self, logger): pass

            def deserialize_cuda_engine(self, data):
                return ("engine", bytes(data)) if fake.deserialize_ok and data == plan else None

        self.deserialize_ok = deserialize_ok
        self.profile_ok = True
        for cls in (Logger, NetworkDefinitionCreationFlag, MemoryPoolType, Builder, OnnxParser, Runtime):
            setattr(self, cls.__name__, cls)


def test_build_engine_uses_strongly_typed_network_and_profile(monkeypatch, tmp_path):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"old")
    trt_engine.build_engine(tmp_path / "g.onnx", tmp_path / "e.plan", height=224, width=160, max_batch=32, opt_batch=8,
                            workspace_bytes=123, timing_cache=timing)
    assert fake.record["network_flags"] == 1 << 5
    assert fake.record["ignore_mismatch"] == [False]  # a cache from another TensorRT or GPU is refused, not used
    assert fake.record["profile"] == ("images", (1, 3, 224, 160), (8, 3, 224, 160), (32, 3, 224, 160))
    assert fake.record["workspace"] == ("workspace", 123) and fake.record["profiles"] == 1
    assert fake.record["timing_in"] == b"old" and timing.read_bytes() == b"TIMINGold"
    assert (tmp_path / "e.plan").read_bytes() == b"PLAN"


@pytest.mark.parametrize("stored, reason", [(b"DAMAGED half a cache", "damaged (RuntimeError: timing cache is corrupted)"),
                                            (b"FOREIGN timings", "does not match this TensorRT build or GPU")])
def test_unusable_timing_cache_is_replaced(monkeypatch, tmp_path, caplog, stored, reason):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    timing = tmp_path / "timing.cache"
    timing.write_bytes(stored)
    trt_engine.build_engine(tmp_path / "g.onnx", tmp_path / "e.plan", height=112, width=112, max_batch=4, opt_batch=4,
                            timing_cache=timing)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"timing cache {timing}" in warnings[0] and reason in warnings[0], warnings
    assert fake.record["timing_in"] == b"" and timing.read_bytes() == b"TIMING"  # a fresh cache, written whole
    assert True not in fake.record["ignore_mismatch"]  # mismatch checks stay on, for the fresh cache too
    assert not list(tmp_path.glob("*.tmp"))


def test_refused_profile_is_an_error(monkeypatch, tmp_path):
    fake = FakeTensorRT()
    fake.profile_ok = False
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(RuntimeError, match="refused the optimisation profile batch 1..4"):
        trt_engine.build_engine(tmp_path / "g.onnx", tmp_path / "e.plan", height=112, width=112, max_batch=4, opt_batch=4)


@pytest.mark.parametrize("accepts, out_shape, match", [(False, (2, 384, 14, 14), "refused input shape"),
                                                       (True, (2, 384, 7, 7), "gives a \\(2, 384, 7, 7\\) output")])
def test_tensorrt_run_checks_shapes_before_writing(pipelines, accepts, out_shape, match):
    """The output buffer is sized from the pipeline: an engine that disagrees must not be run into it."""
    from lift_rt.backends import TensorRTBackend

    class Context:
        def set_input_shape(self, name, shape): return accepts

        def get_tensor_shape(self, name): return out_shape

        def set_tensor_address(self, name, ptr): raise AssertionError("must not be reached")

    backend = object.__new__(TensorRTBackend)
    backend.pipeline, backend.max_batch = pipelines["dino_s16/4"], 4
    with pytest.raises(RuntimeError, match=match):
        backend.run_chunk(Context(), torch.zeros(2, 3, 112, 112))


@pytest.mark.parametrize("fake,match", [(FakeTensorRT(parse_ok=False), "unsupported operator Foo"), (FakeTensorRT(plan=None), "failed to build")])
def test_build_engine_failures_are_explained(monkeypatch, tmp_path, fake, match):
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(RuntimeError, match=match):
        trt_engine.build_engine(tmp_path / "g.onnx", tmp_path / "e.plan", height=112, width=112, max_batch=4, opt_batch=4)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A fake tensorrt, a fake CUDA device and a stub ONNX export: exercises cached_engine end to end."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(name="NVIDIA H100 80GB", major=9, minor=0))

    def stub_onnx(pipeline, resolution, *, precision, cache_dir):
        path = Path(cache_dir) / "stub.onnx"
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr(trt_engine, "cached_onnx", stub_onnx)
    return fake


def test_cached_engine_builds_once_and_rebuilds_undeserializable(fake_gpu, pipelines, tmp_path, log_lines):
    pipeline = pipelines["dino_s16/4"]
    path, engine = trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=4, cache_dir=tmp_path)
    assert engine == ("engine", b"PLAN") and fake_gpu.record["builds"] == 1
    assert "building a TensorRT 10.99.0 engine for dino_s16 112x112 fp16, batch 1..4 (takes minutes)" in log_lines()
    assert "NVIDIA-H100-80GB-sm90" in json.dumps(json.loads(sidecar(path).read_text()))
    assert "tensorrt-10.99.0" in sidecar(path).read_text()
    trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=4, cache_dir=tmp_path)
    assert fake_gpu.record["builds"] == 1
    fake_gpu.deserialize_ok = False  # e.g. a plan from another TensorRT build
    with pytest.raises(RuntimeError, match="cannot deserialize"):
        trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=4, cache_dir=tmp_path)
    assert fake_gpu.record["builds"] == 2
    assert any("could not deserialize" in m for m in log_lines())
    fake_gpu.deserialize_ok = True
    # A new batch range is another engine, not a reuse.
    path8, _ = trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=8, cache_dir=tmp_path)
    assert path8 != path and fake_gpu.record["builds"] == 3


def test_new_engine_prunes_the_cache(fake_gpu, pipelines, monkeypatch, tmp_path, log_lines):
    set_cache_limit(monkeypatch, 100, tmp_path)
    pipeline = pipelines["dino_s16/4"]
    path4, _ = trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=4, cache_dir=tmp_path)
    path8, _ = trt_engine.cached_engine(pipeline, 112, precision="fp16", max_batch=8, cache_dir=tmp_path)
    assert path8.exists() and not path4.exists()
    assert (tmp_path / "stub.onnx").exists()  # the stub export has no sidecar: not an entry
    assert any(m.startswith("removed") and path4.name in m for m in log_lines())


def test_tensorrt_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    assert "tensorrt" in trt_engine.tensorrt_unavailable_reason("cuda")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    assert "not on cpu" in trt_engine.tensorrt_unavailable_reason("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in trt_engine.tensorrt_unavailable_reason("cuda")


@pytest.mark.parametrize("max_batch,opt,match", [(0, None, "max batch"), (4, 8, "opt batch"), (4, 0, "opt batch")])
def test_bad_batch_range(max_batch, opt, match):
    with pytest.raises(ValueError, match=match):
        trt_engine.check_batch_range(max_batch, opt)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--backbone", "--lift-weights", "--random-init", "--resolution", "--max-batch", "--precision", "--out"):
        assert option in text
    assert build_parser().parse_args(["--backbone", "dino_s8", "--random-init"]).precision == "fp16"  # the default
    status = text[text.index("exit status:"):]
    assert all(f"\n  {code}  " in status for code in (0, 1, 2)) and "python -m lift_rt.export: error:" in status


@pytest.mark.parametrize("argv,match", [
    (["--backbone", "dino_s8", "--random-init", "--resolution", "100"], "multiple of 8"),
    (["--backbone", "dino_s16", "--random-init", "--resolution", "224x200"], "multiple of 16"),
    (["--backbone", "dino_s8", "--random-init", "--resolution", "abc"], "resolution must be"),
    (["--backbone", "resnet50", "--random-init"], "unknown backbone"),
    (["--backbone", "dino_s8", "--random-init", "--max-batch", "0"], "max batch must be >= 1"),
    (["--backbone", "dino_s8", "--random-init", "--iterations", "0"], "iterations must be >= 1"),
    (["--backbone", "dino_s8", "--random-init", "--precision", "int8"], "invalid choice"),
    (["--backbone", "dino_s8"], "no LiFT weights"),
    (["--backbone", "dino_s8", "--random-init", "--backbone-weights", "x.pth"], "not allowed with"),
    (["--backbone", "dino_s8", "--lift-weights", "/nonexistent/lift.pth"], "does not exist"),
    (["--backbone", "dino_s8", "--random-init", "--lift-weights", "/"], "--lift-weights / is a folder, not a file"),
    (["--backbone", "dino_s8", "--random-init", "--workspace-gb", "nan"], "--workspace-gb: must be a positive number"),
    (["--backbone", "dino_s8", "--random-init", "--workspace-gb", "inf"], "--workspace-gb: must be a positive number"),
    (["--backbone", "dino_s8", "--random-init", "--workspace-gb", "0"], "--workspace-gb: must be a positive number"),
    (["--backbone", "dino_s8", "--random-init", "--layer", "12"], "layer 12 out of range for dino_s8 (0..11)"),
])
def test_cli_bad_arguments(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", "dino_s16", "--random-init", "--out", str(taken)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "is a file, not a folder" in captured.err
    assert "[1/4]" not in captured.out


@pytest.mark.parametrize("out", ["read_only", "read_only/new"])
def test_cli_read_only_out_is_refused_before_any_work(capsys, monkeypatch, tmp_path, out):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer as the system does for any other user
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and not (mode & os.W_OK and Path(path) == read_only))
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", "dino_s16", "--random-init", "--out", str(tmp_path / out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert f"python -m lift_rt.export: error: --out {tmp_path / out} cannot be written: {read_only} is not writable" in captured.err
    assert "[1/4]" not in captured.out


def test_cli_late_error_is_one_prefixed_line_and_status_2(capsys, tmp_path):
    garbage = tmp_path / "lift.pth"
    garbage.write_bytes(b"garbage")
    code = main(["--backbone", "dino_s16", "--random-init", "--lift-weights", str(garbage), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"python -m lift_rt.export: error: cannot read LiFT checkpoint {garbage}") and err.count("\n") == 1, err


def test_cli_bf16_summary_says_parity_is_not_checked(capsys, pipelines, onnx_cache):
    # The graph of test_bf16_graph_is_valid_onnx (same seed and layer), reused from the shared cache when present.
    torch.manual_seed(0)
    code = main(["--backbone", "dino_s16", "--random-init", "--layer", "3", "--resolution", "112", "--precision", "bf16",
                 "--out", str(onnx_cache)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "  checker OK\n" in out
    assert ("  parity  not checked: onnxruntime's CPU provider cannot run bf16 graphs; only a TensorRT engine build "
            "(on an NVIDIA GPU) checks the bf16 numerics\n") in out
    assert "onnxruntime CPU vs PyTorch" not in out


def test_cli_exports_checks_and_explains_missing_engine(capsys, onnx_cache):
    # Same seed as the fixtures: the graph is reused from the shared cache when present.
    torch.manual_seed(0)
    code = main(["--backbone", "dino_s16", "--random-init", "--resolution", "112", "--precision", "fp32", "--out", str(onnx_cache)])
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert code == 0, out
    assert "[4/4]" in out and "summary" in out
    assert "relative" in out and ": OK" in out
    onnx_line = next(line for line in out.splitlines() if line.strip().startswith("onnx "))
    assert Path(onnx_line.split()[1]).is_file() and "MiB" in onnx_line
    assert ("exporting dino_s16 112x112 fp32 to ONNX" in err) != ("using cached " in err)  # the library's log, on stderr
    reason = trt_engine.tensorrt_unavailable_reason("cuda")
    if reason is not None:
        assert "engine  not built: " + reason + "\n" in out
        assert out.count("not built") == 1 and out.count(reason) == 1, out  # said once, in the summary
        assert "python -m lift_rt.export --backbone dino_s16 --random-init --resolution 112 --precision fp32 --out " in out
    else:
        assert "parity  TensorRT vs PyTorch" in out


def test_cli_engine_failure_keeps_the_onnx_summary(capsys, monkeypatch, onnx_cache):
    """A TensorRT or CUDA error of any type: the summary of what was written, then the error line and status 2."""
    import lift_rt.export.__main__ as cli

    def failing_build(*args, **kwargs):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setattr(cli, "build_tensorrt", failing_build)
    torch.manual_seed(0)
    code = cli.main(["--backbone", "dino_s16", "--random-init", "--resolution", "112", "--precision", "fp32", "--out", str(onnx_cache)])
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if "error" in line]  # stderr also has the library's log lines
    assert errors == ["python -m lift_rt.export: error: TensorRT engine: TypeError: pybind11::init(): factory function returned nullptr"]
    assert captured.err.endswith(errors[0] + "\n")
    assert "summary" in captured.out and "engine  not built: the build failed (TypeError" in captured.out
    assert "onnx    " in captured.out and ": OK" in captured.out
