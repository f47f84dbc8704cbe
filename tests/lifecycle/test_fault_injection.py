"""The lifecycle's invariants under generated sequences of faults (issue #20, "How it is proven").

One reference run, then seeded sequences of operations on runs of the same config — SIGKILL,
SIGTERM and SIGINT at start-up, mid-run and inside a checkpoint write, a full disk under the
checkpoint I/O and, in a soak, once for real (a small tmpfs that fills up, where one can be mounted),
two processes started on one run, refused resumes — each ending by completing the
run and resuming it once more; then ``klexp report`` over the whole tree. ``harness.Harness``
lists the invariants checked. A failure prints the seed and the sequence as run; reproduce it with
``--lifecycle-seed``. A soak: ``--lifecycle-soak N`` (or ``KLEXP_SOAK=N``) runs N sequences of
four operations instead of CI's one of three (about two minutes here), and a real full disk.
"""

import contextlib
import os
import random

import pytest

from lifecycle.harness import Harness, reference_run, sequences, small_disk

DEFAULT_SEED = 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, made once for the tests below (each copies it into its tree)."""
    return reference_run(tmp_path_factory.mktemp("reference"))


@pytest.fixture
def plan(request):
    seed = request.config.getoption("--lifecycle-seed")
    if seed is None:
        seed = int(os.environ.get("KLEXP_LIFECYCLE_SEED", DEFAULT_SEED))
    soak = request.config.getoption("--lifecycle-soak") or int(os.environ.get("KLEXP_SOAK", 0))
    count, length = (soak, 4) if soak else (1, 3)
    return seed, sequences(seed, count, length), bool(soak)


@pytest.mark.slow
def test_generated_fault_sequences_keep_every_invariant(plan, reference, tmp_path):
    seed, planned, soak = plan
    harness = Harness(tmp_path, seed)
    print(f"lifecycle seed {seed}: {planned}")
    harness.run_reference(reference)
    rng = random.Random(seed)
    for number, operations in enumerate(planned):
        harness.run_sequence(f"s{number}", operations, rng)
    # in a soak, once on a real file system that fills up (a small tmpfs), where the machine can
    # mount one (in every run of the suite, test_lifecycle_states.py fills a real small one)
    with small_disk(harness.tree / "small-disk") if soak else contextlib.nullcontext(False) as mounted:
        if mounted:
            harness.run_sequence("small-disk/run", ["real full disk", "complete",
                                                    "resume completed"], rng)
        else:
            print("no real full disk in this run (only in a soak, where a tmpfs can be mounted)")
        harness.check_owners()
        harness.check_report()
    assert not harness.violations, harness.failure(
        f"{len(harness.violations)} invariant violation(s), seed {seed}")


@pytest.mark.slow
def test_two_kills_in_one_epoch_resume_to_the_uninterrupted_result(reference, tmp_path):
    """Found by the generated sequences (seed 7, soak 2): killed after step 9 (the second epoch)
    and again two steps after resuming, the run's epoch-level training metrics (train/acc,
    train/ece) covered only the batches since the last resume."""
    harness = Harness(tmp_path, seed=0)
    harness.run_reference(reference)
    harness.run_sequence("s0", ["kill SIGKILL saved=9", "kill SIGKILL saved=2", "complete"],
                         random.Random(0))
    assert not harness.violations, harness.failure("invariant violation(s)")
