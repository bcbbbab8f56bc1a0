"""Tiny synthetic test media, made with the ffmpeg binary of the imageio-ffmpeg wheel.

Every function takes the output path, writes the file (or folder) and returns the path.
Content comes from lavfi sources (``testsrc2`` pictures, ``sine`` tones), so nothing is
downloaded and every file is a few kilobytes. Damaged files are derived from good ones
deterministically (fixed garbage, fixed cut points), so failures are reproducible.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

from tanet.io.probe import ffmpeg_exe

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the repo: real data, when present

SIZE = (64, 48)  # (width, height) of the default clips
FRAMES = 12  # frames of the default clips
X264 = ("-c:v", "libx264", "-preset", "ultrafast")  # fast enough to keep the tests quick


def ffmpeg(*args: str) -> None:
    """Runs ffmpeg quietly; raises with its stderr if it fails."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def _testsrc(size: tuple[int, int] = SIZE, fps: Fraction | int | str = 25, source: str = "testsrc2") -> list[str]:
    return ["-f", "lavfi", "-i", f"{source}=size={size[0]}x{size[1]}:rate={Fraction(fps)}"]


def interlaced_mp4(path: Path, *, size: tuple[int, int] = SIZE, frames: int = FRAMES) -> Path:
    """H.264 coded interlaced (top field first), as broadcast and camcorder footage is."""
    ffmpeg(
        *_testsrc(size, 25), "-frames:v", str(frames), *X264, "-pix_fmt", "yuv420p",
        "-flags", "+ilme+ildct", "-x264-params", "tff=1", "-field_order", "tt", str(path),
    )  # fmt: skip
    return path


def h264_mp4(
    path: Path,
    *,
    size: tuple[int, int] = SIZE,
    frames: int = FRAMES,
    fps: Fraction | int | str = 25,
    audio: bool = True,
    faststart: bool = False,
    gop: int | None = None,
) -> Path:
    """H.264 yuv420p mp4 with an AAC tone as long as the video (``frames / fps`` s)."""
    args = _testsrc(size, fps)
    if audio:
        seconds = float(frames / Fraction(fps))
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    args += ["-frames:v", str(frames), *X264, "-pix_fmt", "yuv420p"]
    if gop is not None:
        args += ["-g", str(gop)]
    if audio:
        args += ["-c:a", "aac"]
    if faststart:
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, str(path))
    return path


def odd_size_mp4(path: Path, size: tuple[int, int] = (33, 17)) -> Path:
    """H.264 at an odd size; x264 only takes odd sizes in 4:4:4, so yuv444p.

    testsrc2 rounds odd sizes down to even ones, so a larger picture is cropped.
    """
    crop = f"format=yuv444p,crop={size[0]}:{size[1]}:0:0"
    source = _testsrc((size[0] + 1, size[1] + 1))
    ffmpeg(*source, "-frames:v", "5", "-vf", crop, *X264, "-pix_fmt", "yuv444p", str(path))
    return path


def ten_bit_mp4(path: Path) -> Path:
    """10-bit H.264 (``yuv420p10le``; this build's x264 has high bit depth)."""
    ffmpeg(*_testsrc(), "-frames:v", "5", "-c:v", "libx264", "-pix_fmt", "yuv420p10le", str(path))
    return path


def alpha_mov(path: Path) -> Path:
    """QuickTime Animation (qtrle) with an ``argb`` alpha channel, in .mov."""
    ffmpeg(*_testsrc(), "-frames:v", "5", "-vf", "format=argb", "-c:v", "qtrle", str(path))
    return path


def grey_mkv(path: Path) -> Path:
    """FFV1 ``gray`` (luma only) in .mkv."""
    ffmpeg(*_testsrc(), "-frames:v", "5", "-vf", "format=gray", "-c:v", "ffv1", str(path))
    return path


def rotated_mp4(path: Path, source: Path, rotation: int = 90) -> Path:
    """A stream-copy remux of ``source`` whose display matrix asks for ``rotation``
    degrees clockwise.

    ``-display_rotation`` is an input option in counter-clockwise degrees, hence the
    minus. ``-metadata:s:v rotate=90`` is silently ignored by this ffmpeg.
    """
    ffmpeg("-display_rotation", str(-rotation), "-i", str(source), "-c", "copy", str(path))
    return path


def one_pixel_mp4(path: Path) -> Path:
    """A 1x1 video (yuv444p: 4:2:0 needs even sizes; testsrc2 refuses 1x1, so ``color``)."""
    color = ("-f", "lavfi", "-i", "color=c=0x3366CC:size=1x1:rate=25")
    ffmpeg(*color, "-frames:v", "5", *X264, "-pix_fmt", "yuv444p", str(path))
    return path


def vfr_mp4(path: Path) -> Path:
    """Variable frame rate: frame durations alternate 1/25 s and 3/25 s."""
    retime = ("-vf", "setpts=N/TB/25+floor(N/2)*2/TB/25", "-fps_mode", "vfr")
    ffmpeg(*_testsrc(), "-frames:v", "12", *retime, *X264, str(path))
    return path


def anamorphic_mp4(path: Path, sar: Fraction = Fraction(64, 45)) -> Path:
    """H.264 with non-square pixels: the stored 64x48 shown ``sar`` times wider (PAL 16:9 is 64:45)."""
    ffmpeg(*_testsrc(), "-frames:v", "5", "-vf", f"setsar={sar.numerator}/{sar.denominator}", *X264, str(path))
    return path


def colour_tagged_mp4(
    path: Path, space: str = "bt470bg", primaries: str = "smpte170m", transfer: str = "bt709"
) -> Path:
    """H.264 tagged limited range with these matrix/primaries/transfer (distinct ones by default).

    The tags are set on the frames (``setparams``): this ffmpeg's ``-color_primaries`` and
    ``-color_trc`` output options leave the libx264 stream's primaries and transfer unknown.
    """
    tags = f"setparams=range=tv:colorspace={space}:color_primaries={primaries}:color_trc={transfer}"
    ffmpeg(*_testsrc(), "-frames:v", "5", "-vf", f"{tags},format=yuv420p", *X264, str(path))
    return path


def with_cover_art(path: Path, source: Path) -> Path:
    """A stream-copy remux of ``source`` with a PNG cover picture (``attached_pic``), mapped first;
    the mp4 muxer stores it as the last stream all the same."""
    cover = path.with_suffix(".cover.png")
    ffmpeg(*_testsrc(), "-frames:v", "1", "-update", "1", str(cover))
    streams = ("-map", "1", "-map", "0", "-c", "copy", "-disposition:0", "attached_pic")
    ffmpeg("-i", str(source), "-i", str(cover), *streams, str(path))
    cover.unlink()
    return path


def frame_count_tagged_mkv(path: Path, frames: int = FRAMES) -> Path:
    """H.264 in .mkv with the ``NUMBER_OF_FRAMES-eng`` statistics tag as mkvmerge writes it."""
    tag = ("-metadata:s:v:0", f"NUMBER_OF_FRAMES-eng={frames}")
    ffmpeg(*_testsrc(), "-frames:v", str(frames), *X264, *tag, str(path))
    return path


def long_clip_mp4(path: Path, *, frames: int = 300, size: tuple[int, int] = (320, 240)) -> Path:
    """A longer clip (default 300 frames, 69 MB decoded) for the constant-memory test."""
    ffmpeg(*_testsrc(size), "-frames:v", str(frames), *X264, "-pix_fmt", "yuv420p", str(path))
    return path


def with_subtitles_mkv(path: Path) -> Path:
    """H.264 + AAC + one SubRip subtitle track, in .mkv."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:00,400\nHello\n\n")
    seconds = FRAMES / 25
    inputs = (*_testsrc(), "-f", "lavfi", "-i", f"sine=duration={seconds}", "-i", str(srt))
    maps = ("-map", "0:v", "-map", "1:a", "-map", "2:s")
    ffmpeg(*inputs, *maps, "-frames:v", str(FRAMES), *X264, "-c:a", "aac", "-c:s", "srt", str(path))
    srt.unlink()
    return path


def pcm_audio_mkv(path: Path) -> Path:
    """H.264 + 16-bit PCM audio in .mkv (PCM cannot be stream-copied into .m4v)."""
    seconds = FRAMES / 25
    inputs = (*_testsrc(), "-f", "lavfi", "-i", f"sine=duration={seconds}")
    ffmpeg(*inputs, "-frames:v", str(FRAMES), *X264, "-c:a", "pcm_s16le", str(path))
    return path


def audio_only_m4a(path: Path) -> Path:
    """AAC audio with no video stream."""
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(path))
    return path


def corrupt_mp4(path: Path) -> Path:
    """A real mp4 (index first) with a quarter of its bytes, from the middle on, overwritten.

    The header stays intact, so :func:`tanet.io.probe.probe` succeeds and the damage only
    shows while decoding.
    """
    h264_mp4(path, frames=25, audio=False, faststart=True, gop=5)
    data = bytearray(path.read_bytes())
    start, length = len(data) // 2, len(data) // 4
    data[start : start + length] = bytes((i * 151 + 7) % 256 for i in range(length))
    path.write_bytes(bytes(data))
    return path


def truncated_mp4(path: Path, *, faststart: bool = False) -> Path:
    """A real mp4 cut to half its size.

    Without ``faststart`` the index (moov atom) is at the end and is lost, so the file
    cannot even be opened; with it, the index promises frames whose data is gone.
    """
    h264_mp4(path, frames=25, audio=False, faststart=faststart, gop=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_mkv(path: Path) -> Path:
    """A Matroska file cut to 60 % of its size.

    The Matroska demuxer drops the incomplete block and only logs "File ended
    prematurely": ffmpeg then exits 0 even with ``-xerror``, having decoded fewer frames.
    """
    ffmpeg(*_testsrc(), "-frames:v", "25", *X264, "-g", "5", str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def empty_file(path: Path) -> Path:
    """A 0-byte file."""
    path.write_bytes(b"")
    return path


def text_as_mp4(path: Path) -> Path:
    """A text file with a video suffix."""
    path.write_text("This is not a video, only text with an .mp4 name.\n")
    return path


def frame_folder(path: Path, *, frames: int = 5, size: tuple[int, int] = (32, 24)) -> Path:
    """A folder of PNG frames ``00000000.png``, ``00000001.png``, ..."""
    path.mkdir(parents=True, exist_ok=True)
    ffmpeg(*_testsrc(size), "-frames:v", str(frames), "-start_number", "0", str(path / "%08d.png"))
    return path


def frame_folder_missing(path: Path) -> Path:
    """A frame folder whose frame ``00000002.png`` is missing."""
    frame_folder(path)
    (path / "00000002.png").unlink()
    return path


def frame_folder_unreadable(path: Path) -> Path:
    """A frame folder whose frame ``00000003.png`` holds garbage bytes."""
    frame_folder(path)
    (path / "00000003.png").write_bytes(bytes(range(256)) * 4)
    return path


def frame_folder_mixed_sizes(path: Path) -> Path:
    """A frame folder whose frame ``00000004.png`` is larger than the others."""
    frame_folder(path)
    ffmpeg(*_testsrc((40, 24)), "-frames:v", "1", "-update", "1", str(path / "00000004.png"))
    return path
