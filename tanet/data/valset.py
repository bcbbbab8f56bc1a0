"""Validation clips on full frames: LR windows (raw and ROF-aligned) and HR targets.

Windows at the clip's ends replicate the first/last frame (as the upscaler does); ROF
alignment uses block shifts rectified from the flow stage's stored flows on the model's
block grid (``patches.patch_size``, which may differ from ``flow.block``), so validation
aligns with the same flows the training patches were aligned with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tanet.errors import TanetError
from tanet.io.clips import load_flows, lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb
from tanet.models.vsr import ModelConfig
from tanet.ops.color import planes
from tanet.ops.degrade import DegradationKind
from tanet.ops.rof import apply_block_shifts, block_shifts, neighbour_offsets, window_indices


@dataclass(frozen=True)
class ValClip:
    """One validation clip held in memory (LR is small; HR only at the evaluated frames)."""

    clip_id: str
    lr: np.ndarray  # (F, C, h, w) uint8 planes (Y or RGB)
    hr_y: np.ndarray  # (K, H, W) uint8 Y targets at `frames`, mod-cropped to r*h x r*w
    frames: tuple[int, ...]  # evaluated frame indices
    shifts: np.ndarray | None  # (F, T-1, nby, nbx, 2) block shifts, or None without flows
    block: int  # block size of the shifts


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` frame indices spread over ``total`` frames (all when count is 0 or >= total)."""
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [total // 2]


def window(clip: ValClip, t: int, num_frames: int, aligned: bool) -> np.ndarray:
    """The ``(T, C, h, w)`` uint8 window centred on frame ``t`` (ROF-aligned if asked)."""
    idx = window_indices(t, num_frames, len(clip.lr))
    frames = clip.lr[idx]
    if not aligned:
        return frames
    if clip.shifts is None:
        raise TanetError(f"{clip.clip_id}: ROF alignment needs the flow stage's shifts")
    out = frames.copy()
    centre = num_frames // 2
    for j, k in enumerate(k for k in range(num_frames) if k != centre):
        out[k] = apply_block_shifts(frames[k].transpose(1, 2, 0), clip.shifts[t, j], clip.block).transpose(2, 0, 1)
    return out


def load_val_clips(
    clips_dir: Path,
    lr_dir: Path,
    flow_dir: Path | None,
    *,
    model: ModelConfig,
    degradation: DegradationKind,
    block: int,
    val_frames: int,
) -> list[ValClip]:
    """Loads every validation clip of the manifest for the model's scale and degradation.

    Args:
        clips_dir: the ingest stage's output.
        lr_dir: the degrade stage's output.
        flow_dir: the flow stage's output (None: no ROF shifts).
        model: the network (scale, colour, number of branches).
        degradation: ``patches.degradation``, the LR set the model trains on.
        block: ROF block side of the shifts (``patches.patch_size``, as in training).
        val_frames: frames evaluated per clip (0: all).
    """
    name = lr_set_name(model.scale, degradation)
    r = model.scale
    out = []
    for rec in read_manifest(clips_dir):
        if rec.split != "val":
            continue
        lr = np.stack([planes(read_rgb(f), model.channels) for f in list_frames(lr_dir / name / rec.clip_id)])
        frames = tuple(evenly_spaced(val_frames, len(lr)))
        hr_files = list_frames(clips_dir / rec.clip_id)
        h, w = lr.shape[-2:]
        hr_y = np.stack([planes(read_rgb(hr_files[t]), 1)[0, : r * h, : r * w] for t in frames])
        shifts = None
        if flow_dir is not None:
            flows = load_flows(flow_dir / name / f"{rec.clip_id}.npz")
            if not np.array_equal(flows["offsets"], neighbour_offsets(model.num_branches)):
                raise TanetError(f"{rec.clip_id}: flow offsets do not match model.num_branches")
            # Block shifts for the model's block (= patch size), from the stored flows.
            shifts = np.stack(
                [np.stack([block_shifts(f.astype(np.float32), block) for f in per_t]) for per_t in flows["flow"]]
            )
        out.append(ValClip(rec.clip_id, lr, hr_y, frames, shifts, block))
    if not out:
        raise TanetError("no validation clip in the manifest (ingest.val_clips)")
    return out
