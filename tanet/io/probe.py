"""Probing a video with the ``ffmpeg`` binary alone: its human-readable stream description parsed.

The imageio-ffmpeg wheel ships ffmpeg without ffprobe, so :func:`probe` runs ``ffmpeg -i FILE``
and :func:`parse_description` (pure: text in, :class:`VideoInfo` out) parses what it prints on
stderr (stream line, duration, rotation, field order, frame count tags); :func:`count_frames`
demuxes the stream when the container does not say. The parser is pinned by tests over outputs
recorded from the pinned binary (``tests/data/ffmpeg_probe``, ``tests/test_probe.py``).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, cast

from tanet.errors import VideoError

STDERR_TAIL_LINES = 40  # lines of ffmpeg's stderr kept for error messages


_PROBE_TIMEOUT_S = 60


# Demuxer messages that mean the input is cut off or damaged even though ffmpeg may
# still exit 0 (mov: "partial file"; matroska: "File ended prematurely").
_DAMAGE = re.compile(
    r"partial file|ended prematurely|truncat|moov atom not found|invalid data found|corrupt",
    re.IGNORECASE,
)


@functools.cache
def ffmpeg_exe() -> str:
    """Returns the path of the ffmpeg binary shipped by the ``imageio-ffmpeg`` wheel."""
    # Imported here (as ffmpeg-python below): frame folders are read without either, on
    # training hosts that have neither.
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a video (or what a frame folder holds)."""

    path: Path  # the file (or frame folder) described
    width: int  # display width: stored width, or stored height when rotated by +-90
    height: int  # display height, likewise swapped for +-90 rotations
    fps: Fraction  # frame rate, NTSC rates snapped to n*1000/1001 (see _parse_rate)
    num_frames: int | None  # frame count when the container says; see count_frames()
    duration: float | None  # container duration in seconds (longest stream), if known
    codec: str  # video codec name as ffmpeg prints it ("h264", "ffv1", "png", ...)
    pix_fmt: str  # stored pixel format ("yuv420p", "yuv420p10le", "argb", "gray", ...)
    bit_depth: int  # bits per sample derived from pix_fmt (8, 10, 12, 16)
    has_alpha: bool  # pix_fmt carries an alpha plane (dropped by the reader)
    is_grey: bool  # pix_fmt is luma only (replicated to RGB by the reader)
    rotation: int  # clockwise degrees applied for display (0/90/180/270); ffmpeg prints
    # the matrix angle counter-clockwise: "rotation of -90.00 degrees" is rotation 90
    has_audio: bool  # the file has at least one audio stream
    has_subtitles: bool  # the file has at least one subtitle stream
    color_range: str | None  # "tv" (limited) or "pc" (full); None when untagged
    color_space: str | None  # matrix coefficients ("bt709", "smpte170m", ...)
    color_primaries: str | None  # colour primaries ("bt709", "bt470bg", ...)
    color_transfer: str | None  # transfer characteristics ("bt709", "smpte2084", ...)
    sample_aspect_ratio: Fraction = Fraction(1)  # pixel shape; 1 for square pixels
    variable_frame_rate: bool | None = None  # heuristic: average rate != base rate
    stream_index: int = 0  # index of the decoded video stream in the file
    audio_codecs: tuple[str, ...] = ()  # codec of each audio stream, in file order
    subtitle_codecs: tuple[str, ...] = ()  # codec of each subtitle stream, in file order
    field_order: str | None = None  # "top first", "bottom first", ... for interlaced video; None: progressive/unknown

    @property
    def color(self) -> dict[str, str | None]:
        """The colour tags as the ``color`` argument of :class:`VideoWriter` takes them."""
        return {
            "range": self.color_range,
            "space": self.color_space,
            "primaries": self.color_primaries,
            "transfer": self.color_transfer,
        }


_STREAM = re.compile(
    r"^(?P<indent>\s*)Stream #0:(?P<index>\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: "
    r"(?P<kind>Video|Audio|Subtitle|Data|Attachment): (?P<desc>.*)$"
)


_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


_ROTATION = re.compile(r"display\s*matrix:\s*rotation of (-?[\d.]+) degrees", re.IGNORECASE)


_NUMBER_OF_FRAMES = re.compile(r"^\s*NUMBER_OF_FRAMES(?:-\w+)?\s*:\s*(\d+)\s*$", re.MULTILINE)


_FIELD_ORDERS = ("progressive", "top first", "bottom first", "top coded first", "bottom coded first")


class _Stream(NamedTuple):
    """One stream of ffmpeg's description of input #0."""

    index: int  # type: ignore[assignment]  # the N of "Stream #0:N"; mypy objects to a field shadowing tuple.index
    kind: str  # "Video", "Audio", "Subtitle", "Data" or "Attachment"
    desc: str  # the text after "Video: " ("h264 (High), yuv420p(progressive), 64x48, ...")
    extra: str  # indented lines below it: metadata and side data (display matrix)

    @property
    def codec(self) -> str:
        return self.desc.split(",")[0].split(" ")[0]


def probe(path: str | Path) -> VideoInfo:
    """Describes a video file from the stderr of ``ffmpeg -hide_banner -i PATH``.

    Without an output file ffmpeg exits 1 ("At least one output file must be
    specified"); that is expected and the description above it is parsed by
    :func:`parse_description`.

    Args:
        path: video file.

    Returns:
        The description of its first video stream (see :func:`parse_description`).

    Raises:
        VideoError: the file is missing, empty, not a video, damaged in its header, or
            has no video stream; the message names the file and gives a one-line reason.
    """
    path = Path(path)
    return parse_description(_ffmpeg_describe(path), path)


def parse_description(text: str, path: str | Path) -> VideoInfo:
    """Parses what ``ffmpeg -i PATH`` prints on stderr into a :class:`VideoInfo`; reads no file.

    The first video stream that is not an attached picture (cover art) is described.
    ``fps`` is the average rate ffmpeg prints ("29.97 fps"), else its base rate ("29.97
    tbr"), made exact by :func:`_parse_rate`. The average is preferred because N frames
    written at it last as long as the source, which keeps copied audio in sync even for
    variable-rate sources; the two differ only for such sources (``variable_frame_rate``).

    Args:
        text: ffmpeg's stderr for the file.
        path: the file it describes (for ``VideoInfo.path`` and error messages).

    Returns:
        The stream description. ``num_frames`` is None unless the container states it
        (mkvmerge's ``NUMBER_OF_FRAMES`` tag); use :func:`count_frames` when needed.

    Raises:
        VideoError: the text describes no input (ffmpeg could not open the file), no video
            stream, or a stream without pixel format, size or rate; one-line reason.
    """
    path = Path(path)
    if "Input #0" not in text:
        raise VideoError(path, f"not a readable video: {_one_line_reason(text)}")
    streams = _streams(text)
    video = next((s for s in streams if s.kind == "Video" and "(attached pic)" not in s.desc), None)
    if video is None:
        kinds = ", ".join(f"{s.kind.lower()} {s.codec}" for s in streams) or "none"
        raise VideoError(path, f"no video stream (streams: {kinds})")
    fields = _split_top_level(video.desc)
    pix_fmt, color = _parse_pix_fmt(fields[1] if len(fields) > 1 else "none")
    if pix_fmt == "none":
        raise VideoError(path, f"ffmpeg cannot tell the pixel format of {video.codec} stream #{video.index} (damaged?)")
    size = next((m for f in fields if (m := re.match(r"(\d+)x(\d+)", f))), None)
    if size is None:
        raise VideoError(path, f"no frame size in the {video.codec} stream description")
    width, height = int(size.group(1)), int(size.group(2))
    rotation = _parse_rotation(video.extra)
    if rotation in (90, 270):
        width, height = height, width  # ffmpeg autorotates while decoding
    avg, base = _parse_rate(_field_value(fields, "fps")), _parse_rate(_field_value(fields, "tbr"))
    if avg is None and base is None:
        raise VideoError(path, "ffmpeg reports no frame rate for the video stream")
    frames_tag = _NUMBER_OF_FRAMES.search(video.extra)
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=cast(Fraction, avg or base),  # not None: one is set (checked above) and rates are > 0
        num_frames=int(frames_tag.group(1)) if frames_tag else None,
        duration=_parse_duration(text),
        codec=video.codec,
        pix_fmt=pix_fmt,
        bit_depth=_bit_depth(pix_fmt),
        has_alpha=bool(re.match(r"(yuva|gbrap|ya\d|rgba|bgra|argb|abgr|ayuv|vuya)", pix_fmt)),
        is_grey=bool(re.match(r"(gray|ya\d|mono)", pix_fmt)),
        rotation=rotation,
        has_audio=any(s.kind == "Audio" for s in streams),
        has_subtitles=any(s.kind == "Subtitle" for s in streams),
        color_range=color["range"],
        color_space=color["space"],
        color_primaries=color["primaries"],
        color_transfer=color["transfer"],
        sample_aspect_ratio=_parse_sar(video.desc),
        variable_frame_rate=None if avg is None or base is None else avg != base,
        stream_index=video.index,
        audio_codecs=tuple(s.codec for s in streams if s.kind == "Audio"),
        subtitle_codecs=tuple(s.codec for s in streams if s.kind == "Subtitle"),
        field_order=_parse_field_order(fields[1] if len(fields) > 1 else ""),
    )


def _ffmpeg_describe(path: Path) -> str:
    """Runs ``ffmpeg -i`` on a file and returns its stderr (the description, or ffmpeg's complaint
    when it cannot open the file); raises VideoError when there is no file to read or ffmpeg hangs."""
    if not path.exists():
        raise VideoError(path, "file does not exist")
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video file (use open_video for frame folders)")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path.absolute())]
    try:
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoError(path, f"ffmpeg took more than {_PROBE_TIMEOUT_S} s to read the header") from None
    return proc.stderr.decode("utf-8", "replace")


def _one_line_reason(text: str) -> str:
    """Condenses ffmpeg's complaint about an unreadable input into one line."""
    reasons: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())  # drop "[in#0 @ 0x...]" prefixes
        line = re.sub(r"^Error opening input(?: files?)?(?: [^:]*\.)?:?\s*", "", line)
        if line and not line.startswith("Error opening input file") and line not in reasons:
            reasons.append(line)
    return "; ".join(reasons) or "ffmpeg printed no description"


def _streams(text: str) -> list[_Stream]:
    """Splits ffmpeg's description of input #0 into its streams."""
    text = text.split("Output #0", 1)[0]
    streams: list[_Stream] = []
    current: tuple[re.Match[str], list[str]] | None = None
    for line in text.splitlines():
        m = _STREAM.match(line)
        # A stream's block ends at the next stream line or a line indented no deeper.
        if current is not None and (m or len(line) - len(line.lstrip()) <= len(current[0]["indent"])):
            head, extra = current
            streams.append(_Stream(int(head["index"]), head["kind"], head["desc"], "\n".join(extra)))
            current = None
        if m:
            current = (m, [])
        elif current is not None:
            current[1].append(line)
    if current is not None:
        head, extra = current
        streams.append(_Stream(int(head["index"]), head["kind"], head["desc"], "\n".join(extra)))
    return streams


def _parse_duration(text: str) -> float | None:
    """Container duration from "Duration: 00:01:02.50"; None for "Duration: N/A"."""
    m = _DURATION.search(text)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def _split_top_level(desc: str) -> list[str]:
    """Splits a stream description on ", " outside parentheses and brackets."""
    fields, depth, start = [], 0, 0
    for i, ch in enumerate(desc):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            fields.append(desc[start:i].strip())
            start = i + 1
    fields.append(desc[start:].strip())
    return fields


def _parse_pix_fmt(field: str) -> tuple[str, dict[str, str | None]]:
    """Parses ``yuv420p(tv, bt470bg/smpte170m/bt709, progressive)`` into the format and tags.

    ffmpeg prints the range ("tv"/"pc"), then either one colour name (when matrix,
    primaries and transfer agree) or "space/primaries/transfer", then the field order.
    """
    color: dict[str, str | None] = {"range": None, "space": None, "primaries": None, "transfer": None}
    name, _, rest = field.partition("(")
    for token in _split_top_level(rest[:-1]) if rest.endswith(")") else []:
        if token in ("tv", "pc"):
            color["range"] = token
        elif "/" in token:
            parts = [None if p == "unknown" else p for p in token.split("/")]
            color["space"], color["primaries"], color["transfer"] = (parts + [None, None, None])[:3]
        elif token and not token.startswith(_FIELD_ORDERS) and token != "unknown":
            color["space"] = color["primaries"] = color["transfer"] = token
    return name.strip(), color


def _parse_field_order(field: str) -> str | None:
    """The interlaced field order printed in the pixel-format field (None when progressive or untold).

    >>> _parse_field_order("yuv420p(tv, bt709, top first)"), _parse_field_order("yuv420p(progressive)")
    ('top first', None)
    """
    _, _, rest = field.partition("(")
    for token in _split_top_level(rest[:-1]) if rest.endswith(")") else []:
        if token.startswith(_FIELD_ORDERS) and token != "progressive":
            return token
    return None


def _field_value(fields: list[str], unit: str) -> str | None:
    """Returns the number printed before ``unit`` ("29.97 fps" -> "29.97"), if any."""
    for f in fields:
        m = re.fullmatch(rf"([\d.]+k?) {unit}", f)
        if m:
            return m.group(1)
    return None


def _parse_rate(text: str | None) -> Fraction | None:
    """Turns ffmpeg's printed rate into an exact fraction.

    ffmpeg prints rates rounded to two decimals ("29.97", "23.98", "59.94") or as
    integers ("25", "1k"). A value within 0.01 of an NTSC rate n*1000/1001 is snapped to
    it (29.97 -> 30000/1001); any other value is taken as printed, with the denominator
    limited to 1001 (12.50 -> 25/2).
    """
    if text is None:
        return None
    rate = Fraction(text[:-1]) * 1000 if text.endswith("k") else Fraction(text)
    if rate <= 0:
        return None
    if rate.denominator == 1:
        return rate
    ntsc = Fraction(round(rate * Fraction(1001, 1000)) * 1000, 1001)
    if ntsc > 0 and abs(ntsc - rate) < Fraction(1, 100):
        return ntsc
    return rate.limit_denominator(1001)


def _parse_rotation(extra: str) -> int:
    """Clockwise display rotation from the display-matrix side data.

    ffmpeg prints the matrix angle counter-clockwise ("rotation of -90.00 degrees" is
    what a phone's legacy ``rotate=90`` tag becomes), so the clockwise angle applied by
    autorotation is its negation, normalised to [0, 360).
    """
    m = _ROTATION.search(extra)
    return round(-float(m.group(1))) % 360 if m else 0


def _parse_sar(desc: str) -> Fraction:
    """Sample aspect ratio from "SAR 64:45"; 1 when absent or unknown (0:1)."""
    m = re.search(r"SAR (\d+):(\d+)", desc)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        return Fraction(1)
    return Fraction(int(m.group(1)), int(m.group(2)))


def _bit_depth(pix_fmt: str) -> int:
    """Bits per sample of a pixel format name ("yuv420p10le" -> 10, "rgb48le" -> 16)."""
    special = {"xv30": 10, "v30x": 10, "xv36": 12, "xv48": 16}
    for prefix, bits in special.items():
        if pix_fmt.startswith(prefix):
            return bits
    m = re.search(r"(\d+)(?:le|be)$", pix_fmt)
    if not m:
        return 8
    digits = m.group(1)
    if len(digits) == 3 and digits[0] in "0124":  # p010, p016, y210, y212, p410
        digits = digits[1:]
    bits = int(digits)
    if bits in (48, 64):  # rgb48 / rgba64: 16 bits per channel
        return 16
    return bits if bits in (9, 10, 12, 14, 16, 32) else 8


def count_frames(path: str | Path) -> int:
    """Counts the frames of the video stream, for containers that do not say.

    The stream is demuxed without decoding (``-c copy -f null``), one packet per frame;
    if that fails (or reports nothing) the stream is fully decoded instead. Packet
    counting sees damaged packets too, so a damaged file may count more frames than
    :class:`VideoReader` can decode (and the reader raises on those).

    Args:
        path: video file.

    Returns:
        Number of frames in the video stream.

    Raises:
        VideoError: the file is unreadable (see :func:`probe`) or neither pass works.
    """
    import ffmpeg

    info = probe(path)
    stream = ffmpeg.input(str(Path(path).absolute()))[str(info.stream_index)]
    tail = ""
    for options in ({"c": "copy"}, {"fps_mode": "passthrough"}):
        cmd = (
            stream.output("-", format="null", **options)
            .global_args("-hide_banner", "-nostdin", "-nostats")
            .compile(cmd=ffmpeg_exe())
        )
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True)
        tail = proc.stderr.decode("utf-8", "replace")
        counts = re.findall(r"frame=\s*(\d+)", tail)
        if proc.returncode == 0 and counts:
            return int(counts[-1])
    raise VideoError(path, "cannot count frames:\n" + "\n".join(tail.splitlines()[-STDERR_TAIL_LINES:]))
