"""Stage ``degrade``: the LR frames of every clip for each (scale, kind) in params.

Layout: ``<out>/x<scale>_<kind>/<clip_id>/00000000.png`` (lossless PNG). The HR target of
a clip at scale r is its normalised frame cropped to a multiple of r from the top-left
(``tanet.ops.degrade.mod_crop``), so no second HR copy is stored.
"""

from __future__ import annotations

from pathlib import Path

from tanet.config import DegradeParams
from tanet.errors import TanetError
from tanet.io.atomic import atomic_dir, atomic_write_json
from tanet.io.clips import lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb, write_rgb
from tanet.ops.color import to_numpy, to_tensor
from tanet.ops.degrade import Degradation, DegradationKind, apply_degradation
from tanet.stages.parallel import Mapper, serial_map

PARAMS = {"degrade": "degrade"}


def run_degrade(degrade: DegradeParams, clips_dir: Path, out_dir: Path, mapper: Mapper = serial_map) -> dict[str, int]:
    """Degrades every clip for every configured (scale, kind).

    Args:
        degrade: the ``degrade`` section.
        clips_dir: the ingest stage's output.
        out_dir: this stage's output folder (replaced whole on success).
        mapper: fan-out over (clip, scale, kind) jobs.

    Returns:
        Frames written per LR set.
    """
    clips = read_manifest(clips_dir)
    jobs = [(c.clip_id, s, k) for s in degrade.scales for k in degrade.kinds for c in clips]
    with atomic_dir(out_dir) as tmp:

        def run(job: tuple[str, int, DegradationKind]) -> int:
            clip_id, scale, kind = job
            return degrade_folder(
                clips_dir / clip_id,
                tmp / lr_set_name(scale, kind) / clip_id,
                kind,
                scale,
                sigma=degrade.bd_sigma,
                kernel_size=degrade.bd_kernel_size,
            )

        results = mapper(run, jobs, [f"{lr_set_name(s, k)}/{c}" for c, s, k in jobs])
        counts: dict[str, int] = {}
        for (clip_id, scale, kind), res in zip(jobs, results):
            if isinstance(res, BaseException):
                raise TanetError(f"degrade: {lr_set_name(scale, kind)}/{clip_id} failed: {res}") from res
            counts[lr_set_name(scale, kind)] = counts.get(lr_set_name(scale, kind), 0) + res
        atomic_write_json(tmp / "summary.json", {"frames": counts, "clips": [c.clip_id for c in clips]})
    return counts


def degrade_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    kind: DegradationKind,
    scale: int,
    sigma: float = 1.6,
    kernel_size: int = 13,
) -> int:
    """Degrades every frame of a folder into ``out_dir`` (backs ``tanet degrade``).

    Frames are read in order with ``tanet.io.frames``; each LR frame is written as PNG under
    the same stem (``00000000.png``). The folder is filled under a temporary name and
    swapped in whole (``tanet.io.atomic.atomic_dir``), so a failure leaves no partial output
    and keeps any previous ``out_dir``.

    Args:
        in_dir: HR frame folder.
        out_dir: LR frame folder to create or replace.
        kind: "BI" or "BD".
        scale: one of SCALES.
        sigma: BD sigma.
        kernel_size: BD kernel side.

    Returns:
        The number of frames written.

    Raises:
        InputError: ``in_dir`` is not a valid frame folder or a frame cannot be read.
        ValueError: invalid degradation parameters.
    """
    deg = Degradation(kind, scale, sigma=sigma, kernel_size=kernel_size)
    frames = list_frames(in_dir)
    with atomic_dir(out_dir) as tmp:
        for path in frames:
            lr = apply_degradation(to_tensor(read_rgb(path)), deg)
            write_rgb(tmp / f"{path.stem}.png", to_numpy(lr))
    return len(frames)
