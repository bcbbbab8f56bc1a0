"""End to end: the tiny preset in a temporary git repo, run through the `train-tanet`
deployment on real Prefect and MLflow servers (see the `tiny_pipeline` fixture), then plain
`dvc repro` (temporary Prefect server, embedded MLflow store) for the partial re-run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline_repo import run, tool_env

from tanet.io.probe import count_frames, probe

pytestmark = pytest.mark.slow

STAGES = ["ingest", "degrade", "flow", "patches", "pretrain", "train", "evaluate", "register", "sample"]


def _ran(log: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", log)


def _py(code: str, repo: Path, env: dict[str, str] | None = None) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, env=tool_env(env), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_every_stage_runs_and_writes_its_outputs(tiny_pipeline: dict[str, object]) -> None:
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    assert tiny_pipeline["runs"]["first"]["state"] == "Completed"  # type: ignore[index]
    assert (repo / "data/clips/manifest.parquet").is_file()
    assert json.loads((repo / "data/clips/quarantine.json").read_text()) == []
    assert json.loads((repo / "data/patches/manifest.json").read_text())["rows"] > 0
    train = json.loads((repo / "metrics/train.json").read_text())
    assert set(train) == {"pretrain", "joint"}
    assert set(train["pretrain"]) == {"branch_1", "branch_2", "branch_3"}
    assert {"val_psnr", "val_psnr_bicubic"} <= set(train["joint"])
    ev = json.loads((repo / "metrics/eval.json").read_text())
    methods = ev["heldout_BIx4"]
    assert {"bicubic", "tanet", "branch_1", "branch_2", "branch_3", "tanet_branch_1", "tanet_align_none"} <= set(
        methods
    )
    assert all({"psnr", "ssim"} <= set(v) for v in methods.values())
    assert "tof" in methods["tanet"]
    assert list((repo / "plots/eval").glob("*__crops.png")) and list((repo / "plots/eval").glob("*__psnr.png"))
    assert "heldout_BIx4,bikes,tanet,0," in (repo / "metrics/eval_frames.csv").read_text()


def test_second_repro_is_a_no_op(tiny_pipeline: dict[str, object]) -> None:
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    res = run(["dvc", "repro"], repo)
    # Only the source listing runs (always_changed, by design); its output is unchanged, so
    # no stage after it does.
    assert _ran(res.stdout) == ["sources"]
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in res.stdout
    status = run(["dvc", "status"], repo).stdout
    assert "changed" not in status.replace("always changed", ""), status


def test_a_clip_added_to_an_ingest_paths_folder_makes_ingest_stale(tmp_path: Path) -> None:
    import shutil

    import media_factory as mf
    import yaml

    from tanet.config import dump_params, preset_params

    repo = tmp_path / "repo"
    repo.mkdir()
    folder = tmp_path / "my_clips"
    mf.frame_folder(folder / "one", frames=5)
    real = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    stages = {
        "sources": real["stages"]["sources"],
        "ingest": {
            "cmd": "cp data/sources.json data/ingested.json",
            "deps": ["data/sources.json"],
            "outs": ["data/ingested.json"],
        },
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    params = preset_params("tiny", {"ingest.embedded": [], "ingest.paths": [str(folder)], "ingest.val_clips": ["one"]})
    (repo / "params.yaml").write_text(dump_params(params))
    (repo / "data").mkdir()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, repo)
    assert _ran(run(["dvc", "repro"], repo).stdout) == ["sources", "ingest"]
    assert _ran(run(["dvc", "repro"], repo).stdout) == ["sources"]  # nothing new: ingest stays
    mf.frame_folder(folder / "two", frames=5)
    assert _ran(run(["dvc", "repro"], repo).stdout) == ["sources", "ingest"]
    listing = json.loads((repo / "data/ingested.json").read_text())
    assert [r["clip_id"] for r in listing] == ["one", "two"]
    edited = folder / "two" / "00000001.png"
    edited.write_bytes(edited.read_bytes() + b"\0")  # same name, other content
    assert _ran(run(["dvc", "repro"], repo).stdout) == ["sources", "ingest"]
    shutil.rmtree(folder / "two")
    res = run(["dvc", "repro"], repo)  # back to the first listing: DVC restores ingest's output from its run-cache
    assert "didn't change" not in res.stdout.split("'ingest'")[1][:40], res.stdout
    assert [r["clip_id"] for r in json.loads((repo / "data/ingested.json").read_text())] == ["one"]


def test_metrics_show_prints_the_tables(tiny_pipeline: dict[str, object]) -> None:
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    out = run(["dvc", "metrics", "show", "--json"], repo).stdout
    data = json.loads(out)
    metrics = next(iter(data.values()))["data"]
    # Only the headline file is a DVC metric (what `dvc exp show` lists; changed on purpose from
    # eval.json + train.json + pretrain.json): the full tables stay beside it as outputs.
    assert list(metrics) == ["metrics/summary.json"], metrics
    summary = metrics["metrics/summary.json"]["data"]
    assert set(summary["heldout_BIx4"]) == {"tanet", "bicubic"} and summary["params"] > 0 and "val_psnr" in summary
    assert all((repo / "metrics" / f).is_file() for f in ("eval.json", "train.json", "pretrain.json"))


def test_registered_version_passes_the_gate_or_stays_a_candidate_and_loads(tiny_pipeline: dict[str, object]) -> None:
    """The gate (validation only, never below bicubic) decides the champion alias, against the
    shipped tanet-s re-evaluated on the same held-out clip on this fresh store; the registered
    version loads in a fresh process either way. (The 4-step tiny model is normally below
    bicubic: before the gate it became champion on a fresh store; now tanet-s does.)"""
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    env: dict[str, str] = tiny_pipeline["env"]  # type: ignore[assignment]
    record = json.loads((repo / "metrics/register.json").read_text())
    heldout = json.loads((repo / "metrics/eval.json").read_text())["heldout_BIx4"]
    beats_bicubic = heldout["tanet"]["psnr"] > heldout["bicubic"]["psnr"]
    assert record["version"] == "1" and "candidate" in record["aliases"], record
    assert record["reference"] == "shipped tanet-s"
    if not beats_bicubic:
        assert "does not beat bicubic" in record["decision"] and "champion" not in record["aliases"]
    if "champion" not in record["aliases"]:  # the better of the two is champion: tanet-s, as version 2
        assert record["champion_version"] == "2" and "tanet-s registered as version 2" in record["decision"]
    assert record["tracking_uri"] == env["MLFLOW_TRACKING_URI"], "registered on the MLflow server"
    code = (
        "import mlflow, numpy as np\n"
        "out = []\n"
        "for alias in ('candidate', 'champion'):\n"
        "    y = mlflow.pyfunc.load_model(f'models:/tanet@{alias}').predict(np.zeros((5, 12, 16, 3), np.uint8))\n"
        "    out.append(f'{y.shape} {y.dtype}')\n"
        "print(' / '.join(out))\n"
    )
    assert _py(code, repo, env) == "(5, 48, 64, 3) uint8 / (5, 48, 64, 3) uint8"


def test_sample_clip_is_upscaled_with_audio(tiny_pipeline: dict[str, object]) -> None:
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    lr, hr = repo / "data/sample/input_lr.mp4", repo / "data/sample/upscaled.mp4"
    assert count_frames(lr) == count_frames(hr) > 0
    assert probe(hr).has_audio and probe(lr).has_audio
    assert (probe(hr).width, probe(hr).height) == (4 * probe(lr).width, 4 * probe(lr).height)


def test_curves_and_per_frame_psnr_are_dvc_data_plots_that_render_offline(
    tiny_pipeline: dict[str, object], tmp_path: Path
) -> None:
    """`dvc plots show` draws the training curves and per-frame PSNR from CSV data (so
    `dvc plots diff` overlays experiments) on a page that loads no script from the network."""
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    frames = sorted((repo / "plots/frames").glob("*.csv"))
    header = frames[0].read_text().splitlines()[0].split(",") if frames else []
    assert header[:4] == ["frame", "bicubic", "lanczos", "tanet"] and "branch_1" in header, header
    assert (repo / "plots/train/joint_loss.csv").read_text().startswith("step,loss\n")
    assert (repo / "plots/pretrain/branch_3_val_psnr.csv").is_file()
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert any(k.startswith("plots/frames/") for k in shown) and "plots/train/joint_loss.csv" in shown, list(shown)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "page")], repo)
    page = (tmp_path / "page" / "index.html").read_text()
    assert "vegaEmbed" in page and "<script src=" not in page and "cdn.jsdelivr" not in page


def test_dvc_push_goes_to_the_default_local_remote(tiny_pipeline: dict[str, object]) -> None:
    """A fresh clone's `dvc push` (the hint every run ends with) works: the committed
    .dvc/config names a folder beside the repo."""
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    remote = repo.parent / "tanet-dvc-remote"
    run(["dvc", "push"], repo)
    pushed = [f for f in remote.rglob("*") if f.is_file()]
    assert pushed, f"nothing pushed to {remote}"
    assert "in sync" in run(["dvc", "status", "--cloud"], repo).stdout


def test_mlflow_has_a_parent_run_with_nested_stage_runs(tiny_pipeline: dict[str, object]) -> None:
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    code = (
        "import json, mlflow\n"
        "runs = mlflow.search_runs(experiment_names=['tanet'], output_format='list')\n"
        "print(json.dumps([{'name': r.data.tags.get('mlflow.runName'), 'parent': r.data.tags.get('mlflow.parentRunId'),"
        " 'id': r.info.run_id, 'metrics': sorted(r.data.metrics)} for r in runs]))\n"
    )
    runs = json.loads(_py(code, repo, tiny_pipeline["env"]))  # type: ignore[arg-type]
    by_name = {r["name"]: r for r in runs}
    parents = [r for r in runs if r["name"] == "pipeline"]
    assert len(parents) == 1, "every stage of one dvc repro shares one parent run"
    pid = parents[0]["id"]
    for stage in ("pretrain", "train", "evaluate", "register"):
        assert by_name[stage]["parent"] == pid
    for i in (1, 2, 3):
        assert by_name[f"branch_{i}"]["parent"] == by_name["pretrain"]["id"]
        assert {"loss", "lr", "patches_per_s", "val_psnr"} <= set(by_name[f"branch_{i}"]["metrics"])
    assert {"loss", "val_psnr", "val_psnr_bicubic"} <= set(by_name["train"]["metrics"])


def test_changing_a_patches_param_reruns_only_patches_and_what_follows(pipeline_copy: Path) -> None:
    repo = pipeline_copy
    from tanet.config import dump_params, load_params, set_key

    data = set_key(load_params(repo / "params.yaml").to_dict(), "patches.seed", 7)
    (repo / "params.yaml").write_text(dump_params(data))
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    count = "import mlflow; print(len(mlflow.MlflowClient().search_model_versions(\"name='tanet'\")))"
    before = int(_py(count, repo, store))
    assert before >= 1  # the deployment's run (on the MLflow server over this store) registered here
    started_ms = int(time.time() * 1000)
    res = run(["dvc", "repro"], repo)
    assert _ran(res.stdout) == ["sources", "patches", "pretrain", "train", "evaluate", "register", "sample"]
    for stage in ("ingest", "degrade", "flow"):
        assert f"Stage '{stage}' didn't change, skipping" in res.stdout
    # Plain `dvc repro` without MLFLOW_TRACKING_URI registers in the repo's embedded store, the
    # one an MLflow server of the repo (`tanet serve`'s, or the fixture's) serves: one registry
    # per repo (this assertion was version "1" while `tanet serve` kept a store of its own).
    record = json.loads((repo / "metrics/register.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{repo / 'mlflow.db'}" and record["version"] == str(before + 1)
    assert record["reference"].startswith("champion version")  # the deployment's run left a champion
    # ...and, with no TANET_PARENT_RUN_ID, the stages of that one `dvc repro` still nest under
    # one parent run: the always-changed sources stage starts a pipeline token
    # (.tanet/pipeline.json), the first tracked stage records its run beside it.
    code = (
        "import json, mlflow\n"
        f"runs = mlflow.search_runs(experiment_names=['tanet'], filter_string='attributes.start_time >= {started_ms}',"
        " output_format='list')\n"
        "print(json.dumps([{'name': r.data.tags.get('mlflow.runName'), 'parent': r.data.tags.get('mlflow.parentRunId'),"
        " 'id': r.info.run_id} for r in runs]))\n"
    )
    runs = json.loads(_py(code, repo, store))
    parents = [r for r in runs if r["name"] == "pipeline"]
    assert len(parents) == 1, runs
    by_name = {r["name"]: r for r in runs}
    for stage in ("pretrain", "train", "evaluate", "register"):
        assert by_name[stage]["parent"] == parents[0]["id"], stage
    # Lineage: the new version is the train run's model; that run's training dataset is the
    # shards, by the hash dvc.lock records for data/patches.
    code = (
        "import json, mlflow\n"
        f"v = mlflow.MlflowClient().get_model_version('tanet', '{record['version']}')\n"
        "r = mlflow.MlflowClient().get_run(v.run_id)\n"
        "print(json.dumps([v.run_id, [(d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs],"
        " sorted(r.data.metrics), v.description.splitlines()[0]]))\n"
    )
    run_id, inputs, metrics, title = json.loads(_py(code, repo, store))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["deps"]
    patches_md5 = next(d["md5"] for d in lock if d["path"] == "data/patches")  # "<md5>.dir"
    assert run_id == by_name["train"]["id"]
    assert inputs == [["patches", patches_md5]]
    assert {"loss", "val_psnr"} <= set(metrics) and title == f"# tanet version {record['version']}"


def test_metrics_show_prints_the_vid4_table_when_shared_is_there(pipeline_copy: Path) -> None:
    from media_factory import SHARED

    if not (SHARED / "data/vid4/GT").is_dir():
        pytest.skip("../shared/data/vid4 is not beside the repo")
    repo = pipeline_copy
    from tanet.config import dump_params, load_params, set_key

    data = load_params(repo / "params.yaml").to_dict()
    data = set_key(set_key(data, "evaluate.vid4", "on"), "evaluate.max_frames", 2)
    data = set_key(data, "evaluate.vid4_dir", str(SHARED / "data/vid4"))
    (repo / "params.yaml").write_text(dump_params(data))
    res = run(["dvc", "repro"], repo)
    assert _ran(res.stdout)[:2] == ["sources", "evaluate"]  # the listing always runs; then evaluate first
    shown = run(["dvc", "metrics", "show"], repo).stdout
    # The headline file only (metrics/summary.json): the full table stays in eval.json.
    assert "vid4_BIx4.tanet.psnr" in shown and "heldout_BIx4.bicubic.psnr" in shown and "params" in shown
    assert "vid4ref_BIx4" not in shown and "branch_1" not in shown
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert {"vid4_BIx4", "vid4ref_BIx4", "heldout_BIx4"} <= set(ev)
    assert 20 < ev["vid4_BIx4"]["bicubic"]["psnr"] < 30


def test_dvc_exp_run_varies_a_param_and_exp_show_lists_it(tiny_pipeline: dict[str, object]) -> None:
    """`dvc exp run --temp -S train.steps=2 -S register.promote=never` on the finished tiny
    repo (a temporary copy: the workspace is untouched), then `dvc exp show`: the experiment's
    row has the changed param and its own headline metrics."""
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    params_before = (repo / "params.yaml").read_text()
    run(["dvc", "exp", "run", "--temp", "-n", "steps2", "-S", "train.steps=2", "-S", "register.promote=never"], repo)
    assert (repo / "params.yaml").read_text() == params_before
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or []) for e in e.get("revs", [])]
    mine = [e for e in exps if e.get("name") == "steps2"]
    assert mine, shown
    data = mine[0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["steps"] == 2
    assert data["params"]["params.yaml"]["data"]["register"]["promote"] == "never"
    assert "metrics/summary.json" in data["metrics"]
    # The temporary copy registered into the workspace's one store (DVC_ROOT), tagged with the
    # experiment's name and baseline, without moving @champion (register.promote=never).
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    code = (
        "import json, mlflow\n"
        "c = mlflow.MlflowClient()\n"
        "vs = [v for v in c.search_model_versions(\"name='tanet'\") if v.tags.get('tanet.dvc_exp_name') == 'steps2']\n"
        "print(json.dumps([[v.version, v.tags.get('tanet.dvc_baseline_rev')] for v in vs]"
        " + [c.get_registered_model('tanet').aliases]))\n"
    )
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    *versions, aliases = json.loads(_py(code, repo, store))
    assert len(versions) == 1 and versions[0][1] == head, versions
    assert aliases["champion"] != versions[0][0]


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_dvc_exp_run_set_round_trips_a_presets_params(preset: str, tmp_path: Path) -> None:
    """DVC's own `-S` (YAML 1.2 rewrite of params.yaml) on a one-stage repo that only loads them."""
    from tanet.config import dump_params, preset_params

    (tmp_path / "params.yaml").write_text(dump_params(preset_params(preset)))
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  load:\n    cmd: python -c \"from tanet.config import load_params; p = load_params('params.yaml');"
        ' print(p.train.lr, p.evaluate.vid4)" > loaded.txt\n    params: [train, evaluate]\n    outs: [loaded.txt]\n'
    )
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
        run(cmd, tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    run(["dvc", "exp", "run", "-S", "train.lr=1e-4", "-S", "evaluate.vid4=off"], tmp_path)
    assert (tmp_path / "loaded.txt").read_text().split() == ["0.0001", "off"]
