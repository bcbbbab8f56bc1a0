"""``python -m tanet.train``: see :mod:`tanet.train.cli`."""

from tanet.train.cli import run

raise SystemExit(run())
