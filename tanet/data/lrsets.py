"""Stage ``degrade``: the LR frames of every clip for each (scale, kind) in params.

Layout: ``<out>/x<scale>_<kind>/<clip_id>/00000000.png`` (lossless PNG). The HR target of
a clip at scale r is its normalised frame cropped to a multiple of r from the top-left
(``tanet.degrade.mod_crop``), so no second HR copy is stored.
"""

from __future__ import annotations

from pathlib import Path

from tanet.atomic import atomic_dir, atomic_write_json
from tanet.config import Params
from tanet.data.ingest import read_manifest
from tanet.degrade import degrade_folder
from tanet.errors import TanetError
from tanet.parallel import Mapper, serial_map


def lr_set_name(scale: int, kind: str) -> str:
    """Folder name of an LR set, e.g. ``x4_BI``."""
    return f"x{scale}_{kind}"


def run_degrade(params: Params, clips_dir: Path, out_dir: Path, mapper: Mapper = serial_map) -> dict[str, int]:
    """Degrades every clip for every configured (scale, kind).

    Args:
        params: pipeline params (``degrade`` section).
        clips_dir: the ingest stage's output.
        out_dir: this stage's output folder (replaced whole on success).
        mapper: fan-out over (clip, scale, kind) jobs.

    Returns:
        Frames written per LR set.
    """
    dp = params.degrade
    clips = read_manifest(clips_dir)
    jobs = [(c.clip_id, s, k) for s in dp.scales for k in dp.kinds for c in clips]
    with atomic_dir(out_dir) as tmp:

        def run(job: tuple[str, int, str]) -> int:
            clip_id, scale, kind = job
            return degrade_folder(
                clips_dir / clip_id,
                tmp / lr_set_name(scale, kind) / clip_id,
                kind,
                scale,
                sigma=dp.bd_sigma,
                kernel_size=dp.bd_kernel_size,
            )

        results = mapper(run, jobs, [f"{lr_set_name(s, k)}/{c}" for c, s, k in jobs])
        counts: dict[str, int] = {}
        for (clip_id, scale, kind), res in zip(jobs, results):
            if isinstance(res, BaseException):
                raise TanetError(f"degrade: {lr_set_name(scale, kind)}/{clip_id} failed: {res}") from res
            counts[lr_set_name(scale, kind)] = counts.get(lr_set_name(scale, kind), 0) + res
        atomic_write_json(tmp / "summary.json", {"frames": counts, "clips": [c.clip_id for c in clips]})
    return counts
