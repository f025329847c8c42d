"""Engine: the issue's headline calls, weights policy, backend choice and input errors."""

import pytest
import torch

from lift_rt import Engine, LiFT, save_lift
from lift_rt.backbones import WeightsNotFoundError


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine("dino_s8", random_init=True)


def test_headline_shapes(engine):
    assert engine.backend_name == "torch"
    assert "backend=torch" in repr(engine)
    out = engine(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 384, 56, 56) and out.dtype == torch.float32 and torch.isfinite(out).all()
    twice = Engine("dino_s8", random_init=True, iterations=2, layer=0)
    assert twice(torch.rand(2, 3, 224, 224)).shape == (2, 384, 112, 112)


def test_engine_equals_reference_modules(engine):
    images = torch.rand(1, 3, 64, 64)
    pipeline = engine.pipeline
    image = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = pipeline.lift(image, pipeline.backbone(image))
    torch.testing.assert_close(engine(images), expected)
    uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(engine(uint8), engine(uint8.float() / 255))


@pytest.mark.parametrize("size", [56, 112, 224, 448])
def test_patch8_resolutions(size):
    out = Engine("dino_s8", random_init=True, layer=0)(torch.rand(1, 3, size, size))
    assert out.shape == (1, 384, size // 4, size // 4)


@pytest.mark.parametrize("size", [112, 224, 448])
def test_patch16_resolutions(size):
    out = Engine("dino_s16", random_init=True, layer=0)(torch.rand(1, 3, size, size))
    assert out.shape == (1, 384, size // 8, size // 8)


def test_bad_resolution_message():
    engine = Engine("dino_s16", random_init=True, layer=0)
    with pytest.raises(ValueError, match="must be a multiple of 16"):
        engine(torch.rand(1, 3, 56, 56))


def test_bf16_precision_close_to_fp32():
    torch.manual_seed(0)
    fp32 = Engine("dino_s16", random_init=True, layer=1)
    bf16 = Engine("dino_s16", lift=fp32.pipeline.lift, precision="bf16", layer=1, random_init=True)
    bf16.pipeline.backbone.load_state_dict(fp32.pipeline.backbone.state_dict())
    images = torch.rand(1, 3, 64, 64)
    ref = fp32(images)
    out = bf16(images)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # bf16 (8-bit mantissa) through two ViT blocks and LiFT: measured 6-7e-3 of the output's scale.
    rel = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-2, rel
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=1)
    assert cos.min() > 0.9999  # measured 0.99999


def test_never_random_without_asking(tmp_path):
    with pytest.raises(ValueError, match="random_init=True"):
        Engine("dino_s16", backbone_weights=tmp_path / "absent.pth")
    lift_path = save_lift(LiFT(384, 16), tmp_path / "lift.safetensors", backbone="dino_s16", facet="key")
    with pytest.raises(WeightsNotFoundError, match="random_init=True"):
        Engine("dino_s16", lift=lift_path)  # LiFT given, backbone weights not: no silent random backbone


def test_lift_checkpoint_is_used(tmp_path):
    lift = LiFT(384, 16).eval()
    path = save_lift(lift, tmp_path / "lift.safetensors", backbone="dino_s16", facet="key")
    engine = Engine("dino_s16", lift=path, random_init=True, layer=0)
    for key, value in lift.state_dict().items():
        torch.testing.assert_close(engine.pipeline.lift.state_dict()[key], value)


def test_backend_errors():
    with pytest.raises(ValueError, match="unknown backend"):
        Engine("dino_s16", random_init=True, backend="tvm")
    with pytest.raises(ValueError, match="unknown precision"):
        Engine("dino_s16", random_init=True, precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            Engine("dino_s16", random_init=True, device="cuda")
    with pytest.raises(TypeError, match=r"backend 'torch' takes no option 'cache_dir' \(its options: none\)"):
        Engine("dino_s16", random_init=True, backend="torch", cache_dir="/tmp")
    with pytest.raises(TypeError, match=r"'compile' takes no option 'max_batch' \(its options: mode\)"):
        Engine("dino_s16", random_init=True, backend="compile", max_batch=4)


@pytest.mark.parametrize("device", ["meta", "mps", torch.device("meta"), "gpu"])
@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_only_cpu_and_cuda_devices(device, backend):
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        Engine("dino_s16", random_init=True, device=device, backend=backend, layer=0)


def test_cuda_devices_must_be_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="sees 1 CUDA device"):
        Engine("dino_s16", random_init=True, device="cuda:1", layer=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Engine("dino_s16", random_init=True, device="cuda:0", layer=0)


def test_engine_runs_on_an_explicit_cpu():
    engine = Engine("dino_s16", random_init=True, device="cpu", layer=0)
    assert engine.device == torch.device("cpu") and engine(torch.rand(1, 3, 32, 32)).device.type == "cpu"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_features_are_ordinary_tensors(backend, tmp_path):
    """What an Engine returns can be normalised in place and used in autograd (no inference-mode tensors)."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    options = {"cache_dir": tmp_path} if backend == "onnxruntime" else {}
    engine = Engine("dino_s16", random_init=True, layer=0, backend=backend, device="cpu", **options)
    feats = engine(torch.rand(1, 3, 32, 32))
    assert not feats.is_inference() and not feats.requires_grad
    feats /= feats.norm(dim=1, keepdim=True)
    weight = torch.ones(384, requires_grad=True)
    (feats * weight[None, :, None, None]).sum().backward()
    assert weight.grad is not None


def test_auto_backend_passes_over_one_that_refuses_the_pipeline(monkeypatch):
    """triton runs LiFT only: with another upsampler, auto takes the next backend and says why."""
    from lift_rt import backends
    from lift_rt.backends import TritonBackend
    from lift_rt.upsamplers import build_upsampler

    monkeypatch.setattr(backends, "AUTO_ORDER_CPU", ("triton", "torch"))
    monkeypatch.setattr(TritonBackend, "unavailable_reason", classmethod(lambda cls, device: None))
    engine = Engine("dino_s16", lift=build_upsampler("bilinear", 384, 16), random_init=True, layer=0, backend="auto", device="cpu")
    assert engine.backend_name == "torch"
    assert len(engine.skipped) == 1 and engine.skipped[0].startswith("triton: the Triton kernels implement LiFT only")


def test_auto_backend_says_which():
    from lift_rt.backends import auto_order, unavailable_reason

    engine = Engine("dino_s16", random_init=True, backend="auto", layer=0)
    assert engine.backend_name == next(n for n in auto_order(engine.device) if unavailable_reason(n, engine.device) is None)
    assert type(engine.backend).name == engine.backend_name  # the backend object that runs is the one named
    assert engine.backend_name in repr(engine)


def test_lift_module_must_fit_the_backbone():
    with pytest.raises(ValueError, match="width 768"):
        Engine("dino_s16", lift=LiFT(768, 16), random_init=True, layer=0)
    with pytest.raises(ValueError, match="patch size 8 does not fit dino_s16"):
        Engine("dino_s16", lift=LiFT(384, 8), random_init=True, layer=0)
    with pytest.raises(TypeError, match="lift must be a lift_rt.LiFT .*not Conv2d"):
        Engine("dino_s16", lift=torch.nn.Conv2d(384, 384, 1), random_init=True, layer=0)


def test_lift_of_another_type_is_a_clear_type_error():
    with pytest.raises(TypeError, match="lift must be a checkpoint path or an nn.Module, not int"):
        Engine("dino_s16", lift=123, random_init=True, layer=0)


@pytest.mark.parametrize("iterations", [1.5, "2", True, None])
def test_iterations_must_be_an_integer(iterations):
    with pytest.raises(TypeError, match="iterations must be an integer"):
        Engine("dino_s16", random_init=True, layer=0, iterations=iterations)


def test_iterations_accepts_numpy_integers():
    import numpy as np

    engine = Engine("dino_s16", random_init=True, layer=0, iterations=np.int64(2))
    assert engine.pipeline.iterations == 2 and type(engine.pipeline.iterations) is int
    assert engine(torch.rand(1, 3, 32, 32)).shape == (1, 384, 8, 8)


def test_random_init_is_reproducible():
    from lift_rt.engine import build_pipeline

    first, second = build_pipeline("dino_s16", random_init=True), build_pipeline("dino_s16", random_init=True)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    other = build_pipeline("dino_s16", random_init=True, seed=1)
    assert not torch.equal(first.backbone.patch_embed.weight, other.backbone.patch_embed.weight)


def trained_checkpoint(tmp_path, **metadata: str):
    """A LiFT file with the metadata python -m lift_rt.train writes about its backbone."""
    return save_lift(LiFT(384, 16), tmp_path / "trained.safetensors", backbone="dino_s16", facet="key", extra=metadata)


def test_a_trained_checkpoint_sets_layer_and_random_seed(tmp_path):
    from lift_rt.backbones import build_backbone
    from lift_rt.engine import build_pipeline

    path = trained_checkpoint(tmp_path, layer="0", random_init="1", backbone_seed="3")
    pipeline = build_pipeline("dino_s16", path, random_init=True)
    assert pipeline.backbone.layer == 0
    trained_on = build_backbone("dino_s16", random_init=True, layer=0, seed=3)
    assert torch.equal(pipeline.backbone.patch_embed.weight, trained_on.patch_embed.weight)
    assert Engine("dino_s16", path, random_init=True, device="cpu").pipeline.backbone.layer == 0


@pytest.mark.parametrize("metadata, kwargs, message", [
    ({"layer": "0", "random_init": "1"}, {"random_init": True, "layer": 11}, "trained on layer 0"),
    ({"layer": "0", "random_init": "1"}, {}, "pass --random-init"),
    ({"layer": "11", "random_init": "0"}, {"random_init": True}, "trained against pretrained backbone weights"),
])
def test_settings_that_contradict_the_checkpoint_are_refused(tmp_path, metadata, kwargs, message):
    from lift_rt.engine import build_pipeline

    with pytest.raises(ValueError, match=message):
        build_pipeline("dino_s16", trained_checkpoint(tmp_path, **metadata), **kwargs)


def test_build_pipeline_takes_any_upsampler(tmp_path):
    from lift_rt.backbones import get_spec
    from lift_rt.engine import PIPELINE_UPSAMPLERS, _upsampler_module, build_pipeline
    from lift_rt.upsamplers import UPSAMPLERS

    assert PIPELINE_UPSAMPLERS == (*UPSAMPLERS, "none")
    for name in ("bilinear", "nearest", "rc", "jbu"):  # the module alone: building a backbone per name is slow
        module = _upsampler_module(get_spec("dino_s16"), name, None, None, facet=None, random_init=False, seed=0)
        assert isinstance(module, UPSAMPLERS[name])
    path = trained_checkpoint(tmp_path, layer="0", random_init="1", backbone_seed="3")
    pipeline = build_pipeline("dino_s16", path, random_init=True, upsampler="rc")
    assert isinstance(pipeline.lift, UPSAMPLERS["rc"]) and pipeline.backbone.layer == 0  # the LiFT's backbone
    assert pipeline(torch.rand(1, 3, 32, 32)).shape == (1, 384, 4, 4)
    assert _upsampler_module(get_spec("dino_s16"), "none", None, None, facet=None, random_init=False, seed=0) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"upsampler": "bicubic"}, "unknown upsampler 'bicubic'"),
    ({"lift": LiFT(384, 16), "upsampler": "none"}, "upsampler must be 'lift'"),
])
def test_build_pipeline_refuses_mismatched_upsampler_arguments(kwargs, message):
    from lift_rt.engine import build_pipeline

    with pytest.raises(ValueError, match=message):
        build_pipeline("dino_s16", random_init=True, layer=0, **kwargs)
