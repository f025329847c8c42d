"""PCK arithmetic on hand-computed cases, the protocol's geometry, matching, and the CLI."""

import numpy as np
import pytest
import torch

from lift_rt.eval.__main__ import main as eval_main
from lift_rt.eval.pck import (
    KeypointPair,
    PairResult,
    evaluate_pairs,
    format_table,
    get_matcher,
    letterbox,
    match_keypoints,
    pck,
)


def test_letterbox_scales_and_centres():
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    canvas, box = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3)
    assert (box.scale_x, box.scale_y, box.offset_x, box.offset_y) == (0.32, 0.32, 0, 16)
    assert canvas[:16].max() == 0 and canvas[48:].max() == 0 and canvas[16:48].min() > 200
    np.testing.assert_allclose(box.points(np.array([[0.0, 0.0], [200.0, 100.0], [50.0, 25.0]])), [[0, 16], [64, 48], [16, 24]])
    assert box.box_length((10, 20, 60, 40)) == pytest.approx(50 * 0.32)


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


@pytest.mark.parametrize("matcher", ["torch", "cpp"])
def test_match_keypoints_follows_a_shift(matcher):
    src, trg = shifted_features()
    points = np.array([[4.0, 5.0], [10.0, 12.0], [7.2, 3.9]])
    pred, accepted = match_keypoints(src, trg, points, 16, mutual=True, matcher=get_matcher(matcher))
    np.testing.assert_array_equal(pred, np.rint(points) + [3, -2])
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


def test_evaluate_pairs_identity_is_perfect_and_random_is_not():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    kps = rng.uniform([0, 0], [59, 39], size=(10, 2))
    pair = KeypointPair("x", image, image, kps, kps, (0, 0, 59, 39), (0, 0, 59, 39))
    fixed = torch.randn(1, 32, 64, 64)  # at full resolution: the argmax is the keypoint's own pixel
    same = evaluate_pairs([pair] * 3, lambda images: fixed.expand(len(images), -1, -1, -1), 64, matcher="torch", batch_pairs=2)
    assert len(same) == 3 and all(r.errors.max() <= 0.5**0.5 for r in same)  # only the rounding to a pixel
    assert pck(same, alphas=(0.1, 0.05)) == {0.1: 100.0, 0.05: 100.0}
    noise = evaluate_pairs([pair] * 3, lambda images: torch.randn(len(images), 32, 8, 8), 64, matcher="torch")
    assert pck(noise)[0.01] < 100.0
    with pytest.raises(ValueError, match="B x C x h x w"):
        evaluate_pairs([pair], lambda images: torch.randn(1, 32, 8, 8), 64)


def test_format_table_layout():
    rows = {"none": {56: {0.1: 10.0, 0.05: 5.0}, 112: {0.1: 20.0, 0.05: 7.5}}, "lift": {56: {0.1: 30.0, 0.05: 15.0}, 112: {0.1: 40.0, 0.05: 25.0}}}
    lines = format_table(rows, [56, 112]).splitlines()
    assert "PCK@0.1" in lines[0] and "PCK@0.05" in lines[0]
    assert lines[1].replace("|", " ").split() == ["upsampler", "56", "112", "56", "112"]
    assert lines[3].replace("|", " ").split() == ["none", "10.0", "20.0", "5.0", "7.5"]
    assert lines[4].replace("|", " ").split() == ["lift", "30.0", "40.0", "15.0", "25.0"]


def test_cli_prints_table_1_layout(capsys):
    code = eval_main([
        "pck", "--backbone", "dino_s16", "--random-init", "--upsampler", "none,bilinear",
        "--resolutions", "32,64", "--dataset", "synthetic", "--pairs", "1", "--matcher", "torch",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "5 pairs, 5 categories" in out and "random init" in out
    rows = [line.replace("|", " ").split() for line in out.splitlines()]
    by_name = {row[0]: [float(v) for v in row[1:]] for row in rows if row and row[0] in ("none", "bilinear")}
    assert set(by_name) == {"none", "bilinear"} and all(len(v) == 4 and all(0 <= x <= 100 for x in v) for v in by_name.values())


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
    (["--pairs", "0"], "--pairs must be at least 1"),
    (["--device", "meta"], "an Engine runs on cpu, cuda or cuda:N"),
    (["--upsampler", ""], "--upsampler names no upsampler"),
    (["--upsampler", ","], "--upsampler names no upsampler"),
    (["--resolutions", ""], "--resolutions names no size"),
    (["--resolutions", "-32"], "must be positive multiples of the patch size 16"),
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
])
def test_cli_soft_argmax_settings_name_their_flag(cli_error, args, message):
    err = cli_error(eval_main, ["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "32", *args])
    assert message in err


def test_cli_unavailable_cuda_device_is_a_message(monkeypatch, cli_error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(eval_main, ["pck", "--backbone", "dino_s16", "--random-init", "--resolutions", "32", "--device", "cuda"])
    assert "--device cuda" in err and "no CUDA device" in err
