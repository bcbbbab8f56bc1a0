"""Stage ``register``: log the trained model as an MLflow pyfunc, register it, pick a champion.

The model is logged (:func:`tanet.infer.packaging.log_pyfunc`) into its training run (named in the model folder's ``model.json`` by
the train stage), beside that run's metrics, curves, checkpoint and training dataset, so the
registered version links to all of them; when that run is not in this store (DVC restored
``train`` from its run-cache into another store) it is logged from the register run and the
version says so. It carries its weights folder as an artifact, only the inference code of
``tanet`` (the import closure of :mod:`tanet.infer.pyfunc`) in ``code_paths``, an explicit
tensor signature with free T, H and W (``(-1, -1, -1, 3)`` uint8 in and out), a real input
example (LR frames of a validation clip), requirements a CPU or a GPU machine installs
(ranges, not this machine's pins) and the evaluation as the logged model's metrics. Its
description is a model card. It is registered as ``register.model_name`` (``tanet``) and
gets the alias ``candidate``.

Champion rule (the gate): only the candidate's validation clips count (``heldout_*``
datasets; never Vid4, the test set). The candidate must beat bicubic there by more than
``register.min_gain``: a model worse than bicubic never becomes champion, even on a fresh
store. It must then beat the reference by as much on the same validation dataset (names
carry degradation and scale, ``heldout_BIx4``, so only like is compared with like): the
current champion, or on a fresh store the shipped model of the same scale and degradation,
both re-evaluated on the candidate's validation clips by the stage (:func:`run_register`).
On a fresh store the better of the two becomes champion: a shipped model that wins is
registered as a version of its own. ``tanet register`` (no clips at hand) compares with
the champion's tagged figures instead.

Version tags: git commit, the hash of the training shards, scale, degradation, alignment,
the licences of the training data, the flattened params, and every evaluation score
(``eval.<dataset>.<method>.<metric>``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tanet.config import RegisterParams
from tanet.errors import TanetError
from tanet.infer.packaging import log_pyfunc
from tanet.io.atomic import atomic_write_json
from tanet.io.model_files import MODEL_META
from tanet.ops.degrade import DegradationKind
from tanet.ops.optical_flow import DisPreset, FlowMethod
from tanet.stages import ALL_PARAMS
from tanet.stages.evaluate import load_eval
from tanet.track.tracking import Tracker, configure_mlflow, flatten, git_commit, tracking_uri

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"


def version_card(
    meta: dict[str, Any], eval_result: dict[str, Any], *, model_name: str, version: str, run_note: str, commit: str
) -> str:
    """The registered version's description: a model card in markdown."""
    from tanet.io.markdown import markdown_table
    from tanet.stages.evaluate import markdown_report

    m = meta["model"]
    rows = [
        (
            "architecture",
            f"TANet: {m['num_branches']} SR branches over 1..{2 * m['num_branches'] - 1} frames, "
            f"temporal modulation, alignment {m['alignment']}, x{m['scale']}, {m['color']}",
        ),
        ("degradation", meta.get("degradation", "")),
        ("initialised from", meta.get("init", "pretrained branches")),
        (
            "validation Y-PSNR",
            f"{meta.get('val_psnr', float('nan')):.4f} dB (bicubic {meta.get('val_psnr_bicubic', float('nan')):.4f})",
        ),
        ("training data", f"patches sha256 {meta.get('patches_sha256', '')}"),
        ("data licences", "; ".join(str(x) for x in meta.get("licences", [])) or "see the data manifest"),
        ("training run", run_note),
        ("git commit", commit),
    ]
    return "\n".join(
        [
            f"# tanet version {version}",
            "",
            *markdown_table(["", ""], rows),
            "",
            "## Evaluation (Y-PSNR dB / SSIM, all frames)",
            "",
            markdown_report(eval_result),
            "",
            "## Use",
            "",
            f'`mlflow.pyfunc.load_model("models:/{model_name}/{version}").predict(clip)` with `clip` a '
            f"`(T, H, W, 3)` uint8 RGB array; or `tanet upscale IN OUT --model models:/{model_name}/{version}`.",
            "The weights' terms follow the training data's licences above (the code is MIT).",
            "",
        ]
    )


def scores_from_tags(tags: dict[str, str], metric: str, method: str = "tanet") -> dict[str, float]:
    """``{dataset: score}`` of one method (the model: ``tanet``) from a model version's tags."""
    out = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "eval" and parts[2] == method and parts[3] == metric:
            out[parts[1]] = float(value)
    return out


VALIDATION_PREFIX = "heldout_"  # the datasets the gate reads: the candidate's validation clips


def champion_decision(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    min_gain: float,
    bicubic: dict[str, float] | None = None,
) -> tuple[bool, str]:
    """Whether the candidate becomes champion, and why (pure; see the module docstring).

    Args:
        candidate: the candidate's scores per dataset.
        champion: the champion's scores per dataset (None: no champion yet).
        min_gain: the margin over bicubic and over the champion.
        bicubic: bicubic's scores per dataset on the candidate's evaluation (required to promote).
    """
    val = sorted(d for d in candidate if d.startswith(VALIDATION_PREFIX))
    if not val:
        return False, f"no validation figure (datasets {sorted(candidate)}; the gate never reads Vid4)"
    ds = val[0]
    cand = candidate[ds]
    floor = (bicubic or {}).get(ds)
    if floor is None:
        return False, f"{ds}: no bicubic figure to compare with"
    if not cand > floor + min_gain:
        return False, f"{ds}: {cand:.4f} does not beat bicubic {floor:.4f} + {min_gain}"
    if champion is None:
        return True, f"no champion yet; {ds}: {cand:.4f} > bicubic {floor:.4f} + {min_gain}"
    if ds not in champion:
        return False, f"no validation dataset in common with the champion (candidate {ds}, champion {sorted(champion)})"
    champ = champion[ds]
    if cand > champ + min_gain:
        return True, f"{ds}: {cand:.4f} > champion {champ:.4f} + {min_gain}"
    return False, f"{ds}: {cand:.4f} does not beat champion {champ:.4f} + {min_gain}"


def dvc_experiment_tags() -> dict[str, str]:
    """``tanet.dvc_exp_name`` and ``tanet.dvc_baseline_rev`` under ``dvc exp run`` (DVC sets both
    variables for the stages it runs), so a ``dvc exp show`` row maps to its registry version."""
    names = {"DVC_EXP_NAME": "tanet.dvc_exp_name", "DVC_EXP_BASELINE_REV": "tanet.dvc_baseline_rev"}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def training_run(client: Any, meta: dict[str, Any]) -> str | None:
    """The model's training run (``model.json``'s ``training_run``) when this store has it."""
    run_id = meta.get("training_run")
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_run(run_id).info.run_id)
    except MlflowException as err:
        # Only "no such run" means another store; a server or network failure stops the stage.
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def log_version(
    model_dir: Path,
    eval_result: dict[str, Any],
    *,
    model_name: str,
    run_id: str,
    params: dict[str, Any] | None = None,
    root: Path | None = None,
    extra_tags: dict[str, str] | None = None,
    example_lr: np.ndarray | None = None,
    description: str | None = None,
) -> tuple[str, dict[str, str]]:
    """Logs a model folder as a pyfunc, registers it, tags and describes it; returns (version, tags).

    Args:
        model_dir: the model folder (weights + ``model.json``).
        eval_result: ``eval.json``-shaped scores (tags, the logged model's metrics, the card).
        model_name: registered model name.
        run_id: the run that logs it when the model's training run is not in this store.
        params: full params (tagged, flattened).
        root: repo root (embedded tracking store).
        extra_tags: more version tags.
        example_lr: LR frames ``(T, H, W, 3)`` of a validation clip for the input example.
        description: the version's description (default: :func:`version_card`).
    """
    mlflow = configure_mlflow(root)
    meta = json.loads((Path(model_dir) / MODEL_META).read_text())
    client = mlflow.MlflowClient()
    trained_in = training_run(client, meta)
    log_run = trained_in or run_id
    flat_eval = {
        f"{ds}.{m}.{k}": float(v) for ds, ms in eval_result.items() for m, vs in ms.items() for k, v in vs.items()
    }
    with mlflow.start_run(run_id=log_run):
        info = log_pyfunc(
            mlflow,
            model_dir,
            model_name=model_name,
            num_branches=meta["model"]["num_branches"],
            example_lr=example_lr,
            metrics=flat_eval,
        )
    version = str(info.registered_model_version)
    commit = git_commit(root)
    note = run_note(meta, trained_in, run_id)
    card = version_card(meta, eval_result, model_name=model_name, version=version, run_note=note, commit=commit)
    client.update_model_version(model_name, version, description=description or card)
    tags = {
        "tanet.training_run": trained_in or "",
        "tanet.logged_from_run": log_run,
        "tanet.git_commit": commit,
        **meta_tags(meta, params),
        **dvc_experiment_tags(),
        **(extra_tags or {}),
    }
    for ds, methods in eval_result.items():
        for method, vals in methods.items():
            for k, v in vals.items():
                tags[f"eval.{ds}.{method}.{k}"] = v
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, str(v))
    return version, {k: str(v) for k, v in tags.items()}


def run_note(meta: dict[str, Any], trained_in: str | None, run_id: str) -> str:
    """The card's line on the training run: found in this store, missing, or never recorded."""
    if trained_in:
        return f"{trained_in} (metrics, curves, checkpoint, training data)"
    if meta.get("training_run"):
        return f"{meta['training_run']}, not in this store (restored from DVC's run-cache); logged from run {run_id}"
    return f"none recorded; logged from run {run_id}"


def meta_tags(meta: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Version tags from ``model.json``: data hashes, model settings, licences, flattened params."""
    return {
        "tanet.patches_sha256": meta.get("patches_sha256", ""),
        "tanet.patches_dvc_md5": meta.get("patches_dvc_md5") or "",
        "tanet.scale": meta["model"]["scale"],
        "tanet.degradation": meta.get("degradation", ""),
        "tanet.alignment": meta["model"]["alignment"],
        "tanet.color": meta["model"]["color"],
        "tanet.licences": json.dumps(meta.get("licences", [])),
        "tanet.params": json.dumps(flatten(params or meta.get("params", {})))[:5000],
    }


def shipped_reference(meta: dict[str, Any]) -> str | None:
    """The shipped model a candidate is compared with on a fresh store: same scale and degradation."""
    from tanet.infer.shipped import available, read_card

    for name in available():
        card = read_card(name)
        if card["scale"] == meta["model"]["scale"] and card["degradation"] == meta.get("degradation"):
            return name
    return None


def register_model(
    model_dir: Path,
    eval_result: dict[str, Any],
    *,
    model_name: str,
    metric: str,
    min_gain: float,
    params: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
    experiment: str = "tanet",
    root: Path | None = None,
    rescore: Callable[[Path], dict[str, dict[str, float]]] | None = None,
    promote: str = "auto",
    example_lr: np.ndarray | None = None,
) -> dict[str, Any]:
    """Logs, registers and (maybe) promotes a model; returns the registration record.

    Args:
        model_dir: the train stage's model folder.
        eval_result: ``eval.json`` content.
        model_name: registered model name.
        metric: ``psnr`` or ``ssim`` for the champion rule.
        min_gain: margin the candidate must beat bicubic and the reference by.
        params: full params (tagged, flattened).
        tracker: the stage's MLflow run (a run is created if None).
        experiment: experiment for a newly created run.
        root: repo root (embedded tracking store).
        rescore: scores a model folder on the candidate's validation clips (``{dataset:
            {"psnr", "ssim"}}``). With it the reference (the champion, or on a fresh store the
            shipped model of the same scale and degradation) is re-evaluated there; without
            it the champion's own tagged figures are compared (``tanet register``).
        promote: ``auto`` (the gate moves ``@champion``) or ``never`` (only ``@candidate``).
        example_lr: LR frames ``(T, H, W, 3)`` of a validation clip, for the input example.

    Returns:
        ``{"model_name", "version", "aliases", "champion_version", "decision", "reference",
        "tracking_uri", "model_uri"}``.
    """
    mlflow = configure_mlflow(root)
    meta = json.loads((Path(model_dir) / MODEL_META).read_text())
    if meta.get("kind") != "joint":
        raise TanetError(f"{model_dir}: only joint models are registered, found {meta.get('kind')}")
    run_id = tracker.run_id if tracker is not None and tracker.enabled else None
    if run_id is None:
        from tanet.track.tracking import ensure_experiment

        exp = ensure_experiment(mlflow, experiment, root)
        run_id = mlflow.MlflowClient().create_run(exp, tags={"mlflow.runName": "register"}).info.run_id
    version, own = log_version(
        model_dir, eval_result, model_name=model_name, run_id=run_id, params=params, root=root, example_lr=example_lr
    )
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    # Read the alias table rather than catching get_model_version_by_alias's error: a server
    # or network failure must stop the stage, not pass for "no champion yet".
    aliases = dict(client.get_registered_model(model_name).aliases or {})
    ref = find_reference(client, model_name, aliases, meta, metric, rescore, root)
    champion_version, shipped = ref.champion_version, ref.shipped
    bicubic = scores_from_tags(own, metric, "bicubic")
    wins, reason = champion_decision(scores_from_tags(own, metric), ref.scores, min_gain, bicubic)
    if ref.label is not None and rescore is not None:
        reason += f" (reference: {ref.label}, re-evaluated on this candidate's validation clips)"
    promoted = wins and promote == "auto"
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        champion_version = version
    elif shipped is not None and promote == "auto" and champion_decision(ref.scores or {}, None, min_gain, bicubic)[0]:
        champion_version = register_shipped_champion(
            shipped, ref, eval_result, model_name=model_name, run_id=run_id, root=root, example_lr=example_lr
        )
        reason += f"; {shipped} registered as version {champion_version} and made champion"
    elif wins:
        reason += "; not promoted (register.promote: never)"
    record_gate(client, model_name, version, promoted, reason)
    log.info("registered %s version %s (%s): %s", model_name, version, "champion" if promoted else "candidate", reason)
    return {
        "model_name": model_name,
        "version": version,
        "aliases": [CANDIDATE] + ([CHAMPION] if promoted else []),
        "champion_version": champion_version,
        "decision": reason,
        "reference": ref.label,
        "tracking_uri": tracking_uri(root),
        "model_uri": f"models:/{model_name}/{version}",
    }


def record_gate(client: Any, model_name: str, version: str, promoted: bool, reason: str) -> None:
    """The gate's decision on the version itself: a ``tanet.gate`` tag and a section of its card."""
    outcome = "promoted to @champion" if promoted else "kept as @candidate"
    client.set_model_version_tag(model_name, version, "tanet.gate", f"{outcome}: {reason}")
    card = client.get_model_version(model_name, version).description or ""
    section = f"## Champion gate\n\n{outcome}: {reason}\n"
    client.update_model_version(model_name, version, description=f"{card.rstrip()}\n\n{section}")


def register_shipped_champion(
    shipped: str,
    ref: Reference,
    eval_result: dict[str, Any],
    *,
    model_name: str,
    run_id: str,
    root: Path | None,
    example_lr: np.ndarray | None,
) -> str:
    """A fresh store keeps the better of the two as ``@champion``: registers the shipped model
    as a version with the figures it just earned on the candidate's validation clips (its
    card as description), makes it champion and returns its version."""
    from tanet.infer.shipped import read_card, render_card, shipped_dir

    earned = {ds: {"tanet": v, "bicubic": eval_result.get(ds, {}).get("bicubic", {})} for ds, v in ref.figures.items()}
    version, _ = log_version(
        shipped_dir(shipped),
        earned,
        model_name=model_name,
        run_id=run_id,
        root=root,
        extra_tags={"tanet.shipped": shipped},
        example_lr=example_lr,
        description=render_card(read_card(shipped)),
    )
    configure_mlflow(root).MlflowClient().set_registered_model_alias(model_name, CHAMPION, version)
    return version


@dataclass
class Reference:
    """What a candidate is compared with: the champion, a shipped model (fresh store) or nothing."""

    label: str | None = None  # "champion version 3", "shipped tanet-s"
    scores: dict[str, float] | None = None  # the gate's metric per dataset
    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # rescored {dataset: {psnr, ssim}}
    champion_version: str | None = None
    shipped: str | None = None


def find_reference(
    client: Any,
    model_name: str,
    aliases: dict[str, Any],
    meta: dict[str, Any],
    metric: str,
    rescore: Callable[[Path], dict[str, dict[str, float]]] | None,
    root: Path | None,
) -> Reference:
    """The gate's reference, re-evaluated by ``rescore`` when given (else the champion's tagged figures)."""
    if CHAMPION in aliases:
        version = str(aliases[CHAMPION])
        ref = Reference(label=f"champion version {version}", champion_version=version)
        if rescore is None:
            ref.scores = scores_from_tags(client.get_model_version(model_name, version).tags, metric)
        else:
            from tanet.infer.pipeline import resolve_model

            ref.figures = rescore(resolve_model(f"models:/{model_name}/{version}", root))
            ref.scores = {ds: v[metric] for ds, v in ref.figures.items()}
        return ref
    shipped = shipped_reference(meta) if rescore is not None else None
    if rescore is None or shipped is None:
        return Reference()
    from tanet.infer.shipped import shipped_dir

    figures = rescore(shipped_dir(shipped))
    return Reference(f"shipped {shipped}", {ds: v[metric] for ds, v in figures.items()}, figures, shipped=shipped)


def write_registration(path: Path, record: dict[str, Any]) -> None:
    """Writes the registration record (``metrics/register.json``)."""
    atomic_write_json(path, record)


PARAMS = {
    "register": "register",
    "max_frames": "evaluate.max_frames",
    "tile": "evaluate.tile",
    "crop": "evaluate.crop",
    "scale": "model.scale",
    "degradation": "patches.degradation",
    "flow_method": "flow.method",
    "dis_preset": "flow.dis_preset",
    "experiment": "mlflow.experiment",
    "record": ALL_PARAMS,
}


def run_register(
    register: RegisterParams,
    *,
    max_frames: int,
    tile: int,
    crop: int,
    scale: int,
    degradation: DegradationKind,
    flow_method: FlowMethod,
    dis_preset: DisPreset,
    experiment: str,
    record: dict[str, Any],
    model: Path,
    eval_json: Path,
    clips: Path,
    lr: Path,
    out: Path,
    root: Path,
    tracker: Tracker,
) -> dict[str, Any]:
    """Registers the train stage's model, applies the gate and writes ``metrics/register.json``.

    The gate's reference (the champion, or the shipped model on a fresh store) is
    re-evaluated on this candidate's validation clips (``clips``, ``lr``), never on Vid4,
    the way the evaluate stage scores them (``evaluate.max_frames``, ``tile``, ``crop``).

    Args:
        register: the ``register`` section.
        max_frames, tile, crop: the ``evaluate`` keys the validation scores follow.
        scale, degradation: ``model.scale`` and ``patches.degradation``: the validation LR set.
        flow_method, dis_preset: ``flow.method`` and ``flow.dis_preset``, for ROF at inference.
        experiment: ``mlflow.experiment``.
        record: the whole params, as the version's tags.
        model: the train stage's model folder.
        eval_json: the evaluate stage's ``eval.json``.
        clips, lr: the ingest and degrade stages' outputs.
        out: ``metrics/register.json``.
        root: repo root (embedded tracking store).
        tracker: the stage's MLflow run.
    """
    from tanet.infer.evaluation import heldout_clips, heldout_scores
    from tanet.train.distributed import resolve_device

    rp = register
    val = list(heldout_clips(clips, lr, scale, degradation, max_frames))
    device = resolve_device("auto")

    def rescore(model_dir: Path) -> dict[str, dict[str, float]]:
        return heldout_scores(
            model_dir,
            val,
            device=device,
            tile=tile,
            crop=crop,
            flow_method=flow_method,
            flow_preset=dis_preset,
        )

    registration = register_model(
        model,
        load_eval(eval_json),
        model_name=rp.model_name,
        metric=rp.metric,
        min_gain=rp.min_gain,
        params=record,
        tracker=tracker,
        experiment=experiment,
        root=root,
        rescore=rescore,
        promote=rp.promote,
        example_lr=np.stack(val[0].lr) if val else None,
    )
    write_registration(out, registration)
    return registration
