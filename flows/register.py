"""Flow ``register``: MLflow pyfunc, registry version with alias ``candidate``, champion rule."""

from __future__ import annotations

from pathlib import Path

from flows.common import ROOT, run_flow, stage_args
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tanet.config import load_params
from tanet.evaluate import load_eval
from tanet.registry import register_model, write_registration
from tanet.tracking import stage_run


@task(name="register-model", retries=2, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE, persist_result=False)
def register_task(params_path: str, model: str, eval_json: str) -> dict[str, object]:
    """Talks to the tracking server: retried on transient errors."""
    params = load_params(params_path)
    rp = params.register
    with stage_run("register", params.to_dict(), experiment=params.mlflow.experiment) as tracker:
        return register_model(
            Path(model),
            load_eval(Path(eval_json)),
            model_name=rp.model_name,
            metric=rp.metric,
            min_gain=rp.min_gain,
            params=params.to_dict(),
            tracker=tracker,
            experiment=params.mlflow.experiment,
            root=ROOT,
        )


@flow(name="register")
def register_flow(params_path: str, model: str, eval_json: str, out: str) -> dict[str, object]:
    """Registers the model and writes the registration record."""
    record = register_task(params_path, model, eval_json)
    write_registration(Path(out), record)
    return record


def main(argv: list[str] | None = None) -> None:
    args = stage_args(
        __doc__, ("--model", "joint model folder"), ("--eval", "eval.json"), ("--out", "registration record to write")
    ).parse_args(argv)
    run_flow(
        register_flow,
        args.task_runner,
        params_path=str(args.params),
        model=str(args.model),
        eval_json=str(args.eval),
        out=str(args.out),
    )


if __name__ == "__main__":
    main()
