"""SPair-71k loader on a tiny dataset written here in the dataset's own layout."""

import json

import numpy as np
import pytest
from PIL import Image

from lift_rt.eval.__main__ import main as eval_main
from lift_rt.eval.spair import load_spair, sample_per_category
from lift_rt.eval.transfer import evaluate_pairs

IMAGES = {"cat": ["2008_000001", "2008_000002"], "dog": ["2009_000010", "2009_000011"]}


def write_tiny_spair(root):
    rng = np.random.default_rng(0)
    for category, names in IMAGES.items():
        (root / "JPEGImages" / category).mkdir(parents=True)
        (root / "ImageAnnotation" / category).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / category / f"{name}.jpg")
            ann = {"filename": f"{name}.jpg", "image_width": 64, "image_height": 48, "category": category,
                   "bndbox": [4, 4, 60, 44], "kps": {"0": [10, 12], "1": None, "2": [30, 20]}}
            (root / "ImageAnnotation" / category / f"{name}.json").write_text(json.dumps(ann))
    for split, count in (("test", 3), ("trn", 1), ("val", 0)):
        (root / "PairAnnotation" / split).mkdir(parents=True)
        for i in range(count):
            category = "cat" if i % 2 == 0 else "dog"
            src, trg = IMAGES[category]
            pair = {"pair_id": i, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg", "category": category,
                    "src_imsize": [64, 48, 3], "trg_imsize": [64, 48, 3],
                    "src_bndbox": [4, 4, 60, 44], "trg_bndbox": [2, 6, 50 + i, 40],
                    "src_kps": [[10, 12], [30, 20]], "trg_kps": [[12, 14], [33, 22]], "kps_ids": ["0", "2"],
                    "viewpoint_variation": 0, "scale_variation": 0, "truncation": 0, "occlusion": 0, "mirror": 0}
            (root / "PairAnnotation" / split / f"{i:06d}-{src}-{trg}:{category}.json").write_text(json.dumps(pair))
    return root


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory):
    return write_tiny_spair(tmp_path_factory.mktemp("SPair-71k"))


def test_loads_pairs_of_a_split(spair_root):
    pairs = load_spair(spair_root, "test")
    assert [p.category for p in pairs] == ["cat", "dog", "cat"]
    first = pairs[0]
    assert first.src_image == spair_root / "JPEGImages" / "cat" / "2008_000001.jpg"
    assert first.trg_image == spair_root / "JPEGImages" / "cat" / "2008_000002.jpg"
    np.testing.assert_array_equal(first.src_kps, [[10, 12], [30, 20]])
    np.testing.assert_array_equal(first.trg_kps, [[12, 14], [33, 22]])
    assert first.trg_bbox == (2.0, 6.0, 50.0, 40.0) and pairs[2].trg_bbox == (2.0, 6.0, 52.0, 40.0)
    assert len(load_spair(spair_root, "trn")) == 1
    assert [p.category for p in load_spair(spair_root, "test", categories=["dog"])] == ["dog"]


def test_loader_errors(spair_root, tmp_path):
    with pytest.raises(ValueError, match="unknown SPair-71k split"):
        load_spair(spair_root, "train")
    with pytest.raises(ValueError, match="no pair annotations"):
        load_spair(spair_root, "val")
    with pytest.raises(ValueError, match="categories"):
        load_spair(spair_root, "test", categories=["horse"])
    with pytest.raises(FileNotFoundError, match="does not look like SPair-71k"):
        load_spair(tmp_path, "test")
    broken = write_tiny_spair(tmp_path / "broken")
    (broken / "JPEGImages" / "dog" / "2009_000011.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2009_000011.jpg"):
        load_spair(broken, "test")
    bad = next((broken / "PairAnnotation" / "trn").glob("*.json"))
    bad.write_text(json.dumps({"category": "cat"}))
    with pytest.raises(ValueError, match="missing"):
        load_spair(broken, "trn")


def test_sample_per_category_draws_with_replacement_deterministically(spair_root):
    pairs = load_spair(spair_root, "test")
    drawn = sample_per_category(pairs, 5, seed=0)
    assert [p.category for p in drawn] == ["cat"] * 5 + ["dog"] * 5
    assert [p.name for p in drawn] == [p.name for p in sample_per_category(pairs, 5, seed=0)]
    assert {p.name for p in drawn[:5]} <= {pairs[0].name, pairs[2].name}
    with pytest.raises(ValueError, match="per_category"):
        sample_per_category(pairs, 0)


def test_cli_on_tiny_spair(spair_root, capsys):
    code = eval_main(["pck", "--backbone", "dino_s16", "--random-init", "--upsampler", "bilinear", "--resolutions", "32",
                      "--dataset", f"spair:{spair_root}", "--pairs", "2", "--matcher", "torch", "--average", "point"])
    out = capsys.readouterr().out
    assert code == 0 and "4 pairs, 2 categories" in out and "point average" in out
    assert any(line.startswith("bilinear") for line in out.splitlines())


def test_authors_underscore_file_names_are_read_too(tmp_path):
    root = write_tiny_spair(tmp_path / "SPair-71k")
    released = root / "PairAnnotation" / "test" / "000001-2009_000010-2009_000011:dog.json"
    released.rename(released.with_name("000001-2009_000010-2009_000011_dog.json"))
    pairs = load_spair(root, "test")
    assert sorted(p.name for p in pairs) == ["000000-2008_000001-2008_000002:cat", "000001-2009_000010-2009_000011_dog",
                                             "000002-2008_000001-2008_000002:cat"]
    assert [p.category for p in pairs if p.name.endswith("_dog")] == ["dog"]


def test_cli_pairs_all_visits_every_pair_once(spair_root, capsys, monkeypatch, tmp_path):
    import lift_rt.eval.pck_cli as pck_cli

    visits = []

    def recording(pairs, *args, **kwargs):
        visits.append([p.name for p in pairs])
        return evaluate_pairs(pairs, *args, **kwargs)

    monkeypatch.setattr(pck_cli, "evaluate_pairs", recording)
    out_json = tmp_path / "pck.json"
    code = eval_main(["pck", "--backbone", "dino_s16", "--random-init", "--upsampler", "none,bilinear", "--resolutions",
                      "32,64", "--dataset", f"spair:{spair_root}", "--pairs", "all", "--matcher", "torch",
                      "--json", str(out_json)])
    assert code == 0 and "3 pairs, 2 categories" in capsys.readouterr().out
    files = sorted(path.stem for path in (spair_root / "PairAnnotation" / "test").glob("*.json"))
    assert len(visits) == 4 and all(sorted(names) == files for names in visits)  # each (upsampler, size): each pair once
    settings = json.loads(out_json.read_text())["settings"]
    assert (settings["pairs"], settings["pairs_evaluated"], settings["dataset"]) == ("all", 3, f"spair:{spair_root}")


def test_pair_draw_is_the_documented_one(spair_root):
    # numpy default_rng(seed), categories in sorted order: the draw for cat comes first, then dog's.
    pairs = load_spair(spair_root, "test")
    rng = np.random.default_rng(7)
    cats, dogs = [p for p in pairs if p.category == "cat"], [p for p in pairs if p.category == "dog"]
    expected = [cats[i].name for i in rng.choice(2, size=3, replace=True)] + [dogs[i].name for i in rng.choice(1, size=3)]
    assert [p.name for p in sample_per_category(pairs, 3, seed=7)] == expected
