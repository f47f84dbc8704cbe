"""The sequence-distillation study's command runs end to end at smoke size and writes its table,
runs and plot (the committed results come from the full-size command)."""

from __future__ import annotations

import csv
import runpy
import sys

import pytest
from helpers import REPO


@pytest.mark.slow
def test_the_study_writes_its_table_runs_and_plot(tmp_path, monkeypatch):
    # as `python experiments/distill_seq/study.py …` runs it, in this process
    script = REPO / "experiments/distill_seq/study.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(tmp_path), "--seeds", "1", "--steps", "128",
                                      "--teacher-steps", "128", "--objectives", "forward", "TAID"])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_info:
        assert exit_info.code in (None, 0)
    with open(tmp_path / "runs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["objective"], r["gap"]) for r in rows] == [("forward", "2×"), ("TAID", "2×"),
                                                           ("forward", "8×"), ("TAID", "8×")]
    assert all(float(r["val/seq_kl_forward"]) > 0 for r in rows)
    assert "| TAID | 8× |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "exact_kl.png").stat().st_size > 0
