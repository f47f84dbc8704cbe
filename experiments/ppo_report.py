"""Summarise PPO solve runs: a markdown table (steps to solve per seed) and a plot of the curves.

Each run directory is one ``klexp experiment=<name> seed=<n>`` run; its ``summary.json`` holds
``episode/solved_at_step`` (the env step at which the mean return of the last 20 episodes first
reached the env's reward threshold, 475 for CartPole-v1), the final ``episode/return_recent`` and
the greedy evaluation ``test/return_mean``; ``tb/`` holds the curves.

Run: ``python experiments/ppo_report.py <label>=<run dir> ... [--plot out.png]``, e.g.
``python experiments/ppo_report.py ppo/1=outputs/ppo/2026-... ppo/2=... --plot experiments/ppo_cartpole.png``
(labels are ``<variant>/<seed>``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"metrics": summary["metrics"], "status": summary["status"],
            "wall_seconds": summary.get("wall_seconds")}


def curve(run_dir: Path, tag: str = "episode/return_recent") -> tuple[list[float], list[float]]:
    """(env steps, values) of a scalar, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    steps = {e.step: e.value for e in events.Scalars("time/env_steps")}
    points = [(steps[e.step], e.value) for e in events.Scalars(tag) if e.step in steps]
    return [p[0] for p in points], [p[1] for p in points]


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="<variant>/<seed>=<run dir>")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)

    runs: dict[str, dict[str, Path]] = defaultdict(dict)
    for item in args.runs:
        label, _, path = item.partition("=")
        variant, _, seed = label.rpartition("/")
        runs[variant][seed] = Path(path)

    print("| variant | seed | solved at (env steps) | final return (last 20) | greedy test return (10 ep.) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for variant, seeds in runs.items():
        solved = []
        for seed, run_dir in sorted(seeds.items()):
            metrics = read_run(run_dir)["metrics"]
            at = metrics.get("episode/solved_at_step")
            solved.append(at)
            test = f"{metrics['test/return_mean']:.1f} ± {metrics['test/return_std']:.1f}"
            print(f"| {variant} | {seed} | {fmt(at)} | {metrics['episode/return_recent']:.1f} | {test} |")
        if len(solved) > 1 and all(s is not None for s in solved):
            print(f"| {variant} | mean | {statistics.mean(solved):,.0f} | | |")

    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(8, 4.5))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for colour, (variant, seeds) in zip(colours, runs.items(), strict=False):
            for index, (_, run_dir) in enumerate(sorted(seeds.items())):
                x, y = curve(run_dir)
                axis.plot(x, y, color=colour, alpha=0.8, label=variant if index == 0 else None)
        axis.set_xlabel("env steps")
        axis.set_ylabel("mean return of the last 20 episodes")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
