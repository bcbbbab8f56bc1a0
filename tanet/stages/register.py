"""Stage ``register``: log the trained model as an MLflow pyfunc, register it, pick a champion.

The model is logged with its weights folder as an artifact, the ``tanet`` package in
``code_paths``, an explicit tensor signature with free T, H and W
(``(-1, -1, -1, 3)`` uint8 in and out), an input example and pinned requirements. It is
registered as ``register.model_name`` (``tanet``) and gets the alias ``candidate``.

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

import importlib.metadata
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import tanet
from tanet.config import Params
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json
from tanet.io.model_files import MODEL_META
from tanet.stages.evaluate import load_eval
from tanet.track.tracking import Tracker, configure_mlflow, flatten, git_commit, tracking_uri

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
_REQUIREMENTS = ("torch", "numpy", "opencv-python-headless", "safetensors", "pyyaml")


def pinned_requirements() -> list[str]:
    """``name==version`` of what the pyfunc imports, as installed here."""
    out = []
    for name in _REQUIREMENTS:
        version = importlib.metadata.version(name).split("+")[0]
        out.append(f"{name}=={version}")
    return out


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]))


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


def log_version(
    model_dir: Path,
    eval_result: dict[str, Any],
    *,
    model_name: str,
    run_id: str,
    params: dict[str, Any] | None = None,
    root: Path | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """Logs a model folder as a pyfunc in run ``run_id``, registers it and tags it; returns (version, tags)."""
    mlflow = configure_mlflow(root)
    meta = json.loads((Path(model_dir) / MODEL_META).read_text())
    from tanet.infer.pyfunc import ARTIFACT, TanetPyfunc

    example = np.zeros((meta["model"]["num_branches"] * 2 - 1, 16, 16, 3), np.uint8)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TanetPyfunc(),
            artifacts={ARTIFACT: str(Path(model_dir).resolve())},
            code_paths=[str(Path(tanet.__file__).parent)],
            signature=_signature(),
            input_example=example,
            pip_requirements=pinned_requirements(),
            registered_model_name=model_name,
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    tags = {
        "tanet.git_commit": git_commit(root),
        "tanet.patches_sha256": meta.get("patches_sha256", ""),
        "tanet.patches_dvc_md5": meta.get("patches_dvc_md5") or "",
        "tanet.scale": meta["model"]["scale"],
        "tanet.degradation": meta.get("degradation", ""),
        "tanet.alignment": meta["model"]["alignment"],
        "tanet.color": meta["model"]["color"],
        "tanet.licences": json.dumps(meta.get("licences", [])),
        "tanet.params": json.dumps(flatten(params or meta.get("params", {})))[:5000],
        **(extra_tags or {}),
    }
    for ds, methods in eval_result.items():
        for method, vals in methods.items():
            for k, v in vals.items():
                tags[f"eval.{ds}.{method}.{k}"] = v
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, str(v))
    return version, {k: str(v) for k, v in tags.items()}


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
    version, own = log_version(model_dir, eval_result, model_name=model_name, run_id=run_id, params=params, root=root)
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
        # A fresh store keeps the better of the two as @champion: the shipped model, registered
        # as a version with the figures it just earned on these validation clips.
        from tanet.infer.shipped import shipped_dir

        earned = {
            ds: {"tanet": v, "bicubic": eval_result.get(ds, {}).get("bicubic", {})} for ds, v in ref.figures.items()
        }
        champion_version, _ = log_version(
            shipped_dir(shipped),
            earned,
            model_name=model_name,
            run_id=run_id,
            root=root,
            extra_tags={"tanet.shipped": shipped},
        )
        client.set_registered_model_alias(model_name, CHAMPION, champion_version)
        reason += f"; {shipped} registered as version {champion_version} and made champion"
    elif wins:
        reason += "; not promoted (register.promote: never)"
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


def run_register(
    params: Params, model: Path, eval_json: Path, clips: Path, lr: Path, out: Path, *, root: Path, tracker: Tracker
) -> dict[str, Any]:
    """Registers the train stage's model, applies the gate and writes ``metrics/register.json``.

    The gate's reference (the champion, or the shipped model on a fresh store) is
    re-evaluated on this candidate's validation clips (``clips``, ``lr``), never on Vid4.
    """
    from tanet.infer.evaluation import heldout_clips, heldout_scores
    from tanet.train.distributed import resolve_device

    rp, ep = params.register, params.evaluate
    val = list(heldout_clips(params, clips, lr, ep.max_frames))
    device = resolve_device("auto")

    def rescore(model_dir: Path) -> dict[str, dict[str, float]]:
        return heldout_scores(
            model_dir,
            val,
            device=device,
            tile=ep.tile,
            crop=ep.crop,
            flow_method=params.flow.method,
            flow_preset=params.flow.dis_preset,
        )

    record = register_model(
        model,
        load_eval(eval_json),
        model_name=rp.model_name,
        metric=rp.metric,
        min_gain=rp.min_gain,
        params=params.to_dict(),
        tracker=tracker,
        experiment=params.mlflow.experiment,
        root=root,
        rescore=rescore,
        promote=rp.promote,
    )
    write_registration(out, record)
    return record
