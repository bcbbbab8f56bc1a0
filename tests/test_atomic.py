"""Atomic outputs: temporary names renamed into place, with the modes plain files would get."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tanet.io.atomic import atomic_dir, atomic_write_text, default_mode
from tanet.io.writer import VideoWriter


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_modes_not_owner_only(tmp_path: Path, umask_022: None) -> None:
    """tempfile makes 0600/0700; a published output must be readable like any other file."""
    assert default_mode() == 0o644 and default_mode(directory=True) == 0o755
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert _mode(tmp_path / "a.json") == 0o644
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x.txt").write_text("x")
    assert _mode(tmp_path / "folder") == 0o755 and _mode(tmp_path / "folder" / "x.txt") == 0o644
    with VideoWriter(tmp_path / "v.mp4", 16, 16, 25) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
    assert _mode(tmp_path / "v.mp4") == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_stricter_umask_is_respected(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "secret")
        assert _mode(tmp_path / "private.txt") == 0o600
    finally:
        os.umask(old)
