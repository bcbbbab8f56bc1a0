"""Rectified optical flow: exact recovery of known integer shifts, edges, theta_hat."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tanet.ops.color import round_half_away
from tanet.ops.optical_flow import estimate_flow
from tanet.ops.rof import align_window, apply_block_shifts, block_shifts, patch_shifts, shift_crop


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.uint8), (0, 0), 2.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def _translated_clip(shifts: list[tuple[int, int]], h: int = 96, w: int = 128) -> np.ndarray:
    """Frame k is the base texture moved by shifts[k] = (sx, sy) pixels (content moves right/down)."""
    base = _texture(h + 40, w + 40)
    return np.stack([base[20 - sy : 20 - sy + h, 20 - sx : 20 - sx + w] for sx, sy in shifts])


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_rof_recovers_known_integer_shifts_exactly(method: str) -> None:
    motion = [(-4, 2), (-2, 1), (0, 0), (3, -1), (5, -3)]
    clip = _translated_clip(motion)
    aligned, shifts = align_window(clip, block=32, method=method)
    # Interior tiles: every tile recovers the exact shift, and the aligned pixels equal the
    # reference bit for bit (integer copies, no interpolation).
    for k, (sx, sy) in enumerate(motion):
        assert (shifts[k, 1:-1, 1:-1] == np.array([sx - 0, sy - 0])).all(), (k, shifts[k])
        inner = (slice(8, -8), slice(8, -8))
        assert np.array_equal(aligned[k][inner], clip[2][inner])


def test_flow_sign_convention() -> None:
    clip = _translated_clip([(0, 0), (3, -2)])
    flow = estimate_flow(clip[0], clip[1])
    mean = flow[16:-16, 16:-16].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(mean, [3, -2], atol=0.2)  # ref(x) ~ nbr(x + flow)


def test_patch_shifts_match_block_means() -> None:
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 3, (40, 50, 2)).astype(np.float32)
    ys, xs = np.array([0, 5, 24]), np.array([0, 17, 34])
    got = patch_shifts(flow, ys, xs, 16)
    want = [round_half_away(flow[y : y + 16, x : x + 16].reshape(-1, 2).mean(0)) for y, x in zip(ys, xs)]
    np.testing.assert_array_equal(got, np.stack(want))
    with pytest.raises(ValueError, match="inside"):
        patch_shifts(flow, np.array([30]), np.array([0]), 16)


def test_round_half_away_from_zero() -> None:
    np.testing.assert_array_equal(round_half_away(np.array([0.5, -0.5, 1.5, -1.5, 0.49, -2.51])), [1, -1, 2, -2, 0, -3])
    assert patch_shifts(np.full((16, 16, 2), -2.5), np.array([0]), np.array([0]), 16).tolist() == [[-3, -3]]


def test_block_grid_edges_average_only_covered_pixels() -> None:
    flow = np.zeros((40, 50, 2), np.float32)
    flow[32:, :, 0] = 2.6  # bottom edge tiles (8 rows) move by 2.6 px
    shifts = block_shifts(flow, 32)
    assert shifts.shape == (2, 2, 2)
    np.testing.assert_array_equal(shifts[1, :, 0], [3, 3])
    np.testing.assert_array_equal(shifts[0, :, 0], [0, 0])


def test_shift_crop_replicates_edges_without_interpolation() -> None:
    frame = np.arange(30, dtype=np.uint8).reshape(5, 6)
    patch = shift_crop(frame, 0, 0, 3, 3, dx=-2, dy=1)
    np.testing.assert_array_equal(patch, [[6, 6, 6], [12, 12, 12], [18, 18, 18]])
    grid = np.zeros((2, 2, 2), np.int32)
    grid[0, 0] = (1, 0)  # tile (0,0) reads one pixel to the right
    out = apply_block_shifts(frame, grid, block=3)
    np.testing.assert_array_equal(out[:3, :3], frame[:3, 1:4])
    np.testing.assert_array_equal(out[:, 3:], frame[:, 3:])


def test_tiny_frames_have_zero_flow() -> None:
    one = np.zeros((1, 1), np.uint8)
    assert estimate_flow(one, one).shape == (1, 1, 2)
    aligned, shifts = align_window(np.zeros((3, 1, 1), np.uint8), block=8)
    assert aligned.shape == (3, 1, 1) and not shifts.any()


def test_frames_of_any_size_get_a_flow_in_a_process_that_survives() -> None:
    """Sizes where OpenCV's DIS refuses (under 12 px) or crashes the process (thin strips)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import numpy as np
        from tanet.ops.rof import estimate_flow
        rng = np.random.default_rng(0)
        for h, w in [(3, 2), (11, 11), (12, 2), (64, 8), (8, 64), (12, 64), (13, 200), (16, 300), (2, 2000)]:
            a = rng.integers(0, 256, (h, w), dtype=np.uint8)
            for method in ("dis", "farneback"):
                for preset in ("ultrafast", "fast", "medium"):
                    f = estimate_flow(a, np.roll(a, 1, 1), method, preset)
                    assert f.shape == (h, w, 2) and f.dtype == np.float32 and np.isfinite(f).all(), (h, w)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


def test_thin_strip_flow_still_recovers_the_motion() -> None:
    clip = _translated_clip([(0, 0), (2, 0)], h=16, w=300)  # padded to 75 x 300 inside
    flow = estimate_flow(clip[0], clip[1])
    np.testing.assert_allclose(flow[4:-4, 16:-16].reshape(-1, 2).mean(0), [2, 0], atol=0.3)
