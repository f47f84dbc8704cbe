"""The GAN study's runs next to the published numbers on the same protocol.

Reads every run under the given sweep directory (``klexp.report``'s grouping: one group per
divergence and data set, over the seeds) and writes to ``--out``:

* ``anchors.md``: modes captured and % high-quality samples, mean ± sample std over the seeds
  (final generator, test evaluation), the runs that diverged, and minutes per run (wall time as
  ``summary.json`` records it), beside PacGAN's, GDPP's and VEEGAN's tables;
* ``modes_vs_quality.png``: the same as points, one panel per data set, the anchors as stars;
* ``final_samples.png``: each group's last ``val/samples`` figure of its first seed (generated
  points over the data on the critic's contours), a row per data set.

Usage: ``python experiments/gan_toys/anchors.py outputs/studies/gan_toys --out experiments/gan_toys/results``
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from klexp.report import Group, find_runs, group_runs, sweep_orders

# (method, source, modes, modes std or None, % high quality) on the same protocol: ring of 8
# Gaussians σ = 0.01 on the unit circle, grid of 25 with σ = 0.05, 2,500 samples, 3σ.
ANCHORS = {
    "ring": [
        ("PacGAN2", "PacGAN Table 1 (10 trials)", 7.9, 0.1, 95.6),
        ("WGAN-GP", "GDPP Table 1", 6.8, None, 59.6),
        ("GAN", "PacGAN / VEEGAN Table 1", 6.3, None, 98.2),
    ],
    "grid": [
        ("PacGAN4", "PacGAN Table 1 (10 trials)", 24.8, 0.2, 93.6),
        ("WGAN-GP", "GDPP Table 1", 24.2, None, 28.7),
        ("GAN", "PacGAN / VEEGAN Table 1", 17.3, None, 94.8),
    ],
}
MODES = {"ring": 8, "grid": 25}


def _stat(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{mean:.1f} ± {std:.1f}"


def _metric(group: Group, name: str) -> list[float]:
    metrics = [run.summary.get("metrics", {}) for run in group.runs]
    return [float(m[name]) for m in metrics if name in m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = find_runs([args.sweep])
    _, groups = group_runs(runs, sweep_orders([args.sweep]))
    args.out.mkdir(parents=True, exist_ok=True)

    lines = ["| data | method | modes | high quality (%) | diverged | minutes per run | source |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    points: dict[str, list[tuple[str, float, float]]] = {"ring": [], "grid": []}
    for data in ("ring", "grid"):
        for name, source, modes, std, quality in ANCHORS[data]:
            spread = f" ± {std}" if std is not None else ""
            lines.append(f"| {data} | {name} | {modes}{spread} | {quality} | | | {source} |")
        for group in groups:
            if group.settings.get("data") != data:
                continue
            divergence = group.settings.get("divergence", "js")
            modes, quality = _metric(group, "test/modes"), _metric(group, "test/high_quality")
            diverged = sum(math.isnan(v) for v in _metric(group, "test/knn_kl"))
            minutes = [run.summary["wall_seconds"] / 60 for run in group.runs
                       if run.summary.get("wall_seconds")]
            lines.append(f"| {data} | klexp {divergence} | {_stat(modes)} | {_stat(quality)} | "
                         f"{diverged}/{len(group.runs)} | {np.mean(minutes):.2f} | this study, "
                         f"{len(group.runs)} seeds |")
            points[data].append((divergence, float(np.mean(modes)), float(np.mean(quality))))
    (args.out / "anchors.md").write_text("\n".join(lines) + "\n")

    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5))
    for index, data in enumerate(("ring", "grid")):
        ax = figure.add_subplot(1, 2, index + 1)
        for divergence, modes, quality in points[data]:
            ax.scatter(modes, quality, s=30)
            ax.annotate(divergence, (modes, quality), textcoords="offset points", xytext=(4, 3), fontsize=8)
        for name, _, modes, _, quality in ANCHORS[data]:
            ax.scatter(modes, quality, marker="*", s=120, c="black")
            ax.annotate(name, (modes, quality), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlim(0, MODES[data] + 0.5)
        ax.set_ylim(0, 102)
        ax.set_xlabel(f"modes captured (of {MODES[data]})")
        ax.set_ylabel("high-quality samples (%)")
        ax.set_title(f"{data}: klexp (dots, mean of seeds) vs published (stars)")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "modes_vs_quality.png", dpi=100)
    save_final_samples(groups, args.out / "final_samples.png")
    print("\n".join(lines))


def last_image(run_dir: Path, tag: str) -> np.ndarray | None:
    """The last image logged under ``tag`` in a run's TensorBoard events, as an RGB array."""
    import io

    from matplotlib.image import imread
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={IMAGES: 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()[IMAGES]:
        return None
    return imread(io.BytesIO(accumulator.Images(tag)[-1].encoded_image_string), format="png")


def save_final_samples(groups: list[Group], path: Path) -> None:
    from matplotlib.figure import Figure

    rows = {data: [g for g in groups if g.settings.get("data") == data] for data in ("ring", "grid")}
    columns = max(len(r) for r in rows.values())
    figure = Figure(figsize=(2.6 * columns, 5.6))
    for row, (data, row_groups) in enumerate(rows.items()):
        for column, group in enumerate(row_groups):
            ax = figure.add_subplot(2, columns, row * columns + column + 1)
            ax.set_axis_off()
            image = last_image(group.runs[0].directory, "val/samples")
            if image is not None:
                ax.imshow(image)
            ax.set_title(f"{data}, {group.settings.get('divergence', 'js')}, seed {group.runs[0].seed}",
                         fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
