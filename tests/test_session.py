"""The GPU session (``python -m tanet.train.session``): pack here, run on a host as bare as the
GPU one (no PyYAML, ffmpeg, MLflow, Prefect or DVC), unpack here, and the next session resumes
from what came back. Tiny preset on synthetic frame folders, CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from bare_host import bare_host_python

from tanet.errors import TanetError
from tanet.io.model_files import load_model_dir
from tanet.train.checkpoint import checkpoint_dirs
from tanet.train.session import MANIFEST, MAX_FILES, PART_SIZE, last_json, pack, select_jobs, unpack

ENV_THREADS = {"OMP_NUM_THREADS": "1"}
TINY = {
    "ingest.val_clips": ["srca__s2"],
    "ingest.max_side": 0,
    "pretrain.val_frames": 1,
    "train.val_frames": 1,
}


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sources of frame folders (a texture panning right), as ``../shared/data/train`` lays them out."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), (240, 160), interpolation=cv2.INTER_CUBIC)
    for src, seq in (("srca", "s1"), ("srca", "s2"), ("srcb", "s1")):
        folder = root / src / seq
        folder.mkdir(parents=True)
        for t in range(8):
            cv2.imwrite(str(folder / f"im{t + 1}.png"), texture[16:112, 4 + 3 * t : 100 + 3 * t])
    return root


def host_session(pack_dir: Path, out: Path, work: Path, tmp: Path, *extra: str) -> dict[str, Any]:
    py, env = bare_host_python(tmp, {**os.environ, **ENV_THREADS})
    cmd = [*py, "-m", "tanet.train.session", "run", "--pack", str(pack_dir), "--out", str(out), "--work", str(work)]
    proc = subprocess.run([*cmd, "--device", "cpu", *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= MAX_FILES and all((out / n).stat().st_size <= PART_SIZE for n in returned)
    return json.loads((out / MANIFEST).read_text())


def ckpt_steps(folder: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in checkpoint_dirs(folder)]


def status(summary: dict[str, Any]) -> dict[str, str]:
    return {k: v["status"] for k, v in summary["jobs"].items()}


def test_three_sessions_stop_resume_and_skip_what_finished(frames: Path, tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints" / "gpu"
    jobs = ["tanet-s", "mixing-uniform"]

    def pack_session(n: int) -> dict[str, Any]:
        return pack(
            tmp_path / ".gpu" / f"pack{n}",  # its parent made too
            frames=frames,
            exclude=["srcb"],
            preset="tiny",
            overrides=TINY,
            checkpoints=ckpts,
            jobs=jobs,
        )

    # 1: every job gets 0 s, so tanet-s stops after its first step; the ablation waits for its branches.
    packed = pack_session(1)
    assert packed["sources"] == ["srca"] and packed["resumed"] == packed["done"] == []
    base = json.loads((tmp_path / ".gpu" / "pack1" / "base.json").read_text())  # JSON: the host has no PyYAML
    assert base["ingest"]["embedded"] == [] and "srcb" in base["ingest"]["shared_train_exclude"]
    summary = host_session(
        tmp_path / ".gpu" / "pack1", tmp_path / "out1", tmp_path / "w1", tmp_path / "h1", "--job-limit", "0"
    )
    assert status(summary) == {"tanet-s": "stopped", "mixing-uniform": "not started (tanet-s's branches unfinished)"}
    assert summary["jobs"]["tanet-s"]["stopped_at"] == {"branch_1": 1}
    unpack(tmp_path / "out1", to=tmp_path / "returned1", checkpoints=ckpts)
    assert ckpt_steps(ckpts / "tanet-s" / "ckpt" / "pretrain" / "branch_1") == [1]

    # 2: resumed from that step; both finish.
    assert pack_session(2)["resumed"] == ["tanet-s"]
    summary = host_session(tmp_path / ".gpu" / "pack2", tmp_path / "out2", tmp_path / "w2", tmp_path / "h2")
    assert status(summary) == {"tanet-s": "finished", "mixing-uniform": "finished"}
    assert "branch_1: resumed from" in (tmp_path / "w2" / "logs" / "tanet-s.log").read_text()
    unpack(tmp_path / "out2", to=tmp_path / "returned2", checkpoints=ckpts)
    net, meta = load_model_dir(ckpts / "tanet-s" / "models" / "joint")
    assert meta["kind"] == "joint" and net.cfg.alignment == "rof"
    assert not (ckpts / "tanet-s" / "ckpt").exists()  # finished: the models are what is kept
    uniform, _ = load_model_dir(tmp_path / "returned2" / "models" / "mixing-uniform" / "joint")
    tail = [p for n, p in uniform.named_parameters() if n.startswith("tanet.modulation")][-2:]
    assert all(float(p.detach().abs().max()) == 0.0 for p in tail)  # the frozen uniform mixing, as trained

    # 3: nothing left to train: both are carried as models and skipped.
    assert pack_session(3)["done"] == jobs
    summary = host_session(tmp_path / ".gpu" / "pack3", tmp_path / "out3", tmp_path / "w3", tmp_path / "h3")
    assert status(summary) == {"tanet-s": "finished earlier", "mixing-uniform": "finished earlier"}
    assert not (tmp_path / "w3" / "logs" / "tanet-s.log").exists() and not (tmp_path / "w3" / "data").exists()


def test_a_damaged_part_is_named_and_nothing_is_extracted(tmp_path: Path) -> None:
    from tanet.train.session import pack_results

    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / "a.log").write_bytes(np.random.default_rng(0).bytes(3000))
    summary = pack_results(work, tmp_path / "out", {"jobs": {}}, part_size=4096)
    sizes = [p["bytes"] for p in summary["parts"]]
    assert len(sizes) >= 3 and max(sizes) == 4096 and sizes[-1] <= 4096
    unpack(tmp_path / "out", to=tmp_path / "ok", checkpoints=tmp_path / "ck")
    assert (tmp_path / "ok" / "logs" / "a.log").read_bytes() == (work / "logs" / "a.log").read_bytes()
    part = tmp_path / "out" / "session.tar.01"
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(TanetError, match=r"session\.tar\.01: damaged"):
        unpack(tmp_path / "out", to=tmp_path / "bad", checkpoints=tmp_path / "ck")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "out" / "session.tar.02").unlink()
    with pytest.raises(TanetError, match=r"session\.tar\.01: damaged|session\.tar\.02: part missing"):
        unpack(tmp_path / "out", to=tmp_path / "bad", checkpoints=tmp_path / "ck")


def test_pack_refuses_frames_over_the_carry_limit_and_unknown_jobs(frames: Path, tmp_path: Path) -> None:
    with pytest.raises(TanetError, match=rf"{frames}: the frames take .* over the carry limit"):
        pack(tmp_path / "p", frames=frames, preset="tiny", overrides=TINY, limit=10_000)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".pack-*"))
    with pytest.raises(TanetError, match="unknown job"):
        select_jobs(["tanet-xl"])
    with pytest.raises(TanetError, match="mixing-uniform starts from tanet-s's branches"):
        select_jobs(["mixing-uniform"])
    assert [j.name for j in select_jobs(None)][:2] == ["tanet-s", "tanet-s-bd"]  # the priority


def test_last_json_reads_the_summary_after_log_lines() -> None:
    assert last_json('2026 INFO x {"a": 1}\n{\n  "joint": {"stopped_at": 3}\n}\n') == {"joint": {"stopped_at": 3}}
    assert last_json("no json here") is None


def test_the_gpu_benchmarks_run_from_the_checkout_and_say_when_there_is_no_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tanet.train.session import PERF_COMMANDS, perf

    monkeypatch.chdir(tmp_path)  # the scripts are found from the checkout, not the working directory
    assert set(perf(tmp_path, 0).values()) == {"not run (time or script missing)"}
    status = perf(tmp_path, 600)
    assert set(status) == set(PERF_COMMANDS) and all(v.startswith("exit ") for v in status.values())
    for name in PERF_COMMANDS:  # here (no CUDA) each one says so instead of a figure
        assert "CUDA" in (tmp_path / f"perf-{name}.log").read_text()


def test_a_session_that_fails_still_returns_its_logs_and_says_why(frames: Path, tmp_path: Path) -> None:
    from tanet.train.session import run_session

    pack(tmp_path / "pack", frames=frames, exclude=["srcb"], preset="tiny", overrides=TINY, jobs=["tanet-s"])
    # the carried frames damaged: ingest fails, naming a file
    for clip in (tmp_path / "pack" / "frames" / "srca").iterdir():
        for f in clip.iterdir():
            f.write_bytes(b"not a png")
    summary = run_session(tmp_path / "pack", tmp_path / "out", budget_s=600, work=tmp_path / "work", device="cpu")
    assert "im1.png: cannot decode image" in summary["error"]
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["error"] == summary["error"]
    assert summary["parts"] and summary["jobs"] == {}
