"""``tanet import-run``: log model folders trained without MLflow (e.g. on a GPU machine).

Training writes ``model.json`` and ``history.json`` next to its weights whatever the
tracking; this replays them into MLflow as if tracked live: params, the per-step history
(loss, learning rate, throughput, validation PSNR), final metrics and the folder as
artifacts, one nested run per folder under one parent run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tanet.errors import TanetError
from tanet.io.model_files import HISTORY, MODEL_META
from tanet.track.tracking import child_run, flatten, stage_run


def import_run(model_dirs: list[Path], experiment: str = "tanet") -> dict[str, Any]:
    """Logs each model folder as a run; returns ``{folder: run_id}``."""
    for d in model_dirs:
        if not (Path(d) / MODEL_META).is_file() or not (Path(d) / HISTORY).is_file():
            raise TanetError(f"{d}: not a trained model folder ({MODEL_META} and {HISTORY} needed)")
    out: dict[str, Any] = {}
    with stage_run("import-run", None, experiment=experiment, tags={"tanet.imported": "true"}) as parent:
        for d in model_dirs:
            meta = json.loads((Path(d) / MODEL_META).read_text())
            history = json.loads((Path(d) / HISTORY).read_text())
            name = "joint" if meta["kind"] == "joint" else f"branch_{meta['branch']}"
            run = child_run(
                parent, name, {"tanet.stage": "train" if name == "joint" else "pretrain", "tanet.imported": "true"}
            )
            run.log_params(flatten(meta.get("params", {})))
            for rec in history:
                run.log_metrics(
                    {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}, rec["step"]
                )
            run.log_artifact(Path(d), "model")
            run.finish()
            out[str(d)] = run.run_id
    return out
