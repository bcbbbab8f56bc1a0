"""Stage ``patches``: training samples in size-bounded, checksummed Parquet shards.

One row per sample: the LR window of 2N-1 frames around reference frame t (raw), the
ROF-aligned neighbours, the HR target patch, the rectified shift theta_hat of each
neighbour (the SAN's supervision) and ids. Pixel planes are uint8 in
``fixed_size_binary`` columns (one per frame, planar ``C x p x p``), which pyarrow decodes
several times faster than ``list<uint8>``; files use zstd and fixed-size row groups (the
loader's unit of reading).

Only training clips are sampled, at reference frames with a full window
(N-1 <= t < F-N+1). Patch positions are drawn uniformly from a generator seeded by
``patches.seed`` and the clip id, so the output is a pure function of inputs and params;
candidates whose LR centre-frame Y standard deviation is below ``min_std`` (flat sky,
letterbox bars) are skipped deterministically.

Every shard is written under a temporary name and renamed when complete; the manifest
records each shard's row count and sha256, so a torn or modified shard is detected by
the loader instead of being read as valid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tanet.align.rof import patch_shifts, shift_crop
from tanet.atomic import atomic_dir, atomic_write_json
from tanet.color import rgb_to_y_uint8
from tanet.config import Params, PatchesParams
from tanet.data.flows import load_flows, neighbour_offsets
from tanet.data.ingest import ClipRecord, read_manifest
from tanet.data.lrsets import lr_set_name
from tanet.errors import InputError, TanetError
from tanet.frames import list_frames, read_rgb
from tanet.parallel import Mapper, serial_map

MANIFEST = "manifest.json"
DEFAULT_ZSTD_LEVEL: int = PatchesParams.zstd_level
FORMAT_VERSION = 1
_CANDIDATES = 4  # candidate positions drawn per wanted patch (for the min_std filter)


@dataclass(frozen=True)
class PatchLayout:
    """Geometry of one sample; stored in the manifest and checked by the loader."""

    num_frames: int  # T = 2N-1
    channels: int  # 1 (Y) or 3 (RGB, planar)
    patch: int  # LR patch side p
    scale: int  # r

    @property
    def lr_bytes(self) -> int:
        """Bytes of one LR frame plane set (C*p*p)."""
        return self.channels * self.patch * self.patch

    @property
    def hr_bytes(self) -> int:
        """Bytes of the HR target (C*(r*p)^2)."""
        return self.channels * (self.scale * self.patch) ** 2

    @property
    def centre(self) -> int:
        """Index of the reference frame in the window."""
        return self.num_frames // 2

    def schema(self) -> pa.Schema:
        """Arrow schema of a shard."""
        fields = [
            pa.field("clip", pa.string()),
            pa.field("frame", pa.int32()),
            pa.field("y", pa.int32()),
            pa.field("x", pa.int32()),
        ]
        fields += [pa.field(f"lr_{k}", pa.binary(self.lr_bytes)) for k in range(self.num_frames)]
        fields += [pa.field(f"rof_{k}", pa.binary(self.lr_bytes)) for k in range(self.num_frames) if k != self.centre]
        fields += [pa.field("hr", pa.binary(self.hr_bytes)), pa.field("shift", pa.binary(2 * (self.num_frames - 1)))]
        return pa.schema(fields)


def _seed(seed: int, clip_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{clip_id}".encode()).digest()[:8], "little")


def _planes(rgb: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> planar ``(C, H, W)``: Y (BT.601, MATLAB) or RGB."""
    chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    return (rgb_to_y_uint8(chw) if channels == 1 else chw).contiguous().numpy()


class ShardWriter:
    """Writes row groups into size-bounded Parquet shards, each renamed when complete.

    A shard is closed before a row group that would take it past ``max_bytes``: the next
    group's size is predicted from the largest group written so far (rows are fixed-size
    and compress alike) and the footer from the column count, so shards stay within the
    bound unless one row group alone exceeds it (such a shard holds that single group).
    """

    def __init__(
        self, out_dir: Path, prefix: str, schema: pa.Schema, max_bytes: int, zstd_level: int = DEFAULT_ZSTD_LEVEL
    ) -> None:
        self.out_dir = out_dir
        self.zstd_level = zstd_level
        self.prefix = prefix
        self.schema = schema
        self.max_bytes = max_bytes
        self.shards: list[dict[str, object]] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows = 0
        self._groups = 0
        self._size = 0  # bytes of the open shard so far (row groups, no footer yet)
        self._group_bytes = 0  # largest row group written (compressed bytes on disk)

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.parquet"
        self._tmp = self.out_dir / f".{name}.tmp"
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            compression="zstd",
            compression_level=self.zstd_level,
            use_dictionary=["clip"],
            write_statistics=["clip", "frame", "y", "x"],
        )
        self._rows = self._groups = self._size = 0

    def _footer_bytes(self, groups: int) -> int:
        """A generous estimate of the Parquet footer of a shard with ``groups`` row groups."""
        return 4096 + 96 * len(self.schema) * groups

    def write(self, table: pa.Table) -> None:
        """Writes one row group, starting a new shard when it would not fit the current one."""
        if (
            self._writer is not None
            and self._groups
            and (self._size + self._group_bytes + self._footer_bytes(self._groups + 1) > self.max_bytes)
        ):
            self._close_shard()
        if self._writer is None:
            self._open()
        assert self._writer is not None and self._tmp is not None
        self._writer.write_table(table, row_group_size=table.num_rows)
        size = self._tmp.stat().st_size
        self._group_bytes = max(self._group_bytes, size - self._size)
        self._size = size
        self._rows += table.num_rows
        self._groups += 1

    def _close_shard(self) -> None:
        if self._writer is None or self._tmp is None:
            return
        self._writer.close()
        final = self._tmp.with_name(self._tmp.name[1:].removesuffix(".tmp"))
        self._tmp.replace(final)
        self.shards.append(
            {
                "file": final.name,
                "rows": self._rows,
                "row_groups": self._groups,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )
        self._writer = None
        self._tmp = None

    def close(self) -> list[dict[str, object]]:
        """Finishes the last shard; returns the shard records."""
        self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Drops the shard being written (after a failure); complete shards stay."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
                if self._tmp is not None:
                    self._tmp.unlink(missing_ok=True)
                self._tmp = None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def clip_rows(
    clip: ClipRecord, clips_dir: Path, lr_clip_dir: Path, flow_file: Path, params: Params
) -> Iterator[dict[str, object]]:
    """Yields the samples of one clip, one reference frame at a time (as column dicts)."""
    pp, model = params.patches, params.model
    layout = PatchLayout(model.num_frames, model.channels, pp.patch_size, model.scale)
    r, p, t_half = model.scale, pp.patch_size, model.num_branches - 1
    lr_files = list_frames(lr_clip_dir)
    hr_files = list_frames(clips_dir / clip.clip_id)
    if len(lr_files) != len(hr_files):
        raise InputError(lr_clip_dir, f"{len(lr_files)} LR frames for {len(hr_files)} HR frames")
    lr = np.stack([_planes(read_rgb(f), layout.channels) for f in lr_files])  # (F, C, h, w)
    f, _, h, w = lr.shape
    if h < p or w < p:
        return  # clip smaller than one patch: used for validation only
    flows = load_flows(flow_file)
    if not np.array_equal(flows["offsets"], neighbour_offsets(model.num_branches)):
        raise InputError(flow_file, "flow offsets do not match model.num_branches; re-run the flow stage")
    if flows["flow"].shape[:4] != (f, layout.num_frames - 1, h, w):
        raise InputError(
            flow_file, f"flows {flows['flow'].shape[:4]} do not match the LR clip ({f}, {h}x{w}); re-run the flow stage"
        )
    luma = lr if layout.channels == 1 else np.stack([_planes(read_rgb(x), 1) for x in lr_files])
    rng = np.random.default_rng(_seed(pp.seed, clip.clip_id))
    for t in range(t_half, f - t_half):
        pos = sample_positions(rng, luma[t, 0], p, pp.patches_per_frame, pp.min_std)
        if len(pos) == 0:
            continue
        hr = _planes(read_rgb(hr_files[t]), layout.channels)  # (C, H, W); mod-crop is implicit below
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
    clip: ClipRecord, clips_dir: Path, lr_clip_dir: Path, flow_file: Path, params: Params, out_dir: Path
) -> list[dict[str, object]]:
    """Writes one clip's samples as shards ``<clip>-NNNNN.parquet``; returns their records."""
    pp, model = params.patches, params.model
    layout = PatchLayout(model.num_frames, model.channels, pp.patch_size, model.scale)
    schema = layout.schema()
    writer = ShardWriter(out_dir, clip.clip_id, schema, int(pp.max_shard_mb * (1 << 20)), pp.zstd_level)
    pending: dict[str, list[object]] = {name: [] for name in schema.names}
    count = 0
    try:
        for rows in clip_rows(clip, clips_dir, lr_clip_dir, flow_file, params):
            for name in schema.names:
                pending[name].extend(rows[name])  # type: ignore[arg-type]
            count += len(rows["clip"])  # type: ignore[arg-type]
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


def run_patches(
    params: Params, clips_dir: Path, lr_dir: Path, flow_dir: Path, out_dir: Path, mapper: Mapper = serial_map
) -> dict[str, object]:
    """Writes the training shards and their manifest.

    Args:
        params: pipeline params (``patches``, ``model``).
        clips_dir: ingest output.
        lr_dir: degrade output.
        flow_dir: flow output.
        out_dir: this stage's output folder (replaced whole on success).
        mapper: fan-out over training clips.

    Returns:
        The manifest.
    """
    pp, model = params.patches, params.model
    name = lr_set_name(model.scale, pp.degradation)
    clips = [c for c in read_manifest(clips_dir) if c.split == "train"]
    layout = PatchLayout(model.num_frames, model.channels, pp.patch_size, model.scale)
    with atomic_dir(out_dir) as tmp:
        results = mapper(
            lambda c: write_clip_shards(
                c, clips_dir, lr_dir / name / c.clip_id, flow_dir / name / f"{c.clip_id}.npz", params, tmp
            ),
            clips,
            [c.clip_id for c in clips],
        )
        shards: list[dict[str, object]] = []
        for clip, res in zip(clips, results):
            if isinstance(res, BaseException):
                raise TanetError(f"patches: clip {clip.clip_id} failed: {res}") from res
            shards.extend(res)
        total = sum(int(s["rows"]) for s in shards)  # type: ignore[call-overload]
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
            color=model.color,
            clips={c.clip_id: sum(int(s["rows"]) for s in shards if s["clip_id"] == c.clip_id) for c in clips},  # type: ignore[call-overload]
            licences=sorted({c.licence for c in clips}),
        )
    return manifest


def write_patch_manifest(
    out_dir: Path, layout: PatchLayout, shards: list[dict[str, object]], **info: object
) -> dict[str, object]:
    """Writes ``manifest.json`` for shards written by :class:`ShardWriter` into ``out_dir``.

    Args:
        out_dir: the folder holding the shards.
        layout: the geometry every shard was written with.
        shards: the records returned by :meth:`ShardWriter.close` (of one or more writers).
        **info: extra fields recorded as they are (``lr_set``, ``clips``, ``licences``...).

    Returns:
        The manifest.
    """
    manifest: dict[str, object] = {
        "format": FORMAT_VERSION,
        "scale": layout.scale,
        "num_frames": layout.num_frames,
        "channels": layout.channels,
        "patch_size": layout.patch,
        "rows": sum(int(s["rows"]) for s in shards),  # type: ignore[call-overload]
        **info,
        "shards": shards,
    }
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_patch_manifest(patches_dir: Path) -> dict[str, object]:
    """Reads the shard manifest of a patches folder."""
    path = Path(patches_dir) / MANIFEST
    if not path.is_file():
        raise InputError(path, "patch manifest missing; run the patches stage first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise InputError(path, f"unsupported patch format {manifest.get('format')!r} (expected {FORMAT_VERSION})")
    return manifest
