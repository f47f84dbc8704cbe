"""Which distillation objective brings a student closest to its teacher, measured exactly?

Trains the teacher once (``experiment=distill_seq_teacher``); every student reuses its checkpoint.
Then, for each capacity gap (student 2× and 8× smaller) and seed, three parts:

* ``steps``: each objective for the same number of optimiser steps (``--steps``);
* ``compute``: each objective for the number of steps whose counted compute (``compute.py``:
  MACs of the nets over the positions a step evaluates, sampling included) matches ``--steps``
  steps of plain forward KL on data; objectives that cost the same per step reuse their
  ``steps`` runs, the others (on-policy and teacher-sampled) run again for fewer steps;
* ``beta``: the generalised JS in GKD's convention and in the continuous one at each ``--betas``
  (on data, ``--beta-seeds`` seeds), β = 0.5 reusing the ``steps`` runs.

Each run is read at its last validation, exactly: sequence-level KL(T ‖ S), KL(S ‖ T) and total
variation (``val/seq_*``), and each validation's exact KLs are kept as its curve. Wall time per
run is recorded too (not ranked by: the machine is shared). Runs go in one process (one Lightning
import), or ``--jobs`` processes side by side. Writes ``runs.csv``, ``curves.csv``, ``table.md``,
``table_compute.md``, ``table_beta.md``, ``exact_kl.png``, ``compute.png`` and ``beta.png``
under ``--out``.

    python experiments/distill_seq/study.py            # 13 objectives × 2 gaps × 5 seeds, + parts
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from compute import StepCost, matched_steps, position_macs
from omegaconf import OmegaConf

from klexp.app.cli import CONFIG_DIR
from klexp.app.in_process import run_overrides
from klexp.report import Run

#: name → overrides (kl term and the sequences it trains on)
OBJECTIVES: dict[str, list[str]] = {
    "forward": ["kl=distill_forward"],
    "reverse": ["kl=distill_reverse"],
    "jsd β=0.5 (continuous)": ["kl=distill_jsd"],
    "jsd β=0.5 (GKD)": ["kl=distill_jsd_gkd"],
    "skew forward α=0.1": ["kl=distill_skew_forward"],
    "skew reverse α=0.1": ["kl=distill_skew_reverse"],
    "TAID": ["kl=distill_taid"],
    "top-2 + tail": ["kl=distill_top_k"],
    "top-2 truncated": ["kl=distill_top_k_truncated"],
    "forward, λ=1": ["kl=distill_forward", "task.student_fraction=1"],
    "reverse, λ=1": ["kl=distill_reverse", "task.student_fraction=1"],
    "k1 reward, λ=1": ["kl=distill_sampled", "task.student_fraction=1"],
    "GKD: jsd β=0.5, teacher samples, λ=0.5": ["kl=distill_jsd_gkd", "task.source=teacher",
                                               "task.student_fraction=0.5"],
}
#: the objective whose ``--steps`` steps are the compute budget of the ``compute`` part
BUDGET = "forward"
#: the generalised JS's conventions: name → kl config
CONVENTIONS = {"GKD": "distill_jsd_gkd", "continuous": "distill_jsd"}
BETAS = (0.01, 0.1, 0.5, 0.9, 0.99)
GAPS = {"2×": "[96,64]", "8×": "[48]"}
PARTS = ("steps", "compute", "beta")
QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false", "test=false"]
METRICS = ("val/seq_kl_forward", "val/seq_kl_reverse", "val/seq_tv")
CURVE_METRICS = METRICS[:2]


def jsd_name(beta: float, convention: str) -> str:
    """The study's name of the generalised JS at ``beta`` (β = 0.5 is the ``steps`` part's)."""
    return f"jsd β={beta:g} ({convention})"


def jsd_overrides(beta: float, convention: str) -> list[str]:
    key = CONVENTIONS[convention]
    return [f"kl={key}", f"kl.{key}.objective.beta={beta}"]


def step_cost(objective: Sequence[str], student: int, teacher: int) -> StepCost:
    """The counted cost of a step of the objective with these overrides (the task's defaults:
    data, λ = 0)."""
    values = dict(o.split("=", 1) for o in objective)
    return StepCost(student, teacher, values.get("task.source", "data"),
                    float(values.get("task.student_fraction", 0)))


@dataclass
class Spec:
    """One student run of the study."""

    part: str
    objective: str
    gap: str
    seed: int
    steps: int
    overrides: list[str] = field(default_factory=list)
    gmacs: float = 0.0


def plan(args: argparse.Namespace, student_macs: dict[str, int], teacher_macs: int,
         positions: int) -> list[Spec]:
    """Every run the arguments ask for, in order (gap, part, objective, seed)."""
    specs = []
    for gap in args.gaps:
        costs = {name: step_cost(OBJECTIVES[name], student_macs[gap], teacher_macs)
                 for name in OBJECTIVES}
        runs = []
        if "steps" in args.parts:
            runs += [("steps", name, OBJECTIVES[name], args.steps, args.seeds)
                     for name in args.objectives]
        if "compute" in args.parts:
            for name in args.objectives:
                steps = matched_steps(costs[name], costs[BUDGET], args.steps)
                if steps != args.steps:
                    runs.append(("compute", name, [*OBJECTIVES[name], *validate_at(steps)], steps,
                                 args.seeds))
        if "beta" in args.parts:
            for convention in CONVENTIONS:
                for beta in args.betas:
                    name = jsd_name(beta, convention)
                    if "steps" in args.parts and name in args.objectives:
                        continue  # the steps part's run
                    runs.append(("beta", name, jsd_overrides(beta, convention), args.steps,
                                 args.beta_seeds))
        for part, name, overrides, steps, seeds in runs:
            cost = step_cost(overrides, student_macs[gap], teacher_macs)
            for seed in range(seeds):
                specs.append(Spec(part, name, gap, seed, steps, [
                    "experiment=distill_seq", "stages=null", f"task.hidden={GAPS[gap]}",
                    f"seed={seed}", *QUIET, f"trainer.max_steps={steps}", *overrides],
                    gmacs=steps * cost.step(positions) / 1e9))
    return specs


def validate_at(steps: int) -> list[str]:
    """Validate (read the exact KLs) at exactly ``steps`` steps, which may end mid-epoch."""
    return ["trainer.check_val_every_n_epoch=null", f"trainer.val_check_interval={steps}"]


def execute(spec: Spec, checkpoint: str, directory: str) -> tuple[dict, list[dict]]:
    """Run ``spec`` from the teacher at ``checkpoint`` in ``directory``: its row and its curve."""
    overrides = [*spec.overrides, f"task.teacher_checkpoint={checkpoint}"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the runner's final table
        summary = run_overrides(overrides, directory)
    seconds = time.perf_counter() - start
    key = {"part": spec.part, "objective": spec.objective, "gap": spec.gap, "seed": spec.seed}
    row = {**key, "steps": spec.steps, "gmacs": spec.gmacs, "seconds": seconds,
           **{name: summary["metrics"][name] for name in METRICS}}
    scalars = Run(Path(directory), summary).scalars
    by_step: dict[int, dict] = {}
    for name in CURVE_METRICS:
        for step, value in scalars.get(name, []):
            by_step.setdefault(step, {**key, "step": step})[name] = value
    return row, [by_step[s] for s in sorted(by_step)]


# ---------------------------------------------------------------------------- tables and plots


def mean_sd(values: Sequence[float], digits: int = 4) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def select(rows: Iterable[dict], **where: object) -> list[dict]:
    return [r for r in rows if all(str(r[k]) == str(v) for k, v in where.items())]


def column(rows: Iterable[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def equal_compute_rows(rows: list[dict], name: str, gap: str) -> list[dict]:
    """The runs of ``name`` at the budget's compute: its ``compute`` runs, or its ``steps`` runs
    where a step costs what the budget's does (none where neither was run)."""
    compute = select(rows, part="compute", objective=name, gap=gap)
    steps = select(rows, part="steps", objective=name, gap=gap)
    budget = select(rows, part="steps", objective=BUDGET, gap=gap)
    if compute or not (steps and budget):
        return compute
    return steps if math.isclose(float(steps[0]["gmacs"]), float(budget[0]["gmacs"])) else []


def ranks(means: dict[str, float]) -> dict[str, int]:
    return {name: index + 1 for index, name in enumerate(sorted(means, key=means.__getitem__))}


def steps_table(rows: list[dict], names: Sequence[str]) -> str:
    lines = ["| objective | gap | steps | GMAC | KL(T‖S) | KL(S‖T) | TV | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for gap in GAPS:
        for name in names:
            part = select(rows, part="steps", objective=name, gap=gap)
            if part:
                lines.append(f"| {name} | {gap} | {part[0]['steps']} | {float(part[0]['gmacs']):.1f} | "
                             + " | ".join(mean_sd(column(part, key)) for key in METRICS)
                             + f" | {statistics.mean(column(part, 'seconds')):.1f} |")
    return "\n".join(lines)


def compute_table(rows: list[dict], names: Sequence[str]) -> tuple[str, list[str]]:
    """The equal-compute table (with each objective's rank at equal steps → at equal compute) and
    one line per rank that changes."""
    lines = ["| objective | gap | steps | GMAC | KL(T‖S) | rank | KL(S‖T) | rank | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    changes = []
    for gap in GAPS:
        at_steps = {n: select(rows, part="steps", objective=n, gap=gap) for n in names}
        at_compute = {n: equal_compute_rows(rows, n, gap) for n in names}
        present = [n for n in names if at_steps[n] and at_compute[n]]
        if not present:
            continue
        order = {}
        for key in CURVE_METRICS:
            before = ranks({n: statistics.mean(column(at_steps[n], key)) for n in present})
            after = ranks({n: statistics.mean(column(at_compute[n], key)) for n in present})
            order[key] = before, after
            label = "KL(T‖S)" if key == METRICS[0] else "KL(S‖T)"
            changes += [f"{gap}, {label}: {n} ranks {before[n]} at equal steps, {after[n]} at equal "
                        "compute" for n in present if before[n] != after[n]]
        for name in present:
            part = at_compute[name]
            cells = []
            for key in CURVE_METRICS:
                before, after = order[key]
                moved = "" if before[name] == after[name] else f" (was {before[name]})"
                cells += [mean_sd(column(part, key)), f"{after[name]}{moved}"]
            lines.append(f"| {name} | {gap} | {part[0]['steps']} | {float(part[0]['gmacs']):.1f} | "
                         + " | ".join(cells)
                         + f" | {statistics.mean(column(part, 'seconds')):.1f} |")
    return "\n".join(lines), changes


def beta_runs(rows: list[dict], curves: list[dict], convention: str, beta: float,
              gap: str, seeds: int) -> tuple[list[dict], list[dict]]:
    """The runs (and curves) of the generalised JS at ``beta``: the ``beta`` part's, or for the
    ``steps`` part's β = 0.5 its first ``seeds`` seeds, so every β has as many."""
    name = jsd_name(beta, convention)
    part = select(rows, part="beta", objective=name, gap=gap)
    if part:
        return part, select(curves, part="beta", objective=name, gap=gap)
    kept = [r for r in select(rows, part="steps", objective=name, gap=gap) if int(r["seed"]) < seeds]
    return kept, [c for c in select(curves, part="steps", objective=name, gap=gap)
                  if int(c["seed"]) < seeds]


def first_step(curves: list[dict], key: str) -> list[float]:
    """Each run's value of ``key`` at its first validation."""
    first: dict[str, tuple[int, float]] = {}
    for c in curves:
        if c.get(key) not in (None, ""):
            step = int(c["step"])
            if c["seed"] not in first or step < first[c["seed"]][0]:
                first[c["seed"]] = (step, float(c[key]))
    return [value for _, value in first.values()]


def beta_table(rows: list[dict], curves: list[dict], betas: Sequence[float], seeds: int) -> str:
    lines = ["| convention | β | gap | seeds | KL(T‖S), first validation | KL(T‖S) | KL(S‖T) | TV |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for gap in GAPS:
        for convention in CONVENTIONS:
            for beta in betas:
                part, curve = beta_runs(rows, curves, convention, beta, gap, seeds)
                if part:
                    lines.append(f"| {convention} | {beta:g} | {gap} | {len(part)} | "
                                 f"{mean_sd(first_step(curve, METRICS[0]))} | "
                                 + " | ".join(mean_sd(column(part, key)) for key in METRICS) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict], curves: list[dict], out: Path, betas: Sequence[float],
              beta_seeds: int) -> None:
    """Write the three tables and three plots from the runs and their curves."""
    names = [n for n in OBJECTIVES if select(rows, objective=n)]
    seeds = len({r["seed"] for r in select(rows, part="steps")})
    text = (f"Mean ± standard deviation over {seeds} seeds; the exact sequence-level divergences at "
            "the last validation. GMAC: the counted compute of the run (compute.py); seconds: "
            "wall time on a shared machine, not ranked by.\n\n")
    (out / "table.md").write_text(text + steps_table(rows, names) + "\n")
    table, changes = compute_table(rows, names)
    budget = select(rows, part="steps", objective=BUDGET)
    (out / "table_compute.md").write_text(
        "At equal compute: every objective given the steps whose counted compute (compute.py) is "
        f"closest to {budget[0]['steps'] if budget else '?'} steps of `{BUDGET}` on data; rank: "
        "by the mean, among these objectives at this gap (in brackets: the rank at equal steps, "
        "where it differs).\n\n" + table + "\n\nRanks that change from equal steps to equal "
        "compute:\n\n" + ("\n".join(f"- {line}" for line in changes) or "- none") + "\n")
    (out / "table_beta.md").write_text(
        "The generalised JS on data at each β, in GKD's convention and the continuous one "
        "(exact KLs at the first validation and at the end; mean ± sd over the seeds).\n\n"
        + beta_table(rows, curves, betas, beta_seeds) + "\n")
    plot_exact(rows, names, out / "exact_kl.png")
    plot_compute(rows, curves, names, out / "compute.png")
    plot_beta(rows, curves, betas, beta_seeds, out / "beta.png")


def plot_exact(rows: list[dict], names: Sequence[str], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for axis, gap in zip(axes, GAPS, strict=True):
        for index, name in enumerate(names):
            part = select(rows, part="steps", objective=name, gap=gap)
            if part:
                axis.scatter(column(part, METRICS[0]), column(part, METRICS[1]), label=name, s=22,
                             marker="o" if index < 10 else "s", color=f"C{index % 10}",
                             edgecolors="black" if index >= 10 else "none")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"student {gap} smaller than the teacher, equal steps")
        axis.set_xlabel("exact KL(T ‖ S), nats (log scale)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("exact KL(S ‖ T), nats (log scale)")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def mean_curve(curves: list[dict], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for c in curves:
        if c.get(key) not in (None, ""):
            by_step.setdefault(int(c["step"]), []).append(float(c[key]))
    steps = sorted(by_step)
    return steps, [statistics.mean(by_step[s]) for s in steps]


def plot_compute(rows: list[dict], curves: list[dict], names: Sequence[str], path: Path) -> None:
    """Each objective's mean exact KLs at each validation of its ``steps`` runs, against the
    counted compute spent by then; the budget as a vertical line."""
    figure, axes = plt.subplots(2, 2, figsize=(13, 9), sharex="col")
    for col, gap in enumerate(GAPS):
        budget = select(rows, part="steps", objective=BUDGET, gap=gap)
        for row_index, key in enumerate(CURVE_METRICS):
            axis = axes[row_index, col]
            for index, name in enumerate(names):
                part = select(rows, part="steps", objective=name, gap=gap)
                if not part:
                    continue
                per_step = float(part[0]["gmacs"]) / int(part[0]["steps"])
                steps, values = mean_curve(select(curves, part="steps", objective=name, gap=gap), key)
                axis.plot([s * per_step for s in steps], values, label=name, marker=".",
                          color=f"C{index % 10}", linestyle="-" if index < 10 else "--")
            if budget:
                axis.axvline(float(budget[0]["gmacs"]), color="black", linewidth=0.8)
            axis.set_yscale("log")
            axis.grid(alpha=0.3)
            axis.set_ylabel(("exact KL(T ‖ S)" if row_index == 0 else "exact KL(S ‖ T)")
                            + ", nats (log scale)")
            axis.set_title(f"student {gap} smaller; line: the budget ({BUDGET}, equal steps)")
        axes[1, col].set_xlabel("counted compute, GMAC (compute.py)")
    axes[0, 1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_beta(rows: list[dict], curves: list[dict], betas: Sequence[float], seeds: int,
              path: Path) -> None:
    """Final exact KLs against β, both conventions, both gaps; the plain KLs as lines."""
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    positions = range(len(betas))
    for col, gap in enumerate(GAPS):
        for row_index, key in enumerate(CURVE_METRICS):
            axis = axes[row_index, col]
            for index, convention in enumerate(CONVENTIONS):
                found = [(i, beta_runs(rows, curves, convention, b, gap, seeds))
                         for i, b in zip(positions, betas, strict=True)]
                found = [(i, part, curve) for i, (part, curve) in found if part]
                if not found:
                    continue
                x = [i + (index - 0.5) * 0.1 for i, _, _ in found]
                for part_index, label in ((1, "end"), (2, "first validation")):
                    values = [column(p, key) if part_index == 1 else first_step(c, key)
                              for _, p, c in found]
                    axis.errorbar(x, [statistics.mean(v) for v in values],
                                  yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
                                  marker="o" if part_index == 1 else "x", capsize=3,
                                  linestyle="-" if part_index == 1 else ":", color=f"C{index}",
                                  label=f"{convention}, {label}")
            for index, name in enumerate(("forward", "reverse")):
                plain = [r for r in select(rows, part="steps", objective=name, gap=gap)
                         if int(r["seed"]) < seeds]
                if plain:
                    axis.axhline(statistics.mean(column(plain, key)), color=f"C{index + 2}",
                                 linewidth=0.8, label=f"plain {name} KL, end")
            axis.set_yscale("log")
            axis.grid(alpha=0.3)
            axis.set_title(f"student {gap} smaller")
            axis.set_ylabel(("exact KL(T ‖ S)" if row_index == 0 else "exact KL(S ‖ T)")
                            + ", nats (log scale)")
        axes[1, col].set_xticks(list(positions), [f"{b:g}" for b in betas])
        axes[1, col].set_xlabel("β of the generalised JS")
    axes[0, 1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------- the command


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=512, help="a multiple of 128 (one epoch)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="default: the teacher experiment's")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--gaps", nargs="+", default=list(GAPS), choices=list(GAPS))
    parser.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    parser.add_argument("--beta-seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="student runs side by side, one process each")
    parser.add_argument("--replot", action="store_true", help="rewrite tables and plots from the CSVs")
    args = parser.parse_args()
    if "compute" in args.parts and BUDGET not in args.objectives:
        parser.error(f"--parts compute measures against {BUDGET!r}: keep it in --objectives")
    if any(not 0 < b < 1 for b in args.betas):
        parser.error(f"--betas: each strictly between 0 and 1 (got {args.betas})")
    return args


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        summarise(read_csv(args.out / "runs.csv"), read_csv(args.out / "curves.csv"), args.out,
                  args.betas, args.beta_seeds)
        return
    # torch and Lightning only for training: --replot draws from the CSVs without them
    from klexp.nets.frozen import read_checkpoint
    from klexp.tasks.distill_seq import CHECKPOINT_NET_KEY

    with tempfile.TemporaryDirectory() as scratch:
        teacher_dir = Path(scratch) / "teacher"
        teacher_steps = [f"trainer.max_steps={args.teacher_steps}"] if args.teacher_steps else []
        with contextlib.redirect_stdout(io.StringIO()):
            run_overrides(["experiment=distill_seq_teacher", *QUIET, *teacher_steps], teacher_dir)
        checkpoint = str(teacher_dir / "checkpoints" / "last.ckpt")
        _, net = read_checkpoint(checkpoint, "teacher", CHECKPOINT_NET_KEY, "sequence-model")
        data = OmegaConf.load(CONFIG_DIR / "data" / "markov.yaml")
        student_macs = {gap: position_macs(net["vocab_size"], net["length"], json.loads(h))
                        for gap, h in GAPS.items()}
        teacher_macs = position_macs(net["vocab_size"], net["length"], net["hidden"])
        specs = plan(args, student_macs, teacher_macs, int(data.batch_size) * net["length"])
        print(f"teacher trained once ({checkpoint}); {len(specs)} student runs", flush=True)
        directories = [str(Path(scratch) / f"run-{index}") for index in range(len(specs))]
        rows, curves = [], []
        context = multiprocessing.get_context("spawn")
        with (ProcessPoolExecutor(args.jobs, mp_context=context) if args.jobs > 1
              else contextlib.nullcontext()) as pool:
            mapper = pool.map if pool is not None else map
            for spec, (row, curve) in zip(specs, mapper(execute, specs, [checkpoint] * len(specs),
                                                        directories), strict=True):
                rows.append(row)
                curves += curve
                # after every run: a study stopped part-way keeps what it measured (--replot)
                write_csv(args.out / "runs.csv", rows)
                write_csv(args.out / "curves.csv", curves)
                print(f"[{len(rows)}/{len(specs)}] {spec.part}: {spec.objective} {spec.gap} seed "
                      f"{spec.seed}, {spec.steps} steps: "
                      + " ".join(f"{k}={row[k]:.4f}" for k in METRICS), flush=True)
    summarise(rows, curves, args.out, args.betas, args.beta_seeds)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
