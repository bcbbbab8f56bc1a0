"""Seeds derived from names: every random stream in tanet is a pure function of the run's seed and its keys."""

from __future__ import annotations

import hashlib
from typing import Any


def seed_of(*keys: Any, nbytes: int = 8) -> int:
    """An integer seed from keys: the first ``nbytes`` of sha256 of ``"/".join(keys)``, little-endian.

    >>> seed_of(0, "bikes") == seed_of(0, "bikes") != seed_of(1, "bikes")
    True
    >>> seed_of(7, "joint", "init", nbytes=4) < 2**32
    True
    """
    return int.from_bytes(hashlib.sha256("/".join(map(str, keys)).encode()).digest()[:nbytes], "little")
