"""Benchmark: categorical KL on a batch of logits — klexp vs ``F.kl_div`` vs a naive formula.

Computes ``KL(P ‖ Q) = Σ_k p_k (log p_k − log q_k)`` per row of ``rows × classes`` float32 logits
three ways:

* ``klexp``   — ``klexp.core.categorical_kl(p_logits, q_logits)``;
* ``F.kl_div`` — ``F.kl_div(log_softmax(q), log_softmax(p), log_target=True, reduction="none").sum(-1)``
  (note the argument order: ``F.kl_div(input, target)`` computes ``KL(target ‖ input)``);
* ``naive``   — ``(p * (p / q).log()).sum(-1)`` on softmax probabilities.

Timing is interleaved (each repeat runs every method once, in a rotating order, so drift in machine
load hits all of them alike) and summarised by the median and the minimum wall-clock time over
repeats, and the minimum process CPU time (robust to other processes on a shared machine); ratios
are relative to ``F.kl_div``. Accuracy is the max and mean abs difference from a float64 reference
computed independently with ``scipy.special.rel_entr``. Finally, rows with ``−inf`` logits (zero
probabilities) show ``F.kl_div`` returning NaN where klexp returns the correct value.

Run: ``python experiments/benchmarks/bench_kl.py [--rows 4096 --classes 1000 --repeats 50 --threads N]``;
``--forward-only`` skips the forward + backward timing. On a machine shared with other jobs,
``--threads 1`` gives the steadiest ratios (a descheduled worker thread stalls a multi-threaded op).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import rel_entr

from klexp.core import categorical_kl

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def keep_freed_memory() -> bool:
    """Ask glibc to serve the 16 MB temporaries from its heap and keep them there when freed.

    By default it maps each one afresh and returns it to the OS when freed, so every call pays
    page faults on ~5 new buffers — more than some of the arithmetic, and varying from one process
    to the next (a whole run can come out 4× slower). A training loop reuses its memory; so does
    this benchmark then. Returns whether it applied (glibc only).
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def kl_klexp(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    return categorical_kl(p_logits, q_logits)


def kl_torch(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


def kl_naive(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    return (p * (p / q).log()).sum(-1)


METHODS: dict[str, Method] = {"klexp": kl_klexp, "F.kl_div": kl_torch, "naive": kl_naive}


def reference_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> np.ndarray:
    """Float64 ``Σ rel_entr(p, q)`` with scipy (``rel_entr(0, q) = 0``, ``rel_entr(p>0, 0) = inf``)."""
    p = torch.softmax(p_logits.double(), -1).numpy()
    q = torch.softmax(q_logits.double(), -1).numpy()
    return rel_entr(p, q).sum(-1)


Timings = dict[str, dict[str, list[float]]]  # method → {"wall", "cpu"} → seconds per call


def time_interleaved(p_logits: torch.Tensor, q_logits: torch.Tensor, repeats: int,
                     backward: bool = False) -> Timings:
    """Wall-clock and CPU seconds per call of each method, ``repeats`` times, in rotating order."""
    names = list(METHODS)
    times: Timings = {name: {"wall": [], "cpu": []} for name in names}
    p_in, q_in = p_logits.clone(), q_logits.clone()
    if backward:
        p_in.requires_grad_(True)
        q_in.requires_grad_(True)
    for repeat in range(-3, repeats):  # three warm-up rounds, not recorded
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            value = METHODS[name](p_in, q_in)
            if backward:
                value.sum().backward()
                p_in.grad = q_in.grad = None
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if repeat >= 0:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def report_times(title: str, times: Timings) -> dict[str, dict[str, float]]:
    """Print and return, per method, the ratios to ``F.kl_div`` of median wall, min wall, min CPU."""
    base = times["F.kl_div"]
    stats_of = {
        "median wall": (statistics.median, "wall"),
        "min wall": (min, "wall"),
        "min CPU": (min, "cpu"),
    }
    print(f"\n{title} (ms; ratio to F.kl_div in brackets)")
    print(f"  {'method':10s}" + "".join(f"{label:>22s}" for label in stats_of))
    ratios: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        row, ratios[name] = f"  {name:10s}", {}
        for label, (summary, clock) in stats_of.items():
            value = summary(values[clock])
            ratios[name][label] = value / summary(base[clock])
            row += f"{1e3 * value:13.2f} ({ratios[name][label]:5.3f}×)"
        print(row)
    return ratios


def report_accuracy(p_logits: torch.Tensor, q_logits: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Print and return, per method, the max and mean |value − float64 reference| in nats."""
    reference = reference_kl(p_logits, q_logits)
    print(f"\n|value − float64 reference| in nats (mean KL {reference.mean():.4f} nats):")
    print(f"  {'method':10s} {'max':>10s} {'mean':>10s}")
    errors = {}
    for name, method in METHODS.items():
        with torch.no_grad():
            error = np.abs(method(p_logits, q_logits).double().numpy() - reference)
        errors[name] = (float(error.max()), float(error.mean()))
        print(f"  {name:10s} {errors[name][0]:10.3e} {errors[name][1]:10.3e}")
    return errors


def report_zero_probabilities(classes: int) -> None:
    """Rows with −inf logits: P and Q both exclude some classes, and P excludes more."""
    generator = torch.Generator().manual_seed(1)
    p_logits = torch.randn(4, classes, generator=generator)
    q_logits = torch.randn(4, classes, generator=generator)
    p_logits[:, : classes // 2] = -math.inf   # P gives half the classes probability 0 …
    q_logits[:, : classes // 4] = -math.inf   # … Q a quarter of them (a subset): KL stays finite.
    reference = reference_kl(p_logits, q_logits)
    print("\n−inf logits (zero probabilities; KL(P ‖ Q) finite), first two rows:")
    for name, method in METHODS.items():
        with torch.no_grad():
            value = method(p_logits, q_logits)
        print(f"  {name:10s} {value[:2].tolist()}")
    print(f"  {'reference':10s} {reference[:2].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=3.0, help="standard deviation of the logits")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--forward-only", action="store_true", help="skip forward + backward timing")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator settings alone (see keep_freed_memory)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reuse = not args.system_malloc and keep_freed_memory()

    generator = torch.Generator().manual_seed(0)
    p_logits = args.scale * torch.randn(args.rows, args.classes, generator=generator)
    q_logits = args.scale * torch.randn(args.rows, args.classes, generator=generator)
    print(f"categorical KL(P ‖ Q), {args.rows}×{args.classes} float32 logits (scale {args.scale}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats, "
          f"{'freed memory kept' if reuse else 'system malloc'}")

    with torch.no_grad():
        ratios = report_times("forward", time_interleaved(p_logits, q_logits, args.repeats))
    if not args.forward_only:
        report_times("forward + backward", time_interleaved(p_logits, q_logits, args.repeats, True))
    errors = report_accuracy(p_logits, q_logits)
    report_zero_probabilities(args.classes)

    ratio, cpu_ratio = ratios["klexp"]["min wall"], ratios["klexp"]["min CPU"]
    accurate = all(a <= b for a, b in zip(errors["klexp"], errors["F.kl_div"], strict=True))
    print(f"\ntarget: klexp ≤ 1.1× F.kl_div forward time (min wall): {'yes' if ratio <= 1.1 else 'NO'} "
          f"({ratio:.3f}×; min CPU {cpu_ratio:.3f}×); at least as accurate (max and mean error): "
          f"{'yes' if accurate else 'NO'}")


if __name__ == "__main__":
    main()
