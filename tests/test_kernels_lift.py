"""The whole LiFT on the Triton kernels (lift_rt.kernels.lift_head) against lift_rt.model.LiFT, and the triton backend."""

from __future__ import annotations

import pytest
import torch

from kernel_utils import DEVICE, DTYPES, GPU, assert_close, random_lift  # sets TRITON_INTERPRET first

from lift_rt.backends import BackendUnavailable, unavailable_reason
from lift_rt.kernels.fold import fold_lift
from lift_rt.kernels.lift_head import TritonLiFT
from lift_rt.model import LiFT


def lift_reference(lift: LiFT, image: torch.Tensor, feats: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """The eval-mode module itself, float64 on CPU."""
    lift = lift.double().cpu()
    with torch.no_grad():
        return lift.lift(image.double().cpu(), feats.double().cpu(), iterations)


def inputs(lift: LiFT, b: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    p = lift.patch_size
    image = torch.randn(b, 3, h * p, w * p).to(DEVICE, dtype)
    feats = torch.randn(b, lift.dim, h, w).to(DEVICE, dtype)
    return image, feats


# (batch, C, patch, h, w, use_image): batch 1 and 5, odd grids, the p = 16 and p = 14 scale adapters, 'No Img.'.
CASES = [(1, 16, 8, 5, 7, True), (5, 24, 8, 3, 3, True), (2, 16, 16, 3, 4, True), (1, 16, 14, 3, 3, True), (2, 16, 8, 4, 5, False)]
if GPU:
    CASES += [(2, 384, 8, 28, 28, True), (1, 384, 8, 56, 56, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_c{}_p{}_{}x{}_img{}".format(*c))
def test_triton_lift_matches_model(case, dtype, loop_form):
    b, c, p, h, w, use_image = case
    lift = random_lift(c, p, use_image)
    head = TritonLiFT(fold_lift(lift, dtype, DEVICE))
    image, feats = inputs(lift, b, h, w, dtype)
    out = head(image, feats)
    assert out.shape == (b, c, 2 * h, 2 * w) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, lift_reference(lift, image, feats), dtype)


def test_tokens_with_cls_and_two_iterations():
    """Tokens ``B x (1 + hw) x C`` are read in place (NHWC view); a second step reads the first's output."""
    lift = random_lift(16)
    head = TritonLiFT(fold_lift(lift, torch.float32, DEVICE))
    image, feats = inputs(lift, 2, 2, 3, torch.float32, seed=3)
    tokens = torch.cat([torch.randn(2, 1, 16, device=DEVICE), feats.flatten(2).transpose(1, 2)], dim=1)
    out = head.lift(image, tokens, iterations=2)
    assert out.shape == (2, 16, 8, 12)
    assert_close(out, lift_reference(lift, image, feats, iterations=2), torch.float32)


def test_triton_lift_rejects_bad_inputs():
    lift = random_lift(16)
    head = TritonLiFT(fold_lift(lift, torch.float32, DEVICE))
    image, feats = inputs(lift, 2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="feats must be"):
        head(image, feats[:, :8])
    with pytest.raises(ValueError, match="feats must be"):
        head(image, feats[:1])
    with pytest.raises(ValueError, match="does not match the image"):
        head(image, feats[..., :3])
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        head(image[:, :2], feats)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        head(image.to(torch.int64), feats)


@pytest.mark.skipif(GPU, reason="checks the message given where no CUDA device is present")
def test_backend_says_why_it_cannot_run_on_cpu():
    from lift_rt.engine import Engine

    reason = unavailable_reason("triton", torch.device("cpu"))
    assert reason is not None and "CUDA" in reason
    with pytest.raises(BackendUnavailable, match="Triton kernels run on CUDA GPUs only"):
        Engine("dino_s8", backend="triton", device="cpu", random_init=True)


@pytest.mark.skipif(not GPU, reason="the triton backend needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 9])  # CUDA graph / eager path
def test_backend_matches_torch_backend(batch):
    from lift_rt.engine import Engine

    images = torch.rand(batch, 3, 224, 224, device=DEVICE)
    ref = Engine("dino_s8", backend="torch", random_init=True)
    eng = Engine("dino_s8", lift=ref.pipeline.lift, backend="triton", precision="fp32", random_init=True)
    eng.backend.backbone.load_state_dict(ref.pipeline.backbone.state_dict())
    out = eng(images)
    assert_close(out, ref(images), torch.float32)
    kept = out.clone()
    other = torch.rand(batch, 3, 224, 224, device=DEVICE)
    assert_close(eng(other), ref(other), torch.float32)  # a new input of the same shape reaches the graph
    assert torch.equal(out, kept)  # and the result handed out before is the caller's, not the graph's buffer
    assert_close(eng(images), out, torch.float32)  # graph replay is repeatable


def test_backend_refuses_other_upsamplers(monkeypatch):
    from lift_rt.backends import BackendUnavailable
    from lift_rt.engine import build_pipeline
    from lift_rt.backends import TritonBackend
    from lift_rt.upsamplers import build_upsampler

    monkeypatch.setattr(TritonBackend, "unavailable_reason", classmethod(lambda cls, device: None))
    pipeline = build_pipeline("dino_s16", lift=build_upsampler("bilinear", 384, 16), random_init=True, layer=0)
    with pytest.raises(BackendUnavailable, match="implement LiFT only, not Bilinear"):
        TritonBackend(pipeline, device=torch.device("meta"), precision="fp16")


def test_relu_keeps_nan():
    """A NaN feature (say an fp16 overflow in the ViT) must come out NaN, as from torch.relu, never a plausible 0."""
    from lift_rt.kernels.conv2d import conv2d_nhwc

    x = torch.randn(1, 4, 5, 8, device=DEVICE)
    x[0, 2, 3, 1] = float("nan")
    out = conv2d_nhwc(x, torch.randn(1, 8, 6, device=DEVICE), torch.zeros(6, device=DEVICE), relu=True)
    assert torch.isnan(out[0, 2, 3]).all() and torch.isfinite(out[0, 0]).all()
    lift = random_lift(16)
    head = TritonLiFT(fold_lift(lift, torch.float32, DEVICE))
    image, feats = torch.rand(1, 3, 24, 24, device=DEVICE), torch.randn(1, 16, 3, 3, device=DEVICE)
    feats[0, :, 1, 1] = float("nan")
    assert torch.isnan(head(image, feats)).any()


def test_backend_moves_the_whole_pipeline(monkeypatch):
    """normalise() reads the pipeline's mean/std buffers: they must sit on the backend's device with the backbone."""
    from lift_rt.engine import build_pipeline
    from lift_rt.backends import TritonBackend

    monkeypatch.setattr(TritonBackend, "unavailable_reason", classmethod(lambda cls, device: None))
    pipeline = build_pipeline("dino_s16", random_init=True, layer=0)
    backend = TritonBackend(pipeline, device=torch.device("meta"), precision="fp16")
    buffers = [backend.pipeline.mean, backend.pipeline.std, *backend.backbone.parameters()]
    assert all(t.device.type == "meta" for t in buffers)
    assert all(p.dtype == torch.float16 for p in backend.backbone.parameters())
