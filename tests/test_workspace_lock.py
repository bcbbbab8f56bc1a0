"""The workspace lock of the deployment flows: one pipeline per workspace, gone with its holder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.train_tanet import LOCK_FILE, WorkspaceBusy, workspace_lock

ROOT = Path(__file__).resolve().parents[1]

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from flows.train_tanet import workspace_lock\n"
    "with workspace_lock(Path(sys.argv[1]), 'flow run holder-run (abc), pid 1'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def _holder(repo: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(repo)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(WorkspaceBusy, match=r"is busy: flow run holder-run \(abc\), pid 1 is running"):
            with workspace_lock(tmp_path, "second"):
                pytest.fail("entered a held workspace")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The OS lock went with the killed process: no stale lock file blocks the next run.
    entered = []
    with workspace_lock(tmp_path, "third"):
        entered.append((tmp_path / LOCK_FILE).read_text())
    assert entered == ["third"]
    assert (tmp_path / LOCK_FILE).read_text() == ""  # the holder's name is cleared on release


def test_the_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with workspace_lock(tmp_path, "first"):
            raise RuntimeError("stage failed")
    t0 = time.monotonic()
    with workspace_lock(tmp_path, "next"):
        pass
    assert time.monotonic() - t0 < 5
