"""Alignment of neighbouring LR frames to the reference (paper Sec. 4).

``flow``: OpenCV optical flow between LR frames. ``rof``: rectified optical flow
alignment, per-patch integer shifts applied without interpolation, and theta_hat for SAN
supervision. The learned alignment network lives in ``tanet.models.san``.
"""

from tanet.align.flow import estimate_flow
from tanet.align.rof import (
    align_window,
    apply_block_shifts,
    block_shifts,
    patch_shifts,
    round_half_away,
    shift_crop,
)

__all__ = [
    "align_window",
    "apply_block_shifts",
    "block_shifts",
    "estimate_flow",
    "patch_shifts",
    "round_half_away",
    "shift_crop",
]
