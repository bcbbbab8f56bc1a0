"""Flow ``sample``: upscale a held-out clip (with audio) using the newly registered model."""

from __future__ import annotations

import json
from pathlib import Path

from flows.common import ROOT, run_flow, stage_args
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tanet.atomic import atomic_dir
from tanet.config import load_params
from tanet.data.sources import embedded_clip_path
from tanet.upscale import make_lr_sample, upscale_video


@task(name="upscale-sample", cache_policy=NO_CACHE, persist_result=False)
def upscale_task(lr_clip: str, out: str, model_uri: str, crf: int, preset: str) -> dict[str, object]:
    report = upscale_video(lr_clip, out, model_uri, crf=crf, preset=preset, progress=False, root=ROOT, overwrite=True)
    return report.__dict__


@flow(name="sample")
def sample_flow(params_path: str, registration: str, out: str) -> dict[str, object]:
    """Cuts ``sample.seconds`` of ``sample.clip``, degrades it to LR, upscales it with the registered version."""
    params = load_params(params_path)
    sp = params.sample
    record = json.loads(Path(registration).read_text())
    with atomic_dir(Path(out)) as tmp:
        lr_clip = tmp / "input_lr.mp4"
        make_lr_sample(embedded_clip_path(sp.clip), lr_clip, params.model.scale, sp.seconds, params.patches.degradation)
        report = upscale_task(str(lr_clip), str(tmp / "upscaled.mp4"), str(record["model_uri"]), sp.crf, sp.preset)
    return report


def main(argv: list[str] | None = None) -> None:
    args = stage_args(__doc__, ("--registration", "register stage record"), ("--out", "sample folder")).parse_args(argv)
    run_flow(
        sample_flow,
        args.task_runner,
        params_path=str(args.params),
        registration=str(args.registration),
        out=str(args.out),
    )


if __name__ == "__main__":
    main()
