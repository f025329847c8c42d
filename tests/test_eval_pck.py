"""PCK arithmetic on hand-computed cases, the protocols' geometry, matching, and the CLI."""

import json

import numpy as np
import pytest
import torch

from lift_rt.eval.__main__ import main as eval_main
from lift_rt.eval.pairs import KeypointPair, letterbox, pixel_index
from lift_rt.eval.pck import PairResult, pck
from lift_rt.eval.transfer import evaluate_pairs, get_matcher, match_keypoints

CLI = ["pck", "--backbone", "dino_s16", "--random-init", "--matcher", "torch"]


@pytest.mark.parametrize("protocol", ["authors", "exact"])
def test_letterbox_scales_and_centres(protocol):
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    canvas, box = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3)
    assert (box.scale, box.scale_x, box.scale_y, box.offset_x, box.offset_y) == (0.32, 0.32, 0.32, 0, 16)
    assert canvas[:16].max() == 0 and canvas[48:].max() == 0 and canvas[16:48].min() > 200
    points = box.points(np.array([[0.0, 0.0], [200.0, 100.0], [50.0, 25.0]]), protocol)
    np.testing.assert_allclose(points, [[0, 16], [64, 48], [16, 24]], rtol=1e-6)
    assert box.box_length((10, 20, 60, 40), protocol) == pytest.approx(50 * 0.32)


# A 100 x 30 image on a 64 canvas: scale 64/100 = 0.64 for both axes (authors); resized to 64 x 19
# (30 * 0.64 = 19.2 rounds to 19), so the actual y ratio is 19/30 = 0.6333 (exact); offset_y (64-19)//2 = 22.
WIDE = np.zeros((30, 100, 3), np.uint8)
WIDE_KPS = np.array([[17.0, 11.0], [40.0, 18.0]])
WIDE_BOX = (40.0, 0.0, 50.0, 30.0)  # 10 wide, 30 high


def test_protocols_by_hand_on_a_non_square_image():
    _, box = letterbox(WIDE, 64)
    assert (box.scale, box.scale_x, box.scale_y, box.offset_x, box.offset_y) == (0.64, 0.64, 19 / 30, 0, 22)
    authors, exact = box.points(WIDE_KPS, "authors"), box.points(WIDE_KPS, "exact")
    # authors: x 17 * 0.64 = 10.88, 40 * 0.64 = 25.6; y 11 * 0.64 + 22 = 29.04, 18 * 0.64 + 22 = 33.52
    np.testing.assert_allclose(authors, [[10.88, 29.04], [25.6, 33.52]], atol=1e-5)
    # exact: x as above; y 11 * 19/30 + 22 = 28.9667, 18 * 19/30 + 22 = 33.4
    np.testing.assert_allclose(exact, [[10.88, 28.9 + 0.2 / 3], [25.6, 33.4]], atol=1e-9)
    # Feature pixels: authors floor (10, 29), (25, 33); exact rounds (11, 29), (26, 33). The floor of the
    # exact coordinates would give y 28 for the first point, rounding the authors' y 34 for the second:
    # both conventions are needed to pick the authors' pixels.
    assert pixel_index(authors, 64, "authors").tolist() == [[10, 29], [25, 33]]
    assert pixel_index(exact, 64, "exact").tolist() == [[11, 29], [26, 33]]
    assert pixel_index(exact, 64, "authors").tolist() == [[10, 28], [25, 33]]
    assert pixel_index(authors, 64, "exact").tolist() == [[11, 29], [26, 34]]
    # Threshold length, max side of the box: authors 30 * 0.64 = 19.2; exact max(10 * 0.64, 30 * 19/30) = 19.
    assert box.box_length(WIDE_BOX, "authors") == pytest.approx(19.2)
    assert box.box_length(WIDE_BOX, "exact") == pytest.approx(19.0)
    assert pixel_index(np.array([[-0.4, 63.7]]), 64, "authors").tolist() == [[0, 63]]  # clamped into the canvas
    with pytest.raises(ValueError, match="unknown protocol"):
        box.points(WIDE_KPS, "paper")


def test_authors_coordinates_are_float32_as_their_script():
    # x = 45 on an 80-wide image at S = 112: 45 * 1.4 is 62.99999999999999 in float64 but 63.0 in float32 (the
    # authors' torch float32 keypoints): their feature pixel is 63.
    _, box = letterbox(np.zeros((40, 80, 3), np.uint8), 112)
    assert 45 * box.scale < 63
    assert pixel_index(box.points(np.array([[45.0, 0.0]]), "authors"), 112, "authors")[0, 0] == 63


@pytest.mark.parametrize("protocol,errors,pck_001", [
    # identity features: each source keypoint lands on its own feature pixel; the error is that pixel's distance
    # from the target keypoint. authors: (10, 29) vs (10.88, 29.04) and (25, 33) vs (25.6, 33.52);
    # exact: (11, 29) vs (10.88, 28.9667) and (26, 33) vs (25.6, 33.4).
    ("authors", [np.hypot(0.88, 0.04), np.hypot(0.6, 0.52)], 0.0),  # 0.01 * 19.2 = 0.192 < both errors
    ("exact", [np.hypot(0.12, 0.1 / 3), np.hypot(0.4, 0.4)], 50.0),  # 0.01 * 19 = 0.19: the first is correct
])
def test_protocols_end_to_end_by_hand(protocol, errors, pck_001):
    pair = KeypointPair("wide", WIDE, WIDE, WIDE_KPS, WIDE_KPS, WIDE_BOX, WIDE_BOX)
    fixed = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(0))  # one distinct descriptor per pixel
    results = evaluate_pairs([pair], lambda images: fixed.expand(len(images), -1, -1, -1), 64, protocol=protocol,
                             matcher="torch")
    np.testing.assert_allclose(results[0].errors, errors, atol=1e-5)
    assert pck(results, alphas=(0.01,)) == {0.01: pck_001}


def hand_results(accepted_first=(True, True, True)):
    return [
        PairResult("a", np.array([1.0, 5.0, 20.0]), 100.0, np.array(accepted_first)),
        PairResult("a", np.array([2.0]), 10.0, np.array([True])),
        PairResult("b", np.array([0.0, 30.0, 1.0]), 200.0, np.array([True, True, True])),
        PairResult("b", np.array([]), 50.0, np.array([], dtype=bool)),  # no keypoints: ignored
    ]


def test_pck_by_hand():
    # Correct means strictly below the threshold (an error equal to it is wrong).
    # alpha 0.1: pair thresholds 10, 1, 20 -> correct [1,1,0], [0], [1,0,1]
    # alpha 0.05: thresholds 5, 0.5, 10 -> [1,0,0] (5.0 is not below 5), [0], [1,0,1]
    # alpha 0.01: thresholds 1, 0.1, 2 -> [0,0,0] (1.0 is not below 1), [0], [1,0,1]
    by_category = pck(hand_results())
    assert by_category[0.1] == pytest.approx(100 * (2 / 4 + 2 / 3) / 2)
    assert by_category[0.05] == pytest.approx(100 * (1 / 4 + 2 / 3) / 2)
    assert by_category[0.01] == pytest.approx(100 * (0 / 4 + 2 / 3) / 2)
    assert pck(hand_results(), average="point")[0.1] == pytest.approx(100 * 4 / 7)
    assert pck(hand_results(), average="image")[0.1] == pytest.approx(100 * (2 / 3 + 0 + 2 / 3) / 3)
    assert pck(hand_results((True, False, True)), alphas=(0.1,)) == {0.1: pytest.approx(100 * (1 / 4 + 2 / 3) / 2)}


def test_pck_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown average"):
        pck(hand_results(), average="pair")
    with pytest.raises(ValueError, match="no keypoints"):
        pck([PairResult("a", np.array([]), 1.0, np.array([], dtype=bool))])


def test_keypoint_pair_validation():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="source but"):
        KeypointPair("a", image, image, np.zeros((2, 2)), np.zeros((3, 2)), (0, 0, 1, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        KeypointPair("a", image, image, np.full((1, 2), np.nan), np.zeros((1, 2)), (0, 0, 1, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="x2 >= x1"):
        KeypointPair("a", image, image, np.zeros((1, 2)), np.zeros((1, 2)), (5, 0, 1, 1), (0, 0, 1, 1))


@pytest.mark.parametrize("matcher", ["torch", "cpp"])
def test_matchers_agree_with_brute_force(matcher):
    torch.manual_seed(0)
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 50, 16)
    index, sim = get_matcher(matcher)(src, tgt, normalize=False)
    full = src @ tgt.transpose(1, 2)
    torch.testing.assert_close(sim, full.max(-1).values)
    assert torch.equal(index, full.argmax(-1))
    with pytest.raises(ValueError, match="unknown matcher"):
        get_matcher("numpy")


def shifted_features(size=16, dx=3, dy=-2, channels=64):
    """Random distinct descriptors; the target is the source moved by (dx, dy) pixels."""
    torch.manual_seed(1)
    src = torch.randn(channels, size, size)
    return src, torch.roll(src, shifts=(dy, dx), dims=(1, 2))


@pytest.mark.parametrize("protocol,pixels", [("authors", [[4, 5], [10, 12], [7, 3]]), ("exact", [[4, 5], [10, 12], [7, 4]])])
@pytest.mark.parametrize("matcher", ["torch", "cpp"])
def test_match_keypoints_follows_a_shift(matcher, protocol, pixels):
    src, trg = shifted_features()
    points = np.array([[4.0, 5.0], [10.0, 12.0], [7.2, 3.9]])
    pred, accepted = match_keypoints(src, trg, points, 16, protocol=protocol, mutual=True, matcher=get_matcher(matcher))
    np.testing.assert_array_equal(pred, np.array(pixels) + [3, -2])
    assert accepted.all()


def test_mutual_check_rejects_a_duplicate():
    src, trg = shifted_features(dx=0, dy=0)
    src[:, 9, 9] = src[:, 2, 2]  # (9, 9) looks like (2, 2); the back-match goes to (2, 2)
    pred, accepted = match_keypoints(src, trg, np.array([[9.0, 9.0], [5.0, 5.0]]), 16, mutual=True)
    np.testing.assert_array_equal(pred, [[2, 2], [5, 5]])
    assert accepted.tolist() == [False, True]


def test_soft_argmax_interpolates_between_equal_peaks():
    src, trg = shifted_features(dx=0, dy=0)
    trg[:, 5, 7] = src[:, 5, 6]  # two equal peaks at x = 6 and 7, y = 5
    pred, _ = match_keypoints(src, trg, np.array([[6.0, 5.0]]), 16, soft_argmax=1e-3, window=2)
    np.testing.assert_allclose(pred, [[6.5, 5.0]], atol=1e-4)
    pred, _ = match_keypoints(src, trg, np.array([[6.0, 5.0]]), 16)
    np.testing.assert_array_equal(pred, [[6, 5]])


@pytest.mark.parametrize("protocol,max_error", [("authors", 2**0.5), ("exact", 0.5**0.5)])
def test_evaluate_pairs_identity_is_perfect_and_random_is_not(protocol, max_error):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    kps = rng.uniform([0, 0], [59, 39], size=(10, 2))
    pair = KeypointPair("x", image, image, kps, kps, (0, 0, 59, 39), (0, 0, 59, 39))
    fixed = torch.randn(1, 32, 64, 64)  # at full resolution: the argmax is the keypoint's own pixel
    same = evaluate_pairs([pair] * 3, lambda images: fixed.expand(len(images), -1, -1, -1), 64, protocol=protocol,
                          matcher="torch", batch_pairs=2)
    assert len(same) == 3 and all(r.errors.max() < max_error for r in same)  # only the floor / rounding to a pixel
    assert pck(same, alphas=(0.1, 0.05)) == {0.1: 100.0, 0.05: 100.0}
    noise = evaluate_pairs([pair] * 3, lambda images: torch.randn(len(images), 32, 8, 8), 64, matcher="torch")
    assert pck(noise)[0.01] < 100.0
    with pytest.raises(ValueError, match="B x C x h x w"):
        evaluate_pairs([pair], lambda images: torch.randn(1, 32, 8, 8), 64)


def test_cli_prints_table_1_layout_and_writes_every_score_as_json(capsys, tmp_path):
    out_json = tmp_path / "new" / "pck.json"
    code = eval_main([*CLI, "--upsampler", "none,bilinear", "--resolutions", "32,64", "--dataset", "synthetic",
                      "--pairs", "1", "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert code == 0
    assert all(f"{row} {size}px" in err for row in ("none", "bilinear") for size in (32, 64))  # a progress bar each
    assert "5 pairs, 5 categories" in out and "random init" in out and "authors protocol" in out
    lines = out.splitlines()
    assert lines[1].split("|")[1].strip() == "PCK@0.1" and lines[1].split("|")[2].strip() == "PCK@0.05"
    assert lines[2].replace("|", " ").split() == ["upsampler", "32", "64", "32", "64"]
    rows = [line.replace("|", " ").split() for line in lines]
    by_name = {row[0]: [float(v) for v in row[1:]] for row in rows if row and row[0] in ("none", "bilinear")}
    assert set(by_name) == {"none", "bilinear"} and all(len(v) == 4 and all(0 <= x <= 100 for x in v) for v in by_name.values())
    data = json.loads(out_json.read_text())
    assert data["settings"] | {"device": "cpu"} == {
        "protocol": "authors", "pairs": 1, "pairs_seed": 0, "pairs_evaluated": 5, "categories": 5, "seed": None, "dataset": "synthetic",
        "split": "test", "backbone": "dino_s16", "weights": "random init", "lift": None, "rc": None,
        "backbone_weights": None, "iterations": 1, "backend": "torch", "precision": "fp32", "device": "cpu",
        "matcher": "torch", "average": "category", "mutual": False, "soft_argmax": None, "window": None,
    }
    scores = data["scores"]
    assert set(scores) == {"none", "bilinear"}
    for name, values in by_name.items():  # every alpha and resolution; the table shows 0.1 and 0.05, rounded
        assert set(scores[name]) == {"PCK@0.1", "PCK@0.05", "PCK@0.01"}
        assert all(set(by_size) == {"32", "64"} for by_size in scores[name].values())
        table = [scores[name][m][r] for m in ("PCK@0.1", "PCK@0.05") for r in ("32", "64")]
        np.testing.assert_allclose(table, values, atol=0.05 + 1e-9)


def test_cli_exact_protocol_scores_differently(capsys, tmp_path):
    argv = [*CLI, "--upsampler", "bilinear", "--resolutions", "32", "--pairs", "2"]
    scores = {}
    for protocol in ("authors", "exact"):
        assert eval_main([*argv, "--protocol", protocol, "--json", str(tmp_path / f"{protocol}.json")]) == 0
        scores[protocol] = json.loads((tmp_path / f"{protocol}.json").read_text())["scores"]["bilinear"]
    assert "exact protocol" in capsys.readouterr().out
    assert scores["authors"] != scores["exact"]


def test_cli_unwritable_json_fails_before_any_work(tmp_path, monkeypatch, cli_error):
    import lift_rt.eval.pck_cli as pck_cli

    def fail(*args, **kwargs):
        raise AssertionError("loaded pairs before checking --json")

    monkeypatch.setattr(pck_cli, "load_dataset", fail)
    (tmp_path / "file").write_text("")
    err = cli_error(eval_main, [*CLI, "--resolutions", "32", "--json", str(tmp_path / "file" / "x.json")])
    assert "--json" in err and "is not a folder" in err
    assert "--json" in cli_error(eval_main, [*CLI, "--resolutions", "32", "--json", str(tmp_path)])


def test_help_explains_protocols_and_pairs(capsys):
    with pytest.raises(SystemExit):
        eval_main(["pck", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "authors: both axes scaled by S / max(w, h)" in text and "floor" in text
    assert "exact: each axis scaled by its actual resize ratio" in text and "rounded" in text
    assert "'all': every pair of the split once" in text and "os.listdir" in text and "``" not in text


def test_cli_rc_row_is_labelled_untrained_or_loads_a_trained_one(capsys, tmp_path):
    from lift_rt.checkpoint import save_lift
    from lift_rt.model import LiFT
    from lift_rt.upsamplers import build_upsampler

    argv = ["pck", "--backbone", "dino_s16", "--random-init", "--upsampler", "nearest,rc", "--resolutions", "32",
            "--pairs", "1", "--matcher", "torch"]
    assert eval_main(argv) == 0
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in capsys.readouterr().out.splitlines() if "|" in line}
    assert rows["rc (untrained)"] == rows["nearest"]  # identity-initialised: nearest upsampling, and named so
    trained = build_upsampler("rc", 384, 16)
    with torch.no_grad():
        trained.conv.weight.add_(0.05 * torch.randn_like(trained.conv.weight))
    path = save_lift(trained, tmp_path / "rc.safetensors", backbone="dino_s16", facet="key", extra={"upsampler": "rc"})
    assert eval_main([*argv, "--rc", str(path)]) == 0
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in capsys.readouterr().out.splitlines() if "|" in line}
    assert "rc" in rows and "rc (untrained)" not in rows
    lift_file = save_lift(LiFT(384, 16), tmp_path / "lift.safetensors", backbone="dino_s16", facet="key")
    assert eval_main([*argv, "--rc", str(lift_file)]) == 2
    assert "not a resize-conv" in capsys.readouterr().err


def test_cli_rejects_resolution_off_the_patch_grid(capsys):
    assert eval_main(["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "56", "--dataset", "synthetic"]) == 2
    assert "pck: error:" in (err := capsys.readouterr().err) and "multiple of 16" in err


def test_cli_lift_without_weights_is_an_error(capsys):
    assert eval_main(["pck", "--backbone", "dino_s16", "--upsampler", "lift", "--resolutions", "32", "--backbone-weights", "/nonexistent.pth"]) == 2
    assert "--lift CKPT" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--upsampler", "foo"], "unknown upsampler 'foo'"),
    (["--dataset", "foo"], "unknown dataset 'foo'"),
    (["--dataset", "spair:/nonexistent"], "does not look like SPair-71k"),
    (["--backend", "tvm"], "unknown backend 'tvm'"),
    (["--pairs", "all"], "--pairs all needs a dataset with a fixed set of pairs"),
    (["--device", "meta"], "an Engine runs on cpu, cuda or cuda:N"),
    (["--upsampler", ""], "--upsampler names no upsampler"),
    (["--upsampler", ","], "--upsampler names no upsampler"),
    (["--resolutions", "24"], "--resolutions 24: dino_s16 has patch size 16: image size 24 x 24 must be a multiple of 16"),
])
def test_cli_bad_arguments_give_a_message(capsys, args, message):
    code = eval_main(["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "32", "--upsampler", "none", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--soft-argmax", "0"], "argument --soft-argmax: must be a positive number, got 0"),
    (["--soft-argmax", "-1"], "argument --soft-argmax: must be a positive number"),
    (["--soft-argmax", "nan"], "argument --soft-argmax: must be a positive number"),
    (["--window", "-1"], "argument --window: must be an integer >= 0, got -1"),
    (["--pairs", "0"], "argument --pairs: must be a positive integer or 'all', got 0"),
    (["--pairs", "some"], "argument --pairs: expected a positive integer or 'all', got 'some'"),
    (["--protocol", "paper"], "argument --protocol: invalid choice: 'paper'"),
    (["--resolutions", ""], "argument --resolutions: expected comma-separated positive integers"),
    (["--resolutions", "-32"], "argument --resolutions: must be a positive integer, got -32"),
])
def test_cli_soft_argmax_settings_name_their_flag(cli_error, args, message):
    err = cli_error(eval_main, ["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "32", *args])
    assert message in err


def test_cli_unavailable_cuda_device_is_a_message(monkeypatch, cli_error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(eval_main, ["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "32", "--device", "cuda"])
    assert "--device cuda" in err and "no CUDA device" in err
