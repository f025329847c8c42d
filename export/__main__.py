"""``python -m lift_rt.export``: fused ViT + LiFT ONNX graph, checked, and a TensorRT engine where possible."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from lift_rt.arguments import check_writable
from lift_rt.backbones import BACKBONES, WeightsNotFoundError, check_layer, check_resolution, get_spec
from lift_rt.cli import positive_float, show_logs
from lift_rt.engine import build_pipeline
from lift_rt.errors import first_line
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

exit status:
  0  the graph (and the engine, where TensorRT and a GPU exist) is written and every check passed
  1  written, but a parity check failed (its summary line says FAILED)
  2  an error, printed as "python -m lift_rt.export: error: ...": a bad argument (before any work),
     or a failure while exporting, checking or building; when TensorRT or CUDA fails after the
     ONNX graph was written, the summary of what was written comes first
"""
# Indents the library's log lines (exports, cache hits, removals) under the step they belong to.


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
    try:
        check_writable(args.out if args.out is not None else default_cache_dir(), "--out", folder=True)
    except ValueError as exc:
        parser.error(str(exc))


def size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def error(parser: argparse.ArgumentParser, message: str) -> int:
    """Print ``<prog>: error: message`` on stderr; the exit status of an error."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    show_logs()
    return run(parser, args, sys.argv[1:] if argv is None else argv)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """Export, check, build; print the summary. Returns the exit status (see EPILOG)."""
    out = args.out if args.out is not None else default_cache_dir()
    height, width = args.resolution
    start = time.perf_counter()
    try:
        print(f"[1/4] building the pipeline: {args.backbone}, LiFT x{args.iterations}"
              + (" (random weights where no file is given)" if args.random_init else ""), flush=True)
        pipeline = build_pipeline(
            args.backbone, args.lift_weights, iterations=args.iterations, facet=args.facet, layer=args.layer,
            backbone_weights=args.backbone_weights, random_init=args.random_init,
        )
        print(f"[2/4] ONNX graph (opset {OPSET[args.precision]}, {args.precision}, {height}x{width}, dynamic batch) in {out}", flush=True)
        onnx_path = cached_onnx(pipeline, (height, width), precision=args.precision, cache_dir=out)
        checker, parity = check(args, onnx_path, pipeline)
    except (ValueError, RuntimeError, OSError, WeightsNotFoundError) as exc:
        return error(parser, str(exc))
    command = shlex.join(["python", "-m", "lift_rt.export", *argv])
    engine_error = None
    try:
        engine_line, engine_parity = build_tensorrt(args, pipeline, out, command)
    except Exception as exc:  # TensorRT and CUDA raise their own types; the ONNX graph is written either way
        engine_error = f"TensorRT engine: {first_line(exc)}"
        engine_line, engine_parity = f"not built: the build failed ({type(exc).__name__}: {exc})", None
    print(f"\nsummary ({time.perf_counter() - start:.0f} s)")
    print(f"  onnx    {onnx_path} ({size(onnx_path)})")
    print(f"  checker {checker}")
    print(f"  parity  {parity}")
    print(f"  engine  {engine_line}")
    if engine_parity is not None:
        print(f"  parity  TensorRT vs PyTorch: {engine_parity}")
    if engine_error is not None:
        return error(parser, engine_error)
    return 1 if any(isinstance(p, Parity) and not p.ok for p in (parity, engine_parity)) else 0


def check(args: argparse.Namespace, onnx_path: Path, pipeline: LiftPipeline) -> tuple[str, Parity | str]:
    """Run the checks the precision allows: (onnx.checker's verdict, onnxruntime's parity or why none was run)."""
    if args.no_check:
        print("[3/4] checks: skipped (--no-check)", flush=True)
        return "not run (--no-check)", "not checked (--no-check)"
    if args.precision not in ORT_PRECISIONS:
        print("[3/4] checking: onnx.checker", flush=True)
        validate_onnx(onnx_path)
        return "OK", (f"not checked: onnxruntime's CPU provider cannot run {args.precision} graphs; only a TensorRT "
                      f"engine build (on an NVIDIA GPU) checks the {args.precision} numerics")
    print("[3/4] checking: onnx.checker, then onnxruntime (CPU) vs PyTorch fp32 on random images", flush=True)
    parity = check_onnx(onnx_path, pipeline, precision=args.precision)
    return "OK", f"onnxruntime CPU vs PyTorch: {parity}"


def build_tensorrt(args: argparse.Namespace, pipeline: LiftPipeline, out: Path, command: str) -> tuple[str, Parity | None]:
    """Build (or reuse) the TensorRT engine and check it; else the reason none was built (``command``: this run's)."""
    if args.no_engine:
        print("[4/4] TensorRT engine: skipped (--no-engine)", flush=True)
        return "not built: --no-engine", None
    reason = tensorrt_unavailable_reason("cuda")
    if reason is not None:
        print("[4/4] TensorRT engine: not available here (the summary says why)", flush=True)
        return f"not built: {reason}\n          to build it where TensorRT runs (the ONNX graph above is complete): {command}", None
    from lift_rt.backends import TensorRTBackend

    print(f"[4/4] TensorRT engine: batch 1..{args.max_batch}, {args.precision}", flush=True)
    path, _ = cached_engine(
        pipeline, args.resolution, precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
        cache_dir=out, workspace_bytes=int(args.workspace_gb * 2**30),
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
