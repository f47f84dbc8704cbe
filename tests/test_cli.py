"""The ``klexp`` command as a user runs it: by its entry point in this process (``helpers.cli``),
and as a real process where only a process shows the contract (the refused second run's one line
and exit status)."""

import json
from pathlib import Path

import pytest
from helpers import FAST, cli, run_cli


def test_cli_trains_tests_and_says_where_the_logs_are(tmp_path):
    result = cli([*FAST, "data=synthetic"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/acc" in result.stdout
    assert "tensorboard --logdir" in result.stdout
    (run_dir,) = (tmp_path / "outputs" / "classification").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+kl.ce.wieght=1", "kl.ce.wieght: unknown key for KLTerm; did you mean 'weight'?"),
        ("kl.ce.wieght=1", "Could not override 'kl.ce.wieght'"),
        ("kl.ce.weight=-1", "kl.ce.weight: expected a finite number ≥ 0, got -1"),
        ("kl.ce.direction=sideways", "kl.ce.direction: expected one of forward, reverse, js"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(override, message, tmp_path):
    result = cli([override, *FAST, "data=synthetic"], cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_rerun_repeats_a_finished_run_exactly_in_a_new_directory(tmp_path):
    first = cli([*FAST, "data=synthetic", "task.net.dropout=0.2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (original,) = (tmp_path / "outputs" / "classification").iterdir()
    again = cli(["rerun", str(original)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    runs = sorted((tmp_path / "outputs" / "classification").iterdir())
    assert len(runs) == 2
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    assert summaries[0]["overrides"] == summaries[1]["overrides"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resume=/nonexistent/run"], "resume: /nonexistent/run is not a directory"),
        (["rerun", "/nonexistent/run"], "rerun: /nonexistent/run is not a klexp run directory"),
        (["-m", "resume=/nonexistent/run"],
         "resume: continues one run in its own directory; it cannot be a sweep (-m)"),
    ],
)
def test_resume_and_rerun_name_a_bad_run_directory(args, message, tmp_path):
    result = cli(args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_resuming_a_run_with_stages_reuses_their_checkpoints(tmp_path):
    from klexp.app.resume import resume_arguments

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=distill\n")
    (run_dir / ".hydra" / "config.yaml").write_text(
        "stages:\n  teacher:\n    overrides: [experiment=classification]\n"
        "    checkpoint_to: task.teacher_checkpoint\n")
    for folder in (run_dir, run_dir / "teacher"):
        checkpoint = folder / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
    args = resume_arguments(run_dir, ["trainer.max_epochs=3"])
    assert args[:3] == ["experiment=distill", "stages=null",
                        f"task.teacher_checkpoint='{run_dir / 'teacher' / 'checkpoints' / 'last.ckpt'}'"]
    assert f"ckpt_path='{run_dir / 'checkpoints' / 'last.ckpt'}'" in args
    assert args.index("trainer.max_epochs=3") > args.index("stages=null")


def files_of(directory: Path, skip: tuple[str, ...] = ()) -> dict[Path, bytes]:
    """Every file under ``directory`` and its bytes, except those under a top-level entry in ``skip``."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).parts[0] not in skip}


def test_a_second_run_into_a_used_run_directory_is_refused_and_the_first_kept_byte_for_byte(tmp_path):
    args = [*FAST, "data=synthetic", "hydra.run.dir=outputs/fixed"]
    first = cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "fixed"
    before = files_of(run_dir)
    assert {Path("summary.json"), Path("checkpoints/last.ckpt"), Path(".hydra/config.yaml")} <= set(before)

    second = run_cli(args, cwd=tmp_path, timeout=60)  # the directory guard's one real process
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        "klexp: hydra.run.dir: outputs/fixed already holds a run (.hydra, checkpoints, summary.json, tb); "
        "continue it with `klexp resume=outputs/fixed`, or give the new run another hydra.run.dir"]
    assert files_of(run_dir) == before

    resumed = cli(["resume=outputs/fixed"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip() == "klexp: outputs/fixed already completed; nothing to do"
    assert files_of(run_dir) == before


def test_a_second_sweep_into_a_used_sweep_directory_is_refused_and_the_first_kept_byte_for_byte(tmp_path):
    args = ["-m", *FAST, "data=synthetic", "hydra.sweep.dir=outputs/sweep", "kl.ce.weight=0.5"]
    first = cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "sweep"
    before = files_of(sweep_dir)
    assert [p.name for p in before if p.name == "summary.json"] == ["summary.json"]

    second = cli(args, cwd=tmp_path)
    assert second.returncode != 0
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith("klexp: hydra.sweep.dir: outputs/sweep already holds a sweep (")
    assert files_of(sweep_dir) == before


def test_a_sweep_whose_directory_depends_on_a_swept_key_is_refused_before_any_job(tmp_path):
    """``outputs/s${seed}`` with ``seed=0,1``: the directory checked before the sweep would not hold
    its jobs, and the job of seed 1 would land on the earlier run of seed 1, whose ``.hydra/``
    record Hydra replaced before any check could run (it used to). Refused in one line; the
    earlier run is kept byte for byte, record included, and nothing else is written."""
    sweep_dir = "hydra.sweep.dir=outputs/s${seed}"
    first = cli(["-m", *FAST, "data=synthetic", sweep_dir, "seed=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = files_of(tmp_path / "outputs")

    second = cli(["-m", *FAST, "data=synthetic", sweep_dir, "seed=0,1"], cwd=tmp_path)
    assert second.returncode != 0
    assert second.stderr.strip().splitlines() == [
        "klexp: hydra.sweep.dir: outputs/s${seed} depends on seed, which this sweep varies (seed); "
        "give the sweep one fixed directory (each run's folder in it already starts with its "
        "experiment_name: hydra.sweep.subdir)"]
    assert files_of(tmp_path / "outputs") == before


def test_a_sweep_whose_runs_would_share_a_folder_is_refused_before_any_job(tmp_path):
    second = cli(["-m", *FAST, "data=synthetic", "hydra.sweep.dir=outputs/s", "verbose=true,false"],
                 cwd=tmp_path)
    assert second.returncode != 0
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith("klexp: hydra.sweep.subdir: this sweep varies verbose, which no level of a "
                           "run's folder names")
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_whose_later_job_would_be_refused_is_refused_before_its_first_job(tmp_path):
    """Each job used to be checked as it started: the job of weight 1 trained, then the sweep
    ended on the job of weight -1. Every job is composed and checked first (klexp.app.sweep_checks)."""
    result = cli(["-m", *FAST, "data=synthetic", "kl.ce.weight=1,-1", "seed=0,1"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "klexp: sweep job kl.ce.weight=-1 seed=0: kl.ce.weight: expected a finite number ≥ 0, got -1 "
        "(no job of the sweep has run)"]
    assert not (tmp_path / "outputs").exists()


def test_a_sweeps_key_that_only_its_swept_options_have_is_one_line_that_says_how_to_set_it(tmp_path):
    """Hydra checks a sweep's fixed overrides against the config with each swept group at its
    default (the classification task has no iw_samples): the line says so and gives the ++ form."""
    result = cli(["-m", "experiment=vae,vae_annealed", "task.iw_samples=2", "seed=0"], cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("klexp: Could not override 'task.iw_samples'.")
    assert line.endswith("++task.iw_samples=… sets a key only some of the swept options have)")
    assert not (tmp_path / "outputs").exists()
    # a sweep of values only: a misspelt key is just that
    typo = cli(["-m", "seed=0,1", "kl.ce.wieght=1"], cwd=tmp_path)
    assert typo.returncode == 1
    assert typo.stderr.strip().splitlines() == [
        "klexp: Could not override 'kl.ce.wieght'. To append to your config use +kl.ce.wieght=1; "
        "Key 'wieght' is not in struct"]


def test_the_command_adds_its_own_overrides_where_hydras_parser_reads_them():
    from klexp.app.cli import with_overrides

    assert with_overrides(["a=1", "--cfg", "job"], ["++x=1"]) == ["--cfg", "job", "a=1", "++x=1"]
    assert with_overrides(["-m", "a=1,2"], ["++x=1"]) == ["-m", "a=1,2", "++x=1"]
    assert with_overrides(["a=1", "b=2"], ["++x=1"]) == ["a=1", "b=2", "++x=1"]
    assert with_overrides([], ["++x=1"]) == ["++x=1"]
    # a flag's value is not an override, wherever the flag stands
    assert with_overrides(["a=1", "--config-dir", "my conf", "b=2", "-m"], ["++x=1"]) == [
        "--config-dir", "my conf", "-m", "a=1", "b=2", "++x=1"]
    assert with_overrides(["-cd=conf", "--info", "a=1", "--info", "searchpath"], []) == [
        "-cd=conf", "--info", "--info", "searchpath", "a=1"]


def test_a_hydra_flag_after_the_overrides_still_works(tmp_path):
    result = cli(["experiment=ppo_tokens", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "experiment_name: ppo_tokens" in result.stdout
