"""Object-discovery data sets as the TokenCut/LOST evaluation reads them: VOC07, VOC12, COCO20K.

- VOC (``voc07:DIR``, ``voc12:DIR``): DIR is the ``VOC2007`` / ``VOC2012`` folder
  (or one holding ``VOCdevkit/VOC20xx``) with ``ImageSets/Main/trainval.txt``,
  ``Annotations/<id>.xml`` and ``JPEGImages/<id>.jpg``. Every object counts,
  difficult and truncated ones included (the authors' default run); boxes become
  ``(xmin - 1, ymin - 1, xmax, ymax)``; the original size is the XML's ``<size>``.
- COCO20K (``coco20k:DIR``): DIR holds ``coco_20k_filenames.txt`` (lines such as
  ``train2014/COCO_train2014_000000560992.jpg``; the image id is the number
  after the last underscore), ``COCO/annotations/instances_train2014.json`` and
  ``COCO/images/train2014/``. Crowd annotations are dropped; a box
  ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``, each rounded to an integer;
  the original size is the image's own.

Every file is checked when the set is read, so a run never stops half-way.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS: tuple[str, ...] = ("voc07", "voc12", "coco20k")
logger = logging.getLogger(__name__)

COCO20K_LIST = "coco_20k_filenames.txt"
COCO_ANNOTATIONS = Path("COCO/annotations/instances_train2014.json")
COCO_IMAGES = Path("COCO/images/train2014")


@dataclass(frozen=True)
class AnnotatedImage:
    """One image and its ground-truth boxes: ``N x 4`` float (x1, y1, x2, y2) in original pixels.

    ``size``: (width, height) the annotation states (VOC), or None to take the image's own (COCO).
    """

    name: str
    path: Path
    boxes: np.ndarray
    size: tuple[int, int] | None = None


def scaled_boxes(boxes: np.ndarray, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Boxes from original (width, height) pixels to the resized image's, truncated to integers as the authors."""
    (w0, h0), (w1, h1) = original, resized
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0])).astype(np.int32)


def _voc_root(directory: Path, year: str) -> Path:
    """The folder holding ImageSets/: DIR itself, or DIR/VOCdevkit/VOC<year>."""
    nested = directory / "VOCdevkit" / f"VOC{year}"
    return nested if not (directory / "ImageSets").is_dir() and (nested / "ImageSets").is_dir() else directory


def _xml_int(node: ET.Element, tag: str, where: Path) -> int:
    text = node.findtext(tag)
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: <{tag}> is {text!r}, not a number") from None


def read_voc_annotation(xml_path: Path) -> tuple[str, tuple[int, int], np.ndarray]:
    """One VOC XML -> (file name, (width, height), ``N x 4`` boxes as the authors shift them)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{xml_path}: not a valid XML file ({exc})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: no <size> element; VOC annotations state the image's width and height")
    objects = root.findall("object")
    if not objects:
        raise ValueError(f"{xml_path}: no <object>; every image of the set needs at least one annotated object")
    boxes = []
    for obj in objects:
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: an <object> without <bndbox>")
        x1, y1, x2, y2 = (_xml_int(box, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1, y1 - 1, x2, y2))  # 1-based inclusive pixels -> coordinates
    width, height = _xml_int(size, "width", xml_path), _xml_int(size, "height", xml_path)
    if width <= 0 or height <= 0:
        raise ValueError(f"{xml_path}: <size> is {width} x {height}; it must be positive")
    return root.findtext("filename") or xml_path.stem, (width, height), np.asarray(boxes, dtype=np.float64)


def load_voc(directory: str | Path, year: str, split: str = "trainval") -> list[AnnotatedImage]:
    """The images of ``ImageSets/Main/<split>.txt`` with their boxes, in list order."""
    root = _voc_root(Path(directory), year)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise ValueError(f"missing {listing}: the VOC{year} folder must hold ImageSets/Main/{split}.txt, "
                         "Annotations/ and JPEGImages/")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{listing} names no image")
    images = []
    for image_id in ids:
        xml_path, image_path = root / "Annotations" / f"{image_id}.xml", root / "JPEGImages" / f"{image_id}.jpg"
        for path in (xml_path, image_path):
            if not path.is_file():
                raise ValueError(f"missing {path} (listed in {listing})")
        name, size, boxes = read_voc_annotation(xml_path)
        images.append(AnnotatedImage(name, image_path, boxes, size))
    return images


def coco_image_id(line: str) -> int:
    """``train2014/COCO_train2014_000000560992.jpg`` -> 560992."""
    try:
        return int(line.rsplit("_", 1)[-1].split(".")[0])
    except ValueError:
        raise ValueError(f"{COCO20K_LIST}: cannot read an image id from {line!r}") from None


def load_coco20k(directory: str | Path) -> list[AnnotatedImage]:
    """The images of the 20k list (list order, repeats dropped) with their non-crowd boxes."""
    directory = Path(directory)
    listing, annotation_file = directory / COCO20K_LIST, directory / COCO_ANNOTATIONS
    for path in (listing, annotation_file):
        if not path.is_file():
            raise ValueError(f"missing {path}: coco20k:DIR must hold {COCO20K_LIST}, {COCO_ANNOTATIONS} and {COCO_IMAGES}/")
    ids = list(dict.fromkeys(coco_image_id(line.strip()) for line in listing.read_text().splitlines() if line.strip()))
    if not ids:
        raise ValueError(f"{listing} names no image")
    try:
        coco = json.loads(annotation_file.read_text())
        records = {image["id"]: image for image in coco["images"]}
        annotations = coco["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{annotation_file}: not a COCO instances file ({exc.__class__.__name__}: {exc})") from None
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"{listing} names {len(missing)} image ids missing from {annotation_file}, "
                         f"e.g. {missing[:3]}; use the train2014 instances file")
    boxes: dict[int, list[tuple[int, int, int, int]]] = {i: [] for i in ids}
    for ann in annotations:
        if ann["image_id"] in boxes and ann.get("iscrowd", 0) != 1:
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append(tuple(int(round(v)) for v in (x, y, x + w, y + h)))
    empty = sum(not boxes[i] for i in ids)
    if empty:
        logger.warning("%d images of %s have no non-crowd box; they count as misses", empty, listing)
    images = []
    for image_id in ids:
        path = directory / COCO_IMAGES / records[image_id]["file_name"]
        if not path.is_file():
            raise ValueError(f"missing {path} (image {image_id} of {listing})")
        images.append(AnnotatedImage(records[image_id]["file_name"], path, np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 4)))
    return images


def load_corloc_dataset(spec: str) -> tuple[str, list[AnnotatedImage]]:
    """``voc07:DIR``, ``voc12:DIR`` or ``coco20k:DIR`` -> (data set name, images)."""
    name, sep, directory = spec.partition(":")
    if not sep or not directory or name not in DATASETS:
        raise ValueError(f"--data {spec!r}: use voc07:DIR, voc12:DIR or coco20k:DIR")
    if not Path(directory).is_dir():
        raise ValueError(f"--data {spec}: {directory} is not a folder")
    if name == "coco20k":
        return name, load_coco20k(directory)
    return name, load_voc(directory, "2007" if name == "voc07" else "2012")
