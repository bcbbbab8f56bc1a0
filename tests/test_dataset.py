"""PatchLoader: batch layout, epoch coverage, resuming, sharding, prefetching.

The shards are written with the patches stage's own ``ShardWriter`` and manifest, with
content that encodes each row's id in every column (lr, rof, hr, shift), so a test can tell
which sample a batch row is and that its fields were not mixed with another sample's.
Row groups have uneven sizes and batches straddle shuffle windows and shards.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tanet.data.loader import LoaderState, PatchLoader
from tanet.errors import InputError
from tanet.io.shards import DEFAULT_ZSTD_LEVEL, PatchLayout, ShardWriter, read_patch_manifest, write_patch_manifest

LAYOUT = PatchLayout(num_frames=5, channels=1, patch=8, scale=2)
GROUPS = {"a": [7, 7, 7, 5], "b": [7, 3], "c": [7, 7, 6, 7, 2]}  # rows per row group, per clip (= shard)
TOTAL = sum(map(sum, GROUPS.values()))  # 65
BS = 8


def _row_bytes(ids: np.ndarray, width: int, tag: int) -> pa.Array:
    """``fixed_size_binary(width)`` rows: id (uint16 LE), the column tag, then filler."""
    rows = np.empty((len(ids), width), np.uint8)
    rows[:] = ((ids[:, None] * 31 + np.arange(width)[None, :] + tag) % 251).astype(np.uint8)
    rows[:, 0] = ids & 0xFF
    rows[:, 1] = ids >> 8
    rows[:, 2] = tag
    return pa.Array.from_buffers(pa.binary(width), len(ids), [None, pa.py_buffer(rows.tobytes())])


def expected_theta(ids: np.ndarray) -> np.ndarray:
    """The (n, T-1, 2) shifts written for these ids."""
    t1 = LAYOUT.num_frames - 1
    return ((ids[:, None] * 7 + np.arange(2 * t1)[None, :]) % 19 - 9).reshape(-1, t1, 2).astype(np.float32)


def write_dataset(
    out: Path, groups: dict[str, list[int]] = GROUPS, max_bytes: int = 1 << 30, zstd_level: int = DEFAULT_ZSTD_LEVEL
) -> dict[str, object]:
    schema = LAYOUT.schema()
    shards: list[dict[str, object]] = []
    next_id = 0
    for clip, sizes in groups.items():
        writer = ShardWriter(out, clip, schema, max_bytes, zstd_level)
        for n in sizes:
            ids = np.arange(next_id, next_id + n)
            next_id += n
            cols: dict[str, object] = {"clip": [clip] * n, "frame": ids.astype(np.int32), "y": [0] * n, "x": [0] * n}
            for k in range(LAYOUT.num_frames):
                cols[f"lr_{k}"] = _row_bytes(ids, LAYOUT.lr_bytes, k)
                if k != LAYOUT.centre:
                    cols[f"rof_{k}"] = _row_bytes(ids, LAYOUT.lr_bytes, 100 + k)
            cols["hr"] = _row_bytes(ids, LAYOUT.hr_bytes, 200)
            shift = expected_theta(ids).astype(np.int8).reshape(n, -1).view(np.uint8)
            cols["shift"] = pa.Array.from_buffers(pa.binary(shift.shape[1]), n, [None, pa.py_buffer(shift.tobytes())])
            writer.write(pa.table(cols, schema=schema))
        shards += writer.close()
    return write_patch_manifest(out, LAYOUT, shards)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("patches")
    write_dataset(out)
    return out


def ids_of(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Sample ids of a batch's rows, checking every field holds the same sample."""
    key = "lr" if "lr" in batch else "rof" if "rof" in batch else "hr"
    flat = batch[key].reshape(batch[key].shape[0], -1).numpy()
    ids = flat[:, 0].astype(np.int64) | (flat[:, 1].astype(np.int64) << 8)
    c = LAYOUT.centre
    if "lr" in batch:
        lr = batch["lr"].reshape(len(ids), LAYOUT.num_frames, -1).numpy()
        for k in range(LAYOUT.num_frames):
            assert (lr[:, k, 0] | (lr[:, k, 1].astype(np.int64) << 8) == ids).all() and (lr[:, k, 2] == k).all()
    if "rof" in batch:
        rof = batch["rof"].reshape(len(ids), LAYOUT.num_frames, -1).numpy()
        for k in range(LAYOUT.num_frames):
            assert (rof[:, k, 0] | (rof[:, k, 1].astype(np.int64) << 8) == ids).all()
            assert (rof[:, k, 2] == (k if k == c else 100 + k)).all()  # centre: the raw frame
    if "hr" in batch:
        hr = batch["hr"].reshape(len(ids), -1).numpy()
        assert (hr[:, 0] | (hr[:, 1].astype(np.int64) << 8) == ids).all() and (hr[:, 2] == 200).all()
    if "theta" in batch:
        np.testing.assert_array_equal(batch["theta"].numpy(), expected_theta(ids))
    return ids


def take(it: object, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(it, n))  # type: ignore[call-overload]


def assert_same_batches(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# --- layout -------------------------------------------------------------------------------


def test_batch_shapes_and_dtypes(data_dir: Path) -> None:
    loader = PatchLoader(data_dir, BS)
    batch = next(iter(loader))
    t, c, p, rp = LAYOUT.num_frames, LAYOUT.channels, LAYOUT.patch, LAYOUT.scale * LAYOUT.patch
    assert set(batch) == {"lr", "rof", "hr", "theta"}
    assert batch["lr"].shape == batch["rof"].shape == (BS, t, c, p, p)
    assert batch["hr"].shape == (BS, c, rp, rp)
    assert batch["theta"].shape == (BS, t - 1, 2)
    assert batch["lr"].dtype == batch["rof"].dtype == batch["hr"].dtype == torch.uint8
    assert batch["theta"].dtype == torch.float32
    assert all(v.is_contiguous() for v in batch.values())
    ids_of(batch)  # every field is the same sample; rof's centre is the raw frame


@pytest.mark.parametrize("fields", [("lr", "hr"), ("rof", "hr"), ("theta",), ("hr", "rof", "lr", "theta")])
def test_field_subsets_keep_the_order(data_dir: Path, fields: tuple[str, ...]) -> None:
    full = take(iter(PatchLoader(data_dir, BS, shuffle_groups=2)), 12)
    part = take(iter(PatchLoader(data_dir, BS, shuffle_groups=2, fields=fields)), 12)
    for a, b in zip(full, part):
        assert set(b) == set(fields)
        for k in fields:
            assert torch.equal(a[k], b[k])


def test_unknown_field_and_oversized_batch_are_clear_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown loader fields"):
        PatchLoader(data_dir, BS, fields=("lr", "flow"))
    with pytest.raises(InputError, match=rf"{TOTAL} samples .* fewer than one batch of 1000"):
        PatchLoader(data_dir, 1000)
    with pytest.raises(InputError, match="fewer than one batch"):
        PatchLoader(data_dir, 20, consumer=5, num_consumers=6)  # 2 of 11 row groups: at most 14 rows


# --- one epoch ----------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle_groups", [1, 3, 100])
def test_an_epoch_sees_every_row_once(data_dir: Path, shuffle_groups: int) -> None:
    loader = PatchLoader(data_dir, BS, shuffle_groups=shuffle_groups)
    n = loader.batches_per_epoch()
    assert n == TOTAL // BS and loader.rows_per_epoch() == TOTAL
    it = iter(loader)
    epoch0 = np.concatenate([ids_of(b) for b in take(it, n)])
    assert loader.state == LoaderState(1, 0)
    assert len(set(epoch0.tolist())) == n * BS  # no row twice
    assert set(epoch0.tolist()) <= set(range(TOTAL)) and TOTAL - n * BS < BS  # only the drop-last remainder unseen
    assert not np.array_equal(epoch0, np.sort(epoch0))  # shuffled
    epoch1 = np.concatenate([ids_of(b) for b in take(it, n)])
    assert len(set(epoch1.tolist())) == n * BS and not np.array_equal(epoch0, epoch1)  # reshuffled


def test_same_seed_same_sequence_other_seed_differs(data_dir: Path) -> None:
    a = take(iter(PatchLoader(data_dir, BS, seed=3)), 10)
    assert_same_batches(a, take(iter(PatchLoader(data_dir, BS, seed=3)), 10))
    b = take(iter(PatchLoader(data_dir, BS, seed=4)), 10)
    assert any(not torch.equal(x["hr"], y["hr"]) for x, y in zip(a, b))


# --- resuming -----------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle_groups", [1, 3])
def test_resume_from_state_matches_uninterrupted_run(data_dir: Path, shuffle_groups: int) -> None:
    ref = PatchLoader(data_dir, BS, shuffle_groups=shuffle_groups, seed=7)
    n = ref.batches_per_epoch()
    horizon = 2 * n + 6
    states, batches = [ref.state], []
    for batch in itertools.islice(iter(ref), horizon):
        batches.append(batch)
        states.append(ref.state)
    assert states[n] == LoaderState(1, 0) and states[n + 1] == LoaderState(1, 1)
    for k in sorted({0, 1, 2, 3, n - 1, n, n + 1, 2 * n - 1, 2 * n + 1}):
        resumed = PatchLoader(data_dir, BS, shuffle_groups=shuffle_groups, seed=7, verify=False)
        resumed.state = states[k]
        got = take(iter(resumed), 5)
        assert_same_batches(got, batches[k : k + 5])
        assert resumed.state == states[k + 5]


def test_resume_in_a_later_epoch_needs_no_replay(data_dir: Path) -> None:
    loader = PatchLoader(data_dir, BS, shuffle_groups=2)
    n = loader.batches_per_epoch()
    uninterrupted = take(iter(PatchLoader(data_dir, BS, shuffle_groups=2)), 5 * n + 3)
    loader.state = LoaderState(5, 2)
    assert_same_batches(take(iter(loader), 1), uninterrupted[5 * n + 2 : 5 * n + 3])


# --- sharding across consumers -------------------------------------------------------------


@pytest.mark.parametrize("num_consumers", [2, 3])
def test_consumers_partition_the_row_groups(data_dir: Path, num_consumers: int) -> None:
    for epoch in (0, 1):
        seen: list[set[int]] = []
        for c in range(num_consumers):
            loader = PatchLoader(data_dir, 1, consumer=c, num_consumers=num_consumers, shuffle_groups=2, verify=False)
            loader.state = LoaderState(epoch, 0)
            n = loader.rows_per_epoch(epoch)
            ids = [int(ids_of(b)[0]) for b in take(iter(loader), n)]
            assert len(set(ids)) == n
            seen.append(set(ids))
        assert sum(map(len, seen)) == TOTAL and set().union(*seen) == set(range(TOTAL))  # disjoint, complete
        # Whole row groups: ids of one group (consecutive ranges) never split across consumers.
        starts = np.cumsum([0] + [n for sizes in GROUPS.values() for n in sizes])
        for lo, hi in zip(starts, starts[1:]):
            owners = {c for c, s in enumerate(seen) for i in range(lo, hi) if i in s}
            assert len(owners) == 1


def test_a_consumer_epoch_without_a_full_batch_is_skipped(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"a": [9], "b": [1]})
    # A seed whose epoch 0 gives consumer 0 the 9-row group and epoch 1 the 1-row group.
    probes = {s: PatchLoader(tmp_path, 1, seed=s, num_consumers=2, verify=False) for s in range(50)}
    seed = next(s for s, pr in probes.items() if [pr.rows_per_epoch(e) for e in (0, 1)] == [9, 1])
    later = next(e for e in range(2, 50) if probes[seed].rows_per_epoch(e) == 9)
    loader = PatchLoader(tmp_path, 4, seed=seed, num_consumers=2)
    assert loader.batches_per_epoch(1) == 0
    batches = take(iter(loader), 3)  # two batches of epoch 0, then the first of the next epoch with one
    assert loader.state == LoaderState(later, 1)
    resumed = PatchLoader(tmp_path, 4, seed=seed, num_consumers=2)
    resumed.state = LoaderState(later, 0)
    assert_same_batches(take(iter(resumed), 1), batches[2:])


# --- prefetching and torch ----------------------------------------------------------------


def test_prefetching_yields_the_plain_sequence(data_dir: Path) -> None:
    plain = PatchLoader(data_dir, BS, shuffle_groups=3)
    n = 2 * plain.batches_per_epoch() + 3
    expected = take(iter(plain), n)
    ahead = PatchLoader(data_dir, BS, shuffle_groups=3, verify=False)
    gen = ahead.prefetching(depth=2)
    got = take(gen, n)
    assert_same_batches(got, expected)
    assert ahead.state == plain.state  # the batches handed out, not those decoded ahead
    gen.close()  # type: ignore[attr-defined]
    # Resuming with prefetching continues exactly where the plain loader is.
    again = PatchLoader(data_dir, BS, shuffle_groups=3, verify=False)
    again.state = ahead.state
    assert_same_batches(take(again.prefetching(), 4), take(iter(plain), 4))


@pytest.mark.parametrize(("batch_size", "num_consumers", "start"), [(BS, 1, (0, 0)), (7, 1, (1, 3)), (5, 2, (0, 2))])
def test_resident_batches_equal_the_streamed_ones(
    data_dir: Path, batch_size: int, num_consumers: int, start: tuple[int, int]
) -> None:
    """Same batches and states from the copy held on the device (here the CPU) as from the shards."""
    for consumer in range(num_consumers):
        kw = {"shuffle_groups": 3, "seed": 5, "consumer": consumer, "num_consumers": num_consumers, "verify": False}
        streamed = PatchLoader(data_dir, batch_size, **kw)  # type: ignore[arg-type]
        held = PatchLoader(data_dir, batch_size, fields=("rof", "hr", "theta"), **kw)  # type: ignore[arg-type]
        streamed.state = held.state = LoaderState(*start)
        n = 2 * streamed.batches_per_epoch() + 3  # across windows (carried rows) and epochs
        states = []
        expected = []
        for batch in itertools.islice(iter(streamed), n):
            expected.append({k: batch[k] for k in ("rof", "hr", "theta")})
            states.append(streamed.state)
        got, got_states = [], []
        for batch in itertools.islice(held.resident("cpu"), n):
            got.append(batch)
            got_states.append(held.state)
        assert_same_batches(got, expected)
        assert got_states == states
        assert held.decoded_bytes() == sum(v.numel() * v.element_size() for v in held.decode_all().values())


# --- decoding options and foreign shards ----------------------------------------------------


@pytest.mark.parametrize(("decode_threads", "cache_mb"), [(0, 0), (1, 0), (2, 0), (0, 64)])
def test_decoding_options_do_not_change_the_sequence(data_dir: Path, decode_threads: int, cache_mb: int) -> None:
    reference = PatchLoader(data_dir, BS, shuffle_groups=3)
    n = 2 * reference.batches_per_epoch() + 2
    loader = PatchLoader(data_dir, BS, shuffle_groups=3, decode_threads=decode_threads, cache_mb=cache_mb, verify=False)
    assert_same_batches(take(iter(loader), n), take(iter(reference), n))


def test_a_shard_of_another_layout_is_an_error_naming_it(tmp_path: Path) -> None:
    other = PatchLayout(num_frames=5, channels=1, patch=4, scale=2)
    writer = ShardWriter(tmp_path, "other", other.schema(), 1 << 30)
    n = 8
    cols: dict[str, object] = {"clip": ["o"] * n, "frame": [0] * n, "y": [0] * n, "x": [0] * n}
    for field in other.schema():
        if pa.types.is_fixed_size_binary(field.type):
            cols[field.name] = [bytes(field.type.byte_width)] * n
    writer.write(pa.table(cols, schema=other.schema()))
    write_patch_manifest(tmp_path, LAYOUT, writer.close())  # the manifest claims LAYOUT
    with pytest.raises(InputError, match=r"other-00000.parquet: shard schema does not match"):
        PatchLoader(tmp_path, 2)


def test_zstd_level_changes_the_files_not_the_samples(tmp_path: Path, data_dir: Path) -> None:
    """``patches.zstd_level`` trades file size for decoding speed; the batches are identical."""
    write_dataset(tmp_path, zstd_level=9)
    default = {s["file"]: s for s in read_patch_manifest(data_dir)["shards"]}  # type: ignore[union-attr]
    strong = {s["file"]: s for s in read_patch_manifest(tmp_path)["shards"]}  # type: ignore[union-attr]
    assert default.keys() == strong.keys()
    assert all(default[f]["sha256"] != strong[f]["sha256"] for f in default)
    assert sum(int(s["bytes"]) for s in strong.values()) < sum(int(s["bytes"]) for s in default.values())
    a, b = PatchLoader(data_dir, BS, seed=3), PatchLoader(tmp_path, BS, seed=3)
    for (_, x), (_, y) in zip(itertools.islice(a.iter_batches(LoaderState()), 12), b.iter_batches(LoaderState())):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
