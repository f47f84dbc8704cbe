"""The KL-placement study's tables and plots, from its sweep directories.

``klexp report`` groups runs by their overrides; this study reads better with one row per cell
(estimator × placement) and the cells laid out as a grid in the plots, so this script names each
run's cell from its overrides and computes the same statistics with ``klexp.report``'s own
``find_runs``, ``Metric`` and ``Stat`` (mean and sample std over seeds)::

    python experiments/ppo_kl_placement/table.py --tokens <sweep dir> --cartpole <sweep dir> \
        [--tokens-long <sweep dir>] --fixed-points results/fixed_points.csv --out results

writes ``tokens.md``/``tokens.csv`` (final ``J* − J``, ``KL(π ‖ π*)``, ``KL(π ‖ π_ref)``, ``E[r]``,
greedy return; in the markdown, the final policy's ``KL(π ‖ π_ref)`` split by the half of the
sequence where it is paid, from its checkpoint, and the tabular end point of ``fixed_points.py``),
``cartpole.md``/``.csv`` (greedy and training return, ``KL(π_θ ‖ π_ref)`` on the batch states),
and per-cell curves over env steps: ``tokens_gap.png``, ``tokens_kl_reference.png``, ``cartpole_return.png``,
``cartpole_kl_reference.png``; with ``--tokens-long``, the longer-budget check's ``tokens_long.md``,
``.csv`` and ``tokens_long_gap.png``.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from fixed_points import Tree
from omegaconf import OmegaConf

from klexp.report import Metric, Run, Stat, find_runs, values_by_step
from klexp.tasks.ppo.actor import load_policy
from klexp.tasks.ppo.distributions import CategoricalDistribution
from klexp.tasks.ppo.token_env import TokenSequenceProblem

ESTIMATOR, PLACEMENT = "kl.reference_kl.estimator", "kl.reference_kl.placement"
IMPORTANCE_WEIGHT, BETA = "kl.reference_kl.importance_weight", "kl.reference_kl.weight"
BOTH = "[reference_kl,reference_kl_reward]"

#: the cells in table order, and their panel in the 4 × 3 grid of the plots
CELLS = ("k1 · reward", "k1 · loss", "k1 · loss ρ",
         "k2 · reward", "k2 · loss", "k2 · loss ρ",
         "k3 · reward", "k3 · loss", "k3 · loss ρ",
         "exact · reward", "exact · loss", "exact · loss + reward")

#: GRADIENT_TABLE of tests/test_kl_gradients.py for each cell: one state on-policy, one state
#: off-policy, two steps on-policy
EXPECTED = {
    "k1 · reward": ("reverse KL", "other", "full"),
    "k1 · loss": ("zero", "other", "zero"),
    "k1 · loss ρ": ("reverse KL", "reverse KL", "partial"),
    "k2 · reward": ("other", "other", "other"),
    "k2 · loss": ("reverse KL", "other", "partial"),
    "k2 · loss ρ": ("other", "other", "other"),
    "k3 · reward": ("other", "other", "other"),
    "k3 · loss": ("forward KL", "other", "partial forward"),
    "k3 · loss ρ": ("reverse KL", "reverse KL", "partial"),
    "exact · reward": ("zero", "zero", "future"),
    "exact · loss": ("reverse KL", "reverse KL", "partial"),
    "exact · loss + reward": ("reverse KL", "reverse KL", "full"),
}


def cell_of(settings: Mapping[str, str]) -> str:
    """The cell a run belongs to, from its overrides (the KL term's config defaults otherwise:
    ``analytic``, ``loss``, ``importance_weight=true``)."""
    if settings.get("kl") == BOTH:
        return "exact · loss + reward"
    estimator = settings.get(ESTIMATOR, "analytic")
    name = "exact" if estimator == "analytic" else estimator
    if settings.get(PLACEMENT, "loss") == "reward":
        return f"{name} · reward"
    weighted = settings.get(IMPORTANCE_WEIGHT, "true").lower() == "true" and estimator != "analytic"
    return f"{name} · loss ρ" if weighted else f"{name} · loss"


@dataclass(frozen=True)
class Column:
    """A column of a table: a ``klexp report`` metric spec and its header."""

    spec: str
    header: str


TOKEN_COLUMNS = (
    Column("test/exact/gap", "J* − J"),
    Column("test/exact/kl_optimum", "KL(π‖π*)"),
    Column("test/exact/kl_reference", "KL(π‖π_ref)"),
    Column("test/exact/reward", "E[r]"),
    Column("test/return_mean", "greedy return"),
)
CARTPOLE_COLUMNS = (
    Column("test/return_mean", "greedy return"),
    Column("episode/return_recent", "training return"),
    Column("last:ppo/kl_reference", "KL(π_θ‖π_ref), final"),
    Column("mean:ppo/kl_reference", "KL(π_θ‖π_ref), run mean"),
)


def groups_of(runs: Sequence[Run], by_beta: bool) -> dict[tuple[str, str], list[Run]]:
    """Completed runs by (cell, β) in table order (β "" when not grouped by it)."""
    found: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.summary.get("status") != "completed":
            continue
        beta = run.settings.get(BETA, "") if by_beta else ""
        found.setdefault((cell_of(run.settings), beta), []).append(run)
    return dict(sorted(found.items(), key=lambda item: (item[0][1], CELLS.index(item[0][0]))))


def table(groups: Mapping[tuple[str, str], list[Run]], columns: Sequence[Column],
          extra: Mapping[tuple[str, str], list[str]], extra_headers: Sequence[str],
          out: Path, name: str) -> None:
    """``<name>.md`` (mean ± std over seeds) and ``<name>.csv`` (exact values)."""
    metrics = [Metric.parse(column.spec) for column in columns]
    header = ["cell", "β", "expected gradient (1 state on / off; 2 steps)", "seeds",
              *(c.header for c in columns), *extra_headers]
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: | --- | ---: |" + " ---: |" * (len(header) - 4)]
    rows = []
    for (cell, beta), runs in groups.items():
        stats = [Stat.of_values([v for run in runs if (v := metric.of(run)) is not None], len(runs))
                 for metric in metrics]
        lines.append("| " + " | ".join([cell, beta, " / ".join(EXPECTED[cell][:2]) + "; "
                                        + EXPECTED[cell][2], str(len(runs)),
                                        *(stat.text() for stat in stats),
                                        *extra.get((cell, beta), [])]) + " |")
        rows.append([cell, beta, " ".join(str(run.seed) for run in runs),
                     *(value for stat in stats for value in (stat.mean, stat.std))])
    lines += ["", "Mean ± sample standard deviation (ddof = 1) over seeds, final values."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    with (out / f"{name}.csv").open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["cell", "beta", "seeds",
                         *(f"{c.spec} {part}" for c in columns for part in ("mean", "std"))])
        writer.writerows(rows)


def problem_of(run: Run) -> TokenSequenceProblem:
    """The token env a run trained on, from its composed config."""
    config = OmegaConf.load(run.directory / ".hydra" / "config.yaml")
    return TokenSequenceProblem(**OmegaConf.to_container(config.env.kwargs))


def optimum_kl_reference(groups: Mapping[tuple[str, str], list[Run]]) -> dict[tuple[str, str], float]:
    """``KL(π* ‖ π_ref)`` of each group's β (``π*`` by the soft Bellman backward pass)."""
    levels = {}
    for (cell, beta), runs in groups.items():
        problem = problem_of(runs[0])
        levels[cell, beta] = float(problem.metrics(problem.optimal_prefix_logits(float(beta)),
                                                   float(beta)).kl_reference)
    return levels


def kl_by_half(run: Run) -> tuple[float, float]:
    """The final policy's ``KL(π ‖ π_ref)`` by the half of the sequence where it is paid
    (``Tree.kl_paid_by_half``), from the run's last checkpoint and its env's config."""
    problem = problem_of(run)
    actor = load_policy(str(run.directory / "checkpoints" / "last.ckpt"),
                        problem.length * problem.vocab_size, CategoricalDistribution(problem.vocab_size))
    with torch.no_grad():
        return Tree(problem).kl_paid_by_half(actor(problem.prefix_observations()))


TOKEN_EXTRA_HEADERS = ("KL(π‖π_ref) paid in the first half", "in the second half", "tabular end point J* − J")


def token_extras(groups: Mapping[tuple[str, str], list[Run]],
                 limits: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], list[str]]:
    """The token table's last columns per group: ``kl_by_half`` (mean ± std over seeds) and the
    tabular end point's ``J* − J``."""
    extra = {}
    for key, runs in groups.items():
        first, second = (Stat.of_values(list(values), len(runs)).text(3)
                         for values in zip(*(kl_by_half(run) for run in runs), strict=True))
        extra[key] = [first, second, f"{limits[key]:.4f}" if key in limits else "n/a"]
    return extra


def fixed_point_gaps(path: Path | None) -> dict[tuple[str, str], float]:
    """``J* − J`` of each cell's tabular end point (``fixed_points.py``), by (cell, β)."""
    if path is None:
        return {}
    with path.open() as file:
        return {(row["cell"], f"{float(row['beta']):g}"): float(row["gap"]) for row in csv.DictReader(file)}


def grid_plot(groups: Mapping[tuple[str, str], list[Run]], tag: str, title: str, out: Path,
              log_scale: bool = False, levels: Mapping[tuple[str, str], float] | None = None) -> None:
    """One panel per cell (rows k1, k2, k3, exact); in each, one line per β: the mean over seeds
    against env steps, the seeds' min–max shaded; ``levels`` dashed (same colour per β)."""
    figure, axes = plt.subplots(4, 3, figsize=(13, 12), sharex=True, sharey=True, dpi=90)
    betas = sorted({beta for _, beta in groups})
    colours = dict(zip(betas, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for index, cell in enumerate(CELLS):
        ax = axes.flat[index]
        for beta in betas:
            runs = groups.get((cell, beta), [])
            steps, values = values_by_step(runs, tag)
            if not values:
                continue
            label = (f"β = {beta}" if beta else "runs") + f" (n={len(runs)})"
            ax.plot(steps, [v.mean() for v in values], color=colours[beta], linewidth=1.3, label=label)
            ax.fill_between(steps, [v.min() for v in values], [v.max() for v in values],
                            color=colours[beta], alpha=0.2, linewidth=0)
            if levels and (cell, beta) in levels:
                ax.axhline(max(levels[cell, beta], 1e-4) if log_scale else levels[cell, beta],
                           color=colours[beta], linestyle="--", linewidth=1)
        ax.set_title(f"{cell}   [{EXPECTED[cell][2]}]", fontsize=10)
        ax.grid(alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
        if index % 3 == 0:
            ax.set_ylabel(tag)
        if index >= 9:
            ax.set_xlabel("env steps")
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, metadata={"Software": None})
    plt.close(figure)


def line_plot(groups: Mapping[tuple[str, str], list[Run]], tag: str, title: str, out: Path) -> None:
    """One line per (cell, β) in one panel: the mean over seeds against env steps, min–max shaded."""
    figure, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for (cell, beta), runs in groups.items():
        by_step: dict[int, list[float]] = {}
        for run in runs:
            for step, value in run.scalars.get(tag, []):
                by_step.setdefault(step, []).append(value)
        steps = np.array(sorted(by_step))
        values = [np.array(by_step[s]) for s in steps]
        (line,) = ax.plot(steps, [v.mean() for v in values], linewidth=1.3,
                          label=f"{cell} [{EXPECTED[cell][2]}], β = {beta} (n={len(runs)})")
        ax.fill_between(steps, [v.min() for v in values], [v.max() for v in values],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("env steps")
    ax.set_ylabel(tag)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, required=True, help="the token env's sweep directory")
    parser.add_argument("--cartpole", type=Path, required=True, help="CartPole's sweep directory")
    parser.add_argument("--tokens-long", type=Path, default=None,
                        help="the token env's longer-budget sweep directory (optional)")
    parser.add_argument("--fixed-points", type=Path, default=None, help="fixed_points.py's CSV")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    tokens = groups_of(find_runs([args.tokens]), by_beta=True)
    limits = fixed_point_gaps(args.fixed_points)
    table(tokens, TOKEN_COLUMNS, token_extras(tokens, limits), TOKEN_EXTRA_HEADERS, args.out, "tokens")
    grid_plot(tokens, "exact/gap", "J* − J = β·KL(π‖π*) on the token env (dashed: the tabular end "
              "point of the cell's expected gradient; 0 drawn at 1e-4)", args.out / "tokens_gap.png",
              log_scale=True, levels=limits)
    grid_plot(tokens, "exact/kl_reference", "sequence-level KL(π‖π_ref), nats (dashed: KL(π*‖π_ref))",
              args.out / "tokens_kl_reference.png", levels=optimum_kl_reference(tokens))

    if args.tokens_long is not None:
        long = groups_of(find_runs([args.tokens_long]), by_beta=True)
        table(long, TOKEN_COLUMNS, token_extras(long, limits), TOKEN_EXTRA_HEADERS, args.out, "tokens_long")
        line_plot(long, "exact/gap", "J* − J on the token env, longer budget",
                  args.out / "tokens_long_gap.png")

    cartpole = groups_of(find_runs([args.cartpole]), by_beta=True)
    table(cartpole, CARTPOLE_COLUMNS, {}, [], args.out, "cartpole")
    grid_plot(cartpole, "episode/return_recent", "CartPole-v1 fine-tuning: training return "
              "(mean of the last 20 episodes)", args.out / "cartpole_return.png")
    grid_plot(cartpole, "ppo/kl_reference", "CartPole-v1: KL(π_θ‖π_ref) on the batch states, nats",
              args.out / "cartpole_kl_reference.png", log_scale=True)
    print(f"wrote {args.out}/tokens.md, cartpole.md and their CSVs and plots")


if __name__ == "__main__":
    main()
