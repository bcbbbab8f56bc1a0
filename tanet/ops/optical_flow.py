"""Dense optical flow between LR frames with OpenCV (DIS or Farneback).

Convention (OpenCV's): ``flow = estimate_flow(ref, nbr)`` satisfies
``ref[y, x] ~ nbr[y + flow[y, x, 1], x + flow[y, x, 0]]``, i.e. the flow points from a
reference pixel to where its content is in the neighbour. Aligning the neighbour to the
reference therefore samples it at ``x + flow``.

DIS (Kroeger et al. 2016) is the default: on LR frames it is both faster and more accurate
than Farneback here (see ``benchmarks/bench_flow.py`` and the README for the figures).
"""

from __future__ import annotations

import threading
from typing import Literal

import cv2
import numpy as np

FlowMethod = Literal["dis", "farneback"]
DisPreset = Literal["ultrafast", "fast", "medium"]

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# DIS objects hold scratch buffers and are not thread-safe: one per thread and preset.
_local = threading.local()


def _dis(preset: DisPreset) -> cv2.DISOpticalFlow:
    cache = getattr(_local, "dis", None)
    if cache is None:
        cache = _local.dis = {}
    if preset not in cache:
        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r} (known: {', '.join(_DIS_PRESETS)})")
        cache[preset] = cv2.DISOpticalFlow.create(_DIS_PRESETS[preset])  # the typed spelling of DISOpticalFlow_create
    return cache[preset]


def estimate_flow(
    ref: np.ndarray, nbr: np.ndarray, method: FlowMethod = "dis", preset: DisPreset = "medium"
) -> np.ndarray:
    """Dense flow from ``ref`` to ``nbr``.

    Args:
        ref: ``(H, W)`` uint8 reference frame (the Y channel).
        nbr: ``(H, W)`` uint8 neighbour frame.
        method: ``dis`` or ``farneback``.
        preset: DIS preset (ignored by Farneback).

    Returns:
        ``(H, W, 2)`` float32 flow, (dx, dy) per pixel.
    """
    if ref.ndim != 2 or ref.shape != nbr.shape or ref.dtype != np.uint8 or nbr.dtype != np.uint8:
        raise ValueError(
            f"estimate_flow expects two (H, W) uint8 frames of equal size, got "
            f"{ref.dtype}{ref.shape} and {nbr.dtype}{nbr.shape}"
        )
    if method not in ("dis", "farneback"):
        raise ValueError(f"unknown flow method {method!r} (known: dis, farneback)")
    h, w = ref.shape
    if h < 2 or w < 2:  # too small to hold any motion estimate
        return np.zeros((h, w, 2), np.float32)
    ph, pw = padded_size(h, w)
    if (ph, pw) != (h, w):
        ref = cv2.copyMakeBorder(ref, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
        nbr = cv2.copyMakeBorder(nbr, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
    ref = np.ascontiguousarray(ref)
    nbr = np.ascontiguousarray(nbr)
    if method == "dis":
        # flow=None: OpenCV allocates the output; its stubs type that argument as not optional.
        flow = _dis(preset).calc(ref, nbr, None)  # type: ignore[call-overload]
    else:
        flow = cv2.calcOpticalFlowFarneback(ref, nbr, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # type: ignore[call-overload]
    return np.ascontiguousarray(flow[:h, :w])


MIN_FLOW_SIDE = 32  # frames are padded to at least this on both sides before estimation
MAX_FLOW_ASPECT = 4  # ... and to at most this aspect ratio


def padded_size(h: int, w: int) -> tuple[int, int]:
    """Frame size the estimators run at: ``(h, w)`` padded (bottom/right, edges replicated).

    OpenCV's DIS refuses frames under 12 px and crashes the process (SIGSEGV, no message)
    on thin ones such as 8x64, 12x64 or 16x300: its coarsest pyramid level follows the long
    side, leaving the short one smaller than a patch. Padding to >= 32 px and an aspect of
    at most 4 avoids that at every size (swept over 2..2000 px); normal frames (16:9) are
    untouched, and the flow of the padding is cropped away.

    >>> padded_size(8, 64), padded_size(720, 1280), padded_size(3, 2)
    ((32, 64), (720, 1280), (32, 32))
    """
    return max(h, MIN_FLOW_SIDE, -(-w // MAX_FLOW_ASPECT)), max(w, MIN_FLOW_SIDE, -(-h // MAX_FLOW_ASPECT))
