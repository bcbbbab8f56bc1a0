"""Stage ``pretrain``: each SR branch alone with loss (1) (Liu et al. 2017, Sec. 3.3, "model A").

Branches 2..N start from branch 1's weights on their centre frame and zeros on their
neighbours (``pretrain.init_from_branch1``), so each begins where branch 1 ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tanet.config import PretrainParams
from tanet.data.valset import ValClip
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json
from tanet.io.clips import DataDirs
from tanet.io.model_files import CKPT_WEIGHTS, HISTORY, BranchModel, write_model_dir
from tanet.models.vsr import ModelConfig
from tanet.ops.degrade import DegradationKind
from tanet.stages.parallel import Mapper, serial_map
from tanet.stages.train import SETUP_PARAMS, TrainingSetup, shipped_init
from tanet.track.tracking import Tracker, child_run
from tanet.train.curves import write_curve_data
from tanet.train.distributed import dist_info, resolve_device
from tanet.train.job import Job
from tanet.train.loop import run_job
from tanet.train.validate import validate

PARAMS = {"pretrain": "pretrain", **SETUP_PARAMS}


def branch_job(pretrain: PretrainParams, setup: TrainingSetup, i: int) -> Job:
    """The pretraining job of branch ``i``."""
    return Job("branch", i, setup.model, pretrain, 0.0, setup.seed)


def pretrain_branch(
    pretrain: PretrainParams,
    setup: TrainingSetup,
    i: int,
    dirs: DataDirs,
    out_dir: Path,
    ckpt_root: Path,
    *,
    device: torch.device,
    val_clips: list[ValClip],
    tracker: Tracker | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Pretrains branch ``i`` into ``out_dir/branch_<i>``; returns its validation metrics (rank 0)."""
    job = branch_job(pretrain, setup, i)
    grown = i > 1 and pretrain.init_from_branch1
    return run_job(
        job,
        dirs.patches,
        val_clips,
        out_dir / job.name,
        ckpt_root / job.name,
        device=device,
        init_weights=branch1_init(pretrain, setup.model, i, out_dir),
        tracker=tracker,
        meta={**setup.meta(dirs.patches), "init": "branch_1" if grown else "scratch"},
        **kw,
    )


def shipped_branches(
    pretrain: PretrainParams,
    setup: TrainingSetup,
    name: str,
    weights: dict[str, torch.Tensor],
    dirs: DataDirs,
    out: Path,
    val: list[ValClip],
) -> dict[str, dict[str, Any]]:
    """The pretrain stage when ``train.init`` is a shipped model: its branches, untrained, as ``branch_<i>``.

    Each branch is cut from the shipped joint network (``tanet.branches.<i-1>.*``) and
    validated like a pretrained one, so the evaluation's branch rows and ``pretrain.json``
    mean the same in both schedules.
    """
    device = resolve_device("auto")
    common = {**setup.meta(dirs.patches), "init": name, "steps": 0}
    results = {}
    for i in range(1, setup.model.num_branches + 1):
        job = branch_job(pretrain, setup, i)
        prefix = f"tanet.branches.{i - 1}."
        model = BranchModel(setup.model, i)
        model.load_state_dict({"branch." + k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
        metrics = validate(job, model.to(device), val, device)
        write_model_dir(out / job.name, model.cpu(), job, {**common, **metrics}, [{"step": 0, **metrics}])
        results[job.name] = metrics
    return results


def inflate_branch1(weights: dict[str, torch.Tensor], num_frames: int, channels: int) -> dict[str, torch.Tensor]:
    """Branch 1's state dict grown into the initial weights of a branch on ``num_frames`` frames.

    The first convolution sees ``num_frames * channels`` input channels (early fusion,
    frame-major); its kernels for the centre frame are branch 1's and those for the
    neighbours are zero, so the grown branch computes exactly branch 1's output at step 0
    while the neighbours' kernels still receive gradients. Every other tensor is copied.

    Args:
        weights: a :class:`~tanet.io.model_files.BranchModel` state dict of branch 1.
        num_frames: frames of the new branch (2i-1).
        channels: colour channels per frame.

    Returns:
        The new branch's state dict (same keys).
    """
    centre = num_frames // 2
    out = {}
    for key, value in weights.items():
        if value.ndim == 4 and value.shape[1] == channels and key.endswith(("body.0.weight", "head.weight")):
            grown = value.new_zeros(value.shape[0], num_frames * channels, *value.shape[2:])
            grown[:, centre * channels : (centre + 1) * channels] = value
            out[key] = grown
        else:
            out[key] = value.clone()
    return out


def branch1_init(
    pretrain: PretrainParams, model: ModelConfig, i: int, pretrain_dir: Path
) -> dict[str, torch.Tensor] | None:
    """Initial weights of branch ``i`` (``pretrain.init_from_branch1``): branch 1 grown, or None."""
    if i == 1 or not pretrain.init_from_branch1:
        return None
    path = pretrain_dir / "branch_1" / CKPT_WEIGHTS
    if not path.is_file():
        raise TanetError(
            f"{path}: branch {i} starts from branch 1 (pretrain.init_from_branch1); pretrain branch 1 first"
        )
    return inflate_branch1(load_file(str(path)), 2 * i - 1, model.channels)


def run_pretrain(
    pretrain: PretrainParams,
    *,
    model: ModelConfig,
    seed: int,
    init: str,
    degradation: DegradationKind,
    patch_size: int,
    record: dict[str, Any],
    dirs: DataDirs,
    out: Path,
    metrics: Path | None,
    checkpoints: Path,
    plots: Path | None,
    tracker: Tracker,
    mapper: Mapper = serial_map,
    branches: list[int] | None = None,
    device: torch.device | str = "auto",
    stop_after: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Pretrains branches 1..N and writes ``metrics/pretrain.json``; returns each branch's validation PSNR.

    With ``pretrain.init_from_branch1`` branch 1 runs first and the others then side by
    side (as many at once as the mapper runs: ``pretrain.parallel`` threads in the flow).

    Args:
        pretrain: the ``pretrain`` section.
        model, seed, init, degradation, patch_size, record: the
            :class:`~tanet.stages.train.TrainingSetup` fields.
        dirs: the data stages' outputs.
        out: pretrained branches folder (``branch_<i>`` each).
        metrics: ``pretrain.json`` to write (None: not written, as under ``python -m tanet.train``).
        checkpoints: checkpoint root (``branch_<i>/step_<n>``).
        plots: folder of the branches' curves as DVC data plots (``branch_<i>_loss.csv`` ...; None: none).
        tracker: the stage's MLflow run; each branch logs to a child run.
        mapper: runs the branches of one wave (Prefect tasks in the flow).
        branches: only these branches (default: 1..N).
        device: a device, or ``auto``, ``cpu``, ``cuda``.
        stop_after: stop each branch after this many steps without outputs (tests of resuming).
        deadline: a :func:`time.monotonic` time: a branch running past it checkpoints and
            stops (``stopped_at``), and no later wave starts.

    Returns:
        Each branch's validation PSNR (its run's metrics when ``metrics`` is None).
    """
    setup = TrainingSetup(model, seed, init, degradation, patch_size, record)
    val = setup.val_clips(dirs, pretrain.val_frames) if dist_info()[0] == 0 else []
    shipped = shipped_init(setup)
    if shipped is not None:  # fine-tuning a shipped network: nothing to pretrain
        done = shipped_branches(pretrain, setup, shipped[0], shipped[1], dirs, out, val)
        return _report(done, tracker, metrics, out, plots)
    dev = resolve_device(device)
    if dev.type == "cpu" and pretrain.parallel > 1:
        # Branches on parallel threads share the cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // pretrain.parallel))
    todo = branches or list(range(1, model.num_branches + 1))

    def one(i: int) -> dict[str, Any]:
        run = child_run(tracker, f"branch_{i}", {"tanet.stage": "pretrain", "tanet.branch": i})
        try:
            result = pretrain_branch(
                pretrain,
                setup,
                i,
                dirs,
                out,
                checkpoints,
                device=dev,
                tracker=run,
                val_clips=val,
                stop_after=stop_after,
                deadline=deadline,
            )
        except BaseException:
            run.finish("FAILED")
            raise
        run.finish()
        return result

    # Branches grown from branch 1 wait for it; they then train side by side.
    waves = [todo[:1], todo[1:]] if pretrain.init_from_branch1 and todo[0] == 1 else [todo]
    results: list[Any] = []
    for wave in waves:
        results += mapper(one, wave, [f"branch_{i}" for i in wave]) if wave else []
        # A failed or stopped branch 1 leaves nothing for the grown branches to start from.
        if any(isinstance(r, BaseException) or "stopped_at" in r for r in results):
            break
    for i, res in zip(todo, results):  # a failed first wave leaves the rest unrun
        if isinstance(res, BaseException):
            raise TanetError(f"pretrain: branch {i} failed: {res}") from res
    done = {f"branch_{i}": res for i, res in zip(todo, results)}
    if dist_info()[0] != 0 or any("val_psnr" not in r for r in done.values()):
        return done  # other ranks, or stopped early: nothing to report
    return _report(done, tracker, metrics, out, plots)


def _report(
    results: dict[str, dict[str, Any]], tracker: Tracker, metrics: Path | None, out: Path, plots: Path | None
) -> dict[str, Any]:
    """``pretrain.json`` (each branch's validation PSNR, 4 decimals), logged and written, and the
    branches' curves as data plots; returns the figures flat (the results as they are when
    ``metrics`` is None)."""
    if metrics is None:
        return results
    summary = {k: {"val_psnr": round(v["val_psnr"], 4)} for k, v in results.items()}
    tracker.log_metrics({f"{k}.val_psnr": v["val_psnr"] for k, v in summary.items()})
    atomic_write_json(metrics, summary)
    if plots is not None:
        histories = {k: json.loads((out / k / HISTORY).read_text()) for k in results if (out / k / HISTORY).is_file()}
        write_curve_data(histories, plots)
    return {k: v["val_psnr"] for k, v in summary.items()}
