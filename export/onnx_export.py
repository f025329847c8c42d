"""The whole pipeline (normalise -> ViT facet -> LiFT x k) as one ONNX graph.

The graph takes float32 images ``B x 3 x H x W`` in [0, 1] (input ``images``)
and returns ``B x C x 2^k H/p x 2^k W/p`` features (output ``features``) in the
export precision. The batch is dynamic; the resolution is fixed per graph: the
positional embedding is precomputed for it, so the graph holds no bicubic
Resize (TensorRT's parser rejects the antialiased one timm exports).

fp16/bf16 graphs are the pipeline cast to that dtype (for TensorRT's strongly
typed networks, whose precision is the graph's), with BatchNorm folded into the
convs in fp32 first and LayerNorm computed in fp32 to avoid overflow in the
residual stream.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lift_rt.backbones import check_resolution
from lift_rt.pipeline import LiftPipeline
from lift_rt.preprocess import precision_dtype

from .cache import ArtifactKey, cached_artifact, default_cache_dir, weights_hash

# Opset 20 keeps Gelu and LayerNormalization as single nodes and TensorRT 10/11 parse it; ONNX
# allows bfloat16 Conv / ConvTranspose / MaxPool only from opset 22, so bf16 graphs use 22.
OPSET: dict[str, int] = {"fp32": 20, "fp16": 20, "bf16": 22}
INPUT_NAME = "images"
OUTPUT_NAME = "features"
MAX_DYNAMIC_BATCH = 4096
# max |onnx - torch| / max |torch| accepted per export precision (reference: fp32 PyTorch).
PARITY_TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


def as_resolution(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))


class Fp32LayerNorm(nn.Module):
    """A LayerNorm run in fp32 inside a half-precision graph (input and output keep their dtype)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float(), requires_grad=False) if norm.weight is not None else None
        self.bias = nn.Parameter(norm.bias.detach().float(), requires_grad=False) if norm.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class ExportModule(nn.Module):
    """float32 images -> the pipeline in ``dtype`` -> features in ``dtype``."""

    def __init__(self, pipeline: LiftPipeline, dtype: torch.dtype) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipeline(images.to(self.dtype))


def fold_batchnorm(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d into the Conv2d just before it in a Sequential (in place).

    Done in fp32 before any cast: the ONNX optimiser's own folding writes fp32
    weights into bf16 graphs, which onnx.checker and TensorRT reject.
    """
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(seq, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(seq, bn_name, nn.Identity())


def prepare_for_export(pipeline: LiftPipeline, resolution: int | tuple[int, int], precision: str = "fp32") -> ExportModule:
    """A CPU copy of ``pipeline`` fixed to ``resolution`` and cast to ``precision`` (the original is untouched)."""
    height, width = as_resolution(resolution)
    dtype = precision_dtype(precision)
    module = copy.deepcopy(pipeline).cpu().float().eval()
    module.backbone.freeze_pos_embed(height, width)
    fold_batchnorm(module)
    if dtype != torch.float32:
        module.to(dtype)
        for parent in list(module.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.LayerNorm):
                    setattr(parent, name, Fp32LayerNorm(child))
    return ExportModule(module, dtype).eval()


def export_onnx(
    pipeline: LiftPipeline,
    path: str | os.PathLike,
    resolution: int | tuple[int, int],
    *,
    precision: str = "fp32",
    opset: int | None = None,
) -> Path:
    """Write ``pipeline`` at ``resolution`` (H, W multiples of the patch) as an ONNX graph with a dynamic batch."""
    height, width = as_resolution(resolution)
    check_resolution(pipeline.spec, height, width)
    module = prepare_for_export(pipeline, (height, width), precision)
    example = torch.rand(2, 3, height, width)  # batch 2: a batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}}, opset_version=opset or OPSET[precision], dynamo=True, verbose=False,
        )
    program.save(str(path))
    return path


def onnx_key(pipeline: LiftPipeline, resolution: int | tuple[int, int], precision: str) -> ArtifactKey:
    height, width = as_resolution(resolution)
    return ArtifactKey(
        backbone=pipeline.spec.name, facet=pipeline.backbone.facet, layer=pipeline.backbone.layer,
        iterations=pipeline.iterations if pipeline.lift is not None else 0, weights=weights_hash(pipeline),
        height=height, width=width, precision=precision, runtime=f"torch-{torch.__version__}", opset=OPSET[precision],
    )


def cached_onnx(
    pipeline: LiftPipeline,
    resolution: int | tuple[int, int],
    *,
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The ONNX graph for this pipeline, resolution and precision, exported once into ``cache_dir``.

    An export (10 s to a minute on a CPU) is announced on the ``lift_rt.export.cache`` logger at INFO.
    """
    key = onnx_key(pipeline, resolution, precision)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    action = (f"exporting {key.backbone} {key.height}x{key.width} {precision} to ONNX "
              "(takes 10 s to a minute on a CPU)")
    return cached_artifact(directory, key, ".onnx", lambda tmp: export_onnx(pipeline, tmp, resolution, precision=precision), action)


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs the fp32 PyTorch reference on random images."""

    max_abs: float
    rel: float  # max_abs / max |reference|
    tolerance: float
    batch: int

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return f"max abs diff {self.max_abs:.3g}, relative {self.rel:.3g} (tolerance {self.tolerance:g}, batch {self.batch}): {verdict}"


ORT_PRECISIONS = ("fp32", "fp16")  # onnxruntime's CPU and CUDA providers have no bf16 Conv


def reference_features(pipeline: LiftPipeline, images: torch.Tensor) -> torch.Tensor:
    """The fp32 CPU reference output (``pipeline`` is copied, not moved, when it lives elsewhere)."""
    first = next(pipeline.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        pipeline = copy.deepcopy(pipeline).cpu().float()
    with torch.no_grad():
        return pipeline.eval()(images.cpu().float())


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def validate_onnx(path: str | os.PathLike) -> None:
    """``onnx.checker`` with shape inference; raises ValueError saying what is wrong."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise ValueError(f"{path} is not a valid ONNX graph: {exc}") from exc


def check_onnx(
    path: str | os.PathLike,
    pipeline: LiftPipeline,
    *,
    precision: str = "fp32",
    batch: int = 2,
    seed: int = 0,
) -> Parity:
    """``onnx.checker`` on the file, then its onnxruntime (CPU) output vs ``pipeline`` in fp32."""
    import onnx
    import onnxruntime as ort

    if precision not in ORT_PRECISIONS:
        raise ValueError(f"onnxruntime's CPU provider cannot run {precision} graphs (only {', '.join(ORT_PRECISIONS)})")
    validate_onnx(path)
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    height, width = (d.dim_value for d in graph_input.type.tensor_type.shape.dim[2:])
    images = random_images(batch, height, width, seed)
    reference = reference_features(pipeline, images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]).float()
    return compare(out, reference, PARITY_TOLERANCE[precision])


def compare(out: torch.Tensor, reference: torch.Tensor, tolerance: float) -> Parity:
    """Parity of ``out`` with ``reference`` (same shape; compared in fp32 on the CPU)."""
    if out.shape != reference.shape:
        raise RuntimeError(f"output shape {tuple(out.shape)} != reference {tuple(reference.shape)}")
    out, reference = out.detach().float().cpu(), reference.detach().float().cpu()
    max_abs = (out - reference).abs().max().item()
    return Parity(max_abs, max_abs / max(reference.abs().max().item(), 1e-12), tolerance, out.shape[0])
