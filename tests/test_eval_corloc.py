"""Object discovery: IoU/CorLoc by hand, TokenCut on oracle features, the VOC / COCO20K readers, the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lift_rt.eval.__main__ import main as eval_main
from lift_rt.eval.corloc import box_iou, corloc, default_tau, discover, score_box
from lift_rt.eval.corloc_data import load_coco20k, load_corloc_dataset, load_voc, scaled_boxes
from lift_rt.eval.tokencut import affinity, second_eigenvector, tokencut

# ----------------------------------------------------------------------------- IoU and CorLoc


def test_box_iou_by_hand():
    gts = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [100, 100, 110, 120]])
    ious = box_iou((0, 0, 10, 10), gts)
    assert ious[0] == pytest.approx(1.0, abs=1e-6)
    assert ious[1] == 0.0  # touching along x = 10: no overlap
    assert ious[2] == 0.0
    assert box_iou((5, 0, 15, 10), gts[:2]) == pytest.approx([1 / 3, 1 / 3], abs=1e-6)


def test_exact_half_is_not_counted_but_just_above_is():
    gt = np.array([[0, 0, 10, 10]])
    half = score_box("a", (0, 0, 20, 10), gt)  # IoU exactly 0.5 but for the authors' 1e-7 in the union
    assert half.best_iou == pytest.approx(0.5, abs=1e-6) and half.best_iou < 0.5 and not half.found
    above = score_box("b", (0, 0, 19, 10), gt)  # 100 / 190
    assert above.best_iou == pytest.approx(100 / 190, abs=1e-6) and above.found


def test_several_ground_truth_boxes_any_one_suffices():
    gts = np.array([[0, 0, 4, 4], [50, 50, 60, 60], [52, 52, 62, 62]])
    result = score_box("c", (51, 51, 61, 61), gts)
    assert result.found and result.best_iou == pytest.approx(81 / 119, abs=1e-6)
    assert not score_box("d", (51, 51, 61, 61), np.zeros((0, 4))).found  # no ground truth: a miss


def test_corloc_is_the_share_of_found_images():
    gt = np.array([[0, 0, 10, 10]])
    results = [score_box(str(i), box, gt) for i, box in enumerate([(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30), (0, 0, 20, 10)])]
    assert corloc(results) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no images"):
        corloc([])


def test_scaled_boxes_truncate_like_the_authors():
    boxes = np.array([[9, 19, 99, 199]])
    assert scaled_boxes(boxes, (200, 400), (64, 64)).tolist() == [[2, 3, 31, 31]]  # 2.88, 3.04, 31.68, 31.84


# ----------------------------------------------------------------------------- TokenCut


def one_hot(mask: np.ndarray) -> torch.Tensor:
    """``h x w`` bool -> 2 x h x w oracle features: one vector on the object, another elsewhere."""
    m = torch.from_numpy(mask).float()
    return torch.stack([m, 1 - m])


def test_tokencut_recovers_an_oracle_object():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    found = tokencut(one_hot(mask), (64, 80))
    assert found.box == (24.0, 16.0, 56.0, 40.0)  # cells of 8 x 8 pixels
    np.testing.assert_array_equal(found.mask, mask)
    assert found.mask[found.seed] and found.eigenvector[found.seed] > 0
    assert tokencut(one_hot(mask), (64, 80), binary=False).box == found.box  # the authors' weighted-graph ablation


def test_tokencut_keeps_the_seed_component_only():
    first, second = np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool)
    first[0:2, 0:2] = True
    second[5:8, 6:8] = True  # touches the far corner
    found = tokencut(one_hot(first | second), (60, 60))  # one feature for both: the seed picks the blob
    blob, box = (first, (0.0, 0.0, 15.0, 15.0)) if first[found.seed] else (second, (45.0, 37.5, 60.0, 60.0))
    np.testing.assert_array_equal(found.mask, blob)
    assert found.box == box  # 7.5 px cells
    assert tokencut(one_hot(second), (60, 60)).box == (45.0, 37.5, 60.0, 60.0)


def test_affinity_binary_and_weighted():
    feats = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.1]]).reshape(2, 1, 3)  # cells: e1, e2, ~e1
    binary = affinity(feats, tau=0.2)
    assert binary.dtype == np.float64
    np.testing.assert_allclose(binary, [[1, 1e-5, 1], [1e-5, 1, 1e-5], [1, 1e-5, 1]])
    weighted = affinity(feats, tau=0.2, binary=False)
    cos = 1 / np.sqrt(1.01)
    np.testing.assert_allclose(weighted, [[1, 1e-5, cos], [1e-5, 1, 1e-5], [cos, 1e-5, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        affinity(torch.full((2, 2, 2), float("nan")), 0.2)


def test_second_eigenvector_matches_a_symmetric_normalised_reference():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.standard_normal((16, 6, 7)).astype(np.float32))
    weights = affinity(feats, tau=0.05)
    got = second_eigenvector(weights)
    # reference: L_sym = D^-1/2 (D - A) D^-1/2, x = D^-1/2 u for its second smallest eigenvector u
    d = weights.sum(1)
    inv = np.diag(1 / np.sqrt(d))
    values, vectors = np.linalg.eigh(inv @ (np.diag(d) - weights) @ inv)
    assert values[1] < values[2] - 1e-6  # a simple eigenvalue: the vector is defined up to sign
    want = inv @ vectors[:, 1]
    want *= np.sign(want @ got)
    np.testing.assert_allclose(got / np.linalg.norm(got), want / np.linalg.norm(want), atol=1e-8)


def test_tokencut_rejects_a_tiny_grid():
    with pytest.raises(ValueError, match="at least 3 cells"):
        tokencut(torch.rand(4, 1, 2), (16, 32))


# ----------------------------------------------------------------------------- VOC / COCO20K folders

OBJECT = (16, 12, 48, 36)  # x1, y1, x2, y2 (pixel coordinates) of the red square drawn on each 64 x 48 image


def photo(size=(64, 48), seed=0) -> np.ndarray:
    """A grey scikit-image photo (resized) with a red square at OBJECT."""
    from skimage import data

    rng = np.random.default_rng(seed)
    grey = np.asarray(Image.fromarray(data.camera()).resize(size)).astype(np.uint8)
    image = np.repeat(grey[..., None] // 2, 3, axis=2) + rng.integers(0, 8, (size[1], size[0], 3)).astype(np.uint8)
    x1, y1, x2, y2 = OBJECT
    image[y1:y2, x1:x2] = (255, 0, 0)
    return image


def voc_xml(name: str, size: tuple[int, int], boxes, *, difficult=0) -> str:
    objects = "".join(
        f"<object><name>thing</name><truncated>0</truncated><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for x1, y1, x2, y2 in boxes
    )
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")


def make_voc(root, count=3, size=(64, 48)):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"00000{i}" for i in range(count)]
    for i, image_id in enumerate(ids):
        Image.fromarray(photo(size, seed=i)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, size, [OBJECT, (0, 0, 5, 5)], difficult=i % 2))
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_reader_keeps_every_object_and_shifts_the_minimum(tmp_path):
    images = load_voc(make_voc(tmp_path / "VOC2007"), "2007")
    assert [im.name for im in images] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert images[1].size == (64, 48)
    np.testing.assert_array_equal(images[1].boxes, [OBJECT, (0, 0, 5, 5)])  # difficult objects kept
    nested = tmp_path / "voc12"
    make_voc(nested / "VOCdevkit" / "VOC2012", count=1)
    name, images = load_corloc_dataset(f"voc12:{nested}")
    assert name == "voc12" and len(images) == 1


def test_voc_bad_input_one_line_each(tmp_path):
    root = make_voc(tmp_path / "VOC2007")
    (root / "ImageSets/Main/trainval.txt").rename(root / "ImageSets/Main/other.txt")
    with pytest.raises(ValueError, match="missing .*trainval.txt"):
        load_voc(root, "2007")
    (root / "ImageSets/Main/other.txt").rename(root / "ImageSets/Main/trainval.txt")
    (root / "Annotations/000001.xml").write_text(voc_xml("000001", (64, 48), []))
    with pytest.raises(ValueError, match=r"000001.xml: no <object>"):
        load_voc(root, "2007")
    (root / "Annotations/000001.xml").write_text(voc_xml("000001", (64, 48), [OBJECT]))
    (root / "JPEGImages/000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"missing .*000002.jpg"):
        load_voc(root, "2007")
    with pytest.raises(ValueError, match="use voc07:DIR"):
        load_corloc_dataset(f"voc2007:{root}")


def make_coco20k(root, count=3, size=(64, 48)):
    (root / "COCO/annotations").mkdir(parents=True)
    (root / "COCO/images/train2014").mkdir(parents=True)
    images, annotations, lines = [], [], []
    for i in range(count):
        image_id = 500 + i
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(photo(size, seed=i)).save(root / "COCO/images/train2014" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        x1, y1, x2, y2 = OBJECT
        annotations.append({"id": 2 * i, "image_id": image_id, "bbox": [x1 + 0.4, y1 - 0.4, x2 - x1, y2 - y1], "iscrowd": 0, "category_id": 1})
        annotations.append({"id": 2 * i + 1, "image_id": image_id, "bbox": [0, 0, 64, 48], "iscrowd": 1, "category_id": 1})
        lines.append(f"train2014/{name}")
    images.append({"id": 9999, "file_name": "COCO_train2014_000000009999.jpg", "width": 1, "height": 1})  # not in the 20k
    (root / "COCO/annotations/instances_train2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (root / "coco_20k_filenames.txt").write_text("\n".join(lines[::-1]) + "\n")
    return root


def test_coco20k_reader_drops_crowds_and_follows_the_list(tmp_path):
    images = load_coco20k(make_coco20k(tmp_path))
    assert [im.name for im in images] == [f"COCO_train2014_{i:012d}.jpg" for i in (502, 501, 500)]
    np.testing.assert_array_equal(images[0].boxes, [OBJECT])  # crowd box gone; 20.4 -> 20, 11.6 -> 12
    assert images[0].size is None  # the image's own size is used
    assert default_tau("coco20k") == 0.3 and default_tau("voc07") == 0.2


def test_coco20k_bad_input(tmp_path):
    root = make_coco20k(tmp_path)
    listing = root / "coco_20k_filenames.txt"
    listing.write_text(listing.read_text() + "train2014/COCO_train2014_000000000777.jpg\n")
    with pytest.raises(ValueError, match=r"names 1 image ids missing from .*instances_train2014.json, e.g. \[777\]"):
        load_coco20k(root)
    listing.write_text("train2014/COCO_train2014_000000000501.jpg\n")
    (root / "COCO/images/train2014/COCO_train2014_000000000501.jpg").unlink()
    with pytest.raises(ValueError, match="missing .*000000000501.jpg"):
        load_coco20k(root)
    listing.unlink()
    with pytest.raises(ValueError, match="missing .*coco_20k_filenames.txt"):
        load_coco20k(root)


def redness_features(images: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Oracle features: per ``patch`` cell, one-hot of 'mostly red' -> B x 2 x h x w."""
    red = ((images[:, 0] > 0.8) & (images[:, 1] < 0.2)).float()[:, None]
    share = torch.nn.functional.avg_pool2d(red, patch)
    fg = (share > 0.5).float()
    return torch.cat([fg, 1 - fg], dim=1)


@pytest.mark.parametrize("kind", ["voc07", "coco20k"])
def test_discover_with_oracle_features_finds_every_object(tmp_path, kind):
    root = make_voc(tmp_path / "VOC2007") if kind == "voc07" else make_coco20k(tmp_path)
    _, images = load_corloc_dataset(f"{kind}:{root}")
    results = discover(images, redness_features, 64, default_tau(kind), batch_size=2)
    assert corloc(results) == 100.0
    for r in results:  # at 64 x 64 the square spans cells 2..5 of 8 px both ways
        assert r.box == (16.0, 16.0, 48.0, 48.0) and r.best_iou == pytest.approx(1.0, abs=1e-6)
        assert r.gt_boxes[0].tolist() == [16, 16, 48, 48]


# ----------------------------------------------------------------------------- CLI


def test_cli_end_to_end_random_weights(tmp_path, capsys):
    root = make_voc(tmp_path / "VOC2007", count=2)
    out, boxes = tmp_path / "out/corloc.json", tmp_path / "out/boxes.json"
    code = eval_main(["corloc", "--data", f"voc07:{root}", "--backbone", "dino_s16", "--upsampler", "none,lift",
                      "--resolutions", "48,64", "--random-init", "--device", "cpu", "--json", str(out), "--save-boxes", str(boxes)])
    assert code == 0
    table = capsys.readouterr().out
    assert "VOC07" in table and "random init" in table
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in table.splitlines() if "|" in line}
    assert set(rows) >= {"none", "lift"} and rows["upsampler"] == ["48", "64"]
    payload = json.loads(out.read_text())
    assert payload["tau"] == {"VOC07": 0.2} and payload["images"] == {"VOC07": 2}
    for row in ("none", "lift"):
        for size in ("48", "64"):
            assert payload["scores"][row]["VOC07"][size] in (0.0, 50.0, 100.0)
    saved = json.loads(boxes.read_text())["boxes"]
    assert len(saved) == 2 * 2 * 2
    assert all(0 <= v <= r["resolution"] for r in saved for v in r["box"])


def test_cli_bad_data_writes_nothing(tmp_path, cli_error):
    root = make_voc(tmp_path / "VOC2007", count=1)
    (root / "Annotations/000000.xml").write_text(voc_xml("000000", (64, 48), []))
    out = tmp_path / "corloc.json"
    err = cli_error(eval_main, ["corloc", "--data", f"voc07:{root}", "--backbone", "dino_s16", "--upsampler", "none",
                                "--resolutions", "32", "--random-init", "--json", str(out)])
    assert "no <object>" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    err = cli_error(eval_main, ["corloc", "--data", f"voc07:{root}", "--backbone", "dino_s16", "--random-init", "--resolutions", "40"])
    assert "multiple of 16" in err
    err = cli_error(eval_main, ["corloc", "--data", f"coco:{root}", "--backbone", "dino_s16", "--random-init", "--resolutions", "32"])
    assert "voc07:DIR" in err
