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
