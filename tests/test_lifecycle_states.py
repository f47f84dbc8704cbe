"""The run lifecycle (klexp.app.lifecycle): states, one owner per directory, records that never
regress, and exit statuses that say how a run ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, REPO, cli, run_cli

from klexp.app import lifecycle
from klexp.app.lifecycle import LOCK_FILE, DirectoryLocked, claim, owner_pid, release
from klexp.lightning.run_summary import RecordRegression, RunSummary, write_record
from klexp.record import COMPLETED, STATUSES, SUMMARY_FILE

RUN = [*FAST, "data=synthetic"]
# 420 synthetic examples in batches of 64: 7 steps an epoch; a slow run is one a test can signal
# (a checkpoint every 2 steps, then 19 seconds of steps left to signal it in)
SLOW_RUN = ["callbacks.progress_bar=null", "data=synthetic", "trainer.max_epochs=3",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "+callbacks.sleep._target_=helpers.Sleep", "+callbacks.sleep.seconds=1.0"]
ENV = {"PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def files_of(directory: Path) -> dict[Path, bytes]:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, **ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "klexp", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / SUMMARY_FILE).read_text())


# -- the record -----------------------------------------------------------------------------------

def test_a_completed_record_is_never_replaced_by_a_lesser_one(tmp_path):
    write_record(tmp_path / SUMMARY_FILE, {"status": COMPLETED, "metrics": {"test/acc": 0.9}})
    before = (tmp_path / SUMMARY_FILE).read_bytes()
    for status in ("running", "failed", "interrupted"):
        with pytest.raises(RecordRegression, match="records a completed run; it is never replaced"):
            write_record(tmp_path / SUMMARY_FILE, {"status": status, "metrics": {}})
    assert (tmp_path / SUMMARY_FILE).read_bytes() == before
    # a later run's summary (a user's Trainer fitting again into the directory) is refused too
    with pytest.raises(RecordRegression):
        RunSummary(tmp_path).write()
    assert (tmp_path / SUMMARY_FILE).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != SUMMARY_FILE]  # no temporary left


def test_the_record_is_written_through_a_temporary_file_beside_it(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(source, target):
        seen.append((Path(source).parent, Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    RunSummary(tmp_path).write()
    assert seen == [(tmp_path, tmp_path / SUMMARY_FILE)]


# -- one owner ------------------------------------------------------------------------------------

HOLDER = ("import fcntl, os, sys, time\n"
          "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
          "print('locked', flush=True)\n"
          "time.sleep(60)\n")


def test_a_live_owner_blocks_and_names_its_pid_and_a_dead_ones_lock_never_blocks(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked) as error:
            claim(tmp_path)
        assert str(error.value) == f"{tmp_path} is in use by process {holder.pid} ({LOCK_FILE})"
        assert lifecycle.artefacts(tmp_path) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    assert owner_pid(tmp_path) == holder.pid  # its pid is still in the file, but the kernel freed the lock
    assert lifecycle.artefacts(tmp_path) == []
    claim(tmp_path).announce()
    assert owner_pid(tmp_path) == os.getpid()
    release(tmp_path)


def test_the_lifecycles_states_are_the_records_statuses():
    assert set(lifecycle.STATES) == {lifecycle.NEW, *STATUSES}


def test_the_state_diagram_in_the_docs_is_the_lifecycles_table():
    text = (REPO / "docs" / "reliability.md").read_text()
    assert f"```mermaid\n{lifecycle.state_diagram()}\n```" in text
    assert lifecycle.transition_table() in text


# -- the command ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("completed")
    result = cli([*RUN, "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd


@pytest.mark.parametrize(
    ("extra", "status", "line"),
    [([], 0, "klexp: run already completed; nothing to do"),
     (["trainer.max_epochs=0"], 1,
      "klexp: resume: run already completed, so nothing is resumed and its record is kept; to train it "
      "with trainer.max_epochs=0, start a new run: `klexp rerun run trainer.max_epochs=0`"),
     (["trainer.max_epochs=2"], 1,
      "klexp: resume: run already completed, so nothing is resumed and its record is kept; to train it "
      "with trainer.max_epochs=2, start a new run: `klexp rerun run trainer.max_epochs=2`")],
)
def test_resuming_a_completed_run_changes_nothing_and_says_so_in_one_line(completed_run, extra, status, line):
    run_dir = completed_run / "run"
    before = files_of(run_dir)
    result = cli(["resume=run", *extra], cwd=completed_run)
    assert result.returncode == status
    assert (result.stdout + result.stderr).strip().splitlines() == [line]
    assert files_of(run_dir) == before


def test_the_command_decides_on_a_record_before_lightning_loads(completed_run):
    """The command loads torch and Lightning only to train: ``klexp resume=`` of a completed run
    answers at once (it used to take the five seconds of Lightning's import to say there is
    nothing to do)."""
    code = ("import sys; from klexp.app.cli import main\n"
            "try:\n    main(['resume=run'])\nexcept SystemExit as end:\n    print(end.code)\n"
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=completed_run, capture_output=True,
                            text=True, check=True)
    assert result.stdout.splitlines() == ["klexp: run already completed; nothing to do", "0", "[]"]


def test_a_foreign_file_in_the_run_directory_does_not_make_it_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "out.txt").write_text("the user's own notes\n")
    result = cli([*RUN, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert status_of(tmp_path / "run")["status"] == COMPLETED
    assert (tmp_path / "run" / "out.txt").read_text() == "the user's own notes\n"


@pytest.mark.slow
def test_sigterm_records_interrupted_exits_143_and_the_resume_then_completes(tmp_path):
    """And while the run lives, no second process gets its directory: a resume of it and a second
    start into it are refused, naming its pid."""
    run_dir = tmp_path / "run"
    process = start([*SLOW_RUN, "hydra.run.dir=run"], tmp_path)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)

    for args in (["resume=run"], [*SLOW_RUN, "hydra.run.dir=run"]):
        refused = cli(args, cwd=tmp_path)
        assert refused.returncode == 1
        (line,) = refused.stderr.strip().splitlines()
        assert f"run is in use by process {process.pid} ({LOCK_FILE})" in line, line

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    (line,) = [text for text in err.splitlines() if text.startswith("klexp:")]
    assert line.startswith("klexp: interrupted by SIGTERM at step ")
    assert line.endswith(f"; continue it with `klexp resume={run_dir}`")
    record = status_of(run_dir)
    assert (record["status"], record["signal"]) == ("interrupted", "SIGTERM")

    resumed = cli(["resume=run", "callbacks.sleep.seconds=0"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert status_of(run_dir)["status"] == COMPLETED


@pytest.mark.slow
def test_ctrl_c_records_interrupted_exits_130_and_prints_the_resume_command(tmp_path):
    process = start([*SLOW_RUN, "hydra.run.dir=run"], tmp_path)
    wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert "klexp: interrupted by SIGINT at step " in err
    assert err.rstrip().endswith(f"; continue it with `klexp resume={tmp_path / 'run'}`")
    record = status_of(tmp_path / "run")
    assert (record["status"], record["signal"]) == ("interrupted", "SIGINT")


@pytest.mark.slow
def test_two_runs_started_together_into_one_directory_get_one_owner(tmp_path):
    first, second = (start([*SLOW_RUN, "trainer.max_epochs=1", "callbacks.sleep.seconds=0.5",
                                   "hydra.run.dir=run"], tmp_path)
                     for _ in range(2))
    results = [(p, *p.communicate(timeout=240)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 1], [err[-1000:] for _, _, err in results]
    (loser,) = [(p, err) for p, _, err in results if p.returncode == 1]
    (winner,) = [p for p, _, _ in results if p.returncode == 0]
    (line,) = loser[1].strip().splitlines()
    owner = (f"process {winner.pid}", "another process")  # it may not have written its pid yet
    assert line in [f"klexp: hydra.run.dir: run is in use by {name} ({LOCK_FILE}); wait for it to end, "
                    "or give the new run another hydra.run.dir" for name in owner], line
    assert not list((tmp_path / "run" / "checkpoints").glob("last-v*.ckpt"))


# -- a full disk ----------------------------------------------------------------------------------

def test_a_full_disk_records_failed_and_keeps_the_last_good_checkpoint(tmp_path):
    """The save that meets a full disk fails (and so does the failure checkpoint's), the partial
    files are removed, last.ckpt is still the last good one and the record says why."""
    from helpers import QUIET, run_experiment

    from klexp.app.lifecycle import RunFailed

    overrides = [*QUIET, "data=synthetic", "trainer.max_epochs=2",
                 "callbacks.model_checkpoint.every_n_train_steps=2",
                 "+trainer.plugins=[{_target_: faults.FullDiskCheckpointIO, after: 2}]"]
    with pytest.raises(RunFailed) as error:
        run_experiment(overrides, tmp_path)
    assert str(error.value).startswith("run failed: [Errno 28] No space left on device")
    assert f"the last good checkpoint {tmp_path / 'checkpoints' / 'last.ckpt'} is intact" in str(error.value)
    record = status_of(tmp_path)
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


SMALL_DISK = r"""
mount -t tmpfs -o size=5m tmpfs "$1" && cd "$1" || exit 99
"$2" -m klexp callbacks.progress_bar=null data=synthetic trainer.max_epochs=1 \
    trainer.limit_train_batches=5 callbacks.model_checkpoint.every_n_train_steps=2 \
    hydra.run.dir=run 2> err.txt
echo "$?" > rc.txt
"$2" - <<'PY'
import json, pathlib, torch
run = pathlib.Path("run")
print(json.dumps({"rc": int(pathlib.Path("rc.txt").read_text()),
                  "err": pathlib.Path("err.txt").read_text().strip().splitlines(),
                  "record": json.loads((run / "summary.json").read_text()),
                  "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
                  "step": torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]}))
PY
"""


@pytest.mark.slow
def test_on_a_real_full_file_system_the_run_fails_truthfully_and_its_last_checkpoint_survives(tmp_path):
    """A 5 MB tmpfs (in a user and mount namespace: no root needed) holds one 3.3 MB checkpoint
    but not a second beside it."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SMALL_DISK,
                             "sh", str(mount_point), sys.executable],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["rc"] == 1
    assert [line for line in found["err"] if line.startswith("klexp:")] == [
        line for line in found["err"] if "No space left on device" in line]
    assert found["record"]["status"] == "failed"
    assert "No space left on device" in found["record"]["error"]
    assert found["checkpoints"] == ["last.ckpt"]
    assert found["step"] == 2


# -- a refused resume -----------------------------------------------------------------------------

def test_a_resume_that_stops_before_training_leaves_the_runs_events_and_record_as_they_were(tmp_path):
    """A checkpoint that does not fit the network (task.net.hidden=[32]) stops the resume before
    training goes on: no events file (with its purge-step marker, which would hide the run's
    scalars) is left behind, and the record still says how the run ended."""
    from helpers import QUIET, run_experiment

    run = [*QUIET, "data=synthetic", "trainer.max_epochs=2",
           "callbacks.model_checkpoint.every_n_train_steps=2"]
    with pytest.raises(Exception, match="KL term 'ce' is nan at step 9"):
        run_experiment([*run, "+callbacks.poison._target_=helpers.PoisonWeights",
                        "+callbacks.poison.step=9"], tmp_path)
    before = files_of(tmp_path)
    assert status_of(tmp_path)["status"] == "failed"
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(Exception):  # noqa: B017 - whichever check names the mismatch first
        run_experiment([*run, f"ckpt_path={checkpoint}", "task.net.hidden=[32]"], tmp_path)
    assert files_of(tmp_path) == before


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_while_testing_resumes_to_the_uninterrupted_record(tmp_path):
    run = [*FAST, "data=synthetic", "data.eval_batch_size=16", "trainer.limit_test_batches=3"]
    run = [o for o in run if o != "trainer.limit_test_batches=1"]
    reference = cli([*run, "hydra.run.dir=reference"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    stopped = run_cli([*run, "hydra.run.dir=run", "+callbacks.stop._target_=faults.SignalAt",
                       "+callbacks.stop.stage=test", "+callbacks.stop.batch=0"], cwd=tmp_path, env=ENV)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert status_of(tmp_path / "run")["status"] == "interrupted"
    resumed = cli(["resume=run", "~callbacks.stop"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final, expected = status_of(tmp_path / "run"), status_of(tmp_path / "reference")
    assert final["status"] == COMPLETED
    assert final["metrics"] == expected["metrics"]
    assert final["objective"] == expected["objective"]


# -- one line -------------------------------------------------------------------------------------

LONG = "/".join(["a-directory-with-a-rather-long-name"] * 5)


@pytest.mark.slow
def test_an_error_of_a_single_run_is_one_line_even_with_a_long_path_through_a_pipe(tmp_path):
    """No Hydra frame lines ("Error executing job…", "Set the environment variable…") around it,
    and no wrapping at 80 columns when stderr is not a terminal."""
    missing = tmp_path / LONG / "mnist"
    result = run_cli(["data=mnist_idx", f"data.root={missing}", f"hydra.run.dir={tmp_path / LONG / 'run'}"],
                     cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"klexp: data.root: directory {missing} does not exist"]
    bad_value = cli(["kl.ce.weight=-1", "data=synthetic", f"hydra.run.dir={tmp_path / 'run'}"],
                    cwd=tmp_path)
    assert bad_value.stderr.splitlines() == ["klexp: kl.ce.weight: expected a finite number ≥ 0, got -1"]


def test_sigterm_before_training_still_ends_the_command_truthfully(tmp_path):
    """Lightning's handler is in place only inside fit and test; before them (building the data,
    the task, the Trainer) SIGTERM still ends the command with one line and 143."""
    process = start([*SLOW_RUN, "hydra.run.dir=run"], tmp_path)
    wait_for(tmp_path / "run" / LOCK_FILE, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert next(line for line in err.splitlines() if line.startswith("klexp:")).startswith(
        "klexp: interrupted by SIGTERM")
    assert "Traceback" not in err
