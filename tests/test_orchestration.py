"""Orchestration on real servers: the train-tanet deployment, services up and down, Dask fan-out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_repo import make_repo, run, tool_env

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

STAGE_FLOWS = {"ingest", "degrade", "optical-flow", "patches", "pretrain", "train", "evaluate", "register", "sample"}


def _py(code: str, cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=tool_env(env), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_deployment_registers_a_new_version_on_the_mlflow_server(tiny_pipeline: dict[str, object]) -> None:
    env: dict[str, str] = tiny_pipeline["env"]  # type: ignore[assignment]
    code = (
        "import json, mlflow\n"
        "c = mlflow.MlflowClient()\n"
        "v = c.get_model_version('tanet', '1')\n"
        "print(json.dumps({'run': v.run_id is not None, 'scale': v.tags.get('tanet.scale'), 'uri': mlflow.get_tracking_uri()}))\n"
    )
    out = json.loads(_py(code, Path(tiny_pipeline["repo"]), env))  # type: ignore[arg-type]
    # Version 1 is the deployment's (later tests may add versions: the repo has one store).
    assert out == {"run": True, "scale": "4", "uri": env["MLFLOW_TRACKING_URI"]}


def test_every_stage_is_a_flow_run_tagged_with_its_pipeline(tiny_pipeline: dict[str, object]) -> None:
    """Each stage of the deployment's `dvc repro` is a flow run on the team's server, tagged
    `pipeline:<name of the train-tanet run>` like that run itself, so the UI groups them."""
    env: dict[str, str] = tiny_pipeline["env"]  # type: ignore[assignment]
    first = tiny_pipeline["runs"]["first"]  # type: ignore[index]
    code = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    flows = {f.id: f.name for f in c.read_flows()}\n"
        "    runs = [(flows[r.flow_id], r.state_name, r.tags) for r in c.read_flow_runs()]\n"
        "    arts = [a.key for a in c.read_artifacts()]\n"
        "print(json.dumps({'runs': runs, 'artifacts': arts}))\n"
    )
    out = json.loads(_py(code, Path(tiny_pipeline["repo"]), env))  # type: ignore[arg-type]
    tag = f"pipeline:{first['name']}"
    assert tag in first["tags"]
    mine = {name: state for name, state, tags in out["runs"] if tag in tags}
    assert set(mine) == STAGE_FLOWS | {"train-tanet"}, mine
    assert all(state == "Completed" for state in mine.values()), mine
    assert all("tanet-stage" in tags for name, _, tags in out["runs"] if name in STAGE_FLOWS)
    assert "tanet-training-run" in out["artifacts"] and "evaluation" in out["artifacts"]


def test_one_workspace_runs_one_pipeline_at_a_time(tiny_pipeline: dict[str, object]) -> None:
    """Deployed with plain `prefect deploy --all` and a worker started by hand: a second
    train-tanet run waits for the first (the deployment's concurrency limit); an ingest-videos
    run started meanwhile fails at once, naming the run that holds the workspace, and leaves
    params.yaml as it was."""
    runs: dict[str, dict[str, object]] = tiny_pipeline["runs"]  # type: ignore[assignment]
    first, second, refused = runs["first"], runs["second"], runs["refused"]
    assert first["state"] == second["state"] == "Completed", runs
    assert second["start"] >= first["end"], "the second train-tanet run overlapped the first"  # type: ignore[operator]
    assert refused["flow"] == "ingest-videos" and refused["state"] == "Failed", refused
    assert "is busy" in str(refused["message"]) and str(first["name"]) in str(refused["message"]), refused
    assert refused["end"] < first["end"]  # type: ignore[operator]
    assert tiny_pipeline["params_after"] == tiny_pipeline["params_while_running"]
    assert "extra-clip" not in str(tiny_pipeline["params_after"])
    # Each deployment runs in the checkout it was deployed from (no template left to resolve).
    code = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(json.dumps([c.read_deployment_by_name(n).pull_steps for n in\n"
        "        ('train-tanet/train-tanet', 'ingest-videos/ingest-videos', 'evaluate-model/evaluate-model')]))\n"
    )
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    steps = json.loads(_py(code, repo, tiny_pipeline["env"]))  # type: ignore[arg-type]
    where = {"prefect.deployments.steps.set_working_directory": {"directory": str(repo.resolve())}}
    assert steps == [[where]] * 3, steps


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_serve_reports_taken_ports_and_stop_leaves_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", "tiny")
    holder = _taken_port()
    port = holder.getsockname()[1]
    try:
        res = subprocess.run(
            [sys.executable, "-m", "tanet.cli", "serve", "--prefect-port", str(port)],
            cwd=repo,
            env=tool_env(),
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in res.stderr
    finally:
        holder.close()
    out = run(
        [
            sys.executable,
            "-m",
            "tanet.cli",
            "serve",
            "--prefect-port",
            "0",
            "--mlflow-port",
            "0",
            "--no-deploy",
            "--no-worker",
        ],
        repo,
    )
    state = json.loads((repo / ".tanet/services/services.json").read_text())
    pids = list(state["pids"].values())
    again = subprocess.run(
        [sys.executable, "-m", "tanet.cli", "serve", "--prefect-port", "0", "--mlflow-port", "0"],
        cwd=repo,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "already running" in again.stderr
    assert "export PREFECT_API_URL=" in out.stdout
    status = json.loads(run([sys.executable, "-m", "tanet.cli", "status"], repo).stdout)
    assert status["prefect_healthy"] and status["mlflow_healthy"]
    run([sys.executable, "-m", "tanet.cli", "stop"], repo)
    for pid in pids:  # whole process groups are gone (uvicorn/gunicorn children too)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not (repo / ".tanet/services/services.json").exists()


def test_mlflow_server_down_is_a_clear_error(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code = "from tanet.track.tracking import new_parent_run; new_parent_run('tanet')"
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=tool_env({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}),
    )
    assert res.returncode != 0 and f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in res.stderr


def test_preprocessing_fans_out_on_a_dask_cluster(tiny_pipeline: dict[str, object], tmp_path: Path) -> None:
    pytest.importorskip("prefect_dask")
    repo = Path(tiny_pipeline["repo"])  # type: ignore[arg-type]
    out = tmp_path / "lr"
    run(
        [
            sys.executable,
            "-m",
            "flows.stage",
            "degrade",
            "--params",
            "params.yaml",
            "--clips",
            "data/clips",
            "--out",
            str(out),
            "--task-runner",
            "dask",
        ],
        repo,
        tool_env(),
    )
    ref = sorted(p.relative_to(repo / "data/lr") for p in (repo / "data/lr").rglob("*.png"))
    got = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert got == ref and ref
    for rel in ref[:5]:
        assert (out / rel).read_bytes() == (repo / "data/lr" / rel).read_bytes()


def test_flow_parameters_edit_the_repo_params_instead_of_replacing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No preset: the repo's params.yaml is the base (a user's edits survive); sources are added."""
    import yaml

    import flows.train_tanet as tt
    from tanet.config import ConfigError, dump_params, preset_params, set_key

    current = set_key(preset_params("quick"), "ingest.paths", ["/videos/a.mp4"])
    current = set_key(current, "train.steps", 123)  # a user's edit
    same = tt.pipeline_params(None, None, None, None, None, current)
    assert same == current
    out = tt.pipeline_params(None, 2, "none", ["/videos/b", "/videos/a.mp4"], {"train.lr": 5e-4}, current)
    assert out["ingest"]["paths"] == ["/videos/a.mp4", "/videos/b"]
    assert out["model"]["scale"] == 2 and out["degrade"]["scales"] == [2] and out["model"]["alignment"] == "none"
    assert out["train"]["steps"] == 123 and out["train"]["lr"] == 5e-4
    assert tt.pipeline_params("tiny", None, None, None, None, current) == preset_params("tiny")
    with pytest.raises(ConfigError, match="train.stepz"):
        tt.pipeline_params(None, None, None, None, {"train.stepz": 1}, current)
    # params.yaml is rewritten only when something changed (comments of the user's file kept).
    monkeypatch.setattr(tt, "ROOT", tmp_path)
    text = "# my notes\n" + dump_params(current)
    (tmp_path / "params.yaml").write_text(text)
    assert tt.current_params() == current
    assert not tt.write_run_params(same, tt.current_params())
    assert (tmp_path / "params.yaml").read_text() == text
    assert tt.write_run_params(out, tt.current_params())
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == out


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_stage_ended_by_a_signal_stops_its_temporary_prefect_server(tmp_path: Path, sig: str) -> None:
    import signal
    import time

    code = "import flows.common as c, time; s = c.stage_environment(); s.wait(90); print('up', flush=True); time.sleep(120)"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "uvicorn"], capture_output=True).returncode == 0
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while left := subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split():
            assert time.monotonic() < deadline, f"left running after {sig}: {left}"
            time.sleep(0.2)
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], capture_output=True)


def test_a_quarantined_input_is_one_warning_line_in_the_ingest_flow_log(tmp_path: Path) -> None:
    import media_factory as mf

    from tanet.config import dump_params, preset_params

    src = tmp_path / "src"
    src.mkdir()
    mf.h264_mp4(src / "good.mp4", size=(64, 48), frames=6, audio=False)
    mf.h264_mp4(src / "train.mp4", size=(64, 48), frames=6, audio=False)
    mf.text_as_mp4(src / "broken.mp4")
    params = preset_params("tiny", {"ingest.embedded": [], "ingest.paths": [str(src)], "ingest.val_clips": ["good"]})
    (tmp_path / "params.yaml").write_text(dump_params(params))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.stage",
            "ingest",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / "clips"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    lines = [ln for ln in log.splitlines() if "broken.mp4" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "quarantined" in lines[0], lines
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
