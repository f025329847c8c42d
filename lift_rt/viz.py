"""Self-similarity maps (the supplemental's Sec. E): how sharply each feature map localises a point.

``python -m lift_rt.viz similarity IMAGE --point X,Y [--backbone dino_s8] [--lift CKPT | --random-init] [--out PNG]``

writes one row of panels: the input (the point marked), then the cosine
similarity of the point's descriptor with every position of: the backbone's
features, those bilinearly upsampled 2x, the backbone run on the 2x-upsampled
image, and LiFT. Each map is shown at its own resolution (nearest-neighbour
enlarged), coloured with viridis from its minimum to its maximum. IMAGE is a
file or ``skimage:NAME`` (a scikit-image bundled photo, e.g. ``skimage:chelsea``)
at least one patch wide and high; the point must lie inside it.
Drawing uses PIL only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from lift_rt.arguments import check_writable
from lift_rt.cli import plain_text, positive_int, show_logs
from lift_rt.engine import build_pipeline
from lift_rt.errors import first_line
from lift_rt.eval.pairs import letterbox, load_rgb

# matplotlib's viridis at 10 evenly spaced stops.
VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
PANELS: tuple[str, ...] = ("backbone", "bilinear", "backbone at 2x input", "LiFT")


def colormap(values: np.ndarray) -> np.ndarray:
    """``h x w`` floats -> ``h x w x 3`` uint8 viridis, scaled from the map's min to its max."""
    lo, hi = float(values.min()), float(values.max())
    t = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    position = t * (len(VIRIDIS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(VIRIDIS) - 2)
    frac = (position - low)[..., None]
    return ((1 - frac) * VIRIDIS[low] + frac * VIRIDIS[low + 1] + 0.5).astype(np.uint8)


def cosine_map(feats: torch.Tensor, point: tuple[float, float], size: int) -> torch.Tensor:
    """``C x h x w`` features of a ``size x size`` image -> ``h x w`` cosine similarity with the
    descriptor bilinearly sampled at ``point`` (x, y in image pixels, pixel centres at integers)."""
    from lift_rt.matching import sample_descriptors

    feats = F.normalize(feats.float(), dim=0)
    kps = torch.tensor([[point]], dtype=torch.float32)
    query = F.normalize(sample_descriptors(feats[None], kps, (size, size))[0, 0], dim=0)
    return torch.einsum("c,chw->hw", query, feats)


@torch.inference_mode()
def similarity_maps(pipeline, canvas: np.ndarray, point: tuple[float, float]) -> dict[str, torch.Tensor]:
    """The four panels' similarity maps for a ``S x S x 3`` uint8 canvas (see module docstring)."""
    from lift_rt.upsamplers import Bilinear

    size = canvas.shape[0]
    image = torch.from_numpy(canvas).permute(2, 0, 1)[None].float().div(255.0)
    normalised = pipeline.normalise(image)
    feats = pipeline.backbone(normalised)
    spec = pipeline.spec
    image_2x = F.interpolate(normalised, scale_factor=2.0, mode="bilinear", align_corners=False)
    maps = {
        "backbone": feats,
        "bilinear": Bilinear(spec.dim, spec.patch_size)(normalised, feats),
        "backbone at 2x input": pipeline.backbone(image_2x),
        "LiFT": pipeline.lift(normalised, feats),
    }
    return {name: cosine_map(m[0], point, size) for name, m in maps.items()}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # PIL without FreeType: fixed bitmap font
        return ImageFont.load_default()


def mark(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int = 5) -> None:
    """A red ring with a white outline at (x, y)."""
    for width, colour, r in ((4, (255, 255, 255), radius + 1), (2, (230, 20, 20), radius)):
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=width)


def render_grid(canvas: np.ndarray, point: tuple[float, float], maps: dict[str, torch.Tensor], footer: str, panel: int = 224) -> Image.Image:
    """One row: the input and each map (nearest-enlarged to ``panel`` px), titled, with a footer line."""
    font, pad, title_h = _font(14), 8, 22
    tiles = [("input", Image.fromarray(canvas).resize((panel, panel), Image.Resampling.LANCZOS))]
    for name, values in maps.items():
        h, w = values.shape
        tiles.append((f"{name} ({h}x{w})", Image.fromarray(colormap(values.numpy())).resize((panel, panel), Image.Resampling.NEAREST)))
    width = len(tiles) * (panel + pad) + pad
    grid = Image.new("RGB", (width, title_h + panel + 2 * pad + title_h), "white")
    draw = ImageDraw.Draw(grid)
    scale = panel / canvas.shape[0]
    for i, (title, tile) in enumerate(tiles):
        left = pad + i * (panel + pad)
        grid.paste(tile, (left, title_h + pad))
        draw.text((left, pad // 2), title, fill="black", font=font)
        mark(draw, left + (point[0] + 0.5) * scale - 0.5, title_h + pad + (point[1] + 0.5) * scale - 0.5)
    draw.text((pad, title_h + panel + pad + pad // 2), footer, fill=(60, 60, 60), font=font)
    return grid


# skimage.data members that are not photos.
SKIMAGE_NOT_PHOTOS: frozenset[str] = frozenset(
    {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename", "lfw_subset", "stereo_motorcycle"}
)


def read_skimage_photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo by name -> ``H x W x 3`` uint8; ValueError naming a few valid ones otherwise."""
    import skimage.data

    if name not in skimage.data.__all__ or name in SKIMAGE_NOT_PHOTOS:
        examples = ", ".join(f"skimage:{n}" for n in ("astronaut", "camera", "chelsea", "coffee", "rocket"))
        raise ValueError(f"skimage:{name} is not a scikit-image photo; e.g. {examples}")
    try:
        array = getattr(skimage.data, name)()
    except (ModuleNotFoundError, OSError) as exc:  # photos not bundled need pooch and a download
        raise ValueError(f"skimage:{name} is not on this machine ({first_line(exc)})") from None
    if array.ndim not in (2, 3):
        raise ValueError(f"skimage:{name} is not a 2-D photo (shape {array.shape})")
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else np.ascontiguousarray(array[..., :3])


def read_image(source: str) -> np.ndarray:
    """A file path or ``skimage:NAME`` -> ``H x W x 3`` uint8."""
    if source.startswith("skimage:"):
        return read_skimage_photo(source.removeprefix("skimage:"))
    if not Path(source).is_file():
        raise FileNotFoundError(f"image {source} does not exist")
    try:
        return load_rgb(source)
    except OSError as exc:  # PIL's UnidentifiedImageError, truncated or unreadable files
        raise ValueError(f"image {source} cannot be read as an image ({first_line(exc)})") from None


def parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be X,Y in pixels, got {text!r}") from None
    return x, y


def _join_point(argv: list[str]) -> list[str]:
    """``--point -5,10`` -> ``--point=-5,10``: argparse would take the negative X for an option (and then
    the range check names the point)."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--point" and arg.startswith("-"):
            joined[-1] = f"--point={arg}"
        else:
            joined.append(arg)
    return joined


def similarity_command(args: argparse.Namespace) -> int:
    from lift_rt.backbones import check_resolution, get_spec

    check_writable(args.out, "--out")
    Image.init()
    if Image.registered_extensions().get(Path(args.out).suffix.lower()) not in Image.SAVE:
        raise ValueError(f"--out {args.out}: PIL cannot write a {Path(args.out).suffix or 'suffix-less'} file; use e.g. a .png name")
    image = read_image(args.image)
    h, w = image.shape[:2]
    x, y = args.point
    if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
        raise ValueError(f"--point {x:g},{y:g} lies outside the {w} x {h} image: the point must be inside it "
                         f"(0 <= X <= {w - 1}, 0 <= Y <= {h - 1})")
    spec = get_spec(args.backbone)
    if min(h, w) < spec.patch_size:  # as Engine, which refuses images smaller than a patch
        raise ValueError(f"image {args.image} is {w} x {h} pixels, smaller than one {spec.patch_size}-pixel patch of "
                         f"{spec.name}: use an image at least {spec.patch_size} pixels wide and high")
    check_resolution(spec, args.size, args.size)
    if args.lift is None and not args.random_init:
        raise ValueError(f"the LiFT panel needs weights: --lift CKPT (the authors' {spec.lift_file or 'checkpoint'} "
                         "or a lift_rt .safetensors), or --random-init for random ones")
    # The backbone's block and random seed default to the checkpoint's (lift_rt.checkpoint.trained_backbone).
    pipeline = build_pipeline(
        args.backbone, args.lift, random_init=args.random_init, backbone_weights=args.backbone_weights,
        layer=args.layer, seed=args.seed,
    )
    canvas, box = letterbox(image, args.size)
    point = tuple(box.points(np.array([[x, y]]))[0])
    maps = similarity_maps(pipeline, canvas, point)
    def weights(path: str | None) -> str:
        return Path(path).name if path else "RANDOM-INIT (untrained)"

    footer = (f"{pipeline.spec.name} {pipeline.backbone.facet} facet (block {pipeline.backbone.layer}), input {args.size}x{args.size}, point ({x:g}, {y:g}); "
              f"backbone weights: {weights(args.backbone_weights)}; LiFT weights: {weights(args.lift)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_grid(canvas, point, maps, footer, panel=args.panel).save(out)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lift_rt.viz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("similarity", help="self-similarity map grid for one point", description=plain_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file or skimage:NAME")
    p.add_argument("--point", type=parse_point, required=True,
                   help="X,Y in pixels of IMAGE, inside it (0 <= X <= width - 1, 0 <= Y <= height - 1)")
    p.add_argument("--backbone", default="dino_s8", help="registry backbone (default dino_s8)")
    p.add_argument("--lift", default=None, help="LiFT checkpoint")
    p.add_argument("--backbone-weights", default=None, help="official backbone checkpoint (default: the timm / Hugging Face cache)")
    p.add_argument("--random-init", action="store_true", help="random weights where none are given")
    p.add_argument("--size", type=positive_int, default=224, help="input size S (the image is letterboxed to S x S; default 224)")
    p.add_argument("--panel", type=positive_int, default=224, help="panel size in the PNG, pixels")
    p.add_argument("--layer", type=int, default=None, help="backbone block (default: the LiFT checkpoint's, else the last)")
    p.add_argument("--seed", type=int, default=None, help="seed of random weights (default: the checkpoint's backbone seed, else 0)")
    p.add_argument("--out", default="similarity.png", help="PNG to write (default similarity.png)")
    p.set_defaults(func=similarity_command)
    args = parser.parse_args(_join_point(sys.argv[1:] if argv is None else list(argv)))
    show_logs()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad inputs: a message, not a traceback
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
