"""Writing video and frame folders: an ffmpeg encoder fed raw RGB frames, audio and subtitles muxed from a source.

The writer encodes to a temporary name beside the target and renames it only after ffmpeg
exits 0; colour tags follow the source (or BT.709 limited range by default); a codec that
the container cannot hold is refused before anything runs. Frame folders are written as
``NNNNNNNN.png`` under a temporary sibling folder swapped in whole.

One module on purpose (≈ 510 lines): the encoder settings, the mux plan and the writer that
applies them are one contract with ffmpeg, tested together (``tests/test_video.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import ffmpeg
import numpy as np

from tanet.errors import InputError, VideoError
from tanet.io.atomic import atomic_dir, mkstemp_public, remove_dead_siblings, temp_sibling_prefix
from tanet.io.frames import write_rgb
from tanet.io.probe import _PROBE_TIMEOUT_S, ffmpeg_exe, probe
from tanet.io.process import QUIET, STOP_TIMEOUT_S, StderrTail, as_fraction, popen

log = logging.getLogger(__name__)


class OutputExistsError(InputError, FileExistsError):
    """The output path already exists and ``overwrite`` was not set."""


# Colour-matrix names of ffmpeg's -colorspace to those of the scale filter, which does the
# RGB -> YUV conversion; tagging and converting with the same matrix keeps colours right.
_SCALE_MATRIX = {
    "bt709": "bt709",
    "bt470bg": "bt470",
    "smpte170m": "smpte170m",
    "smpte240m": "smpte240m",
    "fcc": "fcc",
    "bt2020nc": "bt2020",
    "bt2020c": "bt2020",
}


_RANGES = {"tv": "tv", "limited": "tv", "mpeg": "tv", "pc": "pc", "full": "pc", "jpeg": "pc"}


_COLOR_KEYS = ("range", "space", "primaries", "transfer")


_DEFAULT_COLOR = {"range": "tv", "space": "bt709", "primaries": "bt709", "transfer": "bt709"}


# A subtitle codec that a container takes when the source's cannot be copied into it.
_TEXT_SUBTITLES = {
    ".mp4": "mov_text",
    ".m4v": "mov_text",
    ".mov": "mov_text",
    ".mkv": "srt",
    ".webm": "webvtt",
}


class VideoWriter:
    """Encodes ``(H, W, 3)`` uint8 RGB frames to a video file through ffmpeg's stdin.

    The file appears under its final name only when ffmpeg has exited 0: frames go to
    ``.NAME.<pid>-<start>.XXXX.tmp.SUFFIX`` beside it (the suffix picks the muxer), renamed on a clean
    close. An exception in the ``with`` block or an ffmpeg failure kills ffmpeg and
    removes the temporary file; ffmpeg failures raise :class:`VideoError` with its
    stderr tail.

    Encoding: ``codec`` (libx264 by default) with ``crf``/``preset`` (passed to libx264
    and libx265 only) and ``pix_fmt`` yuv420p, or yuv444p when width or height is odd
    (4:2:0 needs even sizes). RGB is converted to YUV with the matrix and range named in
    ``color`` and tagged with them (BT.709 limited range when ``color`` is None), so
    players and :class:`VideoReader` convert back with the same matrix.
    ``lossless=True`` keeps RGB exactly: ffv1 for ``.mkv``, else libx264rgb at
    ``-qp 0`` (exact but High 4:4:4 Predictive, which few players outside ffmpeg decode).

    ``audio_from``: the audio streams of that file are copied without re-encoding, or
    re-encoded (aac; opus for .webm) with a logged note when the container cannot hold
    them; subtitles are copied, converted to the container's text format (mov_text for
    mp4/mov, srt for mkv) or skipped with a logged note. Audio is not cut to the video.

    Args:
        path: output file; its suffix picks the container.
        width: frame width.
        height: frame height.
        fps: exact frame rate (``Fraction(30000, 1001)``, an int, or "30000/1001").
        audio_from: file whose audio (and subtitles) to copy, typically the source.
        codec: ffmpeg video encoder.
        crf: constant rate factor for libx264/libx265 (lower is better, 18 is visually
            lossless for most content).
        preset: libx264/libx265 speed preset.
        lossless: exact RGB output (see above); ``codec`` and ``pix_fmt`` must be left
            unset.
        pix_fmt: output pixel format (default: yuv420p, or yuv444p for odd sizes).
        color: ``range``/``space``/``primaries``/``transfer`` in ffmpeg's names (e.g.
            ``VideoInfo.color`` of the source). Range and space also drive the RGB ->
            YUV conversion, so when None (or "gbr", an RGB source's) they default to
            "tv" and "bt709"; primaries and transfer are tagged only when given.
        sample_aspect_ratio: pixel aspect ratio to tag (None: square pixels).
        overwrite: replace an existing file instead of refusing.
        audio_duration: copy only the first this-many seconds of ``audio_from`` (to match a
            video cut from the start of the source); None copies all of it.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        VideoError: ``audio_from`` is unreadable, or ffmpeg fails.
        ValueError: invalid arguments, or a frame of the wrong shape or type.

    Attributes:
        frames_written: frames written so far.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction | int | str,
        *,
        audio_from: str | Path | None = None,
        codec: str = "libx264",
        crf: int = 18,
        preset: str = "veryfast",
        lossless: bool = False,
        pix_fmt: str | None = None,
        color: dict[str, str | None] | None = None,
        sample_aspect_ratio: Fraction | None = None,
        overwrite: bool = False,
        audio_duration: float | None = None,
    ) -> None:
        self.path = Path(path)
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if not self.path.suffix:
            raise ValueError(f"{self.path}: no file suffix to choose the container from")
        if lossless and (codec != "libx264" or pix_fmt is not None):
            raise ValueError("lossless=True picks the codec and pixel format; leave codec and pix_fmt unset")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(self.path, "output exists (pass overwrite=True to replace it)")
        self.width, self.height = width, height
        self.fps = as_fraction(fps)
        self.overwrite = overwrite
        self.frames_written = 0
        self._frame_shape = (height, width, 3)
        self._video_options, self._scale = self._encoder_options(codec, crf, preset, lossless, pix_fmt, color)
        problem = _container_problem(self.path.suffix.lower(), str(self._video_options["c:v"]))
        if problem:
            raise InputError(self.path, problem)
        self._sar = sample_aspect_ratio
        self._audio_from = Path(audio_from) if audio_from is not None else None
        self._audio_duration = audio_duration
        self._side_streams = self._plan_side_streams(self._audio_from) if self._audio_from is not None else []
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: StderrTail | None = None
        self._closed = False

    # -- planning ------------------------------------------------------------------------

    def _encoder_options(
        self,
        codec: str,
        crf: int,
        preset: str,
        lossless: bool,
        pix_fmt: str | None,
        color: dict[str, str | None] | None,
    ) -> tuple[dict[str, Any], dict[str, str] | None]:
        """Output options of the video stream, and the scale filter's RGB -> YUV options
        (None when the output stays RGB)."""
        if lossless:
            if self.path.suffix.lower() == ".mkv":
                return {"c:v": "ffv1", "level": 3}, None  # ffv1 picks an RGB format itself
            return {"c:v": "libx264rgb", "qp": 0, "preset": preset, "pix_fmt": "rgb24"}, None
        if pix_fmt is None:
            pix_fmt = "yuv420p"
            if self.width % 2 or self.height % 2:
                pix_fmt = "yuv444p"
                log.info(
                    "%s: odd size %dx%d; encoding yuv444p (4:2:0 needs even sizes)",
                    self.path,
                    self.width,
                    self.height,
                )
        options: dict[str, Any] = {"c:v": codec, "pix_fmt": pix_fmt}
        if codec in ("libx264", "libx265"):
            options.update(crf=crf, preset=preset)
        if not pix_fmt.startswith(("yuv", "nv")):
            return options, None
        tags = _color_tags(color)
        names = {
            "range": "color_range",
            "space": "colorspace",
            "primaries": "color_primaries",
            "transfer": "color_trc",
        }
        options.update({names[k]: v for k, v in tags.items() if v is not None})
        space, out_range = cast(str, tags["space"]), cast(str, tags["range"])  # _color_tags always sets both
        return options, {"out_color_matrix": _SCALE_MATRIX[space], "out_range": out_range}

    def _plan_side_streams(self, source: Path) -> list[tuple[str, str]]:
        """Chooses how to carry the audio and subtitles of ``source``: (selector, codec)."""
        info = probe(source)
        suffix = self.path.suffix.lower()
        plan: list[tuple[str, str]] = []
        if info.has_audio:
            if _can_mux(source, "a", "copy", suffix):
                plan.append(("a", "copy"))
            else:
                fallback = "libopus" if suffix == ".webm" else "aac"
                if not _can_mux(source, "a", fallback, suffix):
                    raise VideoError(
                        source, f"its audio ({', '.join(info.audio_codecs)}) cannot go into a {suffix} file"
                    )
                log.warning(
                    "%s: audio %s cannot be stream-copied into %s; re-encoding to %s",
                    source,
                    ",".join(info.audio_codecs),
                    suffix,
                    fallback,
                )
                plan.append(("a", fallback))
        else:
            log.info("%s: no audio stream to copy", source)
        if info.has_subtitles:
            text_codec = _TEXT_SUBTITLES.get(suffix)
            if _can_mux(source, "s", "copy", suffix):
                plan.append(("s", "copy"))
            elif text_codec and _can_mux(source, "s", text_codec, suffix):
                log.info("%s: subtitles converted to %s for %s", source, text_codec, suffix)
                plan.append(("s", text_codec))
            else:
                log.warning(
                    "%s: subtitles (%s) cannot go into %s; skipped",
                    source,
                    ",".join(info.subtitle_codecs),
                    suffix,
                )
        return plan

    def _command(self) -> list[str]:
        video = ffmpeg.input(
            "pipe:",
            format="rawvideo",
            pix_fmt="rgb24",
            s=f"{self.width}x{self.height}",
            framerate=str(self.fps),
        )
        if self._sar is not None:
            video = video.filter("setsar", sar=f"{self._sar.numerator}/{self._sar.denominator}", max=10000)
        if self._scale is not None:
            video = video.filter("scale", **self._scale)
        streams = [video]
        options = dict(self._video_options)
        if self._side_streams and self._audio_from is not None:
            trim = {"t": f"{self._audio_duration:.6f}"} if self._audio_duration is not None else {}
            source = ffmpeg.input(str(self._audio_from.absolute()), **trim)
            for selector, codec in self._side_streams:
                streams.append(source[selector])
                options[f"c:{selector}"] = codec
        if self.path.suffix.lower() in (".mp4", ".m4v", ".mov"):
            options["movflags"] = "+faststart"  # index first: playable while downloading
        assert self._tmp is not None
        out = ffmpeg.output(*streams, str(self._tmp.absolute()), **options).global_args(*QUIET)
        return out.compile(cmd=ffmpeg_exe(), overwrite_output=True)

    # -- writing ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_siblings(self.path)  # leftovers of a killed earlier run to this output
        fd, tmp = mkstemp_public(
            prefix=temp_sibling_prefix(self.path), suffix=".tmp" + self.path.suffix, dir=self.path.parent
        )
        os.close(fd)  # the name is reserved; ffmpeg overwrites the empty file (-y)
        self._tmp = Path(tmp)
        self._proc, self._stderr = popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def write(self, frame: np.ndarray) -> None:
        """Appends one frame.

        Args:
            frame: ``(H, W, 3)`` uint8 RGB array of the size given at construction.

        Raises:
            ValueError: wrong shape or dtype, or the writer is closed.
            VideoError: ffmpeg stopped (its stderr tail says why).
        """
        if self._closed:
            raise ValueError(f"{self.path}: write() on a closed VideoWriter")
        if not isinstance(frame, np.ndarray) or frame.shape != self._frame_shape or frame.dtype != np.uint8:
            got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{self.path}: expected a {self._frame_shape} uint8 RGB frame, got {got}")
        if self._proc is None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            # .data is memoryview(frame), typed for Python 3.11 too
            self._proc.stdin.write(np.ascontiguousarray(frame).data.cast("B"))
        except (BrokenPipeError, ValueError):
            rc = self._proc.wait()
            assert self._stderr is not None
            self._stderr.join()
            raise VideoError(
                self.path,
                f"ffmpeg stopped (status {rc}) at frame {self.frames_written}:\n{self._stderr.text()}",
            ) from None
        self.frames_written += 1

    def close(self) -> None:
        """Finishes the file: waits for ffmpeg and renames the output into place.

        Raises:
            VideoError: no frame was written or ffmpeg failed; nothing is left behind.
            OutputExistsError: the output appeared meanwhile and ``overwrite`` is False.
        """
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            raise VideoError(self.path, "no frames were written; no video created")
        assert self._proc.stdin is not None and self._stderr is not None and self._tmp is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
            rc = self._proc.wait()
            self._stderr.join()
            if rc != 0:
                raise VideoError(
                    self.path,
                    f"ffmpeg exited with status {rc} after {self.frames_written} frames:\n{self._stderr.text()}",
                )
            if self.path.exists() and not self.overwrite:
                raise OutputExistsError(self.path, "output appeared while writing (pass overwrite=True to replace it)")
            os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Kills ffmpeg and removes the temporary file; the final path is not touched."""
        self._closed = True
        if self._proc is not None:
            if self._proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()
        if self._stderr is not None:
            self._stderr.join(timeout=STOP_TIMEOUT_S)
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not publish a file nor leave ffmpeg
        # waiting on its stdin.
        if not getattr(self, "_closed", True):
            self.abort()


_OWN_FRAME = re.compile(r"[0-9]{8}\.png")


def check_replaceable_frame_folder(path: Path) -> None:
    """Refuses to replace ``path`` unless it is a folder of nothing but this writer's frames.

    ``--overwrite`` replaces a previous output, never a folder of the user's: the first
    foreign entry (a file of another name, a sub-folder, a link) is named in the error.

    Raises:
        OutputExistsError: ``path`` is not a folder, or holds something else.
    """
    if path.is_symlink() or not path.is_dir():
        raise OutputExistsError(path, "exists and is not a frame folder; a frame folder output never replaces a file")
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not (_OWN_FRAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
            raise OutputExistsError(
                path,
                f"holds {entry.name!r}, which tanet did not write; --overwrite replaces only a folder of "
                "tanet's own frames (00000000.png, ...): choose another output or empty it yourself",
            )


class FrameFolderWriter:
    """Writes frames as ``00000000.png``, ``00000001.png``, ... into a folder, atomically.

    Frames go into a temporary sibling folder (:func:`tanet.io.atomic.atomic_dir`) that
    replaces ``path`` only when the ``with`` block ends without an exception.

    Args:
        path: output folder.
        width: frame width.
        height: frame height.
        overwrite: replace an existing folder instead of refusing.
        png_compression: zlib level (PNG stays lossless at every level).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """

    def __init__(
        self, path: str | Path, width: int, height: int, *, overwrite: bool = False, png_compression: int = 1
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise OutputExistsError(self.path, "output exists (pass overwrite=True to replace it)")
        if self.path.exists():
            check_replaceable_frame_folder(self.path)
        self._frame_shape = (height, width, 3)
        self._png_compression = png_compression
        self.frames_written = 0
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None

    def __enter__(self) -> Self:
        self._tmp = self._stack.enter_context(atomic_dir(self.path))
        return self

    def write(self, frame: np.ndarray) -> None:
        """Appends one frame (see :meth:`VideoWriter.write`)."""
        if self._tmp is None:
            raise ValueError(f"{self.path}: use FrameFolderWriter in a with-block")
        if not isinstance(frame, np.ndarray) or frame.shape != self._frame_shape or frame.dtype != np.uint8:
            got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{self.path}: expected a {self._frame_shape} uint8 RGB frame, got {got}")
        write_rgb(self._tmp / f"{self.frames_written:08d}.png", frame, png_compression=self._png_compression)
        self.frames_written += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._tmp = None
        if exc_type is None and self.frames_written == 0:
            exc = InputError(self.path, "no frames were written; no folder created")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        return self._stack.__exit__(exc_type, exc, tb)


def _color_tags(color: dict[str, str | None] | None) -> dict[str, str | None]:
    """Validates the writer's colour tags; the range and matrix always get a value."""
    if color is None:
        return dict(_DEFAULT_COLOR)
    unknown = set(color) - set(_COLOR_KEYS)
    if unknown:
        raise ValueError(f"unknown color key(s) {sorted(unknown)}; expected {list(_COLOR_KEYS)}")
    tags = {k: color.get(k) for k in _COLOR_KEYS}
    tags["range"] = _RANGES.get(tags["range"] or "tv")
    if tags["range"] is None:
        raise ValueError(f"color['range'] must be one of {sorted(_RANGES)}, got {color['range']!r}")
    # An RGB source reports "gbr" (no YUV matrix); encoding it to YUV needs one.
    if tags["space"] in (None, "gbr", "unknown"):
        tags["space"] = "bt709"
    if tags["space"] not in _SCALE_MATRIX:
        raise ValueError(f"color['space'] must be one of {sorted(_SCALE_MATRIX)}, got {tags['space']!r}")
    return tags


@functools.cache
def _container_problem(suffix: str, codec: str) -> str | None:
    """Why this ffmpeg cannot write ``codec`` video into a ``suffix`` file, or None if it can.

    Checked before any frame is decoded (one encoded test frame, cached per process), so an
    unknown container such as ``.xyz`` is named as such instead of failing later.
    """
    with tempfile.TemporaryDirectory(prefix="tanet-mux-") as tmp:
        cmd = [ffmpeg_exe(), *QUIET, "-f", "lavfi", "-i", "color=s=16x16:d=0.04", "-frames:v", "1"]
        cmd += ["-c:v", codec, "-y", str(Path(tmp) / f"check{suffix}")]
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT_S)
    if proc.returncode == 0:
        return None
    err = proc.stderr.decode(errors="replace")
    if "Unable to choose an output format" in err or "Unable to find a suitable output format" in err:
        return f"unknown video container {suffix!r}: use .mp4, .mkv, .mov, .webm, ... (or no suffix for a frame folder)"
    if "Unknown encoder" in err or "Encoder not found" in err:
        return f"this ffmpeg has no {codec!r} encoder"
    return f"this ffmpeg cannot put {codec} video into a {suffix} file"


def _can_mux(source: Path, selector: str, codec: str, suffix: str) -> bool:
    """Tries putting one second of a source's audio or subtitles into a ``suffix`` file.

    Which codecs a container accepts is the muxer's business and changes between ffmpeg
    versions; asking this ffmpeg costs a fraction of a second and is never out of date.
    """
    with tempfile.TemporaryDirectory(prefix="tanet-mux-") as tmp:
        out = ffmpeg.input(str(source.absolute()))[selector].output(
            str(Path(tmp) / f"check{suffix}"), t=1, **{f"c:{selector}": codec}
        )
        cmd = out.global_args(*QUIET).compile(cmd=ffmpeg_exe(), overwrite_output=True)
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT_S)
    return proc.returncode == 0
