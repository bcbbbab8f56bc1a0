"""Stages ``degrade``, ``flow`` and ``patches`` on synthetic clips with known motion.

Two training clips are frame folders of a smooth random texture translated by a known
integer number of pixels per frame (a multiple of 4 HR pixels, so every LR set moves by
whole LR pixels); HR sizes are not multiples of the scales, so mod-cropping matters. The
stages run once (module fixture) on the tiny preset, and each test checks one contract:
LR sizes, the flow file layout, exact rectified shifts, the shard schema and checksums,
ROF columns against an independent computation, HR targets, determinism, the per-clip
cap, size-bounded shards, and that a killed or failing ``patches`` run leaves no partial output.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import cv2
import media_factory as mf
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tanet.config import params_from_dict, preset_params
from tanet.data.loader import PatchLoader
from tanet.errors import ConfigError, InputError, TanetError
from tanet.io.checksum import sha256_file
from tanet.io.clips import load_flows, lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb, write_rgb
from tanet.io.shards import (
    SHARDS_MANIFEST,
    PatchLayout,
    ShardWriter,
    read_patch_manifest,
    write_patch_manifest,
)
from tanet.ops.color import rgb_to_y_uint8, to_numpy, to_tensor
from tanet.ops.degrade import Degradation, apply_degradation
from tanet.stages import run_stage
from tanet.stages.parallel import serial_map
from tanet.stages.patches import frame_counts

ROOT = Path(__file__).resolve().parents[1]
HR_W, HR_H, FRAMES = 258, 195, 8  # not multiples of 2 or 4: mod-cropped to 256 x 192 (x4)
MOTION = {"moving": (4, -4), "drifting": (-8, 4)}  # HR pixels per frame (dx, dy): training clips
SETS = [(s, k) for s in (2, 4) for k in ("BI", "BD")]
P, PER_FRAME, ROWS_PER_GROUP = 16, 6, 5


def translated_clip(folder: Path, dx: int, dy: int, seed: int) -> Path:
    """Frames of a smooth random texture whose content moves (dx, dy) HR pixels per frame."""
    rng = np.random.default_rng(seed)
    pad = 8 * max(abs(dx), abs(dy)) + 8
    big = cv2.GaussianBlur(rng.integers(0, 256, (HR_H + 2 * pad, HR_W + 2 * pad, 3)).astype(np.float32), (0, 0), 3)
    big = ((big - big.mean()) / big.std() * 50 + 128).clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True)
    for t in range(FRAMES):
        y0, x0 = pad - dy * t, pad - dx * t
        write_rgb(folder / f"{t:08d}.png", np.ascontiguousarray(big[y0 : y0 + HR_H, x0 : x0 + HR_W]))
    return folder


def params_dict(src: Path, **overrides: Any) -> dict[str, Any]:
    return preset_params(
        "tiny",
        {
            "ingest.embedded": [],
            "ingest.paths": [str(src / n) for n in (*MOTION, "val.mp4")],
            "ingest.val_clips": ["val"],
            "ingest.max_side": 0,
            "degrade.scales": [2, 4],
            "degrade.kinds": ["BI", "BD"],
            "patches.patch_size": P,
            "patches.patches_per_frame": PER_FRAME,
            "patches.rows_per_group": ROWS_PER_GROUP,
            **overrides,
        },
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The four stages, once. Returns the params and the stage folders."""
    base = tmp_path_factory.mktemp("stages")
    src = base / "src"
    for i, (name, (dx, dy)) in enumerate(MOTION.items()):
        translated_clip(src / name, dx, dy, seed=i)
    mf.h264_mp4(src / "val.mp4", audio=False)
    data = params_dict(src)
    p = params_from_dict(data)
    out = base / "out"
    run_stage("ingest", p, root=ROOT, out_dir=out / "clips")
    run_stage("degrade", p, clips_dir=out / "clips", out_dir=out / "lr")
    run_stage("flow", p, clips_dir=out / "clips", lr_dir=out / "lr", out_dir=out / "flow")
    manifest = run_stage(
        "patches", p, clips_dir=out / "clips", lr_dir=out / "lr", flow_dir=out / "flow", out_dir=out / "patches"
    )
    return {
        "params": p,
        "data": data,
        "src": src,
        "base": base,
        "manifest": manifest,
        **{k: out / k for k in ("clips", "lr", "flow", "patches")},
    }


def y_frames(folder: Path) -> np.ndarray:
    """``(F, H, W)`` uint8 Y planes (BT.601, as the stages compute them)."""
    return np.stack(
        [rgb_to_y_uint8(torch.from_numpy(read_rgb(f)).permute(2, 0, 1))[0].numpy() for f in list_frames(folder)]
    )


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fixed(column: pa.ChunkedArray) -> np.ndarray:
    """``(rows, width)`` uint8 of a fixed_size_binary column."""
    return np.frombuffer(b"".join(v.as_py() for v in column), np.uint8).reshape(len(column), column.type.byte_width)


# --- degrade ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "kind"), SETS)
def test_degrade_makes_every_lr_set_at_floor_size(run: dict[str, Any], scale: int, kind: str) -> None:
    clips = {r.clip_id: r for r in read_manifest(run["clips"])}
    assert set(clips) == {*MOTION, "val"}
    for clip_id, rec in clips.items():
        frames = list_frames(run["lr"] / lr_set_name(scale, kind) / clip_id)
        assert len(frames) == rec.frames
        assert read_rgb(frames[0]).shape == (rec.height // scale, rec.width // scale, 3)
    # Values: the LR frame is the degradation of the mod-cropped HR frame.
    hr = read_rgb(list_frames(run["clips"] / "moving")[3])
    lr = read_rgb(list_frames(run["lr"] / lr_set_name(scale, kind) / "moving")[3])
    cropped = hr[: HR_H // scale * scale, : HR_W // scale * scale]
    expected = to_numpy(apply_degradation(to_tensor(cropped), Degradation(kind, scale)))
    np.testing.assert_array_equal(lr, expected)
    summary = json.loads((run["lr"] / "summary.json").read_text())
    assert summary["frames"][lr_set_name(scale, kind)] == sum(r.frames for r in clips.values())


# --- flow -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "kind"), SETS)
def test_flow_files_hold_flows_shifts_and_offsets(run: dict[str, Any], scale: int, kind: str) -> None:
    name = lr_set_name(scale, kind)
    block = run["params"].flow.block
    for rec in read_manifest(run["clips"]):
        f = load_flows(run["flow"] / name / f"{rec.clip_id}.npz")
        h, w = rec.height // scale, rec.width // scale
        assert f["flow"].dtype == np.float16 and f["flow"].shape == (rec.frames, 4, h, w, 2)
        assert f["shifts"].dtype == np.int16 and f["shifts"].shape == (rec.frames, 4, -(-h // block), -(-w // block), 2)
        np.testing.assert_array_equal(f["offsets"], [-2, -1, 1, 2])
        # A neighbour clamped onto the reference itself (clip ends) has zero flow.
        assert not f["flow"][0, :2].any() and not f["flow"][-1, 2:].any()


@pytest.mark.parametrize(("scale", "kind"), SETS)
@pytest.mark.parametrize("clip_id", sorted(MOTION))
def test_known_translation_gives_exact_rectified_shifts(
    run: dict[str, Any], scale: int, kind: str, clip_id: str
) -> None:
    dx, dy = (m // scale for m in MOTION[clip_id])  # LR pixels per frame
    f = load_flows(run["flow"] / lr_set_name(scale, kind) / f"{clip_id}.npz")
    expected = np.zeros_like(f["shifts"])
    for t in range(FRAMES):
        for j, off in enumerate(f["offsets"]):
            steps = min(max(t + int(off), 0), FRAMES - 1) - t  # neighbours clamp at the clip's ends
            expected[t, j, ..., 0], expected[t, j, ..., 1] = steps * dx, steps * dy
    # Exact on every block at least half a block high and wide; the 1-pixel slivers that odd
    # LR sizes leave (129 x 97 at x2) average only pixels whose content entered the frame.
    block = int(f["block"])
    h, w = f["flow"].shape[2:4]
    tall = np.minimum(block, h - np.arange(expected.shape[2]) * block) >= block // 2
    wide = np.minimum(block, w - np.arange(expected.shape[3]) * block) >= block // 2
    solid = tall[:, None] & wide[None, :]
    assert solid.sum() >= 4
    np.testing.assert_array_equal(f["shifts"][:, :, solid], expected[:, :, solid])
    assert np.abs(f["shifts"][:, :, ~solid] - expected[:, :, ~solid]).max(initial=0) <= 2


def test_torn_flow_file_fails_patches_naming_the_clip(run: dict[str, Any], tmp_path: Path) -> None:
    flow = tmp_path / "flow"
    shutil.copytree(run["flow"], flow)
    torn = flow / "x4_BI" / "drifting.npz"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    with pytest.raises(InputError, match="drifting.npz: cannot read flow file"):
        load_flows(torn)
    out = tmp_path / "patches"
    with pytest.raises(TanetError, match=r"patches: clip drifting failed: .*drifting.npz: cannot read flow file"):
        run_stage("patches", run["params"], clips_dir=run["clips"], lr_dir=run["lr"], flow_dir=flow, out_dir=out)
    assert not out.exists() and hidden(tmp_path) == []


# --- patches: format -----------------------------------------------------------------------------


def test_shard_schema_compression_and_row_groups(run: dict[str, Any]) -> None:
    m = run["manifest"]
    layout = PatchLayout(5, 1, P, 4)
    assert (m["num_frames"], m["channels"], m["patch_size"], m["scale"], m["lr_set"]) == (5, 1, P, 4, "x4_BI")
    per_clip = 4 * PER_FRAME  # reference frames 2..5 of 8 have a full window
    assert m["clips"] == {"moving": per_clip, "drifting": per_clip} and m["rows"] == 2 * per_clip
    assert sorted(s["file"] for s in m["shards"]) == ["drifting-00000.parquet", "moving-00000.parquet"]
    for rec in m["shards"]:
        pf = pq.ParquetFile(run["patches"] / rec["file"])
        schema = pf.schema_arrow
        assert schema.equals(layout.schema())
        names = [f"lr_{k}" for k in range(5)] + [f"rof_{k}" for k in (0, 1, 3, 4)]
        for name in names:
            assert schema.field(name).type == pa.binary(P * P)
        assert schema.field("hr").type == pa.binary((4 * P) ** 2) and schema.field("shift").type == pa.binary(8)
        meta = pf.metadata
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert groups == [5, 5, 5, 5, 4] and rec["row_groups"] == 5 and rec["rows"] == per_clip
        chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
        assert {chunk.compression for chunk in chunks} == {"ZSTD"}
        path = run["patches"] / rec["file"]
        assert rec["sha256"] == sha256_file(path) and rec["bytes"] == path.stat().st_size
    assert sorted(p.name for p in run["patches"].iterdir()) == sorted(
        [SHARDS_MANIFEST] + [s["file"] for s in m["shards"]]
    )
    assert read_patch_manifest(run["patches"]) == json.loads(json.dumps(m))


@pytest.mark.parametrize("clip_id", sorted(MOTION))
def test_rows_match_an_independent_rof_computation(run: dict[str, Any], clip_id: str) -> None:
    r, c = 4, 2
    lr = y_frames(run["lr"] / "x4_BI" / clip_id)  # (F, h, w)
    f, h, w = lr.shape
    flows = load_flows(run["flow"] / "x4_BI" / f"{clip_id}.npz")["flow"].astype(np.float64)
    hr_files = list_frames(run["clips"] / clip_id)
    table = pq.read_table(run["patches"] / f"{clip_id}-00000.parquet")
    rows = table.to_pydict()
    shift = fixed(table.column("shift")).view(np.int8).reshape(-1, 4, 2)
    lr_cols = {k: fixed(table.column(f"lr_{k}")).reshape(-1, P, P) for k in range(5)}
    rof_cols = {k: fixed(table.column(f"rof_{k}")).reshape(-1, P, P) for k in (0, 1, 3, 4)}
    hr_col = fixed(table.column("hr")).reshape(-1, r * P, r * P)
    dx_true, dy_true = (m // r for m in MOTION[clip_id])
    interior = 0
    for i, (t, y, x) in enumerate(zip(rows["frame"], rows["y"], rows["x"])):
        assert rows["clip"][i] == clip_id and 2 <= t < f - 2 and 0 <= y <= h - P and 0 <= x <= w - P
        for j, k in enumerate((0, 1, 3, 4)):
            src = lr[t + k - c]
            np.testing.assert_array_equal(lr_cols[k][i], src[y : y + P, x : x + P])
            # theta_hat: the patch's mean flow, each component rounded half away from zero.
            mean = flows[t, j, y : y + P, x : x + P].reshape(-1, 2).mean(0)
            sx, sy = (np.sign(mean) * np.floor(np.abs(mean) + 0.5)).astype(int)
            assert (shift[i, j, 0], shift[i, j, 1]) == (sx, sy)
            assert (sx, sy) == ((k - c) * dx_true, (k - c) * dy_true)  # the known motion
            # ROF: an integer copy of the neighbour shifted by theta_hat, edges replicated.
            ys = np.clip(np.arange(y + sy, y + sy + P), 0, h - 1)
            xs = np.clip(np.arange(x + sx, x + sx + P), 0, w - 1)
            np.testing.assert_array_equal(rof_cols[k][i], src[np.ix_(ys, xs)])
        np.testing.assert_array_equal(lr_cols[c][i], lr[t, y : y + P, x : x + P])
        # Pure translation: away from the borders the aligned neighbours equal the reference.
        if all(
            3 <= y + (k - c) * dy_true
            and y + (k - c) * dy_true + P <= h - 3
            and 3 <= x + (k - c) * dx_true
            and x + (k - c) * dx_true + P <= w - 3
            for k in range(5)
        ):
            interior += 1
            for k in (0, 1, 3, 4):
                np.testing.assert_array_equal(rof_cols[k][i], lr_cols[c][i])
        # HR target: the mod-cropped HR frame's Y at (r*y, r*x).
        hr = read_rgb(hr_files[t])[: h * r, : w * r]
        hr_y = rgb_to_y_uint8(torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1))[0].numpy()
        np.testing.assert_array_equal(hr_col[i], hr_y[r * y : r * (y + P), r * x : r * (x + P)])
    assert interior > 0


# --- patches: determinism and bounds ---------------------------------------------------------------


def test_same_seed_is_byte_identical_other_seed_differs(run: dict[str, Any], tmp_path: Path) -> None:
    p = run["params"]
    run_stage("patches", p, clips_dir=run["clips"], lr_dir=run["lr"], flow_dir=run["flow"], out_dir=tmp_path / "again")
    assert tree_bytes(tmp_path / "again") == tree_bytes(run["patches"])
    other = params_from_dict({**run["data"], "patches": {**run["data"]["patches"], "seed": 1}})
    m = run_stage(
        "patches", other, clips_dir=run["clips"], lr_dir=run["lr"], flow_dir=run["flow"], out_dir=tmp_path / "seed1"
    )
    assert {s["file"] for s in m["shards"]} == {s["file"] for s in run["manifest"]["shards"]}
    for rec in m["shards"]:
        assert (tmp_path / "seed1" / rec["file"]).read_bytes() != (run["patches"] / rec["file"]).read_bytes()


@pytest.mark.parametrize(
    ("frames", "per_frame", "cap", "want"),
    [
        (4, 6, 0, [6, 6, 6, 6]),  # no cap
        (4, 6, 24, [6, 6, 6, 6]),  # the cap is the uncapped total: not binding
        (4, 6, 10, [2, 3, 2, 3]),  # 10 spread over all four frames
        (5, 64, 3, [0, 1, 0, 1, 1]),  # fewer than one per frame: spread, not the first three
        (0, 6, 10, []),
    ],
)
def test_frame_counts_spread_a_capped_clip_over_all_its_frames(
    frames: int, per_frame: int, cap: int, want: list[int]
) -> None:
    got = frame_counts(frames, per_frame, cap)
    assert got == want
    assert sum(got) == (min(cap, frames * per_frame) if cap else frames * per_frame)


def test_max_patches_per_clip_caps_every_clip_across_its_frames(run: dict[str, Any], tmp_path: Path) -> None:
    def patches_with_cap(cap: int, out: Path) -> dict[str, Any]:
        capped = params_from_dict({**run["data"], "patches": {**run["data"]["patches"], "max_patches_per_clip": cap}})
        return run_stage("patches", capped, clips_dir=run["clips"], lr_dir=run["lr"], flow_dir=run["flow"], out_dir=out)

    uncapped = run["manifest"]["clips"]
    m = patches_with_cap(10, tmp_path / "capped")
    assert m["clips"] == {clip: 10 for clip in uncapped} and m["rows"] == 10 * len(uncapped)
    for clip in uncapped:
        frames = pq.read_table(tmp_path / "capped" / f"{clip}-00000.parquet", columns=["frame"]).column("frame")
        assert sorted(collections.Counter(frames.to_pylist()).items()) == [(2, 2), (3, 3), (4, 2), (5, 3)]
    # Fewer samples than reference frames: the frames left without one are skipped.
    m = patches_with_cap(3, tmp_path / "sparse")
    assert m["clips"] == {clip: 3 for clip in uncapped}
    for clip in uncapped:
        frames = pq.read_table(tmp_path / "sparse" / f"{clip}-00000.parquet", columns=["frame"]).column("frame")
        assert frames.to_pylist() == [3, 4, 5]
    # A cap at the uncapped size changes nothing, to the byte.
    patches_with_cap(max(uncapped.values()), tmp_path / "loose")
    assert tree_bytes(tmp_path / "loose") == tree_bytes(run["patches"])
    with pytest.raises(ConfigError, match="max_patches_per_clip"):
        patches_with_cap(-1, tmp_path / "bad")


def test_shards_stay_within_the_size_bound(run: dict[str, Any], tmp_path: Path) -> None:
    # max_shard_mb is a whole number of MiB; the writer itself takes bytes, so bound it directly.
    table = pq.read_table(run["patches"] / "moving-00000.parquet")
    layout = PatchLayout(5, 1, P, 4)
    probe = ShardWriter(tmp_path, "probe", layout.schema(), 1 << 30)
    probe.write(table.slice(0, ROWS_PER_GROUP))
    group_bytes = int(probe.close()[0]["bytes"])
    bound = int(2.6 * group_bytes)
    out = tmp_path / "bounded"
    out.mkdir()
    writer = ShardWriter(out, "moving", layout.schema(), bound)
    for start in range(0, table.num_rows, ROWS_PER_GROUP):
        writer.write(table.slice(start, ROWS_PER_GROUP))
    shards = writer.close()
    assert len(shards) >= 2 and sum(int(s["rows"]) for s in shards) == table.num_rows
    for s in shards:
        assert int(s["bytes"]) <= bound and (out / str(s["file"])).stat().st_size == int(s["bytes"])
    assert all(int(s["row_groups"]) >= 2 for s in shards[:-1])  # filled, not one group per shard
    # The bounded shards are a valid dataset with the same rows.
    write_patch_manifest(out, layout, shards)
    loader = PatchLoader(out, 1, shuffle_groups=3)
    it = iter(loader)
    seen = sorted(next(it)["hr"].numpy().tobytes() for _ in range(table.num_rows))
    assert seen == sorted(row.tobytes() for row in fixed(table.column("hr")))
    assert hidden(out) == []


# --- patches: crashes leave complete output or none -----------------------------------------------


def test_failing_mapper_keeps_the_previous_output(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "patches"
    shutil.copytree(run["patches"], out)
    before = tree_bytes(out)

    def crash_after_first(fn: Any, items: Any, names: Any = None) -> list[Any]:
        first = serial_map(fn, items[:1])
        assert not isinstance(first[0], BaseException)
        raise KeyboardInterrupt("interrupted after the first clip")

    with pytest.raises(KeyboardInterrupt):
        run_stage(
            "patches",
            run["params"],
            clips_dir=run["clips"],
            lr_dir=run["lr"],
            flow_dir=run["flow"],
            out_dir=out,
            mapper=crash_after_first,
        )
    assert tree_bytes(out) == before and hidden(tmp_path) == []


KILLED_RUN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from tanet.config import params_from_dict
    from tanet.stages import run_stage

    cfg = json.loads(sys.argv[1])

    def slow(fn, items, names=None):
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if i == 0:  # the first clip's shards are complete in the temporary folder
                Path(cfg["marker"]).touch()
                time.sleep(120)
        return out

    paths = {k: Path(cfg[k]) for k in ("clips", "lr", "flow", "out")}
    run_stage(
        "patches",
        params_from_dict(cfg["params"]),
        clips_dir=paths["clips"],
        lr_dir=paths["lr"],
        flow_dir=paths["flow"],
        out_dir=paths["out"],
        mapper=slow,
    )
""")


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "fresh"])
def test_sigkill_mid_write_leaves_previous_or_nothing(run: dict[str, Any], tmp_path: Path, previous: bool) -> None:
    out = tmp_path / "patches"
    if previous:
        shutil.copytree(run["patches"], out)
    before = tree_bytes(out) if previous else None
    marker = tmp_path / "first-clip-done"
    cfg = {
        "params": run["data"],
        "marker": str(marker),
        "out": str(out),
        **{k: str(run[k]) for k in ("clips", "lr", "flow")},
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the patches subprocess never finished its first clip"
            time.sleep(0.05)
        partial = [d for d in tmp_path.iterdir() if d.name.startswith(".patches.") and d.is_dir()]
        assert len(partial) == 1 and list(partial[0].glob("*.parquet"))  # mid-write: a shard exists
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if previous:
        assert tree_bytes(out) == before  # the previous complete output, untouched
    else:
        assert not out.exists()  # no output at all, never a partial folder under the final name
    # A re-run writes complete, verified shards and removes the killed run's hidden
    # temporary folder (its name carries the dead writer's pid and start time).
    manifest = run_stage(
        "patches", run["params"], clips_dir=run["clips"], lr_dir=run["lr"], flow_dir=run["flow"], out_dir=out
    )
    assert not [d.name for d in tmp_path.iterdir() if d.name.startswith(".patches.")]
    assert tree_bytes(out) == tree_bytes(run["patches"])
    PatchLoader(out, 4)  # verifies every shard's sha256
    assert manifest["rows"] == run["manifest"]["rows"]


# --- patches: torn shards -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_torn_shard_is_detected_by_the_loader(run: dict[str, Any], tmp_path: Path, damage: str) -> None:
    out = tmp_path / "patches"
    shutil.copytree(run["patches"], out)
    shard = out / "moving-00000.parquet"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) * 2 // 3]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    message = "shard listed in the manifest is missing" if damage == "delete" else "shard checksum mismatch"
    with pytest.raises(InputError, match=rf"{shard}: {message}"):
        PatchLoader(out, 4)
    if damage == "truncate":  # even unverified, a cut-off shard is an error naming it
        with pytest.raises(InputError, match=rf"{shard}: not a readable Parquet shard"):
            PatchLoader(out, 4, verify=False)


def test_clips_at_ingests_minimum_size_pass_every_data_stage(tmp_path: Path) -> None:
    """The smallest clip ingest keeps (8 LR px at the largest scale, thin strips too) is
    accepted by degrade, flow and patches: no stage has a stricter minimum than ingest."""
    from tanet.stages.ingest import MIN_LR_SIDE

    src = tmp_path / "src"
    side = MIN_LR_SIDE * 4
    for name, size in {"square": (side, side), "strip": (16 * side, side), "column": (side, 8 * side)}.items():
        mf.frame_folder(src / name, frames=6, size=size)
    translated_clip(src / "moving", 4, -4, seed=0)
    data = params_dict(src)
    data["ingest"]["paths"] = [str(src / n) for n in ("square", "strip", "column", "moving")]
    data["ingest"]["val_clips"] = ["square"]
    p = params_from_dict(data)
    out = tmp_path / "out"
    records = run_stage("ingest", p, root=ROOT, out_dir=out / "clips")
    assert sorted(r.clip_id for r in records) == ["column", "moving", "square", "strip"]
    run_stage("degrade", p, clips_dir=out / "clips", out_dir=out / "lr")
    run_stage("flow", p, clips_dir=out / "clips", lr_dir=out / "lr", out_dir=out / "flow")
    lr_hw = {"square": (8, 8), "strip": (8, 128), "column": (64, 8)}  # x4 LR (h, w)
    for clip, hw in lr_hw.items():
        flows = load_flows(out / "flow" / "x4_BI" / f"{clip}.npz")["flow"]
        assert flows.shape[-3:] == (*hw, 2) and np.isfinite(flows).all(), (clip, flows.shape)
    manifest = run_stage(
        "patches", p, clips_dir=out / "clips", lr_dir=out / "lr", flow_dir=out / "flow", out_dir=out / "patches"
    )
    assert manifest["rows"] > 0
