"""The ``klexp`` command as a user runs it."""

import json

import pytest
from helpers import FAST, run_cli


def test_cli_trains_tests_and_says_where_the_logs_are(tmp_path):
    result = run_cli([*FAST, "data=synthetic"], cwd=tmp_path)
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
        ("kl.ce.weight=-1", "kl.ce.weight: expected a number ≥ 0, got -1"),
        ("kl.ce.direction=sideways", "kl.ce.direction: expected one of forward, reverse, js"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(override, message, tmp_path):
    result = run_cli([override, *FAST, "data=synthetic"], cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_rerun_repeats_a_finished_run_exactly_in_a_new_directory(tmp_path):
    first = run_cli([*FAST, "data=synthetic", "task.dropout=0.2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (original,) = (tmp_path / "outputs" / "classification").iterdir()
    again = run_cli(["rerun", str(original)], cwd=tmp_path)
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
    ],
)
def test_resume_and_rerun_name_a_bad_run_directory(args, message, tmp_path):
    result = run_cli(args, cwd=tmp_path, timeout=60)
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
