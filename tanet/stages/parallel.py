"""Fan-out without an orchestrator: the mapper protocol used by pipeline stages.

Stage functions take a ``mapper`` that applies a function to every item and returns, in
order, each result or the exception it raised. The library ships serial and thread
mappers; ``flows/`` passes a Prefect mapper (tasks on a configurable task runner), so the
library never imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Mapper(Protocol):
    """``mapper(fn, items, names)`` -> results or exceptions, in the order of ``items``."""

    def __call__(
        self, fn: Callable[[T], R], items: Sequence[T], names: Sequence[str] | None = None
    ) -> list[R | BaseException]: ...


def _call(fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return fn(item)
    except Exception as err:  # noqa: BLE001 - returned to the stage, which decides
        return err


def serial_map(fn: Callable[[T], R], items: Sequence[T], names: Sequence[str] | None = None) -> list[R | BaseException]:
    """Applies ``fn`` to each item in turn."""
    return [_call(fn, item) for item in items]


def thread_map(max_workers: int) -> Mapper:
    """A mapper running items on a thread pool (OpenCV, ffmpeg and zstd release the GIL)."""

    def mapper(fn: Callable[[T], R], items: Sequence[T], names: Sequence[str] | None = None) -> list[R | BaseException]:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(lambda item: _call(fn, item), items))

    return mapper
