"""The `tanet degrade` and `tanet metrics` commands on Vid4 calendar (the references of the field)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media_factory import SHARED

from tanet.io.frames import list_frames, read_rgb

VID4 = SHARED / "data/vid4"
pytestmark = pytest.mark.skipif(
    not (VID4 / "GT/calendar").is_dir(), reason="../shared/data/vid4 is not beside the repo"
)


def _tanet(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tanet.cli", *map(str, args)], capture_output=True, text=True)


def test_degrade_bi_reproduces_the_reference_frames_bit_for_bit(tmp_path: Path) -> None:
    res = _tanet("degrade", "--kind", "BI", "--scale", "4", VID4 / "GT/calendar", tmp_path / "bi")
    assert res.returncode == 0, res.stderr
    ours, ref = list_frames(tmp_path / "bi"), list_frames(VID4 / "BIx4/calendar")
    assert len(ours) == len(ref) == 41
    for a, b in zip(ours, ref):
        assert np.array_equal(read_rgb(a), read_rgb(b)), a.name
    # Identical frames: PSNR is +inf, written as the string "inf" so the JSON stays valid.
    out = json.loads(_tanet("metrics", "--sr", tmp_path / "bi", "--gt", VID4 / "BIx4/calendar").stdout)
    assert out["frames"] == 41 and out["psnr"] == "inf" and out["ssim"] == pytest.approx(1.0)


def test_degrade_bd_is_within_two_grey_levels_and_metrics_reports_every_frame(tmp_path: Path) -> None:
    assert _tanet("degrade", "--kind", "BD", "--scale", "4", VID4 / "GT/calendar", tmp_path / "bd").returncode == 0
    diffs = [
        np.abs(read_rgb(a).astype(int) - read_rgb(b)).max()
        for a, b in zip(list_frames(tmp_path / "bd"), list_frames(VID4 / "BDx4/calendar"))
    ]
    assert len(diffs) == 41 and max(diffs) <= 2
    res = _tanet("metrics", "--sr", tmp_path / "bd", "--gt", VID4 / "BDx4/calendar", "--crop", "4")
    out = json.loads(res.stdout)
    assert out["crop"] == 4 and len(out["per_frame"]) == 41 and out["psnr"] > 45


def test_metrics_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    res = _tanet("metrics", "--sr", VID4 / "BIx4/calendar", "--gt", VID4 / "BDx4/calendar/../../GT/calendar")
    assert res.returncode == 2 and res.stderr.startswith("tanet: error:")
