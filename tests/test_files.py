"""Atomic writes: the old file or the whole new one, never a part."""

import os
import stat

import pytest

from lift_rt.files import atomic_path


def test_a_clean_write_replaces_the_file_with_the_umask_mode(tmp_path):
    target = tmp_path / "new" / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.json.") and not target.exists()
        tmp.write_text("whole")
    assert target.read_text() == "whole" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
