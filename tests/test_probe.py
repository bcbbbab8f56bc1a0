"""The ffmpeg-description parser, pinned by outputs recorded from the pinned binary.

Each case below is a file made by ``media_factory``; ``tests/data/ffmpeg_probe/<case>.txt`` is
the stderr of ``ffmpeg -hide_banner -nostdin -i FILE`` for it (the file's path written ``INPUT``,
pointer addresses ``0x0``) and ``<case>.json`` the fields :func:`parse_description` gives for it
(``{"error": reason}`` where probing refuses the file). The README there names the ffmpeg that
recorded them. After a deliberate change of binary, factory or parser, record again with
``python tests/test_probe.py --record`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import media_factory as mf
import pytest

from tanet.errors import VideoError
from tanet.io.probe import VideoInfo, _ffmpeg_describe, ffmpeg_exe, parse_description, probe

DATA = Path(__file__).parent / "data" / "ffmpeg_probe"
PLACEHOLDER = "INPUT"


def _rotated(folder: Path, rotation: int) -> Path:
    return mf.rotated_mp4(folder / "rotated.mp4", mf.h264_mp4(folder / "plain.mp4", audio=False), rotation)


# case -> makes the file in an empty folder and returns it
CASES: dict[str, Callable[[Path], Path]] = {
    "h264_aac_mp4": lambda d: mf.h264_mp4(d / "clip.mp4"),
    "subtitles_mkv": lambda d: mf.with_subtitles_mkv(d / "subs.mkv"),
    "pcm_audio_mkv": lambda d: mf.pcm_audio_mkv(d / "pcm.mkv"),
    "rotated_90_mp4": lambda d: _rotated(d, 90),
    "rotated_270_mp4": lambda d: _rotated(d, 270),
    "ten_bit_mp4": lambda d: mf.ten_bit_mp4(d / "deep.mp4"),
    "grey_mkv": lambda d: mf.grey_mkv(d / "grey.mkv"),
    "alpha_mov": lambda d: mf.alpha_mov(d / "alpha.mov"),
    "interlaced_mp4": lambda d: mf.interlaced_mp4(d / "interlaced.mp4"),
    "ntsc_mp4": lambda d: mf.h264_mp4(d / "ntsc.mp4", fps=Fraction(30000, 1001), audio=False),
    "vfr_mp4": lambda d: mf.vfr_mp4(d / "vfr.mp4"),
    "anamorphic_mp4": lambda d: mf.anamorphic_mp4(d / "anamorphic.mp4"),
    "colour_tagged_mp4": lambda d: mf.colour_tagged_mp4(d / "colour.mp4"),
    "cover_art_mp4": lambda d: mf.with_cover_art(d / "cover.mp4", mf.h264_mp4(d / "clip.mp4")),
    "cover_art_m4a": lambda d: mf.with_cover_art(d / "cover.m4a", mf.audio_only_m4a(d / "audio.m4a")),
    "frame_count_tag_mkv": lambda d: mf.frame_count_tagged_mkv(d / "counted.mkv"),
    "odd_size_mp4": lambda d: mf.odd_size_mp4(d / "odd.mp4"),
    "corrupt_middle_mp4": lambda d: mf.corrupt_mp4(d / "corrupt.mp4"),
    "cut_faststart_mp4": lambda d: mf.truncated_mp4(d / "cut.mp4", faststart=True),
    "cut_mkv": lambda d: mf.truncated_mkv(d / "cut.mkv"),
    "cut_index_mp4": lambda d: mf.truncated_mp4(d / "cut.mp4"),
    "audio_only_m4a": lambda d: mf.audio_only_m4a(d / "audio.m4a"),
    "text_as_mp4": lambda d: mf.text_as_mp4(d / "text.mp4"),
}


def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version`` of the pinned binary."""
    out = subprocess.run([ffmpeg_exe(), "-version"], check=True, capture_output=True, text=True).stdout
    return out.splitlines()[0]


def describe(path: Path) -> str:
    """ffmpeg's description of ``path`` as recorded: no temporary path, no pointer addresses."""
    text = _ffmpeg_describe(path).replace(str(path.absolute()), PLACEHOLDER)
    return re.sub(r" @ 0x[0-9a-f]+\]", " @ 0x0]", text)


def expected_fields(text: str, path: Path) -> dict[str, Any]:
    """What parse_description gives for a text, as JSON: the VideoInfo fields but the path, or the error."""
    try:
        info = parse_description(text, path)
    except VideoError as err:
        return {"error": err.problem}
    assert isinstance(info, VideoInfo) and info.path == path
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name != "path"}
    return {k: str(v) if isinstance(v, Fraction) else list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def recording(case: str) -> tuple[str, dict[str, Any]]:
    return (DATA / f"{case}.txt").read_text(), json.loads((DATA / f"{case}.json").read_text())


def without_bitrates(text: str) -> str:
    # The only numbers that move with the machine: x264 writes its thread count into the stream.
    return re.sub(r"\d+ kb/s", "N kb/s", text)


SOMEWHERE = Path("/videos/clip.mp4")  # the path the recorded texts are parsed for


# --- the parser over the recordings -------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_parser_gives_the_recorded_fields(case: str) -> None:
    text, expected = recording(case)
    assert expected_fields(text, SOMEWHERE) == expected


def test_recordings_are_the_cases_and_name_this_binary() -> None:
    assert sorted(p.stem for p in DATA.glob("*.txt")) == sorted(p.stem for p in DATA.glob("*.json")) == sorted(CASES)
    assert f"`{ffmpeg_version()}`" in (DATA / "README.md").read_text()  # recorded by the binary in use


def test_recorded_fields_say_what_the_factory_made() -> None:
    # The JSON files came from the parser; these are the facts the factory put in the files.
    fields = {case: recording(case)[1] for case in CASES}
    assert fields["h264_aac_mp4"]["audio_codecs"] == ["aac"] and fields["h264_aac_mp4"]["fps"] == "25"
    assert fields["subtitles_mkv"]["subtitle_codecs"] == ["subrip"]
    assert [fields[f"rotated_{r}_mp4"]["rotation"] for r in (90, 270)] == [90, 270]
    assert (fields["rotated_90_mp4"]["width"], fields["rotated_90_mp4"]["height"]) == (48, 64)
    assert (fields["ten_bit_mp4"]["pix_fmt"], fields["ten_bit_mp4"]["bit_depth"]) == ("yuv420p10le", 10)
    assert fields["grey_mkv"]["is_grey"] and fields["alpha_mov"]["has_alpha"]
    assert fields["interlaced_mp4"]["field_order"] == "top first"
    assert fields["ntsc_mp4"]["fps"] == "30000/1001"
    assert fields["vfr_mp4"]["variable_frame_rate"] is True
    assert fields["anamorphic_mp4"]["sample_aspect_ratio"] == "64/45"
    colour = fields["colour_tagged_mp4"]
    assert [colour[f"color_{k}"] for k in ("range", "space", "primaries", "transfer")] == [
        "tv",
        "bt470bg",
        "smpte170m",
        "bt709",
    ]
    assert (fields["cover_art_mp4"]["codec"], fields["cover_art_mp4"]["stream_index"]) == ("h264", 0)
    assert fields["cover_art_m4a"]["error"] == "no video stream (streams: audio aac, video png)"
    assert fields["frame_count_tag_mkv"]["num_frames"] == mf.FRAMES
    assert (fields["odd_size_mp4"]["width"], fields["odd_size_mp4"]["height"]) == (33, 17)
    assert "moov atom not found" in fields["cut_index_mp4"]["error"]
    assert fields["audio_only_m4a"]["error"] == "no video stream (streams: audio aac)"
    assert fields["text_as_mp4"]["error"].startswith("not a readable video: ")


# --- the real binary against the recordings -----------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_the_binary_still_prints_the_recording(tmp_path: Path, case: str) -> None:
    text, expected = recording(case)
    fresh = describe(CASES[case](tmp_path))
    assert without_bitrates(fresh) == without_bitrates(text)
    assert expected_fields(fresh, SOMEWHERE) == expected


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["audio_only_m4a", "cover_art_m4a", "text_as_mp4", "cut_index_mp4"])
def test_unusable_recordings_raise_one_line_errors_naming_the_file(case: str) -> None:
    text, expected = recording(case)
    with pytest.raises(VideoError) as err:
        parse_description(text, SOMEWHERE)
    assert err.value.path == SOMEWHERE and str(err.value) == f"{SOMEWHERE}: {expected['error']}"
    assert "\n" not in str(err.value) and PLACEHOLDER not in err.value.problem


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("yuv420p(progressive)", "none", "cannot tell the pixel format of h264 stream #0 (damaged?)"),
        ("64x48 [SAR 1:1 DAR 4:3], ", "", "no frame size in the h264 stream description"),
        ("25 fps, 25 tbr, ", "", "ffmpeg reports no frame rate for the video stream"),
    ],
    ids=["pix-fmt", "size", "rate"],
)
def test_stream_lines_lacking_a_field_raise(old: str, new: str, reason: str) -> None:
    text = recording("h264_aac_mp4")[0]
    assert old in text
    with pytest.raises(VideoError, match=re.escape(reason)) as err:
        parse_description(text.replace(old, new, 1), SOMEWHERE)
    assert err.value.path == SOMEWHERE and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.mp4", "file does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: mf.empty_file(d / "empty.mp4"), "file is empty (0 bytes)"),
        (lambda d: mf.text_as_mp4(d / "text.mp4"), "not a readable video: "),
        (lambda d: mf.audio_only_m4a(d / "audio.m4a"), "no video stream (streams: audio aac)"),
    ],
    ids=["missing", "folder", "empty", "text", "audio-only"],
)
def test_probe_errors_are_one_line_and_name_the_file(tmp_path: Path, make: Callable[[Path], Path], reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(VideoError) as err:
        probe(path)
    assert err.value.path == path and str(err.value).startswith(f"{path}: ")
    assert reason in err.value.problem and "\n" not in str(err.value)


def test_probe_is_ffmpeg_then_the_parser(tmp_path: Path) -> None:
    path = mf.frame_count_tagged_mkv(tmp_path / "counted.mkv")
    assert probe(path) == parse_description(_ffmpeg_describe(path), path)
    assert probe(str(path)).path == path


# --- recording --------------------------------------------------------------------------------


def record(folder: Path = DATA) -> None:
    """Writes ``<case>.txt``, ``<case>.json`` and the README naming the ffmpeg that recorded them."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    for case, make in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            text = describe(make(Path(tmp)))
        (folder / f"{case}.txt").write_text(text)
        (folder / f"{case}.json").write_text(json.dumps(expected_fields(text, SOMEWHERE), indent=2) + "\n")
    (folder / "README.md").write_text(
        "# Recorded `ffmpeg -i` descriptions\n\n"
        "The stderr of `ffmpeg -hide_banner -nostdin -i FILE` for the files of `CASES` in\n"
        "`tests/test_probe.py` (made by `tests/media_factory.py`), the file's path written `INPUT`\n"
        "and pointer addresses `0x0`; beside each, the fields `tanet.io.probe.parse_description`\n"
        "gives for it. Recorded with `python tests/test_probe.py --record` by the ffmpeg of the\n"
        "imageio-ffmpeg wheel (`ffmpeg -version`, first line):\n\n"
        f"`{ffmpeg_version()}`\n"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_probe.py --record")
    if Path(sys.modules["tanet"].__file__).resolve().parents[1] != Path(__file__).resolve().parents[1]:
        sys.exit("tanet is imported from another checkout; run with PYTHONPATH=. from the repository root")
    record()
