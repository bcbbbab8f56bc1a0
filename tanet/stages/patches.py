"""Stage ``patches``: training samples in size-bounded, checksummed Parquet shards.

One row per sample: the LR window of 2N-1 frames around reference frame t (raw), the
ROF-aligned neighbours, the HR target patch, the rectified shift theta_hat of each
neighbour (the SAN's supervision) and ids. Pixel planes are uint8 in
``fixed_size_binary`` columns (one per frame, planar ``C x p x p``), which pyarrow decodes
several times faster than ``list<uint8>``; files use zstd and fixed-size row groups (the
loader's unit of reading).

Only training clips are sampled, at reference frames with a full window
(N-1 <= t < F-N+1), ``patches_per_frame`` at each unless ``max_patches_per_clip`` caps the
clip (:func:`frame_counts`). Patch positions are drawn uniformly from a generator seeded by
``patches.seed`` and the clip id, so the output is a pure function of inputs and params;
candidates whose LR centre-frame Y standard deviation is below ``min_std`` (flat sky,
letterbox bars) are skipped deterministically.

Every shard is written under a temporary name and renamed when complete; the manifest
records each shard's row count and sha256, so a torn or modified shard is detected by
the loader instead of being read as valid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from tanet.config import PatchesParams
from tanet.errors import InputError, TanetError
from tanet.io.atomic import atomic_dir
from tanet.io.clips import ClipRecord, load_flows, lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb
from tanet.io.shards import PatchLayout, ShardRecord, ShardWriter, write_patch_manifest
from tanet.models.vsr import Color
from tanet.ops.color import planes
from tanet.ops.rof import neighbour_offsets, patch_shifts, shift_crop
from tanet.ops.seeds import seed_of
from tanet.stages.parallel import Mapper, serial_map

_CANDIDATES = 4  # candidate positions drawn per wanted patch (for the min_std filter)


def sample_positions(
    rng: np.random.Generator, centre: np.ndarray, patch: int, count: int, min_std: float
) -> np.ndarray:
    """Draws up to ``count`` patch positions ``(n, 2)`` (y, x) whose centre-frame std >= min_std."""
    h, w = centre.shape[-2:]
    cand = np.stack(
        [rng.integers(0, h - patch + 1, _CANDIDATES * count), rng.integers(0, w - patch + 1, _CANDIDATES * count)], 1
    )
    if min_std <= 0:
        return cand[:count]
    luma = centre if centre.ndim == 2 else centre.mean(0)
    keep = [i for i, (y, x) in enumerate(cand) if luma[y : y + patch, x : x + patch].std() >= min_std]
    return cand[keep[:count]]


def frame_counts(num_frames: int, per_frame: int, cap: int) -> list[int]:
    """Samples wanted at each of a clip's ``num_frames`` reference frames.

    ``per_frame`` each, or, when that totals more than ``cap`` (> 0), ``cap`` in all spread
    as evenly as integers allow over every frame (counts differ by at most one), so a capped
    clip keeps its whole time span rather than its first frames.
    """
    if cap == 0 or num_frames * per_frame <= cap:
        return [per_frame] * num_frames
    return [cap * (i + 1) // num_frames - cap * i // num_frames for i in range(num_frames)]


def clip_rows(
    clip: ClipRecord, clips_dir: Path, lr_clip_dir: Path, flow_file: Path, pp: PatchesParams, layout: PatchLayout
) -> Iterator[dict[str, Sequence[object]]]:
    """Yields the samples of one clip, one reference frame at a time (as column dicts)."""
    r, p, t_half = layout.scale, pp.patch_size, layout.num_frames // 2
    lr_files = list_frames(lr_clip_dir)
    hr_files = list_frames(clips_dir / clip.clip_id)
    if len(lr_files) != len(hr_files):
        raise InputError(lr_clip_dir, f"{len(lr_files)} LR frames for {len(hr_files)} HR frames")
    lr = np.stack([planes(read_rgb(f), layout.channels) for f in lr_files])  # (F, C, h, w)
    f, _, h, w = lr.shape
    if h < p or w < p:
        return  # clip smaller than one patch: used for validation only
    flows = load_flows(flow_file)
    if not np.array_equal(flows["offsets"], neighbour_offsets(t_half + 1)):
        raise InputError(flow_file, "flow offsets do not match model.num_branches; re-run the flow stage")
    if flows["flow"].shape[:4] != (f, layout.num_frames - 1, h, w):
        raise InputError(
            flow_file, f"flows {flows['flow'].shape[:4]} do not match the LR clip ({f}, {h}x{w}); re-run the flow stage"
        )
    luma = lr if layout.channels == 1 else np.stack([planes(read_rgb(x), 1) for x in lr_files])
    rng = np.random.default_rng(seed_of(pp.seed, clip.clip_id))
    counts = frame_counts(f - 2 * t_half, pp.patches_per_frame, pp.max_patches_per_clip)
    for t, count in zip(range(t_half, f - t_half), counts):
        pos = sample_positions(rng, luma[t, 0], p, count, pp.min_std)  # count 0: none, no draws
        if len(pos) == 0:
            continue
        hr = planes(read_rgb(hr_files[t]), layout.channels)  # (C, H, W); mod-crop is implicit below
        ys, xs = pos[:, 0], pos[:, 1]
        cols: dict[str, list[bytes]] = {f"lr_{k}": [] for k in range(layout.num_frames)}
        cols.update({f"rof_{k}": [] for k in range(layout.num_frames) if k != layout.centre})
        hr_col, shift_col = [], []
        shifts = np.stack(
            [patch_shifts(flows["flow"][t, j].astype(np.float32), ys, xs, p) for j in range(layout.num_frames - 1)], 1
        )  # (n, T-1, 2)
        if np.abs(shifts).max(initial=0) > 127:
            raise InputError(flow_file, f"frame {t}: rectified shift beyond +-127 px")
        for i, (y, x) in enumerate(pos):
            nbr = 0
            for k in range(layout.num_frames):
                src = t + k - layout.centre
                cols[f"lr_{k}"].append(lr[src, :, y : y + p, x : x + p].tobytes())
                if k == layout.centre:
                    continue
                dx, dy = shifts[i, nbr]
                aligned = shift_crop(lr[src].transpose(1, 2, 0), y, x, p, p, int(dx), int(dy))
                cols[f"rof_{k}"].append(np.ascontiguousarray(aligned.transpose(2, 0, 1)).tobytes())
                nbr += 1
            hr_col.append(np.ascontiguousarray(hr[:, r * y : r * (y + p), r * x : r * (x + p)]).tobytes())
            shift_col.append(shifts[i].astype(np.int8).tobytes())
        n = len(pos)
        yield {
            "clip": [clip.clip_id] * n,
            "frame": [t] * n,
            "y": ys.tolist(),
            "x": xs.tolist(),
            **cols,
            "hr": hr_col,
            "shift": shift_col,
        }


def write_clip_shards(
    clip: ClipRecord,
    clips_dir: Path,
    lr_clip_dir: Path,
    flow_file: Path,
    pp: PatchesParams,
    layout: PatchLayout,
    out_dir: Path,
) -> list[ShardRecord]:
    """Writes one clip's samples as shards ``<clip>-NNNNN.parquet``; returns their records."""
    schema = layout.schema()
    writer = ShardWriter(out_dir, clip.clip_id, schema, int(pp.max_shard_mb * (1 << 20)), pp.zstd_level)
    pending: dict[str, list[object]] = {name: [] for name in schema.names}
    count = 0
    try:
        for rows in clip_rows(clip, clips_dir, lr_clip_dir, flow_file, pp, layout):
            for name in schema.names:
                pending[name].extend(rows[name])
            count += len(rows["clip"])
            while len(pending["clip"]) >= pp.rows_per_group:
                _flush(writer, schema, pending, pp.rows_per_group)
        if pending["clip"]:
            _flush(writer, schema, pending, len(pending["clip"]))
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    for s in shards:
        s["clip_id"] = clip.clip_id
    return shards


def _flush(writer: ShardWriter, schema: pa.Schema, pending: dict[str, list[object]], n: int) -> None:
    arrays = [pa.array(pending[name][:n], type=schema.field(name).type) for name in schema.names]
    writer.write(pa.Table.from_arrays(arrays, schema=schema))
    for name in schema.names:
        del pending[name][:n]


PARAMS = {"patches": "patches", "scale": "model.scale", "num_branches": "model.num_branches", "color": "model.color"}


def run_patches(
    patches: PatchesParams,
    *,
    scale: int,
    num_branches: int,
    color: Color,
    clips_dir: Path,
    lr_dir: Path,
    flow_dir: Path,
    out_dir: Path,
    mapper: Mapper = serial_map,
) -> dict[str, object]:
    """Writes the training shards and their manifest.

    Args:
        patches: the ``patches`` section.
        scale: ``model.scale`` (which LR set, and the HR patch side).
        num_branches: ``model.num_branches`` N (2N-1 frames per sample).
        color: ``model.color`` (``y`` or ``rgb`` planes).
        clips_dir: ingest output.
        lr_dir: degrade output.
        flow_dir: flow output.
        out_dir: this stage's output folder (replaced whole on success).
        mapper: fan-out over training clips.

    Returns:
        The manifest.
    """
    pp = patches
    name = lr_set_name(scale, pp.degradation)
    clips = [c for c in read_manifest(clips_dir) if c.split == "train"]
    layout = PatchLayout(2 * num_branches - 1, 1 if color == "y" else 3, pp.patch_size, scale)
    with atomic_dir(out_dir) as tmp:
        results = mapper(
            lambda c: write_clip_shards(
                c, clips_dir, lr_dir / name / c.clip_id, flow_dir / name / f"{c.clip_id}.npz", pp, layout, tmp
            ),
            clips,
            [c.clip_id for c in clips],
        )
        shards: list[ShardRecord] = []
        for clip, res in zip(clips, results):
            if isinstance(res, BaseException):
                raise TanetError(f"patches: clip {clip.clip_id} failed: {res}") from res
            shards.extend(res)
        total = sum(int(s["rows"]) for s in shards)
        if total == 0:
            raise TanetError(
                "patches: no sample extracted (clips smaller than patches.patch_size, or min_std too high)"
            )
        manifest = write_patch_manifest(
            tmp,
            layout,
            shards,
            lr_set=name,
            degradation=pp.degradation,
            color=color,
            clips={c.clip_id: sum(int(s["rows"]) for s in shards if s["clip_id"] == c.clip_id) for c in clips},
            licences=sorted({c.licence for c in clips}),
        )
    return manifest
