"""The on-disk layout between the data stages: clip manifest, quarantine report, LR set names, flows."""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tanet.errors import InputError

CLIPS_MANIFEST = "manifest.parquet"


QUARANTINE = "quarantine.json"


@dataclass(frozen=True)
class ClipRecord:
    """One row of the clip manifest."""

    clip_id: str
    source_path: str
    origin: str
    licence: str
    sha256: str
    frames: int  # frames kept in the normalised clip
    source_frames: int  # frames decoded from the source (before subsampling)
    width: int  # normalised size
    height: int
    source_width: int
    source_height: int
    fps: str  # exact fraction, e.g. "30000/1001" (of the kept frames)
    split: str  # "train" or "val"
    notes: str  # conversions applied (10-bit, alpha, rotation, resize...)


def write_manifest(records: list[ClipRecord], path: Path) -> None:
    """Writes the clip manifest as Parquet (atomically)."""
    table = pa.Table.from_pylist([asdict(r) for r in records])
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_manifest(clips_dir: Path) -> list[ClipRecord]:
    """Reads ``manifest.parquet`` of an ingest output folder."""
    path = Path(clips_dir) / CLIPS_MANIFEST
    if not path.is_file():
        raise InputError(path, "clip manifest missing; run the ingest stage first")
    return [ClipRecord(**row) for row in pq.read_table(path).to_pylist()]


def read_quarantine(clips_dir: Path) -> list[dict[str, str]]:
    """Reads ``quarantine.json`` of an ingest output folder."""
    return json.loads((Path(clips_dir) / QUARANTINE).read_text())


def lr_set_name(scale: int, kind: str) -> str:
    """Folder name of an LR set, e.g. ``x4_BI``."""
    return f"x{scale}_{kind}"


def load_flows(path: Path) -> dict[str, np.ndarray]:
    """Loads a flow file written by :func:`flow_clip`."""
    try:
        with np.load(path) as data:
            out = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(path, "flow file missing; run the flow stage") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:  # torn or not an npz
        raise InputError(path, f"cannot read flow file: {err}") from None
    missing = {"flow", "shifts", "offsets"} - set(out)
    if missing:
        raise InputError(path, f"flow file lacks {sorted(missing)}")
    return out


# -- stages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataDirs:
    """Inputs of the training stages."""

    clips: Path
    lr: Path
    flow: Path
    patches: Path
