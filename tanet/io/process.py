"""ffmpeg as a subprocess: quiet flags, a stderr drain that keeps the last lines, exact pipe reads, stopping.

Shared by the readers (:mod:`tanet.io.video`) and writers (:mod:`tanet.io.writer`). ffmpeg's
stderr is drained by a background thread, so a chatty ffmpeg never blocks on a full pipe and
errors can quote what it said.
"""

from __future__ import annotations

import collections
import subprocess
import threading
from fractions import Fraction
from typing import Any

from tanet.io.probe import _DAMAGE, STDERR_TAIL_LINES

STOP_TIMEOUT_S = 5


# ffmpeg's quiet, non-interactive flags. With -loglevel error, every stderr line is a
# problem report, so the kept tail is exactly what an error message should quote.
QUIET = ("-hide_banner", "-nostdin", "-nostats", "-loglevel", "error")


class StderrTail:
    """Drains a process's stderr in a background thread, keeping the last lines.

    Draining is what prevents a deadlock: ffmpeg blocks once the stderr pipe buffer is
    full, while we block reading frames from stdout.
    """

    def __init__(self, stream: Any, max_lines: int = STDERR_TAIL_LINES) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.damage: list[str] = []  # lines matching _DAMAGE, kept even if scrolled away
        self._thread = threading.Thread(target=self._pump, name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._lines.append(line)
                if _DAMAGE.search(line) and len(self.damage) < 5:
                    self.damage.append(line)
        self._stream.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        """The kept lines, oldest first (call after join for the complete tail)."""
        return "\n".join(self._lines) or "(ffmpeg printed nothing)"


def popen(cmd: list[str], *, stdin: Any, stdout: Any) -> tuple[subprocess.Popen[bytes], StderrTail]:
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    return proc, StderrTail(proc.stderr)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Ends ffmpeg now and reaps it (no zombie): terminate, then kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def read_exactly(stream: Any, buf: memoryview) -> int:
    """Fills ``buf`` from a pipe; returns the bytes read (fewer only at end of stream)."""
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def as_fraction(fps: Fraction | int | str) -> Fraction:
    """Exact frame rate; floats are refused because 29.97 is not 30000/1001."""
    if isinstance(fps, float):
        raise TypeError(f"pass fps as a Fraction, int or 'num/den' string, not float {fps!r}")
    rate = Fraction(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate
