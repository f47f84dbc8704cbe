"""The sequence-distillation study: its counted compute measure, and its command end to end at
smoke size, every part (equal steps, equal compute, the β sweep) writing its tables, runs, curves
and plots (the committed results come from the full-size command)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest
from helpers import REPO

STUDY = REPO / "experiments" / "distill_seq"


def load_compute():
    spec = importlib.util.spec_from_file_location("distill_seq_compute", STUDY / "compute.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_compute_measure_counts_each_net_per_position_and_sampling_as_a_forward_pass():
    compute = load_compute()
    # 54 inputs (6 positions × 8 tokens, one-hot, + 6 for the position) → hidden → 8 logits
    teacher = compute.position_macs(8, 6, [128, 128])
    student = compute.position_macs(8, 6, [96, 64])
    assert (teacher, student) == (54 * 128 + 128 * 128 + 128 * 8, 54 * 96 + 96 * 64 + 64 * 8)
    data = compute.StepCost(student, teacher)
    on_policy = compute.StepCost(student, teacher, student_fraction=1.0)
    gkd = compute.StepCost(student, teacher, source="teacher", student_fraction=0.5)
    assert data.per_position() == 3 * student + teacher
    assert on_policy.per_position() == 4 * student + teacher
    assert gkd.per_position() == 3.5 * student + 1.5 * teacher
    assert data.step(64 * 6) == 384 * data.per_position()
    assert compute.matched_steps(data, data, 512) == 512
    assert compute.matched_steps(on_policy, data, 512) == round(512 * (3 * student + teacher)
                                                               / (4 * student + teacher)) == 427


@pytest.mark.slow
def test_the_study_writes_every_part_at_equal_steps_equal_compute_and_beta(tmp_path):
    command = [sys.executable, str(STUDY / "study.py"), "--out", str(tmp_path), "--seeds", "1",
               "--steps", "128", "--teacher-steps", "128", "--objectives", "forward", "forward, λ=1",
               "--gaps", "2×", "--betas", "0.01", "--beta-seeds", "1", "--jobs", "2"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "runs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["part"], r["objective"], r["steps"]) for r in rows] == [
        ("steps", "forward", "128"), ("steps", "forward, λ=1", "128"),
        # sampling the student costs a forward pass a position: fewer steps for the same compute
        ("compute", "forward, λ=1", "107"),
        ("beta", "jsd β=0.01 (GKD)", "128"), ("beta", "jsd β=0.01 (continuous)", "128")]
    budget, matched = float(rows[0]["gmacs"]), float(rows[2]["gmacs"])
    assert abs(matched - budget) / budget < 0.01
    with open(tmp_path / "curves.csv", newline="") as file:
        curves = list(csv.DictReader(file))
    # the equal-compute run is read where it stops, mid-epoch
    assert [c["step"] for c in curves if c["part"] == "compute"] == ["106"]
    assert all(float(r["val/seq_kl_forward"]) > 0 for r in rows)
    compute_table = (tmp_path / "table_compute.md").read_text()
    assert "| forward, λ=1 | 2× | 107 |" in compute_table
    assert "| GKD | 0.01 | 2× | 1 |" in (tmp_path / "table_beta.md").read_text()
    for plot in ("exact_kl.png", "compute.png", "beta.png"):
        assert (tmp_path / plot).stat().st_size > 0
    tables = {name: (tmp_path / name).read_text() for name in ("table.md", "table_compute.md",
                                                                "table_beta.md")}
    replot = subprocess.run([*command, "--replot"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert replot.returncode == 0, replot.stderr[-2000:]
    assert {name: (tmp_path / name).read_text() for name in tables} == tables
