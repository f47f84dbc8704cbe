"""Which distillation objective brings a student closest to its teacher, measured exactly?

Trains the teacher once (``experiment=distill_seq_teacher``), then, for each objective, each
capacity gap (student 2× and 8× smaller) and each seed, a student from that teacher for the same
number of optimiser steps, and reads the exact sequence-level KL(T ‖ S), KL(S ‖ T) and total
variation at the end (``val/seq_*``), with the wall time of each run as its compute. All runs in
one process (one Lightning import). Writes ``results/runs.csv``, ``results/table.md`` and
``results/exact_kl.png`` under ``--out``.

    python experiments/distill_seq/study.py            # 13 objectives × 2 gaps × 5 seeds
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from klexp.app.cli import CONFIG_DIR, CONFIG_NAME, register_resolvers
from klexp.app.runner import run

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
GAPS = {"2×": "[96,64]", "8×": "[48]"}
QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false", "test=false"]
METRICS = ("val/seq_kl_forward", "val/seq_kl_reverse", "val/seq_tv")


def run_one(overrides: list[str], output_dir: Path) -> dict:
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            del cfg["hydra"]
        return run(cfg, output_dir, overrides=overrides)


def summarise(rows: list[dict], out: Path) -> None:
    lines = ["| objective | gap | KL(T‖S) | KL(S‖T) | TV | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for gap in GAPS:
        for name in OBJECTIVES:
            part = [r for r in rows if r["objective"] == name and r["gap"] == gap]
            if not part:
                continue
            cells = []
            for key in (*METRICS, "seconds"):
                values = [float(r[key]) for r in part]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}" if key != "seconds"
                             else f"{statistics.mean(values):.1f}")
            lines.append(f"| {name} | {gap} | " + " | ".join(cells) + " |")
    seeds = len({r["seed"] for r in rows})
    (out / "table.md").write_text(f"Mean ± standard deviation over {seeds} seeds; the exact "
                                  "sequence-level divergences at the last validation.\n\n"
                                  + "\n".join(lines) + "\n")
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for axis, gap in zip(axes, GAPS, strict=True):
        for index, name in enumerate(OBJECTIVES):
            part = [r for r in rows if r["objective"] == name and r["gap"] == gap]
            if part:
                axis.scatter([float(r["val/seq_kl_forward"]) for r in part],
                             [float(r["val/seq_kl_reverse"]) for r in part], label=name, s=22,
                             marker="o" if index < 10 else "s", color=f"C{index % 10}",
                             edgecolors="black" if index >= 10 else "none")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"student {gap} smaller than the teacher")
        axis.set_xlabel("exact KL(T ‖ S), nats (log scale)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("exact KL(S ‖ T), nats (log scale)")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "exact_kl.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=512, help="a multiple of 128 (one epoch)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="default: the teacher experiment's")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES))
    parser.add_argument("--replot", action="store_true", help="rewrite table and plot from runs.csv")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        with open(args.out / "runs.csv", newline="") as file:
            summarise(list(csv.DictReader(file)), args.out)
        return
    steps = [f"trainer.max_steps={args.steps}"]
    with tempfile.TemporaryDirectory() as scratch:
        teacher_dir = Path(scratch) / "teacher"
        teacher_steps = [f"trainer.max_steps={args.teacher_steps}"] if args.teacher_steps else []
        run_one(["experiment=distill_seq_teacher", *QUIET, *teacher_steps], teacher_dir)
        checkpoint = teacher_dir / "checkpoints" / "last.ckpt"
        rows = []
        for gap, hidden in GAPS.items():
            for name in args.objectives:
                for seed in range(args.seeds):
                    overrides = ["experiment=distill_seq", "stages=null",
                                 f"task.teacher_checkpoint={checkpoint}", f"task.hidden={hidden}",
                                 f"seed={seed}", *QUIET, *steps, *OBJECTIVES[name]]
                    start = time.perf_counter()
                    summary = run_one(overrides, Path(scratch) / f"{gap}-{len(rows)}")
                    seconds = time.perf_counter() - start
                    rows.append({"objective": name, "gap": gap, "seed": seed, "seconds": seconds,
                                 **{key: summary["metrics"][key] for key in METRICS}})
                    print(f"{name} {gap} seed {seed}: "
                          + " ".join(f"{k}={summary['metrics'][k]:.4f}" for k in METRICS), flush=True)
    with open(args.out / "runs.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summarise(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
