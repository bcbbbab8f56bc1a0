"""Streaming, resumable batches from the patch shards.

The loader reads whole Parquet row groups, shuffles them in windows of ``shuffle_groups``
row groups, and yields whole batches as uint8 tensors; conversion to float happens on the
training device.

Decoding: each row group of a window is decoded by a small thread pool (``decode_threads``;
Parquet decoding and zstd release the GIL) and every ``fixed_size_binary`` column is copied
once, from Arrow's buffer into its slot of a per-field window array; a batch is then one
gather (``np.take``) of its rows per field, so a window is never permuted whole. While the
batches of one window are handed out, the next window is decoded into a second set of
arrays (double buffering), so decoding overlaps training even without ``prefetching()``.
Decoded row groups are kept up to ``cache_mb`` (the first ones decoded, never evicted), so a
dataset that fits in memory is decompressed once and later epochs only gather. Throughput
and CPU cost per patch: ``benchmarks/bench_loader.py``.

Order: epoch ``e`` permutes all row groups with a generator seeded by (seed, e); consumer
``c`` of ``C`` (DDP rank x DataLoader worker) takes every C-th of them; consecutive runs of
``shuffle_groups`` row groups form a window whose rows are permuted by a generator seeded
by (seed, e, c, window). The batch sequence of an epoch is that row sequence cut into
batches of ``batch_size`` (the last partial batch of an epoch is dropped; the next epoch
reshuffles, so every sample keeps being seen; an epoch in which a consumer's row groups hold
less than one batch yields nothing for it). Because the whole sequence is a pure function
of (seed, epoch, consumer, shard metadata), the loader's position is just
``(epoch, batch)``: a checkpoint stores it, and a resumed run sees exactly the batches an
uninterrupted one would, without replaying the data.

Every shard's sha256 is checked against the manifest when the loader opens, and its
schema against the manifest's layout, so a torn, modified or foreign shard is an error
naming the shard, never silently read.

Batch layout (dict of tensors): ``lr``/``rof`` ``(B, T, C, p, p)`` uint8 (``rof``: neighbours
ROF-aligned, centre = raw), ``hr`` ``(B, C, r*p, r*p)`` uint8, ``theta`` ``(B, T-1, 2)``
float32 (rectified shifts dx, dy in LR pixels, neighbours in time order).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tanet.errors import InputError
from tanet.io.checksum import sha256_file
from tanet.io.shards import PatchLayout, read_patch_manifest
from tanet.ops.seeds import seed_of

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
    return np.random.default_rng(seed_of(*keys))


def _copy_fixed(column: pa.ChunkedArray, out: np.ndarray) -> None:
    """Copies a fixed_size_binary column into ``out`` ``(rows, width)`` uint8, chunk by chunk."""
    width = column.type.byte_width
    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        data = np.frombuffer(chunk.buffers()[1], np.uint8, count=n * width, offset=chunk.offset * width)
        out[start : start + n] = data.reshape(n, width)
        start += n


def _gather(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``array[idx]`` along the first axis into a new contiguous array."""
    return np.take(array, idx, axis=0)


class PatchLoader:
    """Deterministic, resumable, shuffled batches from a patches folder.

    Args:
        patches_dir: output of the patches stage (manifest + shards).
        batch_size: samples per batch (per consumer).
        seed: shuffling seed.
        shuffle_groups: row groups shuffled together (memory ~ 2 x this x row group bytes:
            the window handed out and the one decoded ahead).
        consumer: index of this consumer (rank * workers + worker).
        num_consumers: total consumers sharing the data.
        fields: which of ``lr``, ``rof``, ``hr``, ``theta`` to decode.
        verify: check shard checksums on open.
        decode_threads: threads decoding row groups (0: decode in the iterating thread,
            without decoding the next window ahead).
        cache_mb: keep up to this many MiB of decoded row groups in memory (the first ones
            decoded; nothing is evicted), so later epochs gather them without decoding again.
            A dataset that fits is decoded once; each consumer (DDP rank, DataLoader worker)
            has its own cache. 0 turns caching off.
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
        decode_threads: int = 2,
        cache_mb: int = 1024,
    ) -> None:
        self.dir = Path(patches_dir)
        self.manifest = read_patch_manifest(self.dir)
        m = self.manifest
        self.layout = PatchLayout(int(m["num_frames"]), int(m["channels"]), int(m["patch_size"]), int(m["scale"]))
        unknown = set(fields) - set(ALL_FIELDS)
        if unknown:
            raise ValueError(f"unknown loader fields {sorted(unknown)} (known: {ALL_FIELDS})")
        if not fields:
            raise ValueError(f"no loader field requested (known: {ALL_FIELDS})")
        if batch_size < 1 or shuffle_groups < 1 or decode_threads < 0:
            raise ValueError(
                f"batch_size and shuffle_groups must be >= 1, decode_threads >= 0 "
                f"(got {batch_size}, {shuffle_groups}, {decode_threads})"
            )
        if not 0 <= consumer < num_consumers:
            raise ValueError(f"consumer {consumer} is not in [0, {num_consumers})")
        self.fields = tuple(dict.fromkeys(fields))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_groups = shuffle_groups
        self.consumer = consumer
        self.num_consumers = num_consumers
        self.decode_threads = decode_threads
        self.shards = [self.dir / str(s["file"]) for s in m["shards"]]
        if verify:
            self.verify()
        self._local = threading.local()  # per-thread ParquetFile handles (readers are not thread-safe)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._cache: dict[_Unit, pa.Table] = {}  # decoded row groups (columns of self.fields)
        self._cache_room = cache_mb << 20  # bytes left in the cache
        self._cache_lock = threading.Lock()
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
        for path, rec in zip(self.shards, self.manifest["shards"]):
            if not path.is_file():
                raise InputError(path, "shard listed in the manifest is missing")
            if sha256_file(path) != rec["sha256"]:
                raise InputError(path, "shard checksum mismatch (torn or modified); re-run the patches stage")

    def _file(self, shard: int) -> pq.ParquetFile:
        files: dict[int, pq.ParquetFile] | None = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
        if shard not in files:
            try:
                files[shard] = pq.ParquetFile(self.shards[shard], memory_map=True)
            except (OSError, pa.ArrowException) as err:
                raise InputError(self.shards[shard], f"not a readable Parquet shard: {err}") from None
        return files[shard]

    def _units(self) -> list[_Unit]:
        units = []
        schema = self.layout.schema()
        for i, (path, rec) in enumerate(zip(self.shards, self.manifest["shards"])):
            pf = self._file(i)
            if not pf.schema_arrow.equals(schema):
                raise InputError(path, f"shard schema does not match the manifest's layout {self.layout}")
            meta = pf.metadata
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
        frames = range(lay.num_frames) if "lr" in self.fields else [lay.centre] if "rof" in self.fields else []
        cols = [f"lr_{k}" for k in frames]
        if "rof" in self.fields:
            cols += [f"rof_{k}" for k in range(lay.num_frames) if k != lay.centre]
        if "hr" in self.fields:
            cols.append("hr")
        if "theta" in self.fields:
            cols.append("shift")
        return cols

    def _executor(self) -> ThreadPoolExecutor | None:
        if self.decode_threads == 0:
            return None
        if self._pool is None or self._pool_pid != os.getpid():  # a forked DataLoader worker needs its own
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="patch-decode")
            self._pool_pid = os.getpid()
        return self._pool

    def _window_arrays(self, n: int, buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-field ``(n, ...)`` uint8 arrays for a window, reusing ``buffers`` when large enough."""
        lay = self.layout
        shapes = {
            "lr": (lay.num_frames, lay.lr_bytes),
            "rof": (lay.num_frames, lay.lr_bytes),
            "hr": (lay.hr_bytes,),
            "theta": (2 * (lay.num_frames - 1),),
        }
        out = {}
        for name in self.fields:
            buf = buffers.get(name)
            if buf is None or len(buf) < n:
                buf = buffers[name] = np.empty((n, *shapes[name]), np.uint8)
            out[name] = buf[:n]
        return out

    def _decode_unit(self, unit: _Unit, out: dict[str, np.ndarray], start: int) -> None:
        """Decodes one row group into rows ``start:start+rows`` of the window arrays."""
        lay = self.layout
        table = self._cache.get(unit)
        if table is None:
            try:
                table = self._file(unit.shard).read_row_group(unit.group, columns=self._columns(), use_threads=False)
            except (OSError, pa.ArrowException) as err:
                raise InputError(self.shards[unit.shard], f"cannot decode row group {unit.group}: {err}") from None
            with self._cache_lock:
                if table.nbytes <= self._cache_room and unit not in self._cache:
                    self._cache[unit] = table
                    self._cache_room -= table.nbytes
        if table.num_rows != unit.rows:
            raise InputError(
                self.shards[unit.shard], f"row group {unit.group} has {table.num_rows} rows, expected {unit.rows}"
            )
        rows = slice(start, start + unit.rows)
        for k in range(lay.num_frames):
            if "lr" in out:
                _copy_fixed(table.column(f"lr_{k}"), out["lr"][rows, k])
            if "rof" in out:
                # rof's centre is the raw reference frame (there is no rof column for it).
                _copy_fixed(table.column(f"lr_{k}" if k == lay.centre else f"rof_{k}"), out["rof"][rows, k])
        if "hr" in out:
            _copy_fixed(table.column("hr"), out["hr"][rows])
        if "theta" in out:
            _copy_fixed(table.column("shift"), out["theta"][rows])

    def _start_window(self, units: list[_Unit], buffers: dict[str, np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """Starts decoding a window (rows in unit order); returns a function waiting for it."""
        n = sum(u.rows for u in units)
        out = self._window_arrays(n, buffers)
        starts = np.cumsum([0] + [u.rows for u in units[:-1]])
        pool = self._executor()
        if pool is None:
            for u, s in zip(units, starts):
                self._decode_unit(u, out, int(s))
            futures: list[Future[None]] = []
        else:
            futures = [pool.submit(self._decode_unit, u, out, int(s)) for u, s in zip(units, starts)]

        def wait() -> dict[str, np.ndarray]:
            for fut in futures:
                fut.result()  # re-raises a decoding error here, in the iterating thread
            lay = self.layout
            p, c, t, rp = lay.patch, lay.channels, lay.num_frames, lay.scale * lay.patch
            views = {"lr": (n, t, c, p, p), "rof": (n, t, c, p, p), "hr": (n, c, rp, rp)}
            return {
                k: v.view(np.int8).reshape(n, t - 1, 2) if k == "theta" else v.reshape(views[k]) for k, v in out.items()
            }

        return wait

    # -- iteration --------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[_Unit]]:
        units = self._epoch_units(epoch)
        return [units[i : i + self.shuffle_groups] for i in range(0, len(units), self.shuffle_groups)]

    def _window_plan(self, start: LoaderState) -> Iterator[_Window]:
        """The windows to decode from ``start`` on, in order, with the rows to skip in the first."""
        epoch, first = start.epoch, start.batch
        bs = self.batch_size
        while True:
            windows = self._windows(epoch)
            sizes = [sum(u.rows for u in w) for w in windows]
            n_batches = sum(sizes) // bs
            if first < n_batches:
                starts = np.concatenate([[0], np.cumsum(sizes)])
                # The window holding row first*bs (earlier ones are skipped without decoding)
                # through the one holding the epoch's last used row (the drop-last remainder
                # after it is never decoded).
                w_first = int(np.searchsorted(starts, first * bs, side="right") - 1)
                w_last = int(np.searchsorted(starts, n_batches * bs - 1, side="right") - 1)
                for wi in range(w_first, w_last + 1):
                    skip = first * bs - int(starts[wi]) if wi == w_first else 0
                    yield _Window(epoch, wi, windows[wi], sizes[wi], skip, first, n_batches)
            epoch, first = epoch + 1, 0

    def _cuts(self, start: LoaderState) -> Iterator[_Cuts]:
        """How each window of the plan from ``start`` on is cut into batches (no decoding)."""
        bs = self.batch_size
        epoch, b, carried = -1, 0, 0
        for w in self._window_plan(start):
            new_epoch = w.epoch != epoch
            if new_epoch:  # the previous epoch's remainder is dropped
                epoch, b, carried = w.epoch, w.first_batch, 0
            order = _rng(self.seed, w.epoch, self.consumer, w.index).permutation(w.rows)[w.skip :]
            batches, pos = [], 0
            while b < w.n_batches and carried + len(order) - pos >= bs:
                idx = order[pos : pos + bs - carried]
                pos, carried, b = pos + len(idx), 0, b + 1
                batches.append((LoaderState(epoch, b) if b < w.n_batches else LoaderState(epoch + 1, 0), idx))
            rest = order[pos:] if b < w.n_batches and pos < len(order) else None
            carried += 0 if rest is None else len(rest)
            yield _Cuts(w, new_epoch, batches, rest)

    def iter_batches(self, start: LoaderState) -> Iterator[tuple[LoaderState, Batch]]:
        """Yields ``(state after this batch, batch)`` forever, starting at ``start``."""
        plan = self._cuts(start)
        buffers: list[dict[str, np.ndarray]] = [{}, {}]  # double-buffered window arrays
        current = next(plan)
        pending = self._start_window(current.window.units, buffers[0])
        carry: list[dict[str, np.ndarray]] = []  # rows gathered for the next batch (< bs rows)
        for i in itertools.count(1):
            data = pending()
            following = next(plan)
            pending = self._start_window(following.window.units, buffers[i % 2])  # decodes while we gather
            if current.new_epoch:
                carry = []
            for state, idx in current.batches:
                rows = {k: _gather(v, idx) for k, v in data.items()}
                if carry:
                    rows = {k: np.concatenate([*(q[k] for q in carry), rows[k]]) for k in data}
                    carry = []
                yield state, {k: torch.from_numpy(_as_model_dtype(k, v)) for k, v in rows.items()}
            if current.rest is not None:  # copied now: this window's buffer is decoded into next
                carry.append({k: _gather(v, current.rest) for k, v in data.items()})
            current = following
        raise AssertionError("unreachable: the window plan never ends")

    def iter_rows(self, start: LoaderState) -> Iterator[tuple[LoaderState, np.ndarray]]:
        """:meth:`iter_batches`'s sequence as row indices into :meth:`decode_all`, decoding nothing.

        Yields:
            ``(state after this batch, (batch_size,) int64 rows)``, forever.
        """
        offsets = dict(zip(self.units, np.cumsum([0] + [u.rows for u in self.units[:-1]]).tolist()))
        carry: list[np.ndarray] = []
        for cut in self._cuts(start):
            # the window's rows in the order _start_window decodes them
            rows = np.concatenate([np.arange(offsets[u], offsets[u] + u.rows) for u in cut.window.units])
            if cut.new_epoch:
                carry = []
            for state, idx in cut.batches:
                yield state, np.concatenate([*carry, rows[idx]]) if carry else rows[idx]
                carry = []
            if cut.rest is not None:
                carry.append(rows[cut.rest])
        raise AssertionError("unreachable: the window plan never ends")

    def decode_all(self) -> Batch:
        """Every row of every shard (all consumers' rows), in shard and row-group order, as
        one tensor per field in the batch layout (rows indexed by :meth:`iter_rows`)."""
        arrays = self._start_window(self.units, {})()
        return {k: torch.from_numpy(_as_model_dtype(k, v)) for k, v in arrays.items()}

    def decoded_bytes(self) -> int:
        """Bytes :meth:`decode_all` takes (theta as float32)."""
        lay = self.layout
        per_row = {
            "lr": lay.num_frames * lay.lr_bytes,
            "rof": lay.num_frames * lay.lr_bytes,
            "hr": lay.hr_bytes,
            "theta": 8 * (lay.num_frames - 1),
        }
        return sum(u.rows for u in self.units) * sum(per_row[f] for f in self.fields)

    def resident(self, device: torch.device | str) -> Iterator[Batch]:
        """Like ``iter(self)`` (same batches, same ``state``), from a copy of all the data held
        on ``device``: each batch is one gather there, so nothing is decoded or copied per step
        (for a GPU that trains faster than the shards decode)."""
        data = {k: v.to(device) for k, v in self.decode_all().items()}
        for state, rows in self.iter_rows(self.state):
            idx = torch.from_numpy(rows).to(device, non_blocking=True)
            self.state = state
            yield {k: v.index_select(0, idx) for k, v in data.items()}

    def __iter__(self) -> Iterator[Batch]:
        """Iterates forever from ``self.state``, keeping it current."""
        for state, batch in self.iter_batches(self.state):
            self.state = state
            yield batch

    def prefetching(self, depth: int = 3, pin_memory: bool = False) -> Iterator[Batch]:
        """Like ``iter(self)`` but builds batches ahead on a background thread (order unchanged).

        ``self.state`` always reflects the batches handed out, not those built ahead.

        Args:
            depth: batches built ahead.
            pin_memory: page-lock each batch on the background thread (when CUDA is
                available), so ``.to("cuda", non_blocking=True)`` copies asynchronously.
        """
        pin = pin_memory and torch.cuda.is_available()
        q: queue.Queue[tuple[LoaderState, Batch] | BaseException] = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def put(item: tuple[LoaderState, Batch] | BaseException) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self.iter_batches(self.state):
                    if pin:
                        item = (item[0], {k: v.pin_memory() for k, v in item[1].items()})
                    if not put(item):
                        return
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                put(err)

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
            thread.join()  # it notices within one batch; never left running into interpreter exit

    def close(self) -> None:
        """Stops the decoding threads (idle ones; a running decode finishes first)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self.close()


@dataclass(frozen=True)
class _Window:
    """One shuffle window of an epoch, as the iteration consumes it."""

    epoch: int
    index: int  # window index within the epoch (seeds its row permutation)
    units: list[_Unit]
    rows: int
    skip: int  # permuted rows already consumed before the start state
    first_batch: int  # batch index of the epoch at which iteration started (0 after the first epoch)
    n_batches: int  # full batches in this epoch for this consumer


@dataclass(frozen=True)
class _Cuts:
    """One window's batches: rows are indices into the window in decoding order."""

    window: _Window
    new_epoch: bool  # rows carried from the window before are dropped
    batches: list[tuple[LoaderState, np.ndarray]]  # (state after the batch, this window's rows of it)
    rest: np.ndarray | None  # rows carried into the next window's first batch


def _as_model_dtype(field: str, arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) if field == "theta" else np.ascontiguousarray(arr)
