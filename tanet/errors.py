"""Exceptions raised by tanet. Every error about input data names the offending file."""

from __future__ import annotations

from pathlib import Path


class TanetError(Exception):
    """Base class of all tanet errors."""


class ConfigError(TanetError, ValueError):
    """A parameter file or config value is invalid; the message names the key."""


class InputError(TanetError):
    """Input data (a video, a frame, a folder) is unusable.

    Args:
        path: the file or folder at fault.
        problem: what is wrong with it, in one line.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class VideoError(InputError):
    """ffmpeg could not read or write a video; the message carries its stderr tail."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised in the main thread like Ctrl-C, so every ``finally``
    and ``with`` block (temporary outputs, ffmpeg children, servers) cleans up on the way out.

    Args:
        signum: the signal's number (the exit status is 128 + signum, as a shell reports it).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


def raise_on_termination() -> None:
    """Turns SIGTERM and SIGHUP into :class:`Terminated` in the main thread (no-op elsewhere).

    SIGTERM is what ``timeout``, systemd, ``docker stop`` and Prefect's cancellation send; by
    default it kills Python without running any cleanup (``atexit`` included).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
