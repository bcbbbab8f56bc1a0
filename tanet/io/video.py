"""Reading video over ffmpeg (and frame folders) as RGB frames; the writer is :mod:`tanet.io.writer`.

Design
------
* One ffmpeg process per reader or writer, driven through pipes of raw ``rgb24`` frames:
  the reader reads exactly ``H * W * 3`` bytes per frame from ffmpeg's stdout, the writer
  writes them to its stdin. Memory stays constant whatever the clip length.
* ffmpeg is the static binary of the ``imageio-ffmpeg`` wheel. That build has no
  ffprobe, so :func:`probe` parses the stream description that ``ffmpeg -i FILE`` prints
  on stderr. Commands are argument lists built with ``ffmpeg-python`` (never shell
  strings) and every path is passed absolute, so a name that starts with ``-`` or looks
  like ``proto:...`` cannot be read as an option or a protocol.
* Frame rates are :class:`fractions.Fraction` end to end (``30000/1001``, never
  ``29.97`` and never ``eval``).
* Failures raise instead of shortening the output. The reader runs ffmpeg with
  ``-xerror`` (a decoding error is fatal), checks the exit status and the size of the
  last frame, and treats demuxer reports of a cut-off file ("partial file", "File ended
  prematurely") as errors, since ffmpeg exits 0 on those. The writer encodes to a
  temporary name beside the target and renames it only after ffmpeg exits 0.
* ffmpeg's stderr is drained by a background thread that keeps the last lines, so a
  chatty ffmpeg can never block on a full pipe, and errors can quote what it said.
* Frames are decoded one output frame per decoded frame (``-fps_mode passthrough``):
  ffmpeg must not duplicate or drop frames to fake a constant rate, which would hide
  damage and misalign super-resolved frames with their inputs.

The reader yields frames as displayed (rotation from the display matrix applied, which
is why ``VideoInfo.width/height`` are the display size). Sample aspect ratio is reported
but not applied: frames keep their stored pixel grid.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Self

import numpy as np

from tanet.errors import InputError, VideoError
from tanet.io.frames import list_frames, read_rgb
from tanet.io.probe import VideoInfo, ffmpeg_exe, probe
from tanet.io.process import QUIET, STOP_TIMEOUT_S, StderrTail, as_fraction, popen, read_exactly, stop_process

__all__ = [
    "FrameFolderReader",
    "VideoReader",
    "open_video",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# ffmpeg process plumbing
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------


class VideoReader:
    """Iterates over the frames of a video file as ``(H, W, 3)`` uint8 RGB arrays.

    ffmpeg decodes to ``rgb24`` on a pipe and one frame is read at a time, so memory
    stays constant. High bit depths, alpha and grey are converted to 8-bit RGB by ffmpeg
    (alpha is dropped, not composited); each conversion is logged once. Rotation from
    the display matrix is applied, so frames have the display size of ``info``.

    Errors are not swallowed: on exhaustion a non-zero exit status of ffmpeg, a
    truncated last frame, or (with ``strict``) a demuxer report of a cut-off or damaged
    file raises :class:`VideoError` with the file name and ffmpeg's stderr tail.
    Stopping early (``break``, ``max_frames``, leaving the ``with`` block) ends ffmpeg
    quietly.

    Example::

        with VideoReader("clip.mp4") as reader:
            for frame in reader:
                ...

    Args:
        path: video file.
        max_frames: decode at most this many frames (None: all).
        strict: run ffmpeg with ``-xerror`` so a decoding error stops it with a non-zero
            status, and raise on damage reports. With False, damaged frames are skipped
            as ffmpeg's decoder conceals them and damage is only logged as a warning,
            so fewer frames than the container holds may be yielded.

    Attributes:
        info: the probed :class:`VideoInfo`.
        frames_read: frames yielded so far.
    """

    def __init__(self, path: str | Path, *, max_frames: int | None = None, strict: bool = True) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.path = Path(path)
        self.max_frames = max_frames
        self.strict = strict
        self.frames_read = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: StderrTail | None = None
        self._done = False
        self.info = probe(self.path)
        self._frame_shape = (self.info.height, self.info.width, 3)
        self._frame_bytes = self.info.height * self.info.width * 3
        self._log_conversions()

    @property
    def returncode(self) -> int | None:
        """ffmpeg's exit status once it has ended and been reaped, else None."""
        return None if self._proc is None else self._proc.returncode

    def _log_conversions(self) -> None:
        """Logs once per kind what the conversion to 8-bit RGB changes."""
        info = self.info
        if info.bit_depth > 8:
            log.warning("%s: %d-bit %s converted to 8-bit RGB", self.path, info.bit_depth, info.pix_fmt)
        if info.has_alpha:
            log.warning("%s: alpha channel dropped (%s read as RGB)", self.path, info.pix_fmt)
        if info.is_grey:
            log.info("%s: grey replicated to RGB (%s)", self.path, info.pix_fmt)
        if info.rotation:
            log.info("%s: rotated %d degrees clockwise for display", self.path, info.rotation)
        if info.variable_frame_rate:
            log.warning(
                "%s: variable frame rate; frames are yielded as decoded and their timing is not kept",
                self.path,
            )

    def _command(self) -> list[str]:
        import ffmpeg  # here: a frame folder is read without ffmpeg-python (training hosts lack it)

        options: dict[str, Any] = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
        if self.max_frames is not None:
            options["frames:v"] = self.max_frames  # ffmpeg stops cleanly by itself
        stream = ffmpeg.input(str(self.path.absolute()))[str(self.info.stream_index)]
        flags = [*QUIET, "-xerror"] if self.strict else list(QUIET)
        return stream.output("pipe:", **options).global_args(*flags).compile(cmd=ffmpeg_exe())

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        if self.max_frames == 0:
            self._done = True
            raise StopIteration
        if self._proc is None:
            self._proc, self._stderr = popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        frame = np.empty(self._frame_shape, dtype=np.uint8)
        got = read_exactly(self._proc.stdout, frame.data.cast("B"))  # .data: memoryview(frame), typed on 3.11 too
        if got == self._frame_bytes:
            self.frames_read += 1
            return frame
        self._finish(got)
        raise StopIteration

    def _finish(self, partial: int) -> None:
        """At end of stream: reap ffmpeg and raise if the stream did not end cleanly."""
        assert self._proc is not None and self._stderr is not None
        self._done = True
        rc = self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.join()
        tail = self._stderr.text()
        where = f"after {self.frames_read} frames"
        if rc != 0:
            raise VideoError(self.path, f"ffmpeg exited with status {rc} {where}:\n{tail}")
        if partial:
            raise VideoError(self.path, f"truncated frame: {partial} of {self._frame_bytes} bytes {where}:\n{tail}")
        if self._stderr.damage:
            if self.strict:
                raise VideoError(self.path, f"ffmpeg reported a damaged or cut-off file {where}:\n{tail}")
            log.warning("%s: ffmpeg reported damage; frames may be missing: %s", self.path, self._stderr.damage[0])
        if self.frames_read == 0:
            raise VideoError(self.path, f"ffmpeg decoded no frames:\n{tail}")

    def close(self) -> None:
        """Stops ffmpeg if it is still running and reaps it; never raises."""
        self._done = True
        if self._proc is None:
            return
        if self._proc.stdout is not None:
            # Close our end first: an ffmpeg blocked writing a frame then fails at once
            # instead of waiting for a reader that will never come.
            self._proc.stdout.close()
        stop_process(self._proc)
        if self._stderr is not None:
            self._stderr.join(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()


class FrameFolderReader:
    """Iterates over a folder of PNG/JPEG frames with the interface of :class:`VideoReader`.

    Args:
        folder: directory of frames named in temporal order (see
            :func:`tanet.io.frames.list_frames`; a gap in the numbering is an error).
        fps: frame rate to report (a folder has none of its own).
        max_frames: read at most this many frames (None: all).

    Raises:
        InputError: the folder has no frames or a missing frame (at construction), or a
            frame is unreadable or differs in size from the first (while iterating); the
            message names the frame.
    """

    def __init__(
        self, folder: str | Path, *, fps: Fraction | int | str = Fraction(25), max_frames: int | None = None
    ) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.path = Path(folder)
        self.max_frames = max_frames
        self.frames_read = 0
        self._frames = list_frames(self.path)
        first = read_rgb(self._frames[0])
        height, width = first.shape[:2]
        rate = as_fraction(fps)
        self.info = VideoInfo(
            path=self.path,
            width=width,
            height=height,
            fps=rate,
            num_frames=len(self._frames),
            duration=float(len(self._frames) / rate),
            codec=self._frames[0].suffix.lower().lstrip("."),
            pix_fmt="rgb24",
            bit_depth=8,
            has_alpha=False,
            is_grey=False,
            rotation=0,
            has_audio=False,
            has_subtitles=False,
            color_range=None,
            color_space=None,
            color_primaries=None,
            color_transfer=None,
        )
        self._iter = iter(self._frames[: max_frames if max_frames is not None else len(self._frames)])

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        path = next(self._iter)
        frame = read_rgb(path)
        expected = (self.info.height, self.info.width)
        if frame.shape[:2] != expected:
            raise InputError(
                path,
                f"frame is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                f"{self.info.width}x{self.info.height}",
            )
        self.frames_read += 1
        return frame

    def close(self) -> None:
        """Stops the iteration (frames are read lazily, so nothing else to release)."""
        self._iter = iter(())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: str | Path, **kwargs: Any) -> VideoReader | FrameFolderReader:
    """Opens a frame folder (a directory) or a video file for reading.

    Args:
        path: directory of frames or video file.
        **kwargs: passed to :class:`FrameFolderReader` or :class:`VideoReader`.
    """
    if Path(path).is_dir():
        return FrameFolderReader(path, **kwargs)
    return VideoReader(path, **kwargs)


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


LANCZOS_FLAGS = "lanczos+accurate_rnd+full_chroma_int"


def lanczos_upscale(frames: list[np.ndarray], scale: int) -> list[np.ndarray]:
    """ffmpeg's lanczos scaler on RGB frames, as a video engineer runs it today.

    ``scale=iw*r:ih*r:flags=lanczos+accurate_rnd+full_chroma_int`` on ``rgb24`` in and out:
    the baseline a learned upscaler has to beat in practice (bicubic is the papers').

    Args:
        frames: ``(h, w, 3)`` uint8 RGB frames, all of one size.
        scale: upscaling factor r.

    Returns:
        ``(r h, r w, 3)`` uint8 RGB frames, as many as came in.
    """
    if not frames:
        return []
    h, w = frames[0].shape[:2]
    cmd = [ffmpeg_exe(), *QUIET, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", "pipe:0"]
    cmd += ["-vf", f"scale=iw*{scale}:ih*{scale}:flags={LANCZOS_FLAGS}", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["pipe:1"]
    data = b"".join(np.ascontiguousarray(f, np.uint8).tobytes() for f in frames)
    proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise VideoError("lanczos", proc.stderr.decode(errors="replace").strip()[-500:] or "ffmpeg failed")
    out = np.frombuffer(proc.stdout, np.uint8)
    expected = len(frames) * scale * h * scale * w * 3
    if out.size != expected:
        raise VideoError("lanczos", f"ffmpeg returned {out.size} bytes for {len(frames)} frames, expected {expected}")
    return list(out.reshape(len(frames), scale * h, scale * w, 3).copy())  # writable, as frames elsewhere
