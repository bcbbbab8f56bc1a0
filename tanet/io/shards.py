"""Patch shards on disk: their layout, a size-bounded Parquet writer, the checksummed manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from tanet.config import PatchesParams
from tanet.errors import InputError
from tanet.io.atomic import atomic_write_json
from tanet.io.checksum import sha256_file

SHARDS_MANIFEST = "manifest.json"


DEFAULT_ZSTD_LEVEL: int = PatchesParams.zstd_level


FORMAT_VERSION = 1


class ShardRecord(TypedDict):
    """One entry of a manifest's ``shards``, as :meth:`ShardWriter.close` returns it."""

    file: str  # shard file name, in the patches folder
    rows: int
    row_groups: int
    bytes: int  # file size
    sha256: str
    clip_id: NotRequired[str]  # added by the patches stage


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
        self.shards: list[ShardRecord] = []
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

    def close(self) -> list[ShardRecord]:
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


def write_patch_manifest(
    out_dir: Path, layout: PatchLayout, shards: list[ShardRecord], **info: object
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
        "rows": sum(int(s["rows"]) for s in shards),
        **info,
        "shards": shards,
    }
    atomic_write_json(Path(out_dir) / SHARDS_MANIFEST, manifest)
    return manifest


def read_patch_manifest(patches_dir: Path) -> dict[str, Any]:
    """Reads the shard manifest of a patches folder."""
    path = Path(patches_dir) / SHARDS_MANIFEST
    if not path.is_file():
        raise InputError(path, "patch manifest missing; run the patches stage first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise InputError(path, f"unsupported patch format {manifest.get('format')!r} (expected {FORMAT_VERSION})")
    return manifest
