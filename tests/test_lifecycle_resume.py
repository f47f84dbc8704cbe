"""Every documented way to start a run can be continued with ``klexp resume=<run dir>`` and
repeated with ``klexp rerun <run dir>``: here a user's own project, started with ``--config-dir``
(which Hydra records among its config sources, not among the overrides)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, cli

PROJECT = REPO / "tests" / "user_project"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), str(REPO / "tests")])}
ENV.pop("HYDRA_FULL_ERROR", None)


def test_the_recorded_config_dir_comes_back_and_a_given_one_wins(tmp_path):
    from klexp.app.resume import rerun_arguments, resume_arguments

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=tinyvae\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    config_sources:\n"
        "    - {path: hydra.conf, schema: pkg, provider: hydra}\n"
        "    - {path: /my project/conf, schema: file, provider: command-line}\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert rerun_arguments([str(run_dir), "seed=1"]) == [
        "--config-dir", "/my project/conf", "experiment=tinyvae", "seed=1"]
    assert rerun_arguments([str(run_dir), "seed=1", "-cd", "other"]) == [
        "-cd", "other", "experiment=tinyvae", "seed=1"]
    resumed = resume_arguments(run_dir, ["seed=1", "--config-dir=moved"])
    assert resumed[:2] == ["--config-dir=moved", "experiment=tinyvae"]
    assert resumed.index("seed=1") > resumed.index("experiment=tinyvae")


@pytest.mark.slow
def test_a_users_config_dir_run_is_interrupted_resumed_and_rerun(tmp_path, monkeypatch):
    args = ["--config-dir", str(PROJECT / "conf"), "experiment=tinyvae", "callbacks.progress_bar=null",
            "trainer.max_epochs=3", "callbacks.model_checkpoint.every_n_train_steps=2",
            "+callbacks.sleep._target_=helpers.Sleep", "+callbacks.sleep.seconds=0.5", "hydra.run.dir=run"]
    process = subprocess.Popen([sys.executable, "-m", "klexp", *args], cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM

    # the resume and the rerun by the command's entry point in this process (the killed run was
    # the process), the flag after the overrides, where the injected ones used to land behind it
    monkeypatch.syspath_prepend(str(PROJECT))
    resumed = cli(["resume=run", "callbacks.sleep.seconds=0", "--config-dir", str(PROJECT / "conf")],
                  tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"

    rerun = cli(["rerun", "run", "callbacks.sleep.seconds=0", "hydra.run.dir=again"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert (again["status"], again["experiment"]) == ("completed", "tinyvae")
