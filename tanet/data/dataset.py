"""Streaming, resumable batches from the patch shards.

The loader reads whole Parquet row groups (zero-copy views of the ``fixed_size_binary``
pixel columns), shuffles them in windows of ``shuffle_groups`` row groups, and yields whole
batches as uint8 tensors; conversion to float happens on the training device.

Order: epoch ``e`` permutes all row groups with a generator seeded by (seed, e); consumer
``c`` of ``C`` (DDP rank x DataLoader worker) takes every C-th of them; consecutive runs of
``shuffle_groups`` row groups form a window whose rows are permuted by a generator seeded
by (seed, e, c, window). The batch sequence of an epoch is that row sequence cut into
batches of ``batch_size`` (the last partial batch of an epoch is dropped; the next epoch
reshuffles, so every sample keeps being seen). Because the whole sequence is a pure function
of (seed, epoch, consumer, shard metadata), the loader's position is just
``(epoch, batch)``: a checkpoint stores it, and a resumed run sees exactly the batches an
uninterrupted one would, without replaying the data.

Every shard's sha256 is checked against the manifest when the loader opens, so a torn or
modified shard is an error, never silently read.

Batch layout (dict of tensors): ``lr``/``rof`` ``(B, T, C, p, p)`` uint8 (``rof``: neighbours
ROF-aligned, centre = raw), ``hr`` ``(B, C, r*p, r*p)`` uint8, ``theta`` ``(B, T-1, 2)``
float32 (rectified shifts dx, dy in LR pixels, neighbours in time order).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tanet.data.patches import PatchLayout, read_patch_manifest, sha256_file
from tanet.errors import InputError

Batch = dict[str, torch.Tensor]
ALL_FIELDS = ("lr", "rof", "hr", "theta")


@dataclass(frozen=True)
class LoaderState:
    """Position of the next batch: epoch and batch index within it."""

    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class _Unit:
    shard: int  # index into the shard list
    group: int  # row group within the shard
    rows: int


def _rng(*keys: int) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _fixed_binary(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """Zero-copy ``(rows, width)`` uint8 view of a fixed_size_binary column."""
    arr = column.combine_chunks()
    data = arr.buffers()[1]
    return np.frombuffer(data, np.uint8, count=len(arr) * width, offset=arr.offset * width).reshape(len(arr), width)


class PatchLoader:
    """Deterministic, resumable, shuffled batches from a patches folder.

    Args:
        patches_dir: output of the patches stage (manifest + shards).
        batch_size: samples per batch (per consumer).
        seed: shuffling seed.
        shuffle_groups: row groups shuffled together (memory ~ this x row group bytes).
        consumer: index of this consumer (rank * workers + worker).
        num_consumers: total consumers sharing the data.
        fields: which of ``lr``, ``rof``, ``hr``, ``theta`` to decode.
        verify: check shard checksums on open.
    """

    def __init__(
        self,
        patches_dir: str | Path,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle_groups: int = 8,
        consumer: int = 0,
        num_consumers: int = 1,
        fields: tuple[str, ...] = ALL_FIELDS,
        verify: bool = True,
    ) -> None:
        self.dir = Path(patches_dir)
        self.manifest = read_patch_manifest(self.dir)
        m = self.manifest
        self.layout = PatchLayout(int(m["num_frames"]), int(m["channels"]), int(m["patch_size"]), int(m["scale"]))  # type: ignore[call-overload]
        unknown = set(fields) - set(ALL_FIELDS)
        if unknown:
            raise ValueError(f"unknown loader fields {sorted(unknown)} (known: {ALL_FIELDS})")
        self.fields = fields
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_groups = shuffle_groups
        self.consumer = consumer
        self.num_consumers = num_consumers
        self.shards = [self.dir / str(s["file"]) for s in m["shards"]]  # type: ignore[union-attr]
        if verify:
            self.verify()
        self._files: dict[int, pq.ParquetFile] = {}
        self.units = self._units()
        self.state = LoaderState()
        if self.batches_per_epoch() == 0:
            raise InputError(
                self.dir,
                f"{self.rows_per_epoch()} samples reach consumer {consumer}/{num_consumers}, fewer than "
                f"one batch of {batch_size}; lower the batch size or extract more patches",
            )

    # -- metadata ---------------------------------------------------------------------
    def verify(self) -> None:
        """Checks every shard exists with the manifest's sha256 and row count."""
        for path, rec in zip(self.shards, self.manifest["shards"]):  # type: ignore[call-overload]
            if not path.is_file():
                raise InputError(path, "shard listed in the manifest is missing")
            if sha256_file(path) != rec["sha256"]:
                raise InputError(path, "shard checksum mismatch (torn or modified); re-run the patches stage")

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard not in self._files:
            self._files[shard] = pq.ParquetFile(self.shards[shard], memory_map=True)
        return self._files[shard]

    def _units(self) -> list[_Unit]:
        units = []
        for i, (path, rec) in enumerate(zip(self.shards, self.manifest["shards"])):  # type: ignore[call-overload]
            meta = self._file(i).metadata
            if meta.num_rows != rec["rows"]:
                raise InputError(path, f"{meta.num_rows} rows, the manifest says {rec['rows']}")
            units += [_Unit(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        return units

    def _epoch_units(self, epoch: int) -> list[_Unit]:
        order = _rng(self.seed, epoch).permutation(len(self.units))
        return [self.units[i] for i in order[self.consumer :: self.num_consumers]]

    def rows_per_epoch(self, epoch: int = 0) -> int:
        """Samples this consumer sees per epoch."""
        return sum(u.rows for u in self._epoch_units(epoch))

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Full batches per epoch for this consumer (the partial last one is dropped)."""
        return self.rows_per_epoch(epoch) // self.batch_size

    # -- decoding ---------------------------------------------------------------------
    def _columns(self) -> list[str]:
        lay = self.layout
        cols: list[str] = []
        if "lr" in self.fields or "rof" in self.fields:
            cols += [f"lr_{k}" for k in range(lay.num_frames)]
        if "rof" in self.fields:
            cols += [f"rof_{k}" for k in range(lay.num_frames) if k != lay.centre]
        if "hr" in self.fields:
            cols.append("hr")
        if "theta" in self.fields:
            cols.append("shift")
        return cols

    def _read_window(self, units: list[_Unit]) -> dict[str, np.ndarray]:
        """Decodes row groups into arrays keyed by field (rows concatenated in unit order)."""
        lay = self.layout
        cols = self._columns()
        tables = [self._file(u.shard).read_row_group(u.group, columns=cols) for u in units]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        n = table.num_rows
        p, c, t = lay.patch, lay.channels, lay.num_frames
        out: dict[str, np.ndarray] = {}
        if "lr" in self.fields or "rof" in self.fields:
            lr = np.stack([_fixed_binary(table.column(f"lr_{k}"), lay.lr_bytes) for k in range(t)], 1)
            lr = lr.reshape(n, t, c, p, p)
            if "lr" in self.fields:
                out["lr"] = lr
            if "rof" in self.fields:
                planes = [
                    lr[:, k] if k == lay.centre else _fixed_binary(table.column(f"rof_{k}"), lay.lr_bytes).reshape(n, c, p, p)
                    for k in range(t)
                ]
                out["rof"] = np.stack(planes, 1)
        if "hr" in self.fields:
            rp = lay.scale * p
            out["hr"] = _fixed_binary(table.column("hr"), lay.hr_bytes).reshape(n, c, rp, rp)
        if "theta" in self.fields:
            out["theta"] = _fixed_binary(table.column("shift"), 2 * (t - 1)).view(np.int8).reshape(n, t - 1, 2)
        return out

    # -- iteration --------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[_Unit]]:
        units = self._epoch_units(epoch)
        return [units[i : i + self.shuffle_groups] for i in range(0, len(units), self.shuffle_groups)]

    def iter_batches(self, start: LoaderState) -> Iterator[tuple[LoaderState, Batch]]:
        """Yields ``(state after this batch, batch)`` forever, starting at ``start``."""
        epoch, first = start.epoch, start.batch
        bs = self.batch_size
        while True:
            windows = self._windows(epoch)
            sizes = [sum(u.rows for u in w) for w in windows]
            n_batches = sum(sizes) // bs
            starts = np.concatenate([[0], np.cumsum(sizes)])
            carry: dict[str, np.ndarray] | None = None
            b = first
            # The first window holding row b*bs (earlier windows are skipped without decoding).
            w_idx = int(np.searchsorted(starts, b * bs, side="right") - 1) if b < n_batches else len(windows)
            skip = b * bs - int(starts[w_idx]) if b < n_batches else 0
            for wi in range(w_idx, len(windows)):
                if b >= n_batches:
                    break
                data = self._read_window(windows[wi])
                perm = _rng(self.seed, epoch, self.consumer, wi).permutation(sizes[wi])
                data = {k: v[perm] for k, v in data.items()}
                if wi == w_idx and skip:
                    data = {k: v[skip:] for k, v in data.items()}
                if carry is not None:
                    data = {k: np.concatenate([carry[k], data[k]]) for k in data}
                rows = len(next(iter(data.values())))
                pos = 0
                while rows - pos >= bs and b < n_batches:
                    batch = {k: torch.from_numpy(_as_model_dtype(k, v[pos : pos + bs])) for k, v in data.items()}
                    pos += bs
                    b += 1
                    yield (LoaderState(epoch, b) if b < n_batches else LoaderState(epoch + 1, 0)), batch
                carry = {k: v[pos:] for k, v in data.items()}
            epoch, first = epoch + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        """Iterates forever from ``self.state``, keeping it current."""
        for state, batch in self.iter_batches(self.state):
            self.state = state
            yield batch

    def prefetching(self, depth: int = 3) -> Iterator[Batch]:
        """Like ``iter(self)`` but decodes ahead on a background thread (order unchanged).

        ``self.state`` always reflects the batches handed out, not those decoded ahead.
        """
        q: queue.Queue[tuple[LoaderState, Batch] | BaseException] = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self.iter_batches(self.state):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                q.put(err)

        thread = threading.Thread(target=produce, daemon=True, name="patch-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                self.state, batch = item
                yield batch
        finally:
            stop.set()


def _as_model_dtype(field: str, arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) if field == "theta" else np.ascontiguousarray(arr)


class PatchDataset(IterableDataset):
    """A torch ``IterableDataset`` of whole batches, sharded over DDP ranks and workers.

    Use with ``DataLoader(ds, batch_size=None, num_workers=W)``. Consumer index is
    ``rank * W + worker``; each consumer starts at ``start`` of its own sequence.
    """

    def __init__(self, patches_dir: str | Path, batch_size: int, *, seed: int = 0, shuffle_groups: int = 8,
                 rank: int = 0, world_size: int = 1, fields: tuple[str, ...] = ALL_FIELDS,
                 start: LoaderState = LoaderState()) -> None:
        super().__init__()
        self.kwargs = dict(batch_size=batch_size, seed=seed, shuffle_groups=shuffle_groups, fields=fields)
        self.dir = Path(patches_dir)
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        loader = PatchLoader(self.dir, consumer=self.rank * workers + worker, num_consumers=self.world_size * workers,
                             verify=worker == 0, **self.kwargs)  # type: ignore[arg-type]
        loader.state = self.start
        return iter(loader)
