"""One module per stage of ``dvc.yaml``, named as the stage, each exposing ``run_<stage>``.

``flows/`` wraps these in Prefect flows; ``dvc.yaml`` decides when they run. A stage reads
its own params section and the few keys it needs from other sections, never the whole
:class:`tanet.config.Params`: each stage module names them in ``PARAMS``, a map from a
``run_<stage>`` argument to a params key (a section such as ``degrade``, a key such as
``model.scale``, or :data:`ALL_PARAMS` for the whole params as a plain dict, recorded as
metadata and never decided on). :func:`stage_params` turns the one validated ``Params`` a
flow receives into those arguments, and ``dvc.yaml``'s ``params:`` list of the stage is
exactly the keys of ``PARAMS`` (``tests/test_dvc_params.py``), so an edit re-runs only the
stages that read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tanet.config import Params

ALL_PARAMS = "*"  # the whole params as a dict: metadata (model.json, MLflow tags), not a dependency


def stage_params(params: Params, binding: Mapping[str, str]) -> dict[str, Any]:
    """``run_<stage>``'s params arguments: each argument of ``binding`` bound to its key's value.

    Args:
        params: the pipeline params.
        binding: argument name -> ``section``, ``section.key`` or :data:`ALL_PARAMS`.

    Returns:
        Keyword arguments (sections as their dataclasses, keys as their values).

    Raises:
        KeyError: a key that ``Params`` does not have (a bug in a stage's ``PARAMS``).

    >>> stage_params(Params(), {"degrade": "degrade", "scale": "model.scale"})["scale"]
    4
    """
    out: dict[str, Any] = {}
    for arg, key in binding.items():
        if key == ALL_PARAMS:
            out[arg] = params.to_dict()
            continue
        value: Any = params
        for part in key.split("."):
            if not hasattr(value, part):
                raise KeyError(f"{key}: not a params key")
            value = getattr(value, part)
        out[arg] = value
    return out


def run_stage(name: str, params: Params, /, **kwargs: Any) -> Any:
    """Runs ``run_<name>`` of ``tanet.stages.<name>`` on ``params`` (bound by its ``PARAMS``).

    Args:
        name: a stage of ``dvc.yaml``.
        params: the pipeline params.
        **kwargs: the stage's other arguments (paths, ``mapper``, ``tracker``...).

    Returns:
        What ``run_<name>`` returns.
    """
    module = importlib.import_module(f"tanet.stages.{name}")
    return getattr(module, f"run_{name}")(**stage_params(params, module.PARAMS), **kwargs)
