"""Dense LiFT features for every image of a folder or list, stored in shards that lift_rt.FeatureStore reads.

python -m lift_rt.extract --backbone dino_s8 (--lift F | --random-init) --data DIR_OR_LIST --out DIR [options]

Images are decoded and resized in DataLoader workers, run through lift_rt.Engine in batches of one
input size, and written by a background thread, so decoding, computing and writing overlap. The
output folder holds manifest.json (the settings), shards/shard-NNNNNN.safetensors (one tensor
C x h x w per image, key = the image's number) with a JSON record each, index.json (path -> shard,
key, shape, original and input size), skipped.txt (unreadable images, with the reason) and, with
--pca, pca.safetensors. Re-running the same command resumes: finished shards are kept, unfinished
ones redone; other settings on the same --out are refused. torchrun --nproc_per_node N -m
lift_rt.extract ... splits the shards over N processes (one GPU each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "python -m lift_rt.extract"


def build_parser() -> argparse.ArgumentParser:
    from lift_rt.cli import positive_int, non_negative_int

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--backbone", default="dino_s8", help="registry backbone (default dino_s8)")
    parser.add_argument("--lift", default=None, help="LiFT checkpoint (the authors' .pth or a lift_rt .safetensors)")
    parser.add_argument("--random-init", action="store_true", help="random weights where none are given (tests, timing)")
    parser.add_argument("--backbone-weights", default=None, help="official backbone checkpoint (default: the timm / Hugging Face cache)")
    parser.add_argument("--facet", default=None, help="key (default), query, value or token")
    parser.add_argument("--layer", type=int, default=None, help="backbone block (default: the checkpoint's, else the last)")
    parser.add_argument("--data", required=True, help="image folder (recursive, sorted) or text file of image paths (one per line)")
    parser.add_argument("--out", required=True, help="output folder (created; an existing one is resumed)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=positive_int, default=None,
                      help="shorter side in pixels, the longer scaled alike, both rounded to the patch multiple (default 224)")
    size.add_argument("--keep-aspect", action="store_true",
                      help="keep the aspect ratio: scale down to --max-side, zero-pad bottom/right to the patch multiple, "
                           "store only the image's own feature cells")
    parser.add_argument("--max-side", type=positive_int, default=None, help="with --keep-aspect: longest side in pixels (default 448)")
    parser.add_argument("--iterations", type=positive_int, default=1, help="LiFT applications, 2^k upsampling (default 1)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="compute precision (default fp32)")
    parser.add_argument("--backend", default="auto", help="Engine backend: auto (default, the fastest present), torch, compile, "
                                                           "onnxruntime, tensorrt or triton")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: under torchrun cuda:LOCAL_RANK, else cuda if present, else cpu)")
    parser.add_argument("--batch", type=positive_int, default=32, help="images per Engine call (default 32)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="stored dtype (default fp16)")
    parser.add_argument("--pca", type=positive_int, default=None, metavar="K",
                        help="store K channels: a PCA fitted first on --pca-sample images spread over the input; its relative "
                             "reconstruction error on that sample is printed and kept in pca.safetensors (default: off)")
    parser.add_argument("--pca-sample", type=positive_int, default=128, help="images the PCA is fitted on (default 128)")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="decoding processes (default min(4, CPUs - 1); 0 decodes in the main process)")
    parser.add_argument("--shard-size", type=positive_int, default=64,
                        help="images per shard file (default 64; a shard is held in memory until written)")
    return parser


def size_policy(args: argparse.Namespace):
    from lift_rt.sizing import SizePolicy

    if args.max_side is not None and not args.keep_aspect:
        raise ValueError("--max-side needs --keep-aspect (--size already fixes the shorter side)")
    if args.keep_aspect:
        return SizePolicy(max_side=args.max_side or 448, pad=True)
    return SizePolicy(resize=args.size or 224)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lift_rt.cli import check_writable
    from lift_rt.engine import Engine
    from lift_rt.extract.inputs import list_inputs
    from lift_rt.extract.run import SKIPPED, extract, join_job, run_settings

    if args.lift is None and not args.random_init:
        raise ValueError("no LiFT weights: pass --lift CKPT, or --random-init for random weights")
    check_writable(args.out, "--out", folder=True)
    policy = size_policy(args)
    inputs = list_inputs(args.data)
    process = join_job()
    device = args.device
    if device is None and process.world > 1:
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    engine = Engine(args.backbone, args.lift, backend=args.backend, precision=args.precision, device=device,
                    iterations=args.iterations, facet=args.facet, layer=args.layer,
                    backbone_weights=args.backbone_weights, random_init=args.random_init)
    policy.check(engine.spec)
    if args.pca is not None and args.pca > engine.spec.dim:
        raise ValueError(f"--pca {args.pca}: must lie in 1..{engine.spec.dim} (the feature width of {engine.spec.name})")
    settings = run_settings(engine, inputs, policy, lift=args.lift, dtype=args.dtype, pca=args.pca,
                            pca_sample=args.pca_sample, shard_size=args.shard_size)
    workers = args.workers if args.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    out = Path(args.out)

    def progress(total: int):
        return tqdm(total=total, unit="img", desc=f"extract (rank {process.rank})" if process.world > 1 else "extract",
                    disable=process.rank != 0 or None, dynamic_ncols=True)

    result = extract(engine, inputs, out, policy, settings, process=process, batch=args.batch, workers=workers,
                     progress_factory=progress)
    if result.totals is not None:
        t = result.totals
        skipped = f" (listed in {out / SKIPPED})" if t["skipped"] else ""
        missing = f", {t['missing']} in shards not finished yet" if t["missing"] else ""
        rate = result.new_images / result.seconds if result.seconds > 0 else 0.0
        who = "this process" if process.world > 1 else "this run"
        print(f"{out}: {t['images']} images stored, {t['skipped']} skipped{skipped}{missing}; "
              f"{t['bytes'] / 1e6:.1f} MB in {t['shards']} shards. {who}: {result.new_images} images in "
              f"{result.seconds:.1f} s ({rate:.1f} images/s, backend {engine.backend_name}). "
              f"Read with lift_rt.FeatureStore({str(out)!r})")
        if args.pca is not None:
            from lift_rt.extract.pca import ChannelPCA
            from lift_rt.extract.store import PCA_FILE

            error = ChannelPCA.load(out / PCA_FILE).relative_error
            print(f"PCA to {args.pca} channels: relative reconstruction error {error:.4f} on the fitted sample "
                  "(FeatureStore.reconstruct gives the features back)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: finished shards are kept in {args.out}; re-run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
