"""Images/s of ``python -m lift_rt.extract`` against a plain loop over Engine, on the CPU, and its peak memory.

    python bench/extract_cpu.py [--images 32] [--size 224] [--backbone dino_s16] [--workers 1] [--batch 8]

Writes ``--images`` JPEG photos-like images (640 x 480 and 480 x 640, smooth colour fields with
noise) to a temporary folder, then times, each in a fresh process (imports and the Engine's set-up
excluded):

- plain loop: for each image, decode with PIL, ``Engine(resize=S)``, ``torch.save`` the fp32 features;
- extract: ``python -m lift_rt.extract --size S`` (decode in ``--workers`` DataLoader processes,
  batches of ``--batch``, fp16 shards of ``--batch`` images written on a thread);
- extract on twice the images, for the peak memory (resident set of the main process) against
  the number of images.

Prints one table; writes nothing outside the temporary folder. The target (issue 18) is extract
>= 1.5x the plain loop's images/s, with peak memory flat in the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (480, 640) if i % 2 else (640, 480)
        field = rng.random((h // 32 + 1, w // 32 + 1, 3)) * 255
        smooth = np.asarray(Image.fromarray(field.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)


def plain_loop(data: Path, out: Path, backbone: str, size: int) -> dict:
    """The loop a user would write: one image at a time, decode, run, torch.save."""
    import torch
    from PIL import Image

    from lift_rt import Engine

    engine = Engine(backbone, random_init=True, device="cpu", backend="torch", resize=size)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(data.glob("*.jpg"))
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            feats = engine(image)
        torch.save(feats[0], out / f"{i:05d}.pt")
    return {"images": len(paths), "seconds": time.perf_counter() - start}


def extract(data: Path, out: Path, backbone: str, size: int, workers: int, batch: int) -> dict:
    """The command, in this process; its own timing (from after the Engine's set-up) read from its summary."""
    import contextlib
    import io
    import re

    from lift_rt.extract.__main__ import main

    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        code = main(["--backbone", backbone, "--random-init", "--backend", "torch", "--device", "cpu", "--data", str(data),
                 "--out", str(out), "--size", str(size), "--workers", str(workers), "--batch", str(batch),
                     "--shard-size", str(batch)])
    if code:
        raise SystemExit(code)
    images, seconds = re.search(r"this run: (\d+) images in ([\d.]+) s", summary.getvalue()).groups()
    return {"images": int(images), "seconds": float(seconds)}


def in_child(kind: str, **kwargs) -> dict:
    """Run ``kind`` in a fresh process; its result plus the peak resident set of that process (MB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(kwargs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read()
    proc.stdout.close()
    if status:
        raise SystemExit(f"{kind} failed (status {status}):\n{output}")
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="images in the folder (default 32)")
    parser.add_argument("--size", type=int, default=224, help="shorter side fed to the ViT (default 224)")
    parser.add_argument("--backbone", default="dino_s16", help="backbone, random weights (default dino_s16)")
    parser.add_argument("--workers", type=int, default=1, help="extract's decoding processes (default 1)")
    parser.add_argument("--batch", type=int, default=8, help="extract's batch and shard size (default 8)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kwargs = json.loads(args.child_args)
        kwargs = {k: Path(v) if k in ("data", "out") else v for k, v in kwargs.items()}
        print(json.dumps((plain_loop if args.child == "plain" else extract)(**kwargs)))
        return

    sys.path.insert(0, str(BENCH))
    from benchlib import cpu_name

    with tempfile.TemporaryDirectory(prefix="lift_rt_extract_bench_") as tmp:
        root = Path(tmp)
        write_images(root / "data", args.images)
        write_images(root / "data2x", 2 * args.images)
        common = {"backbone": args.backbone, "size": args.size}
        plain = in_child("plain", data=str(root / "data"), out=str(root / "plain"), **common)
        run = in_child("extract", data=str(root / "data"), out=str(root / "extract"), workers=args.workers,
                       batch=args.batch, **common)
        run2x = in_child("extract", data=str(root / "data2x"), out=str(root / "extract2x"), workers=args.workers,
                         batch=args.batch, **common)
    print(f"\n{cpu_name()}; {time.strftime('%Y-%m-%d %H:%M')}; {args.backbone} random weights, shorter side {args.size}, "
          f"{args.images} JPEGs of 640 x 480")
    print(f"{'method':<34}{'images':>8}{'seconds':>9}{'images/s':>10}{'peak MB':>9}")
    for name, r in (("plain loop (decode, run, torch.save)", plain), (f"extract (--workers {args.workers} --batch {args.batch})", run),
                    ("extract, twice the images", run2x)):
        print(f"{name:<34}{r['images']:>8}{r['seconds']:>9.1f}{r['images'] / r['seconds']:>10.2f}{r['peak_mb']:>9.0f}")
    print(f"speed-up {plain['seconds'] / plain['images'] / (run['seconds'] / run['images']):.2f}x (target >= 1.5x); "
          f"peak memory at 2x images: {run2x['peak_mb'] / run['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
