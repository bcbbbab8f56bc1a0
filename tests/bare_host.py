"""An interpreter as bare as the GPU host's: torch, numpy, pyarrow, opencv and safetensors, but
no PyYAML, ffmpeg, MLflow, Prefect or DVC (for the tests of what runs there)."""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

# Top-level names of site-packages that the GPU machine lacks.
ABSENT_ON_GPU_HOST = ("ffmpeg", "imageio_ffmpeg", "yaml", "_yaml", "pyyaml", "mlflow", "prefect", "dvc", "distributed")


def bare_host_python(tmp_path: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """An interpreter command and environment in which those packages really are absent:
    ``python -S`` (no site-packages) over a copy of site-packages made of symlinks to
    everything else."""
    site_dir = tmp_path / "site"
    site_dir.mkdir(parents=True)
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if not entry.name.lower().startswith(ABSENT_ON_GPU_HOST) and not (site_dir / entry.name).exists():
                (site_dir / entry.name).symlink_to(entry)
    root = str(Path(__file__).resolve().parents[1])
    return [sys.executable, "-S"], {**env, "PYTHONPATH": os.pathsep.join([root, str(site_dir)])}
