"""The run lifecycle in one place: a run directory's states, who may move it from one to the next,
what each move writes and in which order, and how the command ends.

::

    new ──start──▶ running ──▶ completed | failed(reason) | interrupted(signal)
                      ▲                     │                  │
                      └──────── resume= ────┴──────────────────┘

* **new**: a directory with none of klexp's artefacts (or none at all; foreign files such as the
  user's ``out.txt`` do not count).
* **running**: ``summary.json`` says ``running``. While its process lives it holds the directory's
  lock; a ``running`` record whose lock is free is a run whose process was killed (SIGKILL, a lost
  node), and resumes like an interrupted one.
* **completed** is final: a resume changes nothing (``klexp rerun <dir> [overrides]`` trains a new
  run), and no write replaces its record (``klexp.lightning.run_summary.write_record``).

``TRANSITIONS`` is the table; ``docs/reliability.md`` draws it (``state_diagram``, checked by a
test). One process owns a directory: ``DirectoryLock`` (``fcntl.flock`` on ``klexp.lock``) is
taken before anything is written, held for the process's life and released by the kernel when it
dies, so a stale lock never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klexp.errors import KlexpError
from klexp.record import COMPLETED, FAILED, INTERRUPTED, RUNNING, SUMMARY_FILE, recorded_status

#: a directory without a record; the other states are the record's statuses (``klexp.record``)
NEW = "new"
LOCK_FILE = "klexp.lock"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
#: exit status of a completed run (and of a resume of one that has nothing to do); a failed run or
#: a refused command exits 1; an interrupted one 128 + the signal's number (130 SIGINT, 143 SIGTERM)
EXIT_COMPLETED, EXIT_FAILED = 0, 1


@dataclass(frozen=True)
class Transition:
    """A move of a run directory from one state to another: what causes it and what it writes,
    in order."""

    source: str
    target: str
    trigger: str
    writes: tuple[str, ...]


TRANSITIONS: tuple[Transition, ...] = (
    Transition(NEW, RUNNING, "klexp OVERRIDES",
               ("klexp.lock (flock, then the owner's pid)", ".hydra/ (Hydra's record)",
                "summary.json: running (when training starts)", "tb/ events, checkpoints/ (atomic)")),
    Transition(RUNNING, COMPLETED, "fit (and test) end",
               ("summary.json: completed, with the final metrics and objective",)),
    Transition(RUNNING, FAILED, "an error",
               ("checkpoints/on_exception.ckpt (if it can be written)",
                "summary.json: failed, with the error's first line")),
    Transition(RUNNING, INTERRUPTED, "SIGTERM or SIGINT",
               ("checkpoints/on_exception.ckpt (if it can be written)",
                "summary.json: interrupted, with the signal")),
    Transition(FAILED, RUNNING, "klexp resume=RUN_DIR",
               ("klexp.lock (flock, then the owner's pid)", ".hydra/resume-<time>/",
                "summary.json: running (when training starts)",
                "tb/ events from the checkpoint's step on")),
    Transition(INTERRUPTED, RUNNING, "klexp resume=RUN_DIR",
               ("klexp.lock (flock, then the owner's pid)", ".hydra/resume-<time>/",
                "summary.json: running (when training starts)",
                "tb/ events from the checkpoint's step on")),
    Transition(RUNNING, RUNNING, "klexp resume=RUN_DIR after SIGKILL (lock free)",
               ("as a resume of an interrupted run",)),
    Transition(COMPLETED, COMPLETED, "klexp resume=RUN_DIR (nothing to do)", ()),
)


def state_diagram() -> str:
    """``TRANSITIONS`` as a mermaid state diagram (the one in docs/reliability.md)."""
    lines = ["stateDiagram-v2", f"    [*] --> {NEW}"]
    lines += [f"    {t.source} --> {t.target}: {t.trigger}" for t in TRANSITIONS]
    lines.append(f"    {COMPLETED} --> [*]")
    return "\n".join(lines)


def transition_table() -> str:
    """``TRANSITIONS`` as a markdown table: what each move writes, in order (docs/reliability.md)."""
    rows = ["| from | to | by | writes, in order |", "| --- | --- | --- | --- |"]
    for t in TRANSITIONS:
        writes = "; ".join(f"{i}. {w}" for i, w in enumerate(t.writes, 1)) or "nothing"
        trigger = f"`{t.trigger}`" if t.trigger.startswith("klexp") else t.trigger
        rows.append(f"| {t.source} | {t.target} | {trigger} | {writes} |")
    return "\n".join(rows)


# -- ending a command -----------------------------------------------------------------------------

class RunEnding(KlexpError):
    """How a command ends other than by a completed run or a plain user error: its one line and
    its exit status."""

    exit_status = EXIT_FAILED


class NothingToDo(RunEnding):
    """A resume of a completed run without overrides: nothing changes (exit status 0)."""

    exit_status = EXIT_COMPLETED


class RunInterrupted(RunEnding):
    """A run stopped by SIGTERM or SIGINT; exits 128 + the signal's number."""

    def __init__(self, run_dir: Path, signal_name: str, step: int | None = None) -> None:
        self.exit_status = 128 + int(signal.Signals[signal_name])
        when = f" at step {step}" if step is not None else ""
        if (run_dir / CHECKPOINT).is_file():
            then = f"continue it with `klexp resume={run_dir}`"
        else:
            then = f"it had saved no checkpoint; start it again with `klexp rerun {run_dir}`"
        super().__init__(f"interrupted by {signal_name}{when}; {then}")


class RunFailed(RunEnding):
    """A run that stopped on an error of its environment (a full disk), recorded as failed."""

    def __init__(self, run_dir: Path, error: BaseException) -> None:
        kept = (f"; the last good checkpoint {run_dir / CHECKPOINT} is intact"
                if (run_dir / CHECKPOINT).is_file() else "")
        super().__init__(f"run failed: {error}{kept}; once fixed, continue it with "
                         f"`klexp resume={run_dir}`")


class Terminated(BaseException):
    """SIGTERM outside Lightning's own handling (which stops a fit or test at the next batch
    boundary): raised where the process is, like ``KeyboardInterrupt`` for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    # Lightning's handler, in place during fit and test, calls the handler it found too: then it
    # is Lightning that stops the run, at a batch boundary, and the record says so.
    if signal.getsignal(signum) is _raise_terminated:
        raise Terminated(signum)


def handle_sigterm() -> None:
    """Make SIGTERM end the command truthfully wherever it comes (see ``Terminated``)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _raise_terminated)


def interruption_line(stop: BaseException) -> tuple[str, int] | None:
    """The one line and exit status for a signal that stopped the command before a run's record
    could say so; None for any other exception."""
    if isinstance(stop, Terminated):
        return f"klexp: interrupted by {stop}", 128 + stop.signum
    if isinstance(stop, KeyboardInterrupt):
        return "klexp: interrupted by SIGINT", 128 + signal.SIGINT
    return None


# -- one owner ------------------------------------------------------------------------------------

class DirectoryLocked(KlexpError):
    """Another live process owns the directory."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        owner = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{directory} is in use by {owner} ({LOCK_FILE})")


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/klexp.lock``, held until ``release`` or the
    process's end. ``acquire`` writes nothing but the (empty) lock file; ``announce`` then writes
    the owner's pid, once the owner knows it will proceed."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise DirectoryLocked(self.directory, owner_pid(self.directory)) from None
        self._descriptor = descriptor

    def announce(self) -> None:
        if self._descriptor is None:
            return
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


_HELD: dict[Path, DirectoryLock] = {}


def claim(directory: Path) -> DirectoryLock:
    """This process's lock on ``directory`` (taken now, or earlier in this process); raises
    ``DirectoryLocked`` when a live process holds it."""
    key = Path(os.path.abspath(directory))
    if key not in _HELD:
        lock = DirectoryLock(directory)
        lock.acquire()
        _HELD[key] = lock
    return _HELD[key]


def release(directory: Path) -> None:
    """Give up this process's lock on ``directory`` (a sweep's job, when it ends)."""
    lock = _HELD.pop(Path(os.path.abspath(directory)), None)
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def owned(directory: Path) -> Iterator[DirectoryLock]:
    """Hold ``directory``'s lock inside (a sweep job's directory, for the job's duration)."""
    held_before = Path(os.path.abspath(directory)) in _HELD
    lock = claim(directory)
    try:
        yield lock
    finally:
        if not held_before:
            release(directory)


def owner_pid(directory: Path) -> int | None:
    """The pid a lock's owner wrote (None if it wrote none yet)."""
    try:
        text = (Path(directory) / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(directory: Path) -> bool:
    """Whether a live process (this one excluded) holds ``directory``'s lock."""
    path = Path(directory) / LOCK_FILE
    if Path(os.path.abspath(directory)) in _HELD or not path.is_file():
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


# -- states ---------------------------------------------------------------------------------------

#: entries that only klexp (or Hydra on its behalf) writes into a run or sweep directory
ARTEFACTS = (".hydra", SUMMARY_FILE, "checkpoints", "multirun.yaml")
EVENTS_PREFIX = "events.out.tfevents."
_SEARCH_DEPTH = 3


def is_artefact(entry: Path, depth: int = _SEARCH_DEPTH) -> bool:
    """Whether ``entry`` is one of klexp's artefacts, or a folder holding one (TensorBoard's
    ``tb/``, a stage's or a sweep job's directory) within a few levels."""
    if entry.name in ARTEFACTS or entry.name.startswith(EVENTS_PREFIX):
        return True
    if depth == 0 or not entry.is_dir() or entry.is_symlink():
        return False
    try:
        return any(is_artefact(child, depth - 1) for child in entry.iterdir())
    except OSError:
        return False


def artefacts(directory: Path, ignore: Sequence[str] = ()) -> list[str]:
    """The names of the entries of ``directory`` that are klexp's artefacts, sorted (none if it
    does not exist). Foreign files (the user's own), Hydra's job logs and a lock file whose owner
    is gone do not count; a live owner's lock does."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [entry.name for entry in directory.iterdir()
             if entry.name not in ignore and is_artefact(entry)]
    if LOCK_FILE not in ignore and is_locked(directory):
        found.append(LOCK_FILE)
    return sorted(found)


def state_of(run_dir: Path) -> str:
    """The run directory's state: ``new`` without a record, else the record's status (a
    ``running`` one whose lock is free is a killed run)."""
    return recorded_status(run_dir) or NEW


def check_resume(run_dir: Path, overrides: Sequence[str]) -> RunEnding | None:
    """Whether ``klexp resume=<run_dir> [overrides]`` may go on: a completed run changes nothing;
    without overrides that is the whole answer (``NothingToDo``, raised), with them it is the
    refusal returned here, which ``refuse_pending`` raises once the overrides themselves have been
    checked (a mistake in them is named first)."""
    if state_of(run_dir) != COMPLETED:
        return None
    if not overrides:
        raise NothingToDo(f"{run_dir} already completed; nothing to do")
    wanted = " ".join(overrides)
    return RunEnding(f"resume: {run_dir} already completed, so nothing is resumed and its record is "
                     f"kept; to train it with {wanted}, start a new run: `klexp rerun {run_dir} {wanted}`")


_PENDING: list[RunEnding] = []


def begin_resume(run_dir: Path, overrides: Sequence[str], first_process: bool = True) -> bool:
    """Take ``run_dir`` for a resume: its lock (first process of a launch only), then
    ``check_resume``; the owner's pid is written once both passed. Returns False when the resume
    will be refused by ``refuse_pending`` (a completed run: then nothing may be written, Hydra's
    record of the command included)."""
    lock = None
    if first_process:
        try:
            lock = claim(run_dir)
        except DirectoryLocked as error:
            raise KlexpError(f"resume: {error}; wait for it to end or stop it first") from None
    refusal = check_resume(run_dir, overrides)
    if refusal is not None:
        _PENDING.append(refusal)
        return False
    if lock is not None:
        lock.announce()
    return True


def refuse_pending() -> None:
    """Raise the refusal ``begin_resume`` put off (the runner calls this after every check of the
    config, and before the logger or the Trainer exists)."""
    if _PENDING:
        raise _PENDING.pop()


STATES = (NEW, RUNNING, COMPLETED, FAILED, INTERRUPTED)
