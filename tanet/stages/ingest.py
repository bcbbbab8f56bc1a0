"""Stage ``ingest``: video files and frame folders -> normalised lossless clips + manifest.

Each source is decoded as a stream (constant memory), optionally subsampled in time and
downscaled with area averaging (which also suppresses the source's compression
artefacts), and written as PNG frames ``<clip_id>/00000000.png``. A source that fails is
recorded in ``quarantine.json`` with the reason and does not stop the others; no usable
clip at all is an error. The manifest (``manifest.parquet``) lists clip id, source path,
sha256, frame counts, sizes, fps, split and licence.

Outputs are written under a temporary folder and swapped in whole by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from tanet.config import IngestParams
from tanet.data.sources import Source, discover_sources, is_val_clip
from tanet.errors import ConfigError, InputError, TanetError
from tanet.io.atomic import atomic_dir, atomic_write_json
from tanet.io.checksum import sha256_file
from tanet.io.clips import CLIPS_MANIFEST, QUARANTINE, ClipRecord, write_manifest
from tanet.io.frames import write_rgb
from tanet.stages.parallel import Mapper, serial_map

if TYPE_CHECKING:
    from tanet.io.probe import VideoInfo

log = logging.getLogger(__name__)

MIN_LR_SIDE = 8  # smallest LR side (pixels) a clip must keep at the largest scale


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def _crop_box(source: Source, width: int, height: int) -> tuple[int, int, int, int]:
    """The source's crop box ``(x, y, w, h)`` clipped to the frame (the whole frame without one)."""
    if source.crop is None:
        return 0, 0, width, height
    x, y, w, h = source.crop
    x, y = min(max(x, 0), width), min(max(y, 0), height)
    w, h = min(w, width - x), min(h, height - y)
    if w <= 0 or h <= 0:
        raise InputError(source.path, f"crop box {source.crop} lies outside the {width}x{height} frame")
    return x, y, w, h


def _conversion_notes(info: VideoInfo) -> list[str]:
    """What the reader converted to reach 8-bit RGB (recorded in the manifest)."""
    notes = []
    if info.bit_depth > 8:
        notes.append(f"{info.bit_depth}-bit {info.pix_fmt} converted to 8-bit RGB")
    if info.has_alpha:
        notes.append("alpha channel dropped")
    if info.is_grey:
        notes.append("grey replicated to RGB")
    if info.rotation:
        notes.append(f"rotated {info.rotation} degrees for display")
    return notes


def ingest_one(
    source: Source, out_dir: Path, params: IngestParams, min_frames: int, max_scale: int, split: str
) -> ClipRecord:
    """Normalises one source into ``out_dir/<clip_id>/`` (swapped in whole on success).

    Args:
        source: the clip to read.
        out_dir: stage output folder.
        params: the ``ingest`` section.
        min_frames: fewest frames a usable clip has (2N-1).
        max_scale: largest upscaling factor prepared (for the minimum size).
        split: ``train`` or ``val``.

    Returns:
        The manifest record.

    Raises:
        InputError: naming the source, for unreadable, too short or too small clips.
    """
    limit = params.max_frames * params.frame_step if params.max_frames else None
    kwargs = {"fps": Fraction(params.folder_fps)} if source.is_folder else {}
    from tanet.io.video import open_video  # ffmpeg: not needed by training, which imports this module

    with open_video(source.path, max_frames=limit, **kwargs) as reader:
        info = reader.info
        notes = _conversion_notes(info)
        cx, cy, cw, ch = _crop_box(source, info.width, info.height)
        w, h = _target_size(cw, ch, params.max_side)
        min_side = MIN_LR_SIDE * max_scale
        if min(w, h) < min_side:
            raise InputError(
                source.path, f"frame size {w}x{h} is below the minimum {min_side}x{min_side} for x{max_scale}"
            )
        if (cw, ch) != (info.width, info.height):
            notes.append(f"cropped to {cw}x{ch} at ({cx}, {cy})")
        if (w, h) != (cw, ch):
            notes.append(f"area-downscaled {cw}x{ch} -> {w}x{h}")
        kept = 0
        decoded = 0
        with atomic_dir(out_dir / source.clip_id) as tmp:
            for frame in reader:
                if decoded % params.frame_step == 0:
                    frame = frame[cy : cy + ch, cx : cx + cw]
                    if (w, h) != (frame.shape[1], frame.shape[0]):
                        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
                    write_rgb(tmp / f"{kept:08d}.png", np.ascontiguousarray(frame))
                    kept += 1
                decoded += 1
            if kept < min_frames:
                raise InputError(source.path, f"clip has {kept} frame(s); the model needs at least {min_frames} (2N-1)")
    fps = info.fps / params.frame_step
    return ClipRecord(
        clip_id=source.clip_id,
        source_path=str(source.path),
        origin=source.origin,
        licence=source.licence,
        sha256=sha256_file(source.path),
        frames=kept,
        source_frames=decoded,
        width=w,
        height=h,
        source_width=info.width,
        source_height=info.height,
        fps=f"{fps.numerator}/{fps.denominator}",
        split=split,
        notes="; ".join(notes),
    )


PARAMS = {"ingest": "ingest", "num_branches": "model.num_branches", "scales": "degrade.scales"}


def run_ingest(
    ingest: IngestParams,
    *,
    num_branches: int,
    scales: Sequence[int],
    root: Path,
    out_dir: Path,
    mapper: Mapper = serial_map,
) -> list[ClipRecord]:
    """Runs the whole stage: discovers sources, ingests each, writes manifest + quarantine.

    Args:
        ingest: the ``ingest`` section.
        num_branches: ``model.num_branches`` N (a clip needs 2N-1 frames).
        scales: ``degrade.scales`` (a clip must stay large enough at the largest).
        root: repo root for relative source paths.
        out_dir: the stage's output folder (replaced whole on success).
        mapper: fan-out over sources.

    Returns:
        The records of the usable clips.

    Raises:
        ConfigError: ``ingest.max_frames`` below 2N-1, a bad ``ingest.folder_fps``, or
            ``include_shared_train`` without its folder.
        TanetError: no usable clip, or no training / validation clip.
    """
    ip = ingest
    min_frames = 2 * num_branches - 1
    if 0 < ip.max_frames < min_frames:
        raise ConfigError(
            f"ingest.max_frames: {ip.max_frames} keeps fewer than the {min_frames} frames (2N-1) a clip needs"
        )
    try:
        if Fraction(ip.folder_fps) <= 0:
            raise ValueError("not positive")
    except (ValueError, ZeroDivisionError) as err:
        raise ConfigError(
            f"ingest.folder_fps: {ip.folder_fps!r} is not a positive fraction like '25' or '30000/1001' ({err})"
        ) from None
    sources = discover_sources(ip, root)
    if not sources:
        raise TanetError("ingest: no sources configured (ingest.embedded, ingest.paths, ingest.include_shared_train)")
    max_scale = max(scales)
    with atomic_dir(out_dir) as tmp:

        def one(src: Source) -> ClipRecord | InputError | OSError:
            # Bad input is a result, not a failure: returned, it is one WARNING line below
            # instead of a task failure with a traceback in the orchestrator's log.
            try:
                split = "val" if is_val_clip(src.clip_id, ip.val_clips) else "train"
                return ingest_one(src, tmp, ip, min_frames, max_scale, split)
            except (InputError, OSError) as err:
                return err

        results = mapper(one, sources, [s.clip_id for s in sources])
        records: list[ClipRecord] = []
        quarantine = []
        for src, res in zip(sources, results):
            if isinstance(res, (InputError, OSError)):
                log.warning("quarantined %s: %s", src.path, res)
                quarantine.append({"clip_id": src.clip_id, "source_path": str(src.path), "reason": str(res)})
            elif isinstance(res, BaseException):
                raise res  # a bug, not bad input: do not hide it in the quarantine
            else:
                records.append(res)
        atomic_write_json(tmp / QUARANTINE, quarantine)
        if not records:
            reasons = "; ".join(q["reason"] for q in quarantine[:3])
            raise TanetError(f"ingest: no usable clip among {len(sources)} source(s): {reasons}")
        splits = {r.split for r in records}
        if "train" not in splits:
            raise TanetError("ingest: every usable clip is a validation clip (ingest.val_clips); none left to train on")
        if "val" not in splits:
            raise TanetError(f"ingest: no validation clip: none of ingest.val_clips {list(ip.val_clips)} is usable")
        write_manifest(records, tmp / CLIPS_MANIFEST)
    return records
