"""Files and folders appear whole or not at all, whatever fails while they are written."""

from __future__ import annotations

import json

import pytest

from trl_smallrl import atomic


def test_a_file_whose_writer_fails_leaves_the_old_version_and_no_temporary(tmp_path):
    path = atomic.write_json(tmp_path / "state.json", {"step": 1})

    def half_then_crash(tmp):
        tmp.write_text('{"step": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, half_then_crash)
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_folder_appears_only_when_its_block_ends_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "checkpoint-5"
    with atomic.folder(target) as staging:
        (staging / "weights").write_text("old")
    with atomic.folder(target) as staging:
        (staging / "weights").write_text("new")
        assert (target / "weights").read_text() == "old"  # readers see the complete old folder meanwhile
    assert (target / "weights").read_text() == "new"
    with pytest.raises(RuntimeError), atomic.folder(target) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]  # no staging or old folder left
