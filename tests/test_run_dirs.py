"""The run-directory guard's parts: which process checks, what counts as a used directory, and the
callback that refuses before Hydra writes anything (the whole command is tested in test_cli.py)."""

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from klexp.app import lifecycle
from klexp.app.cli import CONFIG_DIR, CONFIG_NAME, register_resolvers
from klexp.app.lifecycle import LOCK_FILE, artefacts, owner_pid, release
from klexp.app.run_dirs import (
    GUARD_KEY,
    RANK_VARIABLES,
    RunDirectoryGuard,
    RunDirectoryInUse,
    check_new_run_directory,
    check_new_sweep_directory,
    check_sweep_job_directory,
    guard_overrides,
    is_first_process,
    swept_dependency,
    unnamed_swept_key,
)


@pytest.mark.parametrize(
    ("environ", "first"),
    [({}, True),
     ({"SLURM_PROCID": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
     ({"LOCAL_RANK": "1"}, False),  # a child Lightning's DDP launcher started
     ({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, False),  # torchrun
     ({"SLURM_PROCID": "2"}, False),  # srun
     ({"NODE_RANK": "1"}, False),  # the main process on a second node
     ({"RANK": ""}, True)],
)
def test_only_the_first_process_of_a_launch_checks_the_directory(environ, first):
    assert is_first_process(environ) is first


def test_the_guard_is_added_once_and_siblings_write_no_record_of_their_own():
    first = guard_overrides(["seed=1"], resume=False, environ={})
    assert first == [f"++{GUARD_KEY}._target_=klexp.app.run_dirs.RunDirectoryGuard",
                     f"++{GUARD_KEY}.resume=false"]
    assert guard_overrides(["seed=1", *first], resume=False, environ={}) == []
    assert guard_overrides(["seed=1"], resume=True, environ={})[1] == f"++{GUARD_KEY}.resume=true"
    sibling = guard_overrides(["seed=1", *first], resume=False, environ={"LOCAL_RANK": "1"})
    assert sibling == ["hydra.output_subdir=null"]


def test_a_directory_is_used_when_it_holds_klexps_artefacts_not_the_users_files(tmp_path):
    assert artefacts(tmp_path / "missing") == []
    (tmp_path / "cli.log").write_text("a sibling process opened its log first\n")
    (tmp_path / "out.txt").write_text("the user's own notes\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("x\n")
    (tmp_path / LOCK_FILE).write_text("12345\n")  # its owner is gone: flock is free
    assert artefacts(tmp_path) == []
    check_new_run_directory(tmp_path)
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "teacher" / "checkpoints").mkdir(parents=True)
    assert artefacts(tmp_path) == [".hydra", "summary.json", "tb", "teacher"]
    assert artefacts(tmp_path, ignore=(".hydra",)) == ["summary.json", "tb", "teacher"]


def test_a_used_directory_is_refused_in_one_line_naming_what_it_holds(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
    with pytest.raises(RunDirectoryInUse) as run_error:
        check_new_run_directory(tmp_path)
    assert str(run_error.value) == (
        f"hydra.run.dir: {tmp_path} already holds a run (a, b, c, d, …); continue it with "
        f"`klexp resume={tmp_path}`, or give the new run another hydra.run.dir")
    with pytest.raises(RunDirectoryInUse) as sweep_error:
        check_new_sweep_directory(tmp_path)
    assert str(sweep_error.value).startswith(
        f"hydra.sweep.dir: {tmp_path} already holds a sweep (a, b, c, d, …); give the new sweep another")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(RunDirectoryInUse, match="is a file, not a directory"):
        check_new_run_directory(a_file)


def test_a_sweep_job_meets_an_earlier_run_only_beyond_its_own_record(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "cli.log").write_text("")
    (tmp_path / LOCK_FILE).write_text("")
    check_sweep_job_directory(tmp_path, ".hydra")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(RunDirectoryInUse) as error:
        check_sweep_job_directory(tmp_path, ".hydra")
    assert str(error.value) == (
        f"hydra.sweep.dir: job directory {tmp_path} already held a run (summary.json); this job "
        "stopped before writing to it (its .hydra/ record was replaced)")
    with pytest.raises(RunDirectoryInUse, match=r"held a run \(\.hydra, summary\.json\); this job stopped "
                                                r"before writing to it$"):
        check_sweep_job_directory(tmp_path, None)


def composed_with_hydra(run_dir):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=[f"hydra.run.dir={run_dir}",
                                                           f"hydra.sweep.dir={run_dir}"],
                       return_hydra_config=True)


def test_the_callback_exits_before_a_new_run_into_a_used_directory_but_not_on_resume(tmp_path, monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "summary.json").write_text("{}")
    config = composed_with_hydra(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        RunDirectoryGuard().on_run_start(config)
    message = f"klexp: hydra.run.dir: {tmp_path} already holds a run (summary.json); continue it with"
    assert str(exit_.value.code).startswith(message)
    RunDirectoryGuard().on_run_start(composed_with_hydra(tmp_path / "new"))
    assert owner_pid(tmp_path / "new") == os.getpid()  # it owns the new directory, for its life
    RunDirectoryGuard(resume=True).on_run_start(config)
    release(tmp_path / "new")
    release(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")
    RunDirectoryGuard().on_run_start(config)
    assert not lifecycle.is_locked(tmp_path) and tmp_path not in lifecycle._HELD  # siblings take no lock


HOLDER = ("import fcntl, os, sys, time\n"
          "fd = os.open(os.path.join(sys.argv[1], 'klexp.lock'), os.O_RDWR | os.O_CREAT)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
          "print('locked', flush=True)\n"
          "time.sleep(60)\n")


def test_a_run_or_sweep_into_a_directory_a_live_process_owns_is_refused_naming_its_pid(tmp_path, monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = composed_with_hydra(tmp_path)
        with pytest.raises(SystemExit) as run_exit:
            RunDirectoryGuard().on_run_start(config)
        assert run_exit.value.code == (
            f"klexp: hydra.run.dir: {tmp_path} is in use by process {holder.pid} ({LOCK_FILE}); wait for "
            "it to end, or give the new run another hydra.run.dir")
        owned = f"hydra.sweep.dir: {tmp_path} is in use by process {holder.pid}"
        with pytest.raises(SystemExit, match=owned):
            RunDirectoryGuard().on_multirun_start(config)
    finally:
        holder.kill()
        holder.wait()
    RunDirectoryGuard().on_multirun_start(config)  # the owner is gone: its lock never blocks
    assert owner_pid(tmp_path) == os.getpid()
    release(tmp_path)


def test_an_unresolvable_interpolation_in_the_run_directory_is_one_line_before_anything_exists(
        tmp_path, monkeypatch, capsys):
    """``experiment_name`` names the run directory: a value that does not resolve is refused by
    the guard, which resolves the directory first (it used to end in OmegaConf's traceback)."""
    from klexp.app.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["klexp", "experiment_name=${nowhere}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value.code) == ("klexp: hydra.run.dir: cannot resolve it: "
                                     "Interpolation key 'nowhere' not found")
    assert "Traceback" not in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# Which sweeps could make two runs meet, read from the templates before any job (the default
# subdir below is klexp/conf/config.yaml's).
SUBDIR = "${experiment_name}/${sweep_subdir:${hydra:job.override_dirname},${seed}}"
EXCLUDED = ["seed", "experiment", "verbose", "task.teacher_checkpoint"]
GROUPS = ["experiment", "data", "task"]


@pytest.mark.parametrize(("template", "swept", "found"), [
    ("outputs/multirun/${now:%Y}", ["experiment", "seed"], None),
    ("outputs/${experiment_name}", ["seed", "kl.ce.weight"], None),
    ("outputs/${experiment_name}", ["experiment"], ("experiment_name", "experiment")),
    ("outputs/${experiment_name}", ["data"], ("experiment_name", "data")),  # a group sets any key
    ("outputs/s${seed}", ["seed"], ("seed", "seed")),
    ("outputs/${kl.ce.weight}", ["+kl.ce"], ("kl.ce.weight", "kl.ce")),
    ("outputs/${kl}", ["kl.ce.weight"], ("kl", "kl.ce.weight")),
    ("outputs/${kl.cem}", ["kl.ce"], None),
    # a group swept under a package sets keys too, whether or not the sweep's config chose it yet
    ("outputs/${kl.prior.weight}", ["+shaping@kl.prior.shaping"],
     ("kl.prior.weight", "shaping@kl.prior.shaping")),
    # Hydra's node, resolved again for each job: what differs from job to job
    ("outputs/${hydra:job.override_dirname}", ["seed"], ("hydra:job.override_dirname", "seed")),
    ("outputs/${hydra:job.num}", ["kl.ce.weight"], ("hydra:job.num", "kl.ce.weight")),
    ("outputs/${hydra:runtime.choices.experiment}", ["experiment"],
     ("hydra:runtime.choices.experiment", "experiment")),
    ("outputs/${hydra:runtime.choices.data}", ["experiment", "seed"], None),
    ("outputs/${hydra:runtime.choices.shaping@kl.prior.shaping}", ["+shaping@kl.prior.shaping"],
     ("hydra:runtime.choices.shaping@kl.prior.shaping", "shaping@kl.prior.shaping")),
    ("outputs/${hydra:job.name}", ["seed"], None),
])
def test_a_sweep_directory_that_depends_on_what_the_sweep_varies_is_found(template, swept, found):
    assert swept_dependency(template, swept, GROUPS) == found


@pytest.mark.parametrize(("subdir", "swept", "unnamed"), [
    (SUBDIR, ["experiment", "seed", "kl.ce.weight"], None),
    (SUBDIR, ["seed", "verbose"], "verbose"),
    (SUBDIR, ["task.teacher_checkpoint"], "task.teacher_checkpoint"),
    ("${sweep_subdir:${hydra:job.override_dirname},${seed}}", ["experiment"], "experiment"),
    ("fixed", ["kl.ce.weight"], "kl.ce.weight"),
    ("${hydra:job.num}", ["verbose"], None),
    ("${verbose}/${hydra:job.override_dirname}", ["verbose"], None),
])
def test_a_swept_key_that_no_level_of_a_runs_folder_names_is_found(subdir, swept, unnamed):
    assert unnamed_swept_key(subdir, swept, EXCLUDED) == unnamed
