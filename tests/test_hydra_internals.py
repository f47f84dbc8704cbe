"""Pins every touch of Hydra's private modules (``klexp.app.hydra_internals``) to the installed
Hydra: its flag table still says which flags take a value, and its error handler is still the one
a ``@hydra.main`` app reports through, so that klexp's one-line report takes its place. A Hydra
upgrade that moves either fails here, naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import hydra._internal.utils as hydra_utils
import pytest
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)

from klexp.app import hydra_internals


def test_hydras_flag_table_says_which_flags_take_a_value():
    actions = hydra_internals.flag_actions()
    for flag in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg", "-c"):
        assert flag in actions and actions[flag].nargs != 0, flag
    for flag in ("-m", "--multirun", "--resolve", "--help"):
        assert flag in actions and actions[flag].nargs == 0, flag
    # --info takes an optional value, from a fixed list of choices
    assert actions["--info"].nargs == "?" and "config" in actions["--info"].choices


def hydra_app(directory: Path):
    """A ``@hydra.main`` app of one config (``a: 1``) and one config group (``group/one``)."""
    (directory / "group").mkdir(parents=True)
    (directory / "config.yaml").write_text("a: 1\n")
    (directory / "group" / "one.yaml").write_text("b: 2\n")

    @hydra.main(version_base="1.3", config_path=str(directory), config_name="config")
    def app(cfg) -> None:
        raise AssertionError("a config that does not compose never reaches the task")

    return app


@pytest.mark.parametrize(("override", "kind", "says"), [
    ("foo=1", ConfigCompositionException, "Could not override 'foo'"),
    ("+group=nope", MissingConfigException, "Could not find 'group/nope'"),
    ("a=[1", OverrideParseException, "no viable alternative at input '[1'"),
])
def test_a_hydra_apps_compact_errors_reach_the_reporter(override, kind, says, monkeypatch, tmp_path):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["app", override, "hydra.run.dir=run"])
    app = hydra_app(tmp_path / "conf")
    original = hydra_utils.run_and_report
    reported: list[BaseException] = []

    def report(error: CompactHydraException):
        reported.append(error)
        raise SystemExit(1)

    with pytest.raises(SystemExit), hydra_internals.compact_errors_reported_by(report):
        app()
    assert len(reported) == 1 and type(reported[0]) is kind, reported
    assert says in hydra_internals.one_line(reported[0])
    assert hydra_utils.run_and_report is original


def test_hydra_full_error_keeps_hydras_own_report(monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["app", "foo=1", "hydra.run.dir=run"])
    app = hydra_app(tmp_path / "conf")
    with pytest.raises(ConfigCompositionException), hydra_internals.compact_errors_reported_by(
            lambda error: pytest.fail(f"reported: {error}")):
        app()


@pytest.mark.parametrize(("message", "cause", "line"), [
    ("Could not override 'foo'.\nTo append to your config use +foo=1", "Key 'foo' is not in struct\n"
     "    full_key: foo\n    object_type=dict",
     "Could not override 'foo'. To append to your config use +foo=1; Key 'foo' is not in struct"),
    ("In 'config': Could not find 'experiment/nope'\n\nAvailable options in 'experiment':\n\tbayes\n"
     "\tvae\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf\n", None,
     "In 'config': Could not find 'experiment/nope'; Available options in 'experiment': bayes, vae"),
    ("no viable alternative at input '[1'\nSee https://hydra.cc for details", None,
     "no viable alternative at input '[1'; See https://hydra.cc for details"),
])
def test_hydras_report_of_an_error_is_one_line_with_what_it_says(message, cause, line):
    from omegaconf.errors import ConfigKeyError

    error = ConfigCompositionException(message)
    if cause is not None:
        error.__cause__ = ConfigKeyError(cause)
    assert hydra_internals.one_line(error) == line


def test_the_default_sweeper_is_the_class_klexp_reads_sweeps_ahead_for():
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from klexp.app.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == hydra_internals.BASIC_SWEEPER
    assert get_class(hydra_internals.BASIC_SWEEPER).__name__ == "BasicSweeper"
