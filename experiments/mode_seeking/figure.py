"""The study's figure: for each start of q, the target p, the moment-matching oracle, and the final
q of the forward and of the reverse fit (seed 0), one panel per start.

    python experiments/mode_seeking/figure.py <sweep dir> <out.png>

The target is rebuilt from each run's composed config (``.hydra/config.yaml``), the fits from the
final ``val/mean`` and ``val/scale`` of its ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from torch.distributions import Normal

from klexp.tasks.density_fit import DensityFitTask, moment_matching, plot_densities

DIRECTIONS = {"forward": "forward KL(p ‖ q) fit", "reverse": "reverse KL(q ‖ p) fit"}


def read_runs(sweep_dir: Path, seed: int) -> dict[tuple[float, float], dict[str, tuple[dict, Path]]]:
    """{(init_mean, init_scale): {direction: (metrics, run dir)}} of the completed runs of ``seed``."""
    starts: dict[tuple[float, float], dict[str, tuple[dict, Path]]] = {}
    for path in sorted(sweep_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if summary["status"] != "completed" or summary["seed"] != seed:
            continue
        config = OmegaConf.load(path.parent / ".hydra" / "config.yaml")
        start = (float(config.task.init_mean), float(config.task.init_scale))
        starts.setdefault(start, {})[config.kl.fit.direction] = (summary["metrics"], path.parent)
    return starts


def figure(starts: dict[tuple[float, float], dict[str, tuple[dict, Path]]]) -> Figure:
    keys = sorted(starts, key=lambda start: (-start[1], -start[0]))
    columns = 2
    rows = -(-len(keys) // columns)
    figure = Figure(figsize=(6.4 * columns, 3.8 * rows), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for axes, (init_mean, init_scale) in zip(panels, keys, strict=False):
        runs = starts[(init_mean, init_scale)]
        any_run_dir = next(iter(runs.values()))[1]
        task: DensityFitTask = instantiate(OmegaConf.load(any_run_dir / ".hydra" / "config.yaml").task)
        target, _ = task.as_float64()
        start = Normal(torch.tensor(init_mean, dtype=torch.float64),
                       torch.tensor(init_scale, dtype=torch.float64))
        fits = {}
        for direction, label in DIRECTIONS.items():
            if direction in runs:
                metrics = runs[direction][0]
                fits[f"{label}: N({metrics['val/mean']:.2f}, {metrics['val/scale']:.2f}²)"] = Normal(
                    torch.tensor(metrics["val/mean"], dtype=torch.float64),
                    torch.tensor(metrics["val/scale"], dtype=torch.float64))
        plot_densities(axes, target, fits, moment_matching(target), start,
                       title=f"q starts at N({init_mean:g}, {init_scale:g}²)")
    for axes in panels[len(keys):]:
        axes.set_visible(False)
    return figure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    starts = read_runs(args.sweep_dir, args.seed)
    if not starts:
        raise SystemExit(f"no completed runs of seed {args.seed} under {args.sweep_dir}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(starts).savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
