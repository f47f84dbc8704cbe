"""Every command the documentation shows runs: each line of the ``bash`` blocks of the README and
of ``docs/*.md``, and each ``$`` line of their ``console`` transcripts, whose output must match the
lines printed below it (``…`` matches anything).

A training command runs as written, with overrides appended that make it seconds long (one epoch
of a few batches, a few steps, one rollout; `SMOKE`), and placeholders (`<run dir>`,
`<sweep dir>`, `<report dir>`) filled with a run and a sweep made first. `klexp` runs by its entry
point in this process (``helpers.cli``; `make run` starts the installed command, and a DDP run its
own processes). A command that only changes values of a run an earlier command trained (same
experiment, same config-group choices) is composed, checked and built as the run would be, not
trained again, and so is each job of a sweep: the sweeps themselves, with each launcher and the
Optuna search, are trained in test_sweeps.py. `make test` and `make test-fast` are the suite
itself, which CI runs; they are the only commands not run here.
"""

from __future__ import annotations

import itertools
import re
import runpy
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, build_experiment, cli, run_experiment
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_benchmarks import RATIOS

from klexp.app.cli import CONFIG_DIR

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN_HERE = {"make test", "make test-fast"}

FEW_BATCHES = ["trainer.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
               "++trainer.limit_test_batches=1"]
ONE_ROLLOUT = ["task.eval_episodes=1"]
#: overrides appended per experiment (by name prefix, longest first) to make a run seconds long
SMOKE: dict[str, list[str]] = {
    "": [*FEW_BATCHES, "data=synthetic"],
    "bayes": [*FEW_BATCHES, "data=synthetic", "data.holdout_class=2", "task.ood_noise=5",
              "task.eval_samples=2"],
    "vae": ["trainer.max_steps=3", "trainer.check_val_every_n_epoch=1", "++trainer.limit_val_batches=1",
            "++trainer.limit_test_batches=1", "task.iw_samples=2", "data=synthetic"],
    "ppo": [*ONE_ROLLOUT, "task.total_timesteps=512"],
    "ppo_tokens": [*ONE_ROLLOUT, "task.total_timesteps=512"],
    "ppo_pendulum": [*ONE_ROLLOUT, "task.total_timesteps=4096"],
    "ppo_ref_kl": [*ONE_ROLLOUT, "task.total_timesteps=512",
                   "stages.reference.overrides=[experiment=ppo,task.total_timesteps=512]"],
    "gan": ["trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
            "++trainer.limit_test_batches=1"],
    "fit_gaussian": ["trainer.max_epochs=1", "task.steps_per_epoch=5"],
    # the teacher stage inherits these: a few steps each, one validation with the exact metrics
    "distill_seq": ["trainer.max_steps=8", "data.num_train=512", "trainer.check_val_every_n_epoch=1"],
}
SCRIPT_SMOKE = {
    "experiments/news_coding/coding.py": ["--messages", "2000", "--blocks", "1", "2"],
    "experiments/distill_seq/gkd_beta.py": [],
    "experiments/benchmarks/bench_kl.py": ["--rows", "64", "--classes", "10", "--repeats", "2",
                                           "--threads", "1"],
    "experiments/benchmarks/bench_vae.py": ["--steps", "5", "--rounds", "1"],
    "experiments/benchmarks/bench_ppo.py": ["--total-timesteps", "2048", "--repeats", "1"],
    "experiments/benchmarks/bench_ddp.py": ["--timesteps", "2048", "--rounds", "1"],
    # no Chromium in CI: the runs and the served logdir only
    "experiments/dashboards/screenshots.py": ["--no-browser", "--experiments", "ppo"],
}


def bash_commands(page: Path) -> list[str]:
    """The logical lines of a page's ``bash`` blocks, comments and continuations resolved."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"<([^<>]+)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", line)
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def transcripts(page: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``($ command, expected output lines)`` of a page's ``console`` blocks."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.S):
        for part in re.split(r"(?m)^\$ ", block)[1:]:
            command, *expected = part.rstrip("\n").splitlines()
            found.append((command, tuple(expected)))
    return found


def unique(items: list) -> list:
    return list(dict.fromkeys(items))


COMMANDS = unique([c for page in PAGES for c in bash_commands(page) if c not in NOT_RUN_HERE])
TRANSCRIPTS = unique([t for page in PAGES for t in transcripts(page)])


def smoke_overrides(words: list[str]) -> list[str]:
    experiment = next((w.split("=", 1)[1] for w in words if w.startswith("experiment=")), "")
    experiment = experiment.split(",")[0]
    prefix = max((p for p in SMOKE if experiment.startswith(p)), key=len)
    given = {w.split("=", 1)[0].lstrip("+") for w in words if "=" in w}
    extra = [o for o in SMOKE[prefix] if o.split("=", 1)[0].lstrip("+") not in given]
    if any(w.startswith("hparams_search=") for w in words):
        extra.append("hydra.sweeper.n_trials=2")
    return extra


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory with a finished run, a finished sweep, and room for the commands' outputs."""
    root = tmp_path_factory.mktemp("docs")
    run_dir, sweep_dir = root / "a_run", root / "a_sweep"
    for args in (["data=synthetic", *FEW_BATCHES, f"hydra.run.dir={run_dir}"],
                 ["-m", "data=synthetic", *FEW_BATCHES, "kl.ce.weight=0.5,1",
                  f"hydra.sweep.dir={sweep_dir}"]):
        result = cli(args, root)
        assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "<run_dir>": run_dir, "<sweep_dir>": sweep_dir, "<report_dir>": root / "report"}


def fill(command: str, workspace: dict) -> list[str]:
    for placeholder, value in workspace.items():
        if placeholder.startswith("<"):
            command = command.replace(placeholder, str(value))
    return shlex.split(command)


def experiment_of(args: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in args if a.startswith("experiment=")), "classification")


def structure(args: list[str]) -> tuple[str, frozenset[str]]:
    """What makes a run train differently, beyond values: its experiment and the overrides that
    choose config-group options (``env=acrobot``, ``schedule@kl.prior.schedule=cyclical``,
    ``kl=[…]``) or add and delete keys (``+…``, ``~…``)."""
    def chooses(override: str) -> bool:
        key = override.split("=", 1)[0]
        return key.startswith(("+", "~")) or "@" in key or (CONFIG_DIR / key).is_dir()

    return experiment_of(args), frozenset(a for a in args if "=" in a and chooses(a)
                                          and not a.startswith("experiment="))


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of each job of ``klexp -m <args>`` (every combination of the swept values)."""
    choices = [[f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
               if override.is_sweep_override() else [override.input_line]
               for override in OverridesParser.create().parse_overrides([a for a in args if a != "-m"])]
    return [list(job) for job in itertools.product(*choices)]


def trained_commands(commands: list[str]) -> set[str]:
    """The documented single runs that train: the first of each structure (the others only change
    its values, and are composed and built)."""
    first: dict[tuple[str, frozenset[str]], str] = {}
    for command in commands:
        program, *args = shlex.split(command)
        if program == "klexp" and args[:1] not in (["report"], ["rerun"]) and "-m" not in args \
                and not any(a.startswith(("resume=", "hparams_search=")) for a in args):
            first.setdefault(structure(args), command)
    return set(first.values())


TRAINED = trained_commands(COMMANDS)


def only_built(command: str) -> bool:
    """Whether the test composes, checks and builds the command's runs, without training them."""
    program, *args = shlex.split(command)
    return program == "klexp" and args[:1] not in (["report"], ["rerun"]) and command not in TRAINED \
        and not any(a.startswith("resume=") for a in args) and not relaunches_itself(args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunches_itself(args: list[str]) -> bool:
    """Whether the run starts its other ranks by re-running this process's command line.

    Lightning's DDP launcher re-runs ``sys.argv``: in this process that is pytest itself, which
    would collect and start this test again in every rank, without end. Such runs go through
    ``klexp`` in a subprocess (in test_ddp.py, which runs the documented one).
    """
    return any(a.startswith("trainer=") and "ddp" in a for a in args)


# what trains, starts a process or reads the runs the workspace trains takes seconds: slow
@pytest.mark.parametrize("command", [c if only_built(c) else pytest.param(c, marks=pytest.mark.slow)
                                     for c in COMMANDS])
def test_every_documented_command_runs(command, request, tmp_path, monkeypatch, capsys):
    workspace = {} if only_built(command) else request.getfixturevalue("workspace")
    words = fill(command, workspace)
    program, args = words[0], words[1:]
    if program == "klexp":
        if args and "<run_dir>" in workspace and args[0] == f"resume={workspace['<run_dir>']}":
            target = tmp_path / "resumable"
            shutil.copytree(workspace["<run_dir>"], target)
            args = [f"resume={target}"]
        elif not args or args[0] not in ("report", "rerun"):
            args = [*args, *smoke_overrides(args)]
            if relaunches_itself(args):  # run once, two ranks against one process: test_ddp.py
                from test_ddp import documented_ddp_command

                assert documented_ddp_command() == words[1:]
                return
            if "-m" in args or any(a.startswith("hparams_search=") for a in args):
                for number, job in enumerate(sweep_jobs(args)):
                    build_experiment(job, tmp_path / f"job{number}")
                return
            if command not in TRAINED:
                build_experiment(args, tmp_path / "run")
                return
            # one run: composed and run in this process, as `klexp` would (the command line's
            # own handling is tested in test_cli.py), sparing a Python start-up per command
            summary = run_experiment(args, tmp_path / "run")
            assert summary["status"] == "completed", command
            return
        result = cli(args, tmp_path)
    elif program == "make":
        if args == ["run"]:  # the quick start's run, at smoke size, into this test's directory
            smoke = [*SMOKE[""], f"hydra.run.dir={tmp_path / 'run'}"]
            args = ["run", "ARGS=" + " ".join(smoke)]
        result = subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True,
                                timeout=600)
    elif program == "python":  # run as `python <script>` runs it, in this process
        script = args[0]
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [script, *args[1:], *SCRIPT_SMOKE[script]])
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
        except SystemExit as exit_info:
            assert exit_info.code in (None, 0), (command, exit_info.code)
        printed = capsys.readouterr().out
        for line in RATIOS.get(Path(script).name, ()):
            assert line in printed, (command, line)
        return
    elif program == "tensorboard":
        port = free_port()
        (tmp_path / "outputs").symlink_to(workspace["root"], target_is_directory=True)
        server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), *args,
                                   "--port", str(port), "--host", "127.0.0.1"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page = ""
            for _ in range(120):
                try:
                    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                    break
                except OSError:
                    time.sleep(0.5)
            assert "TensorBoard" in page
        finally:
            server.terminate()
            server.wait(timeout=30)
        return
    else:
        pytest.fail(f"the docs show a command this test does not know how to run: {command}")
    assert result.returncode == 0, (command, result.stderr[-3000:])


def matches(expected: str, line: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, line.strip()) is not None


@pytest.mark.parametrize(("command", "expected"), TRANSCRIPTS, ids=[c for c, _ in TRANSCRIPTS])
def test_every_transcript_prints_what_the_docs_say(command, expected, tmp_path):
    words = shlex.split(command)
    assert words[0] == "klexp"
    result = cli(words[1:], tmp_path)
    lines = (result.stdout + result.stderr).splitlines()
    for line in expected:
        assert any(matches(line, printed) for printed in lines), (line, lines[-5:])


def test_a_documented_ddp_run_is_started_in_a_subprocess():
    """Run in this process, its second rank would re-run pytest, and so on (CI was killed so)."""
    ddp = [c for c in COMMANDS if "trainer=ddp" in c]
    assert ddp, "the docs show no DDP command any more: drop this test"
    assert all(relaunches_itself(shlex.split(c)[1:]) for c in ddp)
    assert not relaunches_itself(["experiment=ppo", "trainer.max_epochs=1"])
