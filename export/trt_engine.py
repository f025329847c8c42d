"""TensorRT engines from the exported ONNX graph (TensorRT 10.x / 11.x Python API).

Networks are strongly typed: the precision is the ONNX graph's (fp32, fp16 or
bf16 export), not a builder flag. One optimisation profile covers batch
1..max at the graph's fixed resolution. A timing cache per TensorRT version and
GPU speeds up rebuilds. Engines are cached by :func:`engine_key`. Messages
(builds, rebuilds, timing caches replaced) go to this module's logger.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lift_rt.pipeline import LiftPipeline

from .cache import ArtifactKey, cached_artifact, default_cache_dir
from .onnx_export import INPUT_NAME, as_resolution, cached_onnx, onnx_key

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

DEFAULT_WORKSPACE_BYTES = 4 << 30
# max |engine - torch fp32| / max |torch| accepted; fp32 engines use TF32 (TensorRT's default).
ENGINE_TOLERANCE: dict[str, float] = {"fp32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}
logger = logging.getLogger(__name__)
INSTALL_HINT = "install it with `pip install tensorrt` (its libraries come from NVIDIA's package index) on a machine with an NVIDIA GPU"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; raises ImportError naming what is missing."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError for missing shared libraries
        raise ImportError(f"cannot import tensorrt ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from exc
    return tensorrt


def tensorrt_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when TensorRT can build and run engines on ``device`` (default: the current CUDA device)."""
    try:
        import_tensorrt()
    except ImportError as exc:
        return str(exc)
    if device is not None and torch.device(device).type != "cuda":
        return f"TensorRT runs on NVIDIA GPUs, not on {torch.device(device)}"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch (TensorRT needs an NVIDIA GPU)"
    return None


def gpu_name(device: torch.device | str | None = None) -> str:
    """e.g. ``NVIDIA-H100-80GB-HBM3-sm90``: engines only run on the GPU model they were built for."""
    props = torch.cuda.get_device_properties(device)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", props.name) + f"-sm{props.major}{props.minor}"


def engine_key(
    pipeline: LiftPipeline,
    resolution: int | tuple[int, int],
    *,
    precision: str,
    max_batch: int,
    opt_batch: int,
    tensorrt_version: str,
    device_name: str,
) -> ArtifactKey:
    """The ONNX graph's key plus batch range, TensorRT version and GPU."""
    base = onnx_key(pipeline, resolution, precision)
    return ArtifactKey(
        **{**base.as_dict(), "runtime": f"tensorrt-{tensorrt_version}+{base.runtime}", "max_batch": max_batch,
           "opt_batch": opt_batch, "device": device_name}
    )


def check_batch_range(max_batch: int, opt_batch: int | None = None) -> int:
    """Validate the profile's batch range; returns the opt batch (default min(8, max))."""
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    opt = min(8, max_batch) if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise ValueError(f"opt batch must lie in 1..{max_batch}, got {opt}")
    return opt


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    height: int,
    width: int,
    max_batch: int,
    opt_batch: int,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache: Path | None = None,
) -> None:
    """Parse ``onnx_path`` into a strongly typed network and write the serialized engine to ``plan_path``.

    ``timing_cache``: a file read first (when TensorRT accepts it) and rewritten with this build's timings.
    """
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    use_timing_cache(config, timing_cache)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, height, width), (opt_batch, 3, height, width), (max_batch, 3, height, width))
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile batch 1..{max_batch} (opt {opt_batch}) at {height}x{width}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT messages above)")
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:  # written aside and renamed: an interrupted build never leaves half a cache
        partial = timing_cache.with_name(f"{timing_cache.name}.{os.getpid()}.tmp")
        partial.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(partial, timing_cache)


def use_timing_cache(config: Any, path: Path | None) -> None:
    """Give the builder ``config`` the timing cache stored at ``path``, or an empty one.

    A cache TensorRT refuses (``set_timing_cache`` returns False with mismatch
    checks on: it does not match this TensorRT build or GPU) is replaced by an empty
    one with a warning; the build then rewrites the file. Checks stay on:
    ignoring a mismatch would make TensorRT use the foreign timings.
    """
    if config.set_timing_cache(load_timing_cache(config, path), False):
        return
    if path is None:
        raise RuntimeError("TensorRT refused an empty timing cache")
    logger.warning("timing cache %s does not match this TensorRT build or GPU (TensorRT refused it); "
                   "starting an empty one, which this build writes in its place", path)
    use_timing_cache(config, None)


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """The timing cache stored at ``path``, or an empty one where there is none or it cannot be read
    (then the bad file is removed with a warning, and the build starts afresh)."""
    if path is not None and path.is_file():
        try:
            cache = config.create_timing_cache(path.read_bytes())
        except Exception as exc:  # TensorRT raises its own error types for a damaged cache
            cache, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "TensorRT could not read it"
        if cache is not None:
            return cache
        logger.warning("timing cache %s is damaged (%s); removed, starting a new one", path, reason)
        path.unlink(missing_ok=True)
    return config.create_timing_cache(b"")


def deserialize(plan_path: Path) -> "trt.ICudaEngine | None":
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    return runtime.deserialize_cuda_engine(plan_path.read_bytes())


def cached_engine(
    pipeline: LiftPipeline,
    resolution: int | tuple[int, int],
    *,
    precision: str = "fp16",
    max_batch: int = 32,
    opt_batch: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    device: torch.device | str | None = None,
) -> tuple[Path, "trt.ICudaEngine"]:
    """Engine file and deserialized engine for this pipeline, built once per key into ``cache_dir``.

    A cached plan that is stale, corrupt or that TensorRT cannot deserialize is rebuilt.
    """
    reason = tensorrt_unavailable_reason(device if device is not None else "cuda")
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    trt = import_tensorrt()
    opt = check_batch_range(max_batch, opt_batch)
    height, width = as_resolution(resolution)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device_name = gpu_name(device)
    onnx_path = cached_onnx(pipeline, (height, width), precision=precision, cache_dir=directory)
    key = engine_key(
        pipeline, (height, width), precision=precision, max_batch=max_batch, opt_batch=opt,
        tensorrt_version=trt.__version__, device_name=device_name,
    )
    timing_cache = directory / f"timing-tensorrt-{trt.__version__}-{device_name}.cache"

    def build(tmp: Path) -> None:
        build_engine(
            onnx_path, tmp, height=height, width=width, max_batch=max_batch, opt_batch=opt,
            workspace_bytes=workspace_bytes, timing_cache=timing_cache,
        )

    action = (f"building a TensorRT {trt.__version__} engine for {key.backbone} {height}x{width} {precision}, "
              f"batch 1..{max_batch} (takes minutes)")
    path = cached_artifact(directory, key, ".plan", build, action)
    engine = deserialize(path)
    if engine is None:
        logger.warning("rebuilding %s: TensorRT %s could not deserialize it", path.name, trt.__version__)
        path.unlink()
        path = cached_artifact(directory, key, ".plan", build, action)
        engine = deserialize(path)
        if engine is None:
            raise RuntimeError(f"TensorRT cannot deserialize the engine it just built ({path})")
    return path, engine
