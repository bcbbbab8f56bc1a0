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
