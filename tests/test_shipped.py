"""Shipped models: names resolve on a fresh install, each card's figures are reproducible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import media_factory as mf
import pytest
from media_factory import SHARED
from model_factory import make_model_dir, weight_only_branch

from tanet.errors import TanetError
from tanet.infer.shipped import CARD, SHIPPED_NAMES, available, crop_psnr, read_card, shipped_dir, weights_sha256

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = available()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return {**env, **extra}


def _tanet(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tanet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or _clean_env(),
    )


def test_tanet_s_is_shipped() -> None:
    assert "tanet-s" in SHIPPED, "the package must ship tanet-s (weights + card)"


def test_a_known_name_that_is_not_shipped_and_an_unknown_name_are_clear_errors() -> None:
    with pytest.raises(TanetError, match="not a shipped model"):
        shipped_dir("tanet-xl")
    for name in set(SHIPPED_NAMES) - set(SHIPPED):
        with pytest.raises(TanetError, match="not shipped in this version"):
            shipped_dir(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_names_the_weights_and_what_the_issue_asks_for(name: str) -> None:
    card = read_card(name)
    folder = shipped_dir(name)
    assert card["sha256"] == weights_sha256(folder)
    for key in ("architecture", "parameters", "data", "terms", "schedule", "device", "wall_time", "git_commit"):
        assert card[key], key
    assert card["data"]["licences"] and "non-commercial" in card["terms"]
    assert {"val_psnr", "val_psnr_bicubic"} <= set(card["validation"])
    assert (folder / "README.md").read_text().startswith(f"# {name}")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["degradation"] == SHIPPED_NAMES[name][1] == card["degradation"]
    licence = (ROOT / "LICENSE").read_text()  # the code's MIT text, then the weights' own terms
    assert "tanet/weights/" in licence and "non-commercial" in licence.split("MIT")[-1]


@pytest.mark.parametrize("name", SHIPPED)
def test_card_crop_figure_is_recomputed_within_a_hundredth_of_a_db(name: str) -> None:
    vid4 = SHARED / "data/vid4/GT"
    if not vid4.is_dir():
        pytest.skip("../shared/data/vid4 is not beside the repo")
    card = read_card(name)
    crop = card["crop"]
    assert crop["clip"] == "vid4/calendar"
    got = crop_psnr(
        shipped_dir(name), vid4 / "calendar", crop["frames"], tuple(crop["box"]), degradation=card["degradation"]
    )
    assert got == pytest.approx(crop["psnr"], abs=0.01)


def test_vid4_figures_score_a_pretrained_branch_alone_and_take_a_border_crop(tmp_path: Path) -> None:
    import cv2
    import numpy as np
    import torch

    from tanet.config import OptimParams
    from tanet.infer.evaluation import VID4_CLIPS
    from tanet.infer.shipped import vid4_figures
    from tanet.io.model_files import BranchModel, write_model_dir
    from tanet.models import VSRNet, tanet_s
    from tanet.train.job import Job

    rng = np.random.default_rng(0)
    for clip in VID4_CLIPS:  # a tiny stand-in for Vid4: 3 smooth frames of 64x48 per clip
        (tmp_path / "GT" / clip).mkdir(parents=True)
        base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_CUBIC)
        for t in range(3):
            cv2.imwrite(str(tmp_path / "GT" / clip / f"{t:04d}.png"), np.roll(base, t, axis=1))
    cfg = tanet_s(alignment="none", align_block=16)
    meta = {"scale": 4, "degradation": "BI", "licences": ["test"], "patches_sha256": "0" * 64}
    torch.manual_seed(0)
    branch = BranchModel(cfg, 1)
    write_model_dir(tmp_path / "branch_1", branch, Job("branch", 1, cfg, OptimParams(steps=1)), meta, [])
    joint = VSRNet(cfg)  # its modulation puts every pixel's weight on branch 1 = the branch above
    joint.tanet.branches[0].load_state_dict({k.removeprefix("branch."): v for k, v in branch.state_dict().items()})
    weight_only_branch(joint, 1)
    write_model_dir(tmp_path / "joint", joint, Job("joint", 0, cfg, OptimParams(steps=1)), meta, [])

    alone = vid4_figures(tmp_path / "branch_1", tmp_path, "BI")
    mixed = vid4_figures(tmp_path / "joint", tmp_path, "BI")
    assert set(alone["clips"]) == set(VID4_CLIPS)
    assert alone["mean"]["tanet"]["psnr"] == pytest.approx(mixed["mean"]["tanet"]["psnr"], abs=1e-6)
    assert alone["mean"]["bicubic"] == mixed["mean"]["bicubic"]
    both = vid4_figures(tmp_path / "branch_1", tmp_path, "BI", crops=(0, 8))
    assert both["by_crop"]["0"] == both["mean"] == alone["mean"]
    assert both["by_crop"]["8"]["tanet"]["psnr"] != pytest.approx(alone["mean"]["tanet"]["psnr"], abs=1e-3)


def test_upscale_with_a_shipped_name_outside_a_repo_writes_only_the_output(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = mf.h264_mp4(work / "in.mp4", size=(24, 16), frames=3, audio=False)
    for args in (["--model", "tanet-s"], []):  # the default outside a repo with no store is tanet-s
        out = work / f"out{len(args)}.mp4"
        res = _tanet("upscale", src, out, *args, "-q", cwd=work)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["frames"] == 3
    assert sorted(p.name for p in work.iterdir()) == ["in.mp4", "out0.mp4", "out2.mp4"]  # no mlflow.db, no mlruns


def test_a_path_named_like_a_shipped_model_wins(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "tanet-s", alignment="none", scale=2)
    src = mf.h264_mp4(tmp_path / "in.mp4", size=(24, 16), frames=2, audio=False)
    res = _tanet("upscale", src, tmp_path / "out.mp4", "--model", "tanet-s", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["scale"] == 2  # the local x2 folder, not the shipped x4 model
    assert "an existing path of that name wins" in _tanet("upscale", "--help", cwd=tmp_path).stdout


def test_upscale_default_in_a_repo_with_a_store_is_the_champion_and_an_outage_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "mlflow.db").write_bytes(b"")  # a store exists: the champion is asked for, never tanet-s
    src = mf.h264_mp4(tmp_path / "in.mp4", size=(24, 16), frames=2, audio=False)
    res = _tanet("upscale", src, tmp_path / "out.mp4", "-q", cwd=tmp_path)
    assert res.returncode == 2 and "models:/tanet@champion" in res.stderr
    env = _clean_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    res = _tanet("upscale", src, tmp_path / "out.mp4", "-q", cwd=tmp_path / "..", env=env)
    assert res.returncode == 2 and "not reachable" in res.stderr  # no silent fallback to tanet-s


def test_export_onnx_takes_a_shipped_name(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    res = _tanet("export-onnx", tmp_path / "m.onnx", "--model", "tanet-s", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


@pytest.mark.slow
def test_the_built_wheel_contains_every_shipped_model_and_card(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("tanet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        for f in ("model.safetensors", "model.json", CARD, "README.md"):
            assert f"tanet/weights/{name}/{f}" in names, (name, f)
