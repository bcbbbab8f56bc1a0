"""Decode and encode throughput of tanet.io.video on synthetic content.

For each size, a ``testsrc2`` clip is encoded with libx264, then timed three ways:

* ``ffmpeg only``: ffmpeg decoding to rgb24 into ``-f null`` (no pipe, no Python), the
  ceiling for the reader;
* ``VideoReader``: decoding to rgb24 through the pipe into numpy arrays;
* ``VideoWriter``: numpy frames through the pipe into libx264 (preset veryfast, crf 18).

Usage::

    python benchmarks/bench_video.py --sizes 640x360 1280x720 --frames 240
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time
from pathlib import Path

from tanet.io.probe import ffmpeg_exe
from tanet.io.video import VideoReader
from tanet.io.writer import VideoWriter


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    """Encodes a synthetic clip (moving test pattern) with libx264 veryfast."""
    quiet = ("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
    source = ("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25", "-frames:v", str(frames))
    encode = ("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p")
    cmd = [ffmpeg_exe(), *quiet, *source, *encode, str(path)]
    subprocess.run(cmd, check=True)
    return path


def ffmpeg_decode_fps(path: Path, frames: int) -> float:
    """Frames per second of a bare ffmpeg decode to rgb24 (no pipe to Python)."""
    quiet = ("-hide_banner", "-nostdin", "-loglevel", "error")
    cmd = [ffmpeg_exe(), *quiet, "-i", str(path), "-pix_fmt", "rgb24", "-f", "null", "-"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return frames / (time.perf_counter() - start)


def reader_fps(path: Path) -> tuple[float, int]:
    """Frames per second of VideoReader, and the frames it read."""
    start = time.perf_counter()
    with VideoReader(path) as reader:
        for _ in reader:
            pass
    return reader.frames_read / (time.perf_counter() - start), reader.frames_read


def writer_fps(path: Path, source: Path, frames: int, preset: str, crf: int) -> float:
    """Frames per second of VideoWriter (libx264), cycling over 25 decoded frames."""
    with VideoReader(source, max_frames=25) as reader:
        pool = list(reader)
        info = reader.info
    start = time.perf_counter()
    with VideoWriter(path, info.width, info.height, info.fps, preset=preset, crf=crf, overwrite=True) as writer:
        for frame in itertools.islice(itertools.cycle(pool), frames):
            writer.write(frame)
    return frames / (time.perf_counter() - start)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(640, 360), (1280, 720)],
        help="WIDTHxHEIGHT sizes to measure",
    )
    parser.add_argument("--frames", type=int, default=240, help="frames per measurement")
    parser.add_argument("--preset", default="veryfast", help="libx264 preset of the writer")
    parser.add_argument("--crf", type=int, default=18, help="libx264 crf of the writer")
    args = parser.parse_args()

    print(
        f"ffmpeg: {ffmpeg_exe()}  cpus: {os.cpu_count()}  frames: {args.frames}  "
        f"writer: libx264 {args.preset} crf {args.crf}"
    )
    print(f"{'size':>10} {'ffmpeg only':>14} {'VideoReader':>14} {'VideoWriter':>14}")
    with tempfile.TemporaryDirectory(prefix="tanet-bench-") as tmp:
        for width, height in args.sizes:
            clip = make_clip(Path(tmp) / f"src-{width}x{height}.mp4", width, height, args.frames)
            bare = ffmpeg_decode_fps(clip, args.frames)
            decode, count = reader_fps(clip)
            assert count == args.frames, (count, args.frames)
            encode = writer_fps(Path(tmp) / "out.mp4", clip, args.frames, args.preset, args.crf)
            print(f"{width}x{height:<5} {bare:>10.1f} fps {decode:>10.1f} fps {encode:>10.1f} fps")


if __name__ == "__main__":
    main()
