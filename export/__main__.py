"""``python -m lift_rt.export``: fused ViT + LiFT ONNX graph, checked, and a TensorRT engine where possible."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from lift_rt.backbones import BACKBONES, WeightsNotFoundError, check_layer, check_resolution, get_spec
from lift_rt.cli import positive_float
from lift_rt.engine import build_pipeline
from lift_rt.pipeline import LiftPipeline
from lift_rt.preprocess import PRECISIONS

from .cache import default_cache_dir
from .onnx_export import ORT_PRECISIONS, OPSET, Parity, cached_onnx, check_onnx, compare, random_images, reference_features, validate_onnx
from .trt_engine import DEFAULT_WORKSPACE_BYTES, ENGINE_TOLERANCE, cached_engine, check_batch_range, tensorrt_unavailable_reason

DESCRIPTION = """\
Export normalisation + ViT backbone (one facet) + LiFT (k iterations) as one ONNX graph
(input `images`: B x 3 x H x W float32 in [0, 1]; output `features`: B x C x 2^k H/p x 2^k W/p),
check it with onnx.checker and onnxruntime against PyTorch, and build a TensorRT engine
(batch 1..max-batch) when TensorRT and a CUDA GPU are present. The batch is dynamic; the
resolution is fixed per graph. Files are cached under --out by a key of backbone, facet,
weights hash, resolution, precision (and for engines: batch range, TensorRT version, GPU).
"""

EPILOG = """\
examples:
  python -m lift_rt.export --backbone dino_s8 --lift-weights lift_dino_vits8.pth \\
      --backbone-weights dino_deitsmall8_pretrain.pth --precision fp16
  python -m lift_rt.export --backbone dino_s16 --random-init --resolution 448 --iterations 2
"""


def parse_resolution(text: str) -> tuple[int, int]:
    """``224`` or ``224x320`` (H x W)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be N or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be N or HxW with positive sizes, got {text!r}")
    return (values[0], values[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lift_rt.export", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbone", required=True, metavar="NAME", help=f"backbone name: {', '.join(BACKBONES)}")
    parser.add_argument("--lift-weights", type=Path, metavar="FILE", help="LiFT checkpoint (the authors' .pth or a lift_rt .safetensors)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--backbone-weights", type=Path, metavar="FILE", help="official backbone checkpoint (default: the local timm/Hugging Face cache)")
    weights.add_argument("--random-init", action="store_true", help="random weights wherever no file is given (tests, timing only)")
    parser.add_argument("--facet", choices=("key", "query", "value", "token"), help="backbone facet (default: the backbone's, key)")
    parser.add_argument("--layer", type=int, metavar="L", help="backbone block whose facet is used (default: the last)")
    parser.add_argument("--resolution", type=parse_resolution, metavar="N|HxW", default=(224, 224), help="input size N or HxW, multiples of the patch (default 224)")
    parser.add_argument("--iterations", type=int, metavar="K", default=1, help="LiFT applications k: 2^k upsampling (default 1)")
    parser.add_argument("--max-batch", type=int, metavar="B", default=32, help="largest batch of the TensorRT profile (default 32)")
    parser.add_argument("--opt-batch", type=int, metavar="B", help="batch TensorRT tunes for (default min(8, max-batch))")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp16",
                        help="graph and engine precision (default fp16, what TensorRT engines run; fp32 for exact parity with PyTorch)")
    parser.add_argument("--out", type=Path, metavar="DIR", default=None, help=f"output/cache directory (default {default_cache_dir()})")
    parser.add_argument("--workspace-gb", type=positive_float, metavar="GIB", default=DEFAULT_WORKSPACE_BYTES / 2**30, help="TensorRT builder workspace limit in GiB (default 4)")
    parser.add_argument("--no-engine", action="store_true", help="write and check the ONNX graph only")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    return parser


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad arguments before any slow work, with parser.error (exit status 2)."""
    try:
        spec = get_spec(args.backbone)
        check_resolution(spec, *args.resolution)
        check_batch_range(args.max_batch, args.opt_batch)
        if args.layer is not None:
            check_layer(spec, args.layer)
    except ValueError as exc:
        parser.error(str(exc))
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    if args.lift_weights is None and not args.random_init:
        parser.error(
            f"no LiFT weights: pass --lift-weights FILE ({spec.lift_file or 'a trained LiFT'}) "
            "or --random-init for random weights (timing and tests only)"
        )
    for flag, path in (("--lift-weights", args.lift_weights), ("--backbone-weights", args.backbone_weights)):
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path} " + ("is a folder, not a file" if path.is_dir() else "does not exist"))
    out = args.out if args.out is not None else default_cache_dir()
    if out.exists() and not out.is_dir():  # a read-only folder may still serve cached files: only this is checked
        parser.error(f"--out {out} is a file, not a folder")


def size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    out = args.out if args.out is not None else default_cache_dir()
    height, width = args.resolution
    say = lambda message: print(message, flush=True)  # noqa: E731
    start = time.perf_counter()
    try:
        say(f"[1/4] building the pipeline: {args.backbone}, LiFT x{args.iterations}"
            + (" (random weights where no file is given)" if args.random_init else ""))
        pipeline = build_pipeline(
            args.backbone, args.lift_weights, iterations=args.iterations, facet=args.facet, layer=args.layer,
            backbone_weights=args.backbone_weights, random_init=args.random_init,
        )
        say(f"[2/4] exporting ONNX (opset {OPSET[args.precision]}, {args.precision}, {height}x{width}, dynamic batch) into {out}")
        onnx_path = cached_onnx(pipeline, (height, width), precision=args.precision, cache_dir=out, log=lambda m: say("      " + m))
        parity: Parity | str
        if args.no_check:
            parity = "not checked (--no-check)"
            say("[3/4] checks: skipped (--no-check)")
        elif args.precision not in ORT_PRECISIONS:
            say("[3/4] checking: onnx.checker")
            validate_onnx(onnx_path)
            parity = f"onnx.checker OK; no parity check (onnxruntime's CPU provider cannot run {args.precision} graphs)"
        else:
            say("[3/4] checking: onnx.checker, then onnxruntime (CPU) vs PyTorch fp32 on random images")
            parity = check_onnx(onnx_path, pipeline, precision=args.precision)
    except (ValueError, RuntimeError, OSError, WeightsNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "-m", "lift_rt.export", *(sys.argv[1:] if argv is None else argv)])
    engine_failed = False
    try:
        engine_line, engine_parity = build_tensorrt(args, pipeline, out, say, command)
    except Exception as exc:  # TensorRT and CUDA raise their own types; the ONNX graph is written either way
        engine_failed = True
        engine_line, engine_parity = f"not built: the build failed ({type(exc).__name__}: {exc})", None
        print(f"error: TensorRT engine: {type(exc).__name__}: {exc}", file=sys.stderr)
    say(f"\nsummary ({time.perf_counter() - start:.0f} s)")
    say(f"  onnx    {onnx_path} ({size(onnx_path)})")
    say(f"  parity  onnxruntime CPU vs PyTorch: {parity}")
    say(f"  engine  {engine_line}")
    if engine_parity is not None:
        say(f"  parity  TensorRT vs PyTorch: {engine_parity}")
    failed = [p for p in (parity, engine_parity) if isinstance(p, Parity) and not p.ok]
    return 1 if failed or engine_failed else 0


def build_tensorrt(
    args: argparse.Namespace, pipeline: LiftPipeline, out: Path, say: Callable[[str], None], command: str
) -> tuple[str, Parity | None]:
    """Build (or reuse) the TensorRT engine and check it; else the reason none was built (``command``: this run's)."""
    if args.no_engine:
        say("[4/4] TensorRT engine: skipped (--no-engine)")
        return "not built: --no-engine", None
    reason = tensorrt_unavailable_reason("cuda")
    if reason is not None:
        say(f"[4/4] TensorRT engine: not built, {reason}")
        return (f"not built: {reason}.\n          The ONNX graph above is complete; to build the engine, run this command on "
                f"a machine with TensorRT and an NVIDIA GPU:\n          {command}"), None
    from lift_rt.backends import TensorRTBackend

    say(f"[4/4] TensorRT engine: batch 1..{args.max_batch}, {args.precision}")
    path, _ = cached_engine(
        pipeline, args.resolution, precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
        cache_dir=out, workspace_bytes=int(args.workspace_gb * 2**30), log=lambda m: say("      " + m),
    )
    backend = TensorRTBackend(
        pipeline, device="cuda", precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch, cache_dir=out,
        workspace_bytes=int(args.workspace_gb * 2**30),
    )
    images = random_images(2, *args.resolution)
    parity = compare(backend(images.cuda()), reference_features(pipeline, images), ENGINE_TOLERANCE[args.precision])
    return f"{path} ({size(path)})", parity


if __name__ == "__main__":
    sys.exit(main())
