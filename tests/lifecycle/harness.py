"""The fault-injection harness: drives real ``klexp`` processes through a sequence of operations on
one run (start, kill at a chosen moment, resume, a concurrent start, a refused resume, a full disk)
and checks the lifecycle's invariants after each process and at the end (issue #20):

* the final metrics equal the uninterrupted run's exactly, and its logged steps too;
* a completed record never changes afterwards (summary, checkpoints, events);
* the exit status matches the recorded status (0 ⇔ completed; a signal or an error never exits 0);
* no directory ever had two owners (two processes training in it at once);
* a refused command changes nothing and says why in one line, without a traceback;
* ``klexp report`` over the whole tree gives the clean runs' table and names every other run.

A violation is collected (not raised), so one sequence reports everything it broke.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import REPO

# The cheapest real run: 420 synthetic examples in batches of 64 (7 steps an epoch), two epochs,
# dropout (so the RNG state matters on resume), a checkpoint after every step, every step logged.
EXPERIMENT = ["experiment=classification", "data=synthetic", "trainer.max_epochs=2",
              "task.net.dropout=0.2", "threads=1", "callbacks.progress_bar=null",
              "trainer.enable_model_summary=false",
              "callbacks.model_checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1",
              "+callbacks.faults._target_=lifecycle.faults.Faults"]
STEPS = 14
STEP_SLEEP = "0.1"  # seconds per training step in killed runs: kills land mid-run
METRIC = "test/nll"
TIMEOUT = 300

#: What a sequence is made of (each operation runs one or two klexp processes on the run).
OPERATIONS = ("kill SIGKILL mid", "kill SIGTERM mid", "kill SIGINT mid",
              "kill SIGKILL save", "kill SIGTERM save", "kill SIGINT save",
              "kill SIGKILL startup", "kill SIGTERM startup",
              "full disk", "concurrent", "refused resume")


def sequences(seed: int, count: int, length: int) -> list[list[str]]:
    """``count`` sequences of ``length`` operations drawn from a shuffled deck of ``OPERATIONS``
    (so a few sequences cover many different ones), each ending by running the run to completion
    and resuming it once more."""
    rng = random.Random(seed)
    deck: list[str] = []
    drawn = []
    for _ in range(count):
        ops = []
        for _ in range(length):
            if not deck:
                deck = rng.sample(OPERATIONS, len(OPERATIONS))
            ops.append(deck.pop())
        drawn.append([*ops, "complete", "resume completed"])
    return drawn


@dataclass
class Process:
    """One klexp process the harness ran, and how it ended."""

    label: str
    args: list[str]
    popen: subprocess.Popen[str]
    started: float
    ended: float | None = None
    returncode: int | None = None
    stderr: str = ""
    signal: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            _, self.stderr = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, self.stderr = self.popen.communicate()
        self.ended = time.time()
        self.returncode = self.popen.returncode
        return self.returncode


def digest(directory: Path) -> dict[str, str]:
    """The run's record as files: summary.json, checkpoints and TensorBoard events (path → sha256).
    The lock, Hydra's invocation records and the console log are not part of it."""
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative.split("/")[0] in ("summary.json", "checkpoints", "tb"):
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def status(run_dir: Path) -> str | None:
    record = summary(run_dir)
    return record.get("status") if isinstance(record, dict) else None


def logged_steps(run_dir: Path, tag: str = "loss/total") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def _one_line_error(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and "Traceback" not in stderr and lines[-1].startswith("klexp")


@dataclass
class Harness:
    """Runs one tree of runs: the reference run, then sequences, then the report over them."""

    root: Path
    seed: int
    violations: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    #: run directory → its record when it was first seen completed
    completed: dict[Path, dict[str, str]] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)
    reference_steps: list[int] = field(default_factory=list)
    #: every run directory a process was started for
    run_dirs: set[Path] = field(default_factory=set)

    @property
    def tree(self) -> Path:
        return self.root / "runs"

    @property
    def log(self) -> Path:
        return self.root / "faults.jsonl"

    # -- processes --------------------------------------------------------------------------------

    def launch(self, label: str, args: list[str], **fault_env: str) -> Process:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
               "KLEXP_FAULT_LOG": str(self.log), **fault_env}
        env.pop("HYDRA_FULL_ERROR", None)
        popen = subprocess.Popen([sys.executable, "-m", "klexp", *args], cwd=self.tree, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        process = Process(label, args, popen, time.time())
        self.processes.append(process)
        self.history.append(f"{label}: klexp {' '.join(args)}"
                            + "".join(f" [{k}={v}]" for k, v in fault_env.items()))
        return process

    def events(self, pid: int | None = None, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (pid is None or entry["pid"] == pid) and (event is None or entry["event"] == event):
                found.append(entry)
        return found

    def wait_for_event(self, process: Process, event: str, count: int = 1,
                       timeout: float = TIMEOUT) -> bool:
        """Wait until ``process`` logged ``event`` ``count`` times (False if it ended first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.events(process.pid, event)) >= count:
                return True
            if process.popen.poll() is not None:
                return len(self.events(process.pid, event)) >= count
            time.sleep(0.02)
        return False

    def violation(self, text: str) -> None:
        self.violations.append(f"{text}\n    after: {self.history[-1] if self.history else '-'}")

    # -- the reference ----------------------------------------------------------------------------

    def run_reference(self, made: Path | None = None) -> Path:
        """The uninterrupted run, in the tree: ``made`` (one made for this config already, see
        ``reference_run``) copied, else run here."""
        self.tree.mkdir(parents=True, exist_ok=True)
        run_dir = self.tree / "reference"
        if made is not None:
            shutil.copytree(made, run_dir)
            self.history.append(f"reference: {made} copied")
        else:
            process = self.launch("reference", [*EXPERIMENT, f"hydra.run.dir={run_dir}"])
            if process.wait() != 0 or status(run_dir) != "completed":
                raise AssertionError(f"the reference run failed:\n{process.stderr[-3000:]}")
        self.reference = summary(run_dir)["metrics"]
        self.reference_steps = logged_steps(run_dir)
        assert len(self.reference_steps) == STEPS, self.reference_steps
        self.completed[run_dir] = digest(run_dir)
        self.run_dirs.add(run_dir)
        return run_dir

    # -- one run's sequence -----------------------------------------------------------------------

    def continue_args(self, run_dir: Path) -> list[str]:
        """What a user types to get the run going again: a fresh start, or a resume."""
        self.run_dirs.add(run_dir)
        if not (run_dir / ".hydra").is_dir() and summary(run_dir) is None:
            return [*EXPERIMENT, f"hydra.run.dir={run_dir}"]
        return [f"resume={run_dir}"]

    def run_sequence(self, name: str, operations: list[str], rng: random.Random) -> Path:
        """Apply ``operations`` to a run in ``<tree>/<name>``; a run killed before its first
        checkpoint cannot be resumed, and the sequence goes on with a fresh run beside it."""
        run_dir = self.tree / name
        self.history.append(f"== {name}: {operations}")
        for operation in operations:
            if (status(run_dir) != "completed" and (run_dir / ".hydra").is_dir()
                    and not (run_dir / "checkpoints" / "last.ckpt").is_file()):
                self.refused(run_dir, [f"resume={run_dir}"], "resume without a checkpoint")
                run_dir = run_dir.with_name(run_dir.name + "+")
                self.history.append(f"   (left behind; the sequence goes on in {run_dir.name})")
            kind, *details = operation.split()
            if kind == "kill":
                self.kill(run_dir, signal.Signals[details[0]], details[1], rng)
            elif operation == "full disk":
                self.full_disk(run_dir, rng)
            elif operation == "real full disk":
                self.real_full_disk(run_dir, rng)
            elif operation == "concurrent":
                self.concurrent(run_dir)
            elif operation == "refused resume":
                self.refused(run_dir, [f"resume={run_dir}", "task.net.hidden=[32]"], operation)
            elif operation == "complete":
                self.complete(run_dir)
            elif operation == "resume completed":
                self.resume_completed(run_dir)
            else:
                raise ValueError(operation)
            self.check_completed_records()
        return run_dir

    # -- operations -------------------------------------------------------------------------------

    def kill(self, run_dir: Path, sig: signal.Signals, moment: str, rng: random.Random) -> None:
        fault_env = {"KLEXP_FAULT_STEP_SLEEP": STEP_SLEEP}
        if moment == "save":
            fault_env["KLEXP_FAULT_SLOW_SAVE"] = f"{rng.randint(1, 5)}:3"
        process = self.launch(f"kill {sig.name} at {moment}", self.continue_args(run_dir), **fault_env)
        if moment == "startup":
            reached = process.popen.poll() is None
            time.sleep(rng.uniform(0.5, 6.0))
        elif moment == "mid" or moment.startswith("saved="):  # saved=N: right after its N-th save
            saves = int(moment[6:]) if moment.startswith("saved=") else rng.randint(1, 6)
            reached = self.wait_for_event(process, "saved", saves)
            time.sleep(rng.uniform(0, 0.1) if moment == "mid" else 0)
        else:
            reached = self.wait_for_event(process, "saving")
        delivered = process.popen.poll() is None
        if delivered:
            process.signal = sig.name
            process.popen.send_signal(sig)
        self.history[-1] += f" -> {sig.name} " + ("sent" if delivered else
                                                  f"not sent (ended first; moment reached: {reached})")
        process.wait(timeout=120)
        self.history[-1] += f" -> exit {process.returncode}, status {status(run_dir)}"
        if not delivered:
            self.check_ending(process, run_dir)
            return
        trained = bool(self.events(process.pid, "train_start"))
        if sig == signal.SIGKILL:
            return
        if process.returncode == 0:
            self.violation(f"{sig.name} while running, yet exit status 0 (status {status(run_dir)})")
        if "Traceback" in process.stderr:
            self.violation(f"{sig.name} ended in a traceback:\n{_tail(process.stderr)}")
        if trained and status(run_dir) not in ("interrupted", "completed"):
            self.violation(f"{sig.name} during training recorded status {status(run_dir)!r}, "
                           f"expected 'interrupted'")
        if trained and (run_dir / "checkpoints" / "last.ckpt").is_file() \
                and f"resume={run_dir}" not in process.stderr.replace("'", ""):
            self.violation(f"{sig.name}: no resume command printed:\n{_tail(process.stderr)}")
        self.check_checkpoint(run_dir)

    def full_disk(self, run_dir: Path, rng: random.Random) -> None:
        process = self.launch("full disk", self.continue_args(run_dir),
                              KLEXP_FAULT_FULL_DISK=str(rng.randint(2, 4)))
        process.wait()
        self.history[-1] += f" -> exit {process.returncode}, status {status(run_dir)}"
        self.check_ending(process, run_dir)
        if process.returncode != 0:
            record = summary(run_dir) or {}
            if self.events(process.pid, "train_start") and (
                    record.get("status") != "failed"
                    or "No space left" not in str(record.get("error"))):
                self.violation(f"a full disk recorded {record.get('status')!r} with error "
                               f"{record.get('error')!r}, expected 'failed' naming the full disk")
            if not _one_line_error(process.stderr):
                self.violation(f"a full disk did not end in one line:\n{_tail(process.stderr)}")
        self.check_checkpoint(run_dir)

    def real_full_disk(self, run_dir: Path, rng: random.Random) -> None:
        """The run's file system (a small tmpfs) fills up mid-run: a filler file takes every free
        byte after a few checkpoints; then the filler is removed, as a user would free space."""
        process = self.launch("real full disk", self.continue_args(run_dir),
                              KLEXP_FAULT_STEP_SLEEP=STEP_SLEEP)
        saves = rng.randint(2, 6)
        reached = self.wait_for_event(process, "saved", saves)
        filler = run_dir.parent / "filler"
        if reached:
            with filler.open("wb") as file:
                try:
                    while True:
                        file.write(b"\0" * 65536)
                        file.flush()
                except OSError:
                    pass
        process.wait()
        filler.unlink(missing_ok=True)
        self.history[-1] += (f" -> disk filled after {saves} saves" if reached else "") + \
            f" -> exit {process.returncode}, status {status(run_dir)}"
        self.check_ending(process, run_dir)
        record = summary(run_dir) or {}
        if reached and (record.get("status") != "failed"
                        or "No space left" not in str(record.get("error"))):
            self.violation(f"a full file system recorded {record.get('status')!r} with error "
                           f"{record.get('error')!r}, expected 'failed' naming the full disk")
        if process.returncode != 0 and not _one_line_error(process.stderr):
            self.violation(f"a full file system did not end in one line:\n{_tail(process.stderr)}")
        self.check_checkpoint(run_dir)

    def concurrent(self, run_dir: Path) -> None:
        args = self.continue_args(run_dir)
        first = self.launch("concurrent (1)", args, KLEXP_FAULT_STEP_SLEEP=STEP_SLEEP)
        second = self.launch("concurrent (2)", args, KLEXP_FAULT_STEP_SLEEP=STEP_SLEEP)
        for process in (first, second):
            process.wait()
        self.history[-1] += (f" -> exits {first.returncode}, {second.returncode}, "
                             f"status {status(run_dir)}")
        starts = {p.pid: self.events(p.pid, "train_start") for p in (first, second)}
        if starts[first.pid] and starts[second.pid]:
            a, b = starts[first.pid][0]["time"], starts[second.pid][0]["time"]
            if a < second.ended and b < first.ended:
                self.violation(f"two owners: processes {first.pid} and {second.pid} both trained "
                               f"in {run_dir} at once")
        for process in (first, second):
            if process.returncode != 0 and not starts[process.pid] \
                    and not _one_line_error(process.stderr):
                self.violation(f"the refused concurrent process did not end in one line:\n"
                               f"{_tail(process.stderr)}")
        owner = first if starts[first.pid] else second
        self.check_ending(owner, run_dir)

    def refused(self, run_dir: Path, args: list[str], label: str) -> None:
        before = digest(run_dir) if run_dir.is_dir() else {}
        process = self.launch(label, args)
        process.wait()
        self.history[-1] += f" -> exit {process.returncode}, status {status(run_dir)}"
        completed = status(run_dir) == "completed"
        if process.returncode == 0 and not completed:
            self.violation(f"{label} was accepted (exit 0)")
        if process.returncode != 0 and not _one_line_error(process.stderr):
            self.violation(f"{label}: not one line:\n{_tail(process.stderr)}")
        after = digest(run_dir) if run_dir.is_dir() else {}
        if after != before:
            self.violation(f"{label} changed the run: {_changes(before, after)}")

    def complete(self, run_dir: Path) -> None:
        process = self.launch("complete", self.continue_args(run_dir))
        process.wait()
        self.history[-1] += f" -> exit {process.returncode}, status {status(run_dir)}"
        self.check_ending(process, run_dir)
        record = summary(run_dir) or {}
        if record.get("status") != "completed":
            self.violation(f"the run did not complete: exit {process.returncode}, status "
                           f"{record.get('status')!r}:\n{_tail(process.stderr)}")
            return
        differing = sorted(k for k in set(record["metrics"]) | set(self.reference)
                           if record["metrics"].get(k) != self.reference.get(k))
        if differing:
            self.violation("final metrics differ from the uninterrupted run's: " + ", ".join(
                f"{k} {record['metrics'].get(k)!r} != {self.reference.get(k)!r}" for k in differing[:6]))
        steps = logged_steps(run_dir)
        if steps != self.reference_steps:
            self.violation(f"logged steps of loss/total differ from the uninterrupted run's: "
                           f"{steps} != {self.reference_steps}")

    def resume_completed(self, run_dir: Path) -> None:
        if status(run_dir) != "completed":
            return
        before = digest(run_dir)
        process = self.launch("resume completed", [f"resume={run_dir}"])
        process.wait()
        self.history[-1] += f" -> exit {process.returncode}, status {status(run_dir)}"
        if process.returncode != 0:
            self.violation(f"resuming a completed run exited {process.returncode}:\n"
                           f"{_tail(process.stderr)}")
        if digest(run_dir) != before:
            self.violation(f"resuming a completed run changed it: {_changes(before, digest(run_dir))}")

    # -- invariants -------------------------------------------------------------------------------

    def check_ending(self, process: Process, run_dir: Path) -> None:
        """Exit status 0 exactly when the record says completed; no traceback."""
        recorded = status(run_dir)
        if (process.returncode == 0) != (recorded == "completed"):
            self.violation(f"exit status {process.returncode} but status {recorded!r}:\n"
                           f"{_tail(process.stderr)}")
        if "Traceback" in process.stderr:
            self.violation(f"a traceback:\n{_tail(process.stderr)}")

    def check_checkpoint(self, run_dir: Path) -> None:
        """The last checkpoint, if any, is whole (a kill or a full disk never truncates it)."""
        import torch

        path = run_dir / "checkpoints" / "last.ckpt"
        if path.is_file():
            try:
                torch.load(path, weights_only=True, map_location="cpu")
            except Exception as error:  # any unreadable checkpoint is the finding
                self.violation(f"{path} is unreadable: {type(error).__name__}: {error}")

    def check_completed_records(self) -> None:
        """A completed record never changes afterwards."""
        for run_dir in sorted(self.tree.iterdir()) if self.tree.is_dir() else []:
            if run_dir in self.completed:
                now = digest(run_dir)
                if now != self.completed[run_dir]:
                    self.violation(f"the completed run {run_dir.name} changed: "
                                   f"{_changes(self.completed[run_dir], now)}")
                    self.completed[run_dir] = now
            elif status(run_dir) == "completed":
                self.completed[run_dir] = digest(run_dir)

    def check_owners(self) -> None:
        """No two processes ever trained in one directory at the same time."""
        by_dir: dict[str, list[tuple[float, float, int]]] = {}
        ends = {p.pid: p.ended or time.time() for p in self.processes}
        for entry in self.events(event="train_start"):
            by_dir.setdefault(entry["dir"], []).append((entry["time"], ends.get(entry["pid"], 0),
                                                        entry["pid"]))
        for directory, spans in by_dir.items():
            for (start, end, pid), (other_start, other_end, other) in itertools.combinations(
                    sorted(spans), 2):
                if other_start < end and start < other_end and pid != other \
                        and not any(f"{pid} and {other}" in v for v in self.violations):
                    self.violation(f"two owners: processes {pid} and {other} trained in "
                                   f"{directory} at once")

    def check_report(self) -> None:
        """``klexp report`` over the tree: one row, the reference's value, every other run named."""
        out = self.root / "report"
        result = subprocess.run([sys.executable, "-m", "klexp.report", str(self.tree),
                                 "--metrics", METRIC, "--out", str(out)],
                                capture_output=True, text=True, timeout=TIMEOUT)
        self.history.append(f"report: exit {result.returncode}")
        if result.returncode != 0:
            self.violation(f"klexp report failed:\n{_tail(result.stderr)}")
            return
        import csv

        rows = list(csv.DictReader((out / "report.csv").open()))
        if len(rows) != 1 or rows[0][f"{METRIC} mean"] != repr(self.reference[METRIC]) \
                or rows[0][f"{METRIC} n"] != "1":
            self.violation(f"the report's table is not the clean run's ({METRIC} = "
                           f"{self.reference[METRIC]!r} over one seed): {rows}")
        runs = {run for run in self.run_dirs
                if (run / ".hydra").is_dir() or (run / "summary.json").is_file()}
        left_out = [line + " " for line in result.stdout.splitlines() if line.startswith("left out")]
        named = {run for run in runs if any(f" {run.resolve()} " in line for line in left_out)}
        if len(runs - named) != 1:
            self.violation(f"the report should name every run but the one it counts; not named: "
                           f"{sorted(p.name for p in runs - named)}\n{_tail(result.stdout)}")

    def failure(self, header: str) -> str:
        return "\n".join([header, f"reproduce with: --lifecycle-seed {self.seed}", "sequence:",
                          *(f"  {line}" for line in self.history), "violations:",
                          *(f"  - {v}" for v in self.violations)])


def reference_run(directory: Path) -> Path:
    """The uninterrupted run of ``EXPERIMENT`` made by the command's entry point in this process
    (the numbers a process of its own gives: test_reproducibility.py), to copy into each tree."""
    from helpers import cli

    run_dir = directory / "reference"
    result = cli([*EXPERIMENT, f"hydra.run.dir={run_dir}"], directory)
    if result.returncode != 0 or status(run_dir) != "completed":
        raise AssertionError(f"the reference run failed:\n{result.stderr[-3000:]}")
    return run_dir


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines()[-lines:])


def _changes(before: dict[str, str], after: dict[str, str]) -> str:
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return ", ".join(f"{k} ({'added' if k not in before else 'removed' if k not in after else 'rewritten'})"
                     for k in changed)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "24m") -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``path`` while inside (True), where the machine allows
    mounting one (root with CAP_SYS_ADMIN); else an ordinary folder (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
