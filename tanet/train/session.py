"""A time-boxed training session on a borrowed GPU host: pack here, run there, unpack here.

The GPU host is lent for minutes (a call runs at most 10 min); it has torch, numpy, pyarrow,
opencv and safetensors but no ffmpeg, PyYAML, Prefect, MLflow or DVC; it receives the
checkout plus at most 64 MiB of carried files and returns at most 8 files of 16 MiB. One
session is three commands::

    python -m tanet.train.session pack --out .gpu/pack        # here: frames, params, what earlier sessions left
    python3 -m tanet.train.session run --pack .gpu/pack --out $OUT --budget 420  # there
    python -m tanet.train.session unpack FILES_AT             # here: each job's state into checkpoints/gpu

``run`` builds the data stages from the carried frames (frame folders are read without
ffmpeg), then trains the jobs of :data:`PLAN` in priority order (``tanet-s`` BI, then
``tanet-s-bd``, the S-size ablations, ``tanet-l`` last), each through ``python -m
tanet.train`` with ``--time-limit`` set to what is left of the budget: the job that runs out
checkpoints where it stands and the next session resumes it from that checkpoint
(``--job-limit`` caps each job, so later jobs get time too). What came of it (a finished
job's model folders, an unfinished one's newest checkpoints, logs, a summary) goes back as
one tar archive split into parts under the size limit, with a manifest of their sha256
that ``unpack`` checks. ``unpack`` keeps one folder a job in ``checkpoints/gpu``:
``ckpt/`` to resume, or ``models/`` once it finished; the next ``pack`` carries those in
priority order while they fit, and ``run`` skips a finished job (its pretrained branches
still feed the ablations).

Params: the ``full`` preset with JSON params (no PyYAML there), ``ingest.embedded: []``,
the carried frames as ``ingest.shared_train_dir`` and the sources that do not fit left out
(Cityscapes by default: 51 MB of the 105; its validation sequence goes with it). Each
job's overrides come on top. Checkpoints of the previous session resume only with the same
params and data (their fingerprint), so keep ``pack``'s options from one session to the next.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tanet.config import params_from_dict, preset_params, set_key
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

MiB = 1 << 20
CARRY_LIMIT = 62 * MiB  # of the 64 MiB carried to the host (pack plus checkout), 2 MiB spare
PART_SIZE = 15 * MiB  # under the 16 MiB a returned file may have
MAX_FILES = 8  # returned files: the parts and the manifest
MANIFEST = "session.json"
ARCHIVE = "session.tar"
DEFAULT_EXCLUDE = ("cityscapes_seq_vid2vid_2048x1024",)
RESERVE_S = 30.0  # of the budget, kept for packing the results
MIN_JOB_S = 45.0  # a job's start-up (imports, reading the patches) and one checkpoint


@dataclasses.dataclass(frozen=True)
class SessionJob:
    """One training job of a session.

    Attributes:
        name: folder name of its checkpoints and outputs (a shipped name where it ships).
        stage: ``all`` (pretrain, then joint) or ``train`` (joint only).
        overrides: dotted params keys set on the session's base params.
        branches_from: for ``train``: the job whose pretrained branches it starts from.
    """

    name: str
    stage: Literal["all", "train"]
    overrides: dict[str, Any]
    branches_from: str | None = None


def _plan() -> tuple[SessionJob, ...]:
    from tanet.models.vsr import tanet_l

    large = tanet_l().to_dict()
    large.pop("align_block", None)  # derived from patches.patch_size
    return (
        SessionJob("tanet-s", "all", {}),
        SessionJob("tanet-s-bd", "all", {"patches.degradation": "BD"}),
        # the ablations reuse tanet-s's pretrained branches: only the joint stage differs
        SessionJob("mixing-uniform", "train", {"train.mixing": "uniform"}, "tanet-s"),
        SessionJob("align-san", "train", {"model.alignment": "san"}, "tanet-s"),
        SessionJob("align-none", "all", {"model.alignment": "none"}),
        SessionJob("tanet-l", "all", {"model": large}),
    )


PLAN = _plan()  # priority order


# -- pack (here) --------------------------------------------------------------------------
def pack(
    out: Path,
    *,
    frames: Path,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    preset: str = "full",
    overrides: dict[str, Any] | None = None,
    checkpoints: Path | None = None,
    jobs: Sequence[str] | None = None,
    limit: int = CARRY_LIMIT,
    checkout_bytes: int = 0,
) -> dict[str, Any]:
    """Writes the folder to carry: ``frames/``, ``base.json`` (params), ``plan.json``, ``jobs/<job>/``.

    ``jobs/<job>/`` is the job's folder from ``checkpoints``: ``ckpt/`` (its newest checkpoints,
    resumed) or, once it finished, ``models/`` (its model folders: skipped, and its pretrained
    branches feed the ablations), carried in priority order while they fit.

    Args:
        out: the folder to write (replaced; keep it git-ignored, e.g. ``.gpu/pack``).
        frames: the training material (``../shared/data/train``: one folder per source).
        exclude: source folders left out.
        preset: the base preset; ``overrides`` (dotted keys) go on top.
        overrides: dotted params keys set on the preset.
        checkpoints: what earlier sessions left (``checkpoints/gpu``, as :func:`unpack` writes it).
        jobs: the jobs to run, in :data:`PLAN` order (default: all of them).
        limit: bytes the carried files may take, the checkout's ``checkout_bytes`` included.
        checkout_bytes: what the checkout itself takes of ``limit``.

    Returns:
        What was packed (bytes per part, the jobs, checkpoints left out for size).

    Raises:
        TanetError: missing frames, an unknown job, or frames over the limit.
    """
    frames = Path(frames)
    if not frames.is_dir():
        raise TanetError(f"{frames}: no training frames folder")
    plan = select_jobs(jobs)
    base = preset_params(preset, overrides)
    base = set_key(base, "ingest.embedded", [])
    base = set_key(base, "ingest.include_shared_train", True)
    base = set_key(
        base, "ingest.shared_train_exclude", sorted(set(base["ingest"]["shared_train_exclude"]) | set(exclude))
    )
    if any(j.overrides.get("patches.degradation") == "BD" for j in plan):
        base = set_key(base, "degrade.kinds", sorted(set(base["degrade"]["kinds"]) | {"BD"}))
    for job in plan:
        params_from_dict(job_params(base, job, frames), f"session job {job.name}")  # every job validates here
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out.parent))  # beside ``out``: renamed into place whole
    try:
        sources = sorted(
            p for p in frames.iterdir() if p.is_dir() and p.name not in base["ingest"]["shared_train_exclude"]
        )
        if not sources:
            raise TanetError(f"{frames}: no source folders left after excluding {list(exclude)}")
        for src in sources:
            shutil.copytree(src, tmp / "frames" / src.name)
        (tmp / "base.json").write_text(json.dumps(base, indent=2) + "\n")
        (tmp / "plan.json").write_text(json.dumps([j.name for j in plan]) + "\n")
        used = checkout_bytes + folder_bytes(tmp)
        if used > limit:
            raise TanetError(
                f"{frames}: the frames take {folder_bytes(tmp / 'frames') / MiB:.1f} MiB, over the carry limit "
                f"({limit / MiB:.0f} MiB with the checkout's {checkout_bytes / MiB:.1f}); exclude a source"
            )
        carried: list[str] = []
        done: list[str] = []
        left_out: list[str] = []
        for job in plan:  # resume states in priority order while they fit
            if checkpoints is None or not (Path(checkpoints) / job.name).is_dir():
                continue
            src = Path(checkpoints) / job.name
            size = folder_bytes(src)
            if used + size > limit:
                left_out.append(job.name)
                continue
            shutil.copytree(src, tmp / "jobs" / job.name)
            used += size
            (done if finished(src / "models") else carried).append(job.name)
        summary = {
            "jobs": [j.name for j in plan],
            "sources": [s.name for s in sources],
            "frames_mib": round(folder_bytes(tmp / "frames") / MiB, 2),
            "carried_mib": round(used / MiB, 2),
            "resumed": carried,
            "done": done,
            "resume_left_out": left_out,
        }
        (tmp / "pack.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def select_jobs(names: Sequence[str] | None) -> list[SessionJob]:
    """The jobs of :data:`PLAN` named (all when None), in priority order; a joint-only job
    brings no pretraining of its own, so the job it starts from must be selected too."""
    known = {j.name: j for j in PLAN}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise TanetError(f"session: unknown job(s) {unknown} (known: {', '.join(known)})")
    chosen = [j for j in PLAN if names is None or j.name in names]
    for j in chosen:
        if j.branches_from and j.branches_from not in {c.name for c in chosen}:
            raise TanetError(f"session: job {j.name} starts from {j.branches_from}'s branches; select it too")
    return chosen


def job_params(base: dict[str, Any], job: SessionJob, frames: Path) -> dict[str, Any]:
    """The params of one job: the base, the frames folder, the job's overrides."""
    data = set_key(base, "ingest.shared_train_dir", str(Path(frames).resolve()))
    for key, value in job.overrides.items():
        data = set_key(data, key, value)
    return data


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- run (there) --------------------------------------------------------------------------
def run_session(
    pack_dir: Path,
    out: Path,
    *,
    budget_s: float,
    work: Path,
    device: str = "auto",
    job_limit_s: float | None = None,
) -> dict[str, Any]:
    """Data stages, then the jobs in priority order within ``budget_s`` seconds; results into ``out``.

    Args:
        pack_dir: what :func:`pack` wrote.
        out: the folder that goes back (parts and ``session.json``).
        budget_s: seconds for the whole session, packing included.
        work: scratch (data, checkpoints, models, logs).
        device: ``auto``, ``cuda`` or ``cpu``.
        job_limit_s: at most this many seconds a job (None: what is left), so that later
            jobs of the plan get time too.

    Returns:
        The session summary (also in ``out/session.json``): per job ``finished``,
        ``stopped_at``, ``not started`` or an error, with its figures.
    """
    t0 = time.monotonic()
    deadline = t0 + budget_s - RESERVE_S
    pack_dir, work = Path(pack_dir).resolve(), Path(work).resolve()
    base = json.loads((pack_dir / "base.json").read_text())
    plan = select_jobs(json.loads((pack_dir / "plan.json").read_text()))
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("ckpt", "models", "logs"):
        (work / folder).mkdir(exist_ok=True)
    for job in plan:  # what earlier sessions left: checkpoints to resume, or finished models
        for part in ("ckpt", "models"):
            if (pack_dir / "jobs" / job.name / part).is_dir():
                shutil.copytree(pack_dir / "jobs" / job.name / part, work / part / job.name, dirs_exist_ok=True)
    frames = pack_dir / "frames"
    summary: dict[str, Any] = {"budget_s": budget_s, "device": device_description(device), "jobs": {}}
    try:
        run_plan(plan, base, frames, work, deadline, device, summary, job_limit_s)
    except Exception as err:  # noqa: BLE001 - what the session made (logs, checkpoints) still goes back
        log.exception("session stopped early")
        summary["error"] = f"{type(err).__name__}: {err}"
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    return pack_results(work, Path(out), summary)


def run_plan(
    plan: Sequence[SessionJob],
    base: dict[str, Any],
    frames: Path,
    work: Path,
    deadline: float,
    device: str,
    summary: dict[str, Any],
    job_limit_s: float | None = None,
) -> None:
    """The data stages, then each job while time is left; ``summary["jobs"]`` filled as they end."""
    data_dirs: dict[str, Path] | None = None  # built when the first job needs them
    for job in plan:
        if finished(work / "models" / job.name):
            summary["jobs"][job.name] = {"status": "finished earlier"}
            continue
        if job.branches_from and not pretrained(work / "models" / job.branches_from, num_branches(base, job)):
            summary["jobs"][job.name] = {"status": f"not started ({job.branches_from}'s branches unfinished)"}
            continue
        if data_dirs is None and deadline - time.monotonic() >= MIN_JOB_S:
            data_t = time.monotonic()
            data_dirs = build_data(base, plan, frames, work / "data")
            summary["data_s"] = round(time.monotonic() - data_t, 1)
        left = deadline - time.monotonic()
        if data_dirs is None or left < MIN_JOB_S:
            summary["jobs"][job.name] = {"status": "not started (budget spent)"}
            continue
        limit = left if job_limit_s is None else min(left, job_limit_s)
        summary["jobs"][job.name] = train_job(job, base, frames, data_dirs, work, limit, device)
        atomic_write_json(work / MANIFEST, summary)
        if job.name == "tanet-s" and cuda(device):  # the GPU figures, once the first model is safe
            summary["perf"] = perf(work / "logs", deadline - time.monotonic())


def build_data(base: dict[str, Any], plan: Sequence[SessionJob], frames: Path, root: Path) -> dict[str, Path]:
    """Ingest, degrade and flow once; patches per degradation the plan trains on.

    Returns:
        ``{"clips", "lr", "flow", "patches-BI", ...}`` folders.
    """
    from tanet.stages import run_stage
    from tanet.stages.parallel import thread_map

    mapper = thread_map(os.cpu_count() or 1)
    params = params_from_dict(job_params(base, plan[0], frames), "session base")
    dirs = {"clips": root / "clips", "lr": root / "lr", "flow": root / "flow"}
    if not dirs["flow"].exists():  # the stages write their folders whole, so one that exists is complete
        run_stage("ingest", params, root=frames.parent, out_dir=dirs["clips"], mapper=mapper)
        run_stage("degrade", params, clips_dir=dirs["clips"], out_dir=dirs["lr"], mapper=mapper)
        run_stage("flow", params, clips_dir=dirs["clips"], lr_dir=dirs["lr"], out_dir=dirs["flow"], mapper=mapper)
    for kind in sorted({j.overrides.get("patches.degradation", params.patches.degradation) for j in plan}):
        key = f"patches-{kind}"
        dirs[key] = root / key
        if not dirs[key].exists():
            p = params_from_dict(set_key(params.to_dict(), "patches.degradation", kind), "session patches")
            run_stage(
                "patches",
                p,
                clips_dir=dirs["clips"],
                lr_dir=dirs["lr"],
                flow_dir=dirs["flow"],
                out_dir=dirs[key],
                mapper=mapper,
            )
    return dirs


def train_job(
    job: SessionJob,
    base: dict[str, Any],
    frames: Path,
    dirs: dict[str, Path],
    work: Path,
    left_s: float,
    device: str,
) -> dict[str, Any]:
    """One job through ``python -m tanet.train`` (its own process) with ``--time-limit left_s``."""
    data = job_params(base, job, frames)
    params_path = work / "params" / f"{job.name}.json"
    params_path.parent.mkdir(exist_ok=True)
    params_path.write_text(json.dumps(data, indent=2) + "\n")
    kind = data["patches"]["degradation"]
    models = work / "models" / job.name
    cmd = [
        sys.executable,
        *(["-S"] if sys.flags.no_site else []),  # the child sees the packages this process sees
        "-m",
        "tanet.train",
        job.stage,
        "--params",
        str(params_path),
        "--clips",
        str(dirs["clips"]),
        "--lr-dir",
        str(dirs["lr"]),
        "--flow",
        str(dirs["flow"]),
        "--patches",
        str(dirs[f"patches-{kind}"]),
        "--pretrain-out",
        str(work / "models" / (job.branches_from or job.name) / "pretrain"),
        "--train-out",
        str(models / "joint"),
        "--checkpoints",
        str(work / "ckpt" / job.name),
        "--device",
        device,
        "--tracking",
        "none",
        "--time-limit",
        f"{max(left_s, 0.0):.0f}",
    ]
    t0 = time.monotonic()
    log_path = work / "logs" / f"{job.name}.log"
    with log_path.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), check=False)
    result: dict[str, Any] = {"wall_s": round(time.monotonic() - t0, 1)}
    figures = last_json(log_path.read_text())
    if proc.returncode != 0 or figures is None:
        return {**result, "status": f"failed (exit {proc.returncode}; see logs/{job.name}.log)"}
    stopped = {k: v["stopped_at"] for k, v in figures.items() if isinstance(v, dict) and "stopped_at" in v}
    status = "stopped" if stopped or not (models / "joint" / "model.json").exists() else "finished"
    return {**result, "status": status, "stopped_at": stopped, "figures": figures}


_TRAIN_BENCH = ["benchmarks/bench_train.py", "--device", "cuda", "--batch", "64", "--patch", "48", "--precision"]
PERF_COMMANDS = {
    # SR network on pre-aligned windows, 960x540 -> 3840x2160: eager and fused bf16, compiled
    "upscale": ["benchmarks/bench_upscale.py", "--device", "cuda", "--compile", "--seconds", "2"],
    # training patches/s, TANet-S at 48x48 LR, batch 64
    "train_bf16": [*_TRAIN_BENCH, "bf16"],
    "train_fp32": [*_TRAIN_BENCH, "fp32"],
}
PERF_MIN_S = 150.0  # not started with less of the budget left


def perf(logs: Path, left_s: float) -> dict[str, str]:
    """Runs the GPU benchmarks (:data:`PERF_COMMANDS`) while time is left; their output goes to
    ``logs/perf-<name>.log``. Returns each one's status."""
    root = Path(__file__).resolve().parents[2]
    status: dict[str, str] = {}
    t_end = time.monotonic() + left_s - PERF_MIN_S / 2  # leave the next jobs something
    for name, args in PERF_COMMANDS.items():
        left = t_end - time.monotonic()
        if left < PERF_MIN_S / 2 or not (root / args[0]).is_file():
            status[name] = "not run (time or script missing)"
            continue
        with (logs / f"perf-{name}.log").open("w") as f:
            try:
                proc = subprocess.run(
                    [sys.executable, *args],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                    env=child_env(),
                    timeout=left,
                    check=False,
                )
                status[name] = f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                status[name] = f"timed out after {left:.0f} s"
    return status


def child_env() -> dict[str, str]:
    """This process's environment with the checkout on ``PYTHONPATH``: the GPU host runs the
    checkout as it is, with nothing installed."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def cuda(device: str) -> bool:
    """Whether the session trains on a GPU."""
    import torch

    return device != "cpu" and torch.cuda.is_available()


def last_json(text: str) -> dict[str, Any] | None:
    """The JSON object ``python -m tanet.train`` prints last (after its log lines)."""
    start = text.rfind("\n{")
    start = 0 if text.startswith("{") and start < 0 else start + 1
    try:
        value = json.loads(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def finished(models: Path) -> bool:
    """Whether a job's models folder holds its finished joint network."""
    return (models / "joint" / "model.json").is_file()


def pretrained(job_dir: Path, n: int) -> bool:
    """Whether a job's pretraining finished: its ``n`` branch model folders exist."""
    return all((job_dir / "pretrain" / f"branch_{i}" / "model.json").is_file() for i in range(1, n + 1))


def num_branches(base: dict[str, Any], job: SessionJob) -> int:
    """N of the job's network."""
    model = job.overrides.get("model", base["model"])
    return int(job.overrides.get("model.num_branches", model["num_branches"]))


def device_description(device: str) -> str:
    """The training device in words (GPU name and count, or the CPU)."""
    import torch

    if cuda(device):
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def pack_results(work: Path, out: Path, summary: dict[str, Any], part_size: int = PART_SIZE) -> dict[str, Any]:
    """``out/session.tar.NN`` parts and ``out/session.json``: every job's newest checkpoint,
    its model folders and log, in priority order; a job that does not fit is left out whole
    (named in the manifest), so at most :data:`MAX_FILES` files come back."""
    out.mkdir(parents=True, exist_ok=True)
    room = (MAX_FILES - 1) * part_size
    members: list[Path] = [p for p in (work / "logs").glob("*.log")]
    size = sum(p.stat().st_size for p in members)
    left_out = []
    for name in summary["jobs"]:
        # a finished job's models are its result; its checkpoints are no longer needed
        dirs = [work / "models" / name] + ([] if finished(work / "models" / name) else [work / "ckpt" / name])
        files = [p for d in dirs if d.is_dir() for p in d.rglob("*") if p.is_file()]
        extra = sum(p.stat().st_size for p in files)
        if size + extra > room * 0.98:  # tar headers and padding
            left_out.append(name)
            continue
        members += files
        size += extra
    archive = work / ARCHIVE
    with tarfile.open(archive, "w") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(work)))
    digest, parts = hashlib.sha256(), list[dict[str, Any]]()
    with archive.open("rb") as f:
        while chunk := f.read(part_size):
            digest.update(chunk)
            name = f"{ARCHIVE}.{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    archive.unlink()
    summary = {**summary, "parts": parts, "archive_sha256": digest.hexdigest(), "left_out": left_out}
    atomic_write_json(out / MANIFEST, summary)
    return summary


# -- unpack (here) ------------------------------------------------------------------------
def unpack(returned: Path, *, to: Path, checkpoints: Path) -> dict[str, Any]:
    """Checks and extracts what a session returned; moves each job's checkpoints into ``checkpoints``.

    Args:
        returned: the folder with ``session.json`` and its parts (the device tool's files).
        to: where the archive is extracted (model folders, logs).
        checkpoints: the resume folder (``checkpoints/gpu``): a job that came back replaces its
            folder there with ``models/`` (finished) or ``ckpt/`` (to resume).

    Raises:
        TanetError: a missing or damaged part (named), or an archive member outside ``to``.
    """
    returned = Path(returned)
    manifest_path = returned / MANIFEST
    if not manifest_path.is_file():
        raise TanetError(f"{returned}: no {MANIFEST}; not the output of `tanet.train.session run`")
    summary = json.loads(manifest_path.read_text())
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / ARCHIVE
        with joined.open("wb") as f:
            for part in summary["parts"]:
                path = returned / part["name"]
                if not path.is_file():
                    raise TanetError(f"{path}: part missing")
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise TanetError(f"{path}: damaged (sha256 differs from {MANIFEST})")
                digest.update(data)
                f.write(data)
        if digest.hexdigest() != summary["archive_sha256"]:
            raise TanetError(f"{returned}: the joined parts do not match {MANIFEST}'s archive sha256")
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=tmp))
        with tarfile.open(joined) as tar:
            tar.extractall(staging, filter="data")  # refuses absolute paths and ``..``
        to.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, to, dirs_exist_ok=True)
        for name in summary["jobs"]:  # each job's folder replaced by what came back of it
            models, ckpt = staging / "models" / name, staging / "ckpt" / name
            if not models.is_dir() and not ckpt.is_dir():
                continue  # not started, or left out for size: what is there stays
            dest = Path(checkpoints) / name
            if dest.exists():
                shutil.rmtree(dest)
            for part, src in (("models", models), ("ckpt", ckpt)):
                if src.is_dir() and (part == "models" or not finished(models)):
                    shutil.copytree(src, dest / part)
    (to / MANIFEST).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# -- command line -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m tanet.train.session {pack,run,unpack}`` (see ``--help``)."""
    ap = argparse.ArgumentParser(prog="python -m tanet.train.session", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: the folder to carry to the GPU host")
    p.add_argument("--out", type=Path, default=Path(".gpu/pack"))
    p.add_argument("--frames", type=Path, default=Path("../shared/data/train"))
    p.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="source folders left out")
    p.add_argument("--preset", default="full")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a params override (repeatable)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints/gpu"), help="checkpoints to resume")
    p.add_argument("--jobs", nargs="*", default=None, help=f"default: {' '.join(j.name for j in PLAN)}")
    r = sub.add_parser("run", help="there: data stages and the jobs within the budget")
    r.add_argument("--pack", type=Path, default=Path(".gpu/pack"))
    r.add_argument("--out", type=Path, required=True, help="the returned folder ($OUT)")
    r.add_argument("--budget", type=float, default=420.0, help="seconds for the whole session")
    r.add_argument("--work", type=Path, default=None, help="scratch (default: a temporary folder)")
    r.add_argument("--device", default="auto")
    r.add_argument("--job-limit", type=float, default=None, help="at most this many seconds a job")
    u = sub.add_parser("unpack", help="here: check and extract what came back")
    u.add_argument("returned", type=Path)
    u.add_argument("--to", type=Path, default=Path(".gpu/returned"))
    u.add_argument("--checkpoints", type=Path, default=Path("checkpoints/gpu"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "pack":
            overrides = {}
            for item in args.set:
                key, sep, value = item.partition("=")
                if not sep:
                    raise TanetError(f"--set expects KEY=JSON, got {item!r}")
                overrides[key] = json.loads(value)
            checkout = sum(Path(f).stat().st_size for f in tracked_files())
            result = pack(
                args.out,
                frames=args.frames,
                exclude=args.exclude,
                preset=args.preset,
                overrides=overrides,
                checkpoints=args.checkpoints,
                jobs=args.jobs,
                checkout_bytes=checkout,
            )
        elif args.cmd == "run":
            opts: dict[str, Any] = {"device": args.device, "job_limit_s": args.job_limit}
            if args.work is not None:
                result = run_session(args.pack, args.out, budget_s=args.budget, work=args.work, **opts)
            else:
                with tempfile.TemporaryDirectory(prefix="tanet-session-") as work:
                    result = run_session(args.pack, args.out, budget_s=args.budget, work=Path(work), **opts)
        else:
            result = unpack(args.returned, to=args.to, checkpoints=args.checkpoints)
    except (TanetError, ValueError) as err:
        print(f"tanet.train.session: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 1 if "error" in result else 0


def tracked_files() -> list[str]:
    """The checkout's files that travel with it (git's tracked and untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [f for f in out.splitlines() if Path(f).is_file()]


if __name__ == "__main__":
    raise SystemExit(main())
