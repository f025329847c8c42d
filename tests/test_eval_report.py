"""The shared evaluation table and JSON writer."""

import json

import pytest

from lift_rt.eval.report import format_table, write_json

SCORES = {
    "none": {"PCK@0.1": {56: 1.0, 112: 2.5}, "PCK@0.05": {56: 0.5}},
    "lift": {"PCK@0.1": {56: 3.04, 112: float("nan")}, "PCK@0.05": {56: 1.5, 112: 2.0}},
}


def test_table_layout_groups_metrics_by_column():
    lines = format_table(SCORES, ["PCK@0.1", "PCK@0.05"], [56, 112]).splitlines()
    assert lines[0].split("|")[1].strip() == "PCK@0.1" and lines[0].split("|")[2].strip() == "PCK@0.05"
    assert lines[1].split() == ["upsampler", "|", "56", "112", "|", "56", "112"]
    assert set(lines[2]) == {"-"}
    assert lines[3].split() == ["none", "|", "1.0", "2.5", "|", "0.5", "-"]  # a missing score is '-'
    assert lines[4].split() == ["lift", "|", "3.0", "nan", "|", "1.5", "2.0"]


def test_table_label_and_digits():
    text = format_table({"dino": {"J&F": {"VOC07": 61.234}}}, ["J&F"], ["VOC07"], label="method", digits=2)
    assert text.splitlines()[1].split()[0] == "method"
    assert "61.23" in text


def test_json_is_atomic_and_plain(tmp_path):
    path = write_json(tmp_path / "sub" / "scores.json", {"scores": SCORES, "settings": {"alphas": (0.1, 0.05)}})
    data = json.loads(path.read_text())
    assert data["scores"]["lift"]["PCK@0.1"] == {"56": 3.04, "112": None}  # NaN is null, keys are strings
    assert data["settings"]["alphas"] == [0.1, 0.05]
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]  # no temp file left


def test_json_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []
