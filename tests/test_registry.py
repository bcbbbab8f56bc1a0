"""Registration as an MLflow pyfunc, the champion rule both ways, loading in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_factory import make_model_dir

from tanet.stages.register import champion_decision, register_model, scores_from_tags


def _eval(ds: str, psnr: float) -> dict[str, dict[str, dict[str, float]]]:
    return {ds: {"tanet": {"psnr": psnr, "ssim": 0.8}, "bicubic": {"psnr": psnr - 1, "ssim": 0.7}}}


def test_champion_rule_is_pure_and_compares_like_with_like() -> None:
    bic = {"heldout_BIx4": 25.0, "vid4_BIx4": 23.0}
    assert champion_decision({"heldout_BIx4": 30.0}, None, 0.0, bic)[0]
    # Vid4 (the test set) never decides: a better Vid4 figure with a worse validation one stays out.
    promote, why = champion_decision(
        {"vid4_BIx4": 25.1, "heldout_BIx4": 29}, {"vid4_BIx4": 25.0, "heldout_BIx4": 30}, 0.0, bic
    )
    assert not promote and "heldout_BIx4: 29.0000 does not beat champion 30.0000" in why
    promote, why = champion_decision({"vid4_BIx4": 26.0}, None, 0.0, bic)
    assert not promote and "never reads Vid4" in why
    promote, why = champion_decision({"heldout_BIx4": 30.0}, {"heldout_BIx4": 30.0}, 0.0, bic)
    assert not promote and "does not beat" in why
    assert not champion_decision({"heldout_BIx4": 30.05}, {"heldout_BIx4": 30.0}, 0.1, bic)[0]
    promote, why = champion_decision({"heldout_BDx4": 30.0}, {"heldout_BIx4": 20.0}, 0.0, {"heldout_BDx4": 25.0})
    assert not promote and "no validation dataset in common" in why
    assert scores_from_tags({"eval.vid4_BIx4.tanet.psnr": "25.5", "eval.vid4_BIx4.bicubic.psnr": "23"}, "psnr") == {
        "vid4_BIx4": 25.5
    }
    assert scores_from_tags({"eval.vid4_BIx4.bicubic.psnr": "23"}, "psnr", "bicubic") == {"vid4_BIx4": 23.0}


def test_a_candidate_below_bicubic_never_becomes_champion(tmp_path: Path, mlflow_store: str) -> None:
    """A 4-step model at 14.70 dB where bicubic gives 31.08 dB, on a fresh store: a candidate, never champion."""
    ev = {"heldout_BIx4": {"tanet": {"psnr": 14.70, "ssim": 0.3}, "bicubic": {"psnr": 31.08, "ssim": 0.9}}}
    kw = {"model_name": "tanet", "metric": "psnr", "min_gain": 0.0, "root": tmp_path}
    record = register_model(make_model_dir(tmp_path / "m", seed=1), ev, **kw)
    assert record["aliases"] == ["candidate"] and record["champion_version"] is None
    assert "does not beat bicubic 31.0800" in record["decision"]
    import mlflow  # the decision is on the version itself: its tag and its card's last section

    version = mlflow.MlflowClient().get_model_version("tanet", record["version"])
    assert version.tags["tanet.gate"] == f"kept as @candidate: {record['decision']}"
    assert version.description.endswith(f"## Champion gate\n\nkept as @candidate: {record['decision']}\n")
    assert not champion_decision({"heldout_BIx4": 14.70}, None, 0.0, None)[0]  # no bicubic figure: never


def test_register_moves_champion_only_when_beaten(tmp_path: Path, mlflow_store: str) -> None:
    import mlflow

    kw = {"model_name": "tanet", "metric": "psnr", "min_gain": 0.0, "root": tmp_path}
    first = register_model(make_model_dir(tmp_path / "m1", seed=1), _eval("heldout_BIx4", 30.0), **kw)
    assert first["version"] == "1" and "champion" in first["aliases"]
    worse = register_model(make_model_dir(tmp_path / "m2", seed=2), _eval("heldout_BIx4", 29.0), **kw)
    assert worse["aliases"] == ["candidate"] and worse["champion_version"] == "1"
    better = register_model(make_model_dir(tmp_path / "m3", seed=3), _eval("heldout_BIx4", 31.0), **kw)
    assert "champion" in better["aliases"]
    client = mlflow.MlflowClient()
    assert client.get_model_version("tanet", "3").tags["tanet.gate"].startswith("promoted to @champion: heldout_BIx4")
    assert str(client.get_model_version_by_alias("tanet", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("tanet", "candidate").version) == "3"
    tags = client.get_model_version("tanet", "3").tags
    assert tags["tanet.scale"] == "4" and tags["tanet.degradation"] == "BI"
    assert float(tags["eval.heldout_BIx4.tanet.psnr"]) == 31.0
    assert "tanet.git_commit" in tags and "tanet.params" in tags


def test_pyfunc_loads_in_a_fresh_process(tmp_path: Path, mlflow_store: str) -> None:
    register_model(
        make_model_dir(tmp_path / "m", alignment="rof"),
        _eval("heldout_BIx4", 30.0),
        model_name="tanet",
        metric="psnr",
        min_gain=0.0,
        root=tmp_path,
    )
    code = (
        "import mlflow, numpy as np, json\n"
        "m = mlflow.pyfunc.load_model('models:/tanet@champion')\n"
        "x = np.random.default_rng(0).integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)\n"
        "y = m.predict(x)\n"
        "small = [list(m.predict(np.full((2, h, w, 3), 90, np.uint8)).shape) for h, w in ((2, 3), (11, 11), (8, 64))]\n"
        "sig = m.metadata.signature.inputs.to_dict()\n"
        "print(json.dumps({'shape': list(y.shape), 'dtype': str(y.dtype), 'sig': sig, 'small': small}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == [3, 68, 92, 3] and res["dtype"] == "uint8"
    # Frames of any size the signature admits, ROF alignment included (DIS cannot take these alone).
    assert res["small"] == [[2, 8, 12, 3], [2, 44, 44, 3], [2, 32, 256, 3]]
    assert res["sig"][0]["tensor-spec"]["shape"] == [-1, -1, -1, 3]


def test_register_refuses_a_branch_folder(tmp_path: Path, mlflow_store: str) -> None:
    from tanet.errors import TanetError

    d = make_model_dir(tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    meta["kind"] = "branch"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TanetError, match="only joint models"):
        register_model(d, _eval("heldout_BIx4", 1.0), model_name="tanet", metric="psnr", min_gain=0.0)


def test_register_cli_then_upscale_without_model_pulls_the_champion(tmp_path: Path, mlflow_store: str) -> None:
    """`tanet register` puts existing weights in the registry (licences tagged); `tanet upscale`
    with no --model resolves models:/tanet@champion from MLFLOW_TRACKING_URI."""
    import os

    import media_factory as mf
    import mlflow

    from tanet.io.frames import list_frames

    model = make_model_dir(tmp_path / "m", seed=5)
    (tmp_path / "eval.json").write_text(json.dumps(_eval("heldout_BIx4", 30.0)))
    cli = [sys.executable, "-m", "tanet.cli"]
    env = dict(os.environ)
    res = subprocess.run(
        [*cli, "register", "--model-dir", str(model), "--eval", "eval.json", "-o", "reg.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "reg.json").read_text())
    assert record["version"] == "1" and "champion" in record["aliases"]
    # This process may have set another test's store globally: name this one.
    tags = mlflow.MlflowClient(mlflow_store).get_model_version("tanet", "1").tags
    assert json.loads(tags["tanet.licences"]) == ["test"]
    frames = mf.frame_folder(tmp_path / "frames", frames=3, size=(12, 10))
    res = subprocess.run(
        [*cli, "upscale", str(frames), "out_x4", "--precision", "bf16", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list_frames(tmp_path / "out_x4")) == 3


def test_register_a_shipped_model_by_name(tmp_path: Path, mlflow_store: str) -> None:
    """`tanet register --model tanet-s` logs the shipped weights as a version, its card's
    figures as the evaluation and its licences as tags."""
    import os

    import mlflow

    from tanet.infer.shipped import read_card

    res = subprocess.run(
        [sys.executable, "-m", "tanet.cli", "register", "--model", "tanet-s", "-o", "reg.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "reg.json").read_text())
    assert record["version"] == "1"
    tags = mlflow.MlflowClient(mlflow_store).get_model_version("tanet", "1").tags
    assert json.loads(tags["tanet.licences"]) == read_card("tanet-s")["data"]["licences"]


def test_the_gate_re_evaluates_its_reference_on_the_candidates_clips(tmp_path: Path, mlflow_store: str) -> None:
    """A fresh store compares with the shipped tanet-s, a later one with the champion, each
    scored by ``rescore`` (on the candidate's validation clips), never by its own old tags."""
    import hashlib

    import mlflow

    from tanet.infer.shipped import shipped_dir

    def weights_id(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    scores = {weights_id(shipped_dir("tanet-s")): 30.5}  # what each model scores on "these clips"
    calls: list[str] = []

    def rescore(folder: Path) -> dict[str, dict[str, float]]:
        calls.append(weights_id(folder))
        return {"heldout_BIx4": {"psnr": scores[weights_id(folder)], "ssim": 0.9}}

    kw = {"model_name": "tanet", "metric": "psnr", "min_gain": 0.0, "root": tmp_path, "rescore": rescore}
    first = register_model(make_model_dir(tmp_path / "m1", seed=1), _eval("heldout_BIx4", 30.0), **kw)
    # 30.0 does not beat tanet-s's 30.5 here: tanet-s is registered (version 2) and made champion.
    assert first["version"] == "1" and first["aliases"] == ["candidate"] and first["reference"] == "shipped tanet-s"
    assert first["champion_version"] == "2" and "tanet-s registered as version 2" in first["decision"]
    client = mlflow.MlflowClient()
    champ = client.get_model_version_by_alias("tanet", "champion")
    assert champ.tags["tanet.shipped"] == "tanet-s" and float(champ.tags["eval.heldout_BIx4.tanet.psnr"]) == 30.5
    scores[weights_id(shipped_dir("tanet-s"))] = 30.9  # the champion is re-scored, not read from its tags
    second = register_model(make_model_dir(tmp_path / "m2", seed=2), _eval("heldout_BIx4", 30.7), **kw)
    assert second["aliases"] == ["candidate"] and second["reference"] == "champion version 2"
    assert "30.7000 does not beat champion 30.9000" in second["decision"]
    third = register_model(make_model_dir(tmp_path / "m3", seed=3), _eval("heldout_BIx4", 31.0), **kw)
    assert "champion" in third["aliases"] and third["champion_version"] == third["version"] == "4"
    scores[weights_id(tmp_path / "m3")] = 31.0
    never = register_model(
        make_model_dir(tmp_path / "m4", seed=4), _eval("heldout_BIx4", 33.0), **{**kw, "promote": "never"}
    )
    assert never["aliases"] == ["candidate"] and "not promoted (register.promote: never)" in never["decision"]
    assert str(client.get_model_version_by_alias("tanet", "champion").version) == "4"
    assert (
        len(calls) == 4
    )  # tanet-s once on the fresh store (shared by the gate and its registration), then each champion once


def _training_run(tmp_path: Path, model_dir: Path) -> str:
    """A training run as the train stage leaves it (its shards as dataset input), named in model.json."""
    from tanet.stages.train import log_training_data
    from tanet.track.tracking import stage_run

    meta = json.loads((model_dir / "model.json").read_text())
    meta["patches_dvc_md5"] = "f" * 32
    with stage_run("train", None, root=tmp_path) as tracker:
        log_training_data(tracker, tmp_path / "patches", meta)
        tracker.log_metrics({"val_psnr": 20.0}, 1)
    meta["training_run"] = tracker.run_id
    (model_dir / "model.json").write_text(json.dumps(meta))
    assert tracker.run_id is not None
    return tracker.run_id


def test_the_registered_version_is_its_training_runs_model_with_data_card_and_inference_code(
    tmp_path: Path, mlflow_store: str
) -> None:
    """Lineage: the version's run is the training run (its metrics, dataset input by the shards'
    hash); a model card as description; the evaluation as the logged model's metrics; a real
    input example; installable requirements; only the inference code ships."""
    import mlflow
    import numpy as np

    model = make_model_dir(tmp_path / "m", seed=1)
    run_id = _training_run(tmp_path, model)
    lr = np.random.default_rng(0).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    record = register_model(
        model,
        _eval("heldout_BIx4", 30.0),
        model_name="tanet",
        metric="psnr",
        min_gain=0.0,
        root=tmp_path,
        example_lr=lr,
    )
    client = mlflow.MlflowClient()
    version = client.get_model_version("tanet", record["version"])
    assert version.run_id == run_id and version.tags["tanet.training_run"] == run_id
    run = client.get_run(run_id)
    assert run.data.metrics["val_psnr"] == 20.0
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "patches" and data.dataset.digest == "f" * 32
    assert {t.key: t.value for t in data.tags}["tanet.sha256"] == "0" * 64
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    assert version.description.startswith(f"# tanet version {record['version']}")
    assert run_id in version.description and "heldout_BIx4" in version.description
    logged = mlflow.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert {m.key: m.value for m in logged.metrics}["heldout_BIx4.tanet.psnr"] == 30.0
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/tanet/{record['version']}", dst_path=str(tmp_path / "dl"))
    )
    code = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert "tanet/infer/pyfunc.py" in code and "tanet/models/vsr.py" in code
    assert not [c for c in code if c.startswith(("tanet/train/", "tanet/stages/", "tanet/track/", "tanet/cli"))], code
    reqs = (local / "requirements.txt").read_text()
    torch_req = [r for r in reqs.splitlines() if r.startswith("torch")]
    assert torch_req == ["torch<3,>=2.4"], reqs  # a range a CUDA host resolves, not this CPU wheel's pin
    example = json.loads((local / "serving_input_example.json").read_text())["inputs"]
    assert np.array(example, np.uint8).shape == (5, 32, 32, 3)
    assert np.array_equal(np.array(example, np.uint8), lr[:, 4:36, 8:40])  # the clip's centre crop


def test_a_training_run_missing_from_the_store_is_said_on_the_version(tmp_path: Path, mlflow_store: str) -> None:
    """DVC restored `train` from its run-cache into another store: the model is logged from the
    register run and the card says the training run is not here."""
    import mlflow

    model = make_model_dir(tmp_path / "m", seed=1)
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "training_run": "0" * 32}))
    record = register_model(model, _eval("heldout_BIx4", 30.0), model_name="tanet", metric="psnr", min_gain=0.0)
    version = mlflow.MlflowClient().get_model_version("tanet", record["version"])
    assert version.tags["tanet.training_run"] == "" and version.run_id == version.tags["tanet.logged_from_run"]
    assert "not in this store" in version.description


def test_a_pipeline_run_with_no_stage_under_it_is_dropped(tmp_path: Path, mlflow_store: str) -> None:
    """A deployment run whose `dvc repro` had nothing to do leaves no empty parent run."""
    import mlflow

    from tanet.track.tracking import drop_if_childless, new_parent_run, stage_run

    idle, busy = new_parent_run("tanet", tmp_path), new_parent_run("tanet", tmp_path)
    with stage_run("train", None, root=tmp_path, tags={}) as tracker:
        mlflow.MlflowClient().set_tag(tracker.run_id, "mlflow.parentRunId", busy)
    assert drop_if_childless(idle, tmp_path) and not drop_if_childless(busy, tmp_path)
    assert mlflow.MlflowClient().get_run(idle).info.lifecycle_stage == "deleted"
    assert mlflow.MlflowClient().get_run(busy).info.lifecycle_stage == "active"
