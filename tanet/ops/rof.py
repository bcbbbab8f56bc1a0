"""Rectified optical flow alignment, ROF (Liu et al. 2017, Sec. 4.1).

Flow-based warping with wrong motion estimates brings artefacts, and interpolation blurs
or aliases. ROF simplifies the motion of a patch to an integer translation: the mean
horizontal and the mean vertical flow over the patch's pixels, each rounded to an integer
(half away from zero), and translates the neighbour patch by that shift, copying pixels
without any interpolation:

    (dx, dy) = (round(mean_p flow_x), round(mean_p flow_y))
    aligned[y, x] = nbr[y + dy, x + dx]            for (y, x) in the patch

The shift is theta_hat, the supervision of the spatial alignment network (translation in
LR pixels; see ``tanet.models.san`` for the affine form).

Edges: reads outside the frame are clamped to the nearest edge pixel (edge replication),
so a patch shifted past the border repeats the border row/column. Full frames use a block
grid of ``block`` x ``block`` tiles from the top-left, each with its own shift computed from
the flow inside that tile; when the frame size is not a multiple of ``block`` the last
row/column of tiles is narrower and averages only the pixels it covers.

Shapes: flow ``(H, W, 2)`` float (dx, dy); frames ``(H, W)`` or ``(H, W, C)``; windows
``(T, H, W)``.
"""

from __future__ import annotations

import numpy as np

from tanet.ops.color import round_half_away
from tanet.ops.optical_flow import DisPreset, FlowMethod, estimate_flow


def patch_shifts(flow: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Rectified integer shifts of square patches, via an integral image of the flow.

    Args:
        flow: ``(H, W, 2)`` flow from the reference to the neighbour.
        ys: ``(P,)`` top rows of the patches.
        xs: ``(P,)`` left columns of the patches.
        size: patch side (patches must lie inside the frame).

    Returns:
        ``(P, 2)`` int32 shifts (dx, dy).
    """
    h, w, _ = flow.shape
    ys = np.asarray(ys, dtype=np.int64)
    xs = np.asarray(xs, dtype=np.int64)
    if ys.size and (ys.min() < 0 or xs.min() < 0 or ys.max() + size > h or xs.max() + size > w):
        raise ValueError(f"patches of size {size} must lie inside the {h}x{w} flow")
    integral = np.zeros((h + 1, w + 1, 2), np.float64)
    integral[1:, 1:] = flow.astype(np.float64).cumsum(0).cumsum(1)
    y1, x1 = ys + size, xs + size
    sums = integral[y1, x1] - integral[ys, x1] - integral[y1, xs] + integral[ys, xs]
    return round_half_away(sums / (size * size)).astype(np.int32)


def block_shifts(flow: np.ndarray, block: int) -> np.ndarray:
    """Rectified integer shift of every tile of a block grid over a full frame.

    Args:
        flow: ``(H, W, 2)`` flow from the reference to the neighbour.
        block: tile side; edge tiles are narrower when ``H`` or ``W`` is not a multiple.

    Returns:
        ``(ceil(H/block), ceil(W/block), 2)`` int32 shifts (dx, dy).
    """
    h, w, _ = flow.shape
    nby, nbx = -(-h // block), -(-w // block)
    sums = np.add.reduceat(
        np.add.reduceat(flow.astype(np.float64), np.arange(0, h, block), axis=0), np.arange(0, w, block), axis=1
    )  # (nby, nbx, 2)
    heights = np.minimum(block, h - np.arange(nby) * block)
    widths = np.minimum(block, w - np.arange(nbx) * block)
    counts = heights[:, None] * widths[None, :]
    return round_half_away(sums / counts[..., None]).astype(np.int32)


def shift_crop(frame: np.ndarray, y0: int, x0: int, h: int, w: int, dx: int, dy: int) -> np.ndarray:
    """The ``h x w`` region at ``(y0 + dy, x0 + dx)``, edge-replicated outside the frame.

    Args:
        frame: ``(H, W)`` or ``(H, W, C)``.
        y0: top row of the reference patch.
        x0: left column of the reference patch.
        h: patch height.
        w: patch width.
        dx: horizontal integer shift.
        dy: vertical integer shift.

    Returns:
        The aligned patch, same dtype, no interpolation.
    """
    fh, fw = frame.shape[:2]
    rows = np.clip(np.arange(y0 + dy, y0 + dy + h), 0, fh - 1)
    cols = np.clip(np.arange(x0 + dx, x0 + dx + w), 0, fw - 1)
    return frame[rows[:, None], cols[None, :]]


def apply_block_shifts(frame: np.ndarray, shifts: np.ndarray, block: int) -> np.ndarray:
    """Aligns a full neighbour frame with per-tile integer shifts (see :func:`block_shifts`).

    Args:
        frame: ``(H, W)`` or ``(H, W, C)`` neighbour frame.
        shifts: ``(nby, nbx, 2)`` int shifts (dx, dy).
        block: tile side used to compute them.

    Returns:
        The aligned frame, same shape and dtype.
    """
    fh, fw = frame.shape[:2]
    nby, nbx = -(-fh // block), -(-fw // block)
    if shifts.shape[:2] != (nby, nbx):
        raise ValueError(f"shifts grid {shifts.shape[:2]} does not match a {fh}x{fw} frame in {block}px tiles")
    # Per-pixel source indices: each pixel reads its tile's shift (vectorised, no loops).
    tile_y = np.arange(fh) // block
    tile_x = np.arange(fw) // block
    dx = shifts[..., 0][tile_y[:, None], tile_x[None, :]]
    dy = shifts[..., 1][tile_y[:, None], tile_x[None, :]]
    rows = np.clip(np.arange(fh)[:, None] + dy, 0, fh - 1)
    cols = np.clip(np.arange(fw)[None, :] + dx, 0, fw - 1)
    return frame[rows, cols]


def align_window(
    window: np.ndarray,
    block: int,
    method: FlowMethod = "dis",
    preset: DisPreset = "medium",
) -> tuple[np.ndarray, np.ndarray]:
    """ROF-aligns every neighbour of a full-frame window to its centre frame.

    Args:
        window: ``(T, H, W)`` uint8 Y frames, T odd, the reference in the middle.
        block: tile side of the block grid.
        method: optical-flow estimator.
        preset: DIS preset.

    Returns:
        ``(aligned (T, H, W) uint8, shifts (T, nby, nbx, 2) int32)``; the centre frame is
        unchanged and its shifts are zero.
    """
    if window.ndim != 3 or window.shape[0] % 2 == 0:
        raise ValueError(f"align_window expects (T, H, W) with T odd, got {window.shape}")
    t, h, w = window.shape
    centre = t // 2
    nby, nbx = -(-h // block), -(-w // block)
    shifts = np.zeros((t, nby, nbx, 2), np.int32)
    aligned = window.copy()
    for k in range(t):
        if k == centre:
            continue
        flow = estimate_flow(window[centre], window[k], method, preset)
        shifts[k] = block_shifts(flow, block)
        aligned[k] = apply_block_shifts(window[k], shifts[k], block)
    return aligned, shifts


def neighbour_offsets(num_branches: int) -> np.ndarray:
    """Time offsets of the 2N-2 neighbours, in time order: -(N-1) .. -1, 1 .. N-1."""
    r = num_branches - 1
    return np.array([o for o in range(-r, r + 1) if o != 0], np.int16)


def window_indices(t: int, num_frames: int, total: int) -> list[int]:
    """Frame indices of the window centred on ``t``, clamped at the clip's ends."""
    half = num_frames // 2
    return [min(max(t + k, 0), total - 1) for k in range(-half, half + 1)]
