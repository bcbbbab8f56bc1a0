"""Training checkpoints: ``<ckpt_dir>/step_<n>/`` with weights, optimiser and loader state.

A folder is filled under a temporary name, fsynced and renamed to a name that did not exist,
and only then are older ones removed, so a kill at any moment (even mid-write) leaves the
previous complete checkpoint. A job resumes only from a checkpoint with its fingerprint
(params, data and initial weights) and the same number of ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tanet.data.loader import LoaderState
from tanet.errors import TanetError
from tanet.io.atomic import mkdtemp_public
from tanet.io.model_files import CKPT_WEIGHTS
from tanet.train.job import Job

log = logging.getLogger(__name__)


CKPT_STATE = "state.pt"  # optimiser, loader positions, history (torch.load(weights_only=True))


CKPT_META = "meta.json"  # step, fingerprint, job, world size: read without loading the state


CKPT_PREFIX = "step_"  # checkpoint folders are step_00000200, ...


# -- checkpoints --------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders of ``ckpt_dir``, newest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name.removeprefix(CKPT_PREFIX).isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CKPT_PREFIX)), reverse=True)


def save_checkpoint(
    ckpt_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    loader_states: list[LoaderState],
    history: list[dict[str, Any]],
    meta: dict[str, Any],
) -> Path:
    """Writes ``ckpt_dir/step_<step>`` atomically, then removes every older checkpoint.

    The folder is filled and fsynced under a temporary name and renamed to a name that does
    not exist yet (one atomic rename; no moment without a complete checkpoint).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{CKPT_PREFIX}{step:08d}"
    tmp = Path(mkdtemp_public(prefix=f".{final.name}.", suffix=".tmp", dir=ckpt_dir))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / CKPT_WEIGHTS))
        torch.save(
            {
                "step": step,
                "optimizer": opt.state_dict(),
                "loader": [dataclasses.asdict(s) for s in loader_states],
                "history": history,
            },
            tmp / CKPT_STATE,
        )
        (tmp / CKPT_META).write_text(json.dumps({"step": step, "world": len(loader_states), **meta}, indent=2) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # another job's checkpoint at this step (its fingerprint did not match)
            os.replace(final, ckpt_dir / f".{final.name}.stale-{os.getpid()}")
        os.replace(tmp, final)
        _fsync(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in ckpt_dir.iterdir():  # older checkpoints, leftovers of killed writes, stale folders
        if (
            old != final
            and old.is_dir()
            and (old.name.startswith(CKPT_PREFIX) or old.name.startswith(f".{CKPT_PREFIX}"))
        ):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: Path, fingerprint: str, world: int = 1) -> dict[str, Any] | None:
    """The newest complete checkpoint of ``ckpt_dir`` for the same job and inputs (else None).

    Checkpoints of other params, data or initial weights (another fingerprint) are skipped;
    an unreadable one is skipped for the next older one.

    Raises:
        TanetError: the checkpoint was written by another number of DDP ranks.
    """
    for folder in checkpoint_dirs(ckpt_dir):
        try:
            meta = json.loads((folder / CKPT_META).read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: unreadable checkpoint (%s); trying an older one", folder, err)
            continue
        if meta.get("fingerprint") != fingerprint:
            log.info("%s is for other params, data or initial weights; not resumed", folder)
            continue
        if meta.get("world") != world:
            raise TanetError(
                f"{folder}: written by {meta.get('world')} DDP ranks, this run has {world}; "
                "resume with the same number of processes or delete the checkpoint"
            )
        try:
            state = torch.load(folder / CKPT_STATE, map_location="cpu", weights_only=True)
            state["weights"] = load_file(str(folder / CKPT_WEIGHTS))
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint falls back to an older one
            log.warning("%s: unreadable checkpoint (%s); trying an older one", folder, err)
            continue
        state["path"] = folder
        return state
    return None


# Optimiser-section keys newer than the checkpoint format, with the behaviour their absence meant.
_LATER_KEYS: dict[str, Any] = {"mixing": "adaptive", "modulation_start": "random", "modulation_lr_scale": 1.0}


def job_fingerprint(job: Job, patches_manifest: dict[str, Any], init_weights: dict[str, torch.Tensor] | None) -> str:
    """Identity of a job's inputs: params, the shards' checksums and the initial weights.

    ``train.init`` is left out: it only names where the initial weights come from, and those
    weights are hashed themselves. Keys added to the params after checkpoints were first
    written (``_LATER_KEYS``) count only when set away from the value their absence meant,
    so an older checkpoint of the same job still resumes.
    """
    optim = {
        k: v
        for k, v in dataclasses.asdict(job.optim).items()
        if k != "init" and not (k in _LATER_KEYS and v == _LATER_KEYS[k])
    }
    digest = hashlib.sha256(
        json.dumps(
            [job.kind, job.branch, job.model.to_dict(), optim, job.san_lambda, job.seed],
            sort_keys=True,
        ).encode()
    )
    for shard in patches_manifest["shards"]:
        digest.update(str(shard["sha256"]).encode())
    weights = init_weights or {}
    for name in sorted(weights):
        digest.update(name.encode() + weights[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
