"""qbench.util.io.atomic_write: the target is always the old or the new content, never a torn file."""

from __future__ import annotations

import pytest

from qbench.util.io import atomic_write, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "deep" / "dir" / "f.txt"
    assert atomic_write_text(target, "old") == target
    assert target.read_text() == "old"
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_old_file(tmp_path, exc):
    target = tmp_path / "f.txt"
    target.write_text("old")
    seen = []

    def writer(p):
        seen.append(p)
        assert p != target and p.parent == target.parent
        p.write_text("partial new cont")
        assert target.read_text() == "old"               # not visible before the rename
        raise exc("boom")

    with pytest.raises(exc, match="boom"):
        atomic_write(target, writer)
    assert target.read_text() == "old"
    assert not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_first_write_creates_nothing(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(ValueError):
        atomic_write(target, lambda p: (_ for _ in ()).throw(ValueError("x")))
    assert list(tmp_path.iterdir()) == []
