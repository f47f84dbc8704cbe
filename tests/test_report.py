"""``klexp report``: groups runs by their overrides except the seed, mean ± std over seeds, the same
table as Markdown and CSV, plots of tags vs step, deterministic output. Runs here are written by
hand (summary.json and TensorBoard events), so the expected numbers are known exactly."""

import csv
import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from klexp.report import Metric, Stat, build_report, main

ACC = {("0.5", 0): 0.80, ("0.5", 1): 0.84, ("0.5", 2): 0.90, ("2", 0): 0.70, ("2", 1): 0.74}


def write_run(run_dir: Path, overrides: list[str], seed: int, metrics: dict[str, float],
              series: dict[str, list[float]] | None = None, status: str = "completed",
              experiment: str = "classification") -> None:
    """A run directory as the runner leaves it: summary.json and TensorBoard events in tb/."""
    run_dir.mkdir(parents=True)
    summary = {"status": status, "experiment": experiment, "seed": seed,
               "overrides": [*overrides, f"seed={seed}"], "objective_name": "val/acc",
               "objective": metrics.get("val/acc"), "metrics": metrics}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    writer = SummaryWriter(str(run_dir / "tb"))
    for tag, values in (series or {}).items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, global_step=step * 10)
    writer.close()


@pytest.fixture
def sweep(tmp_path):
    """kl.ce.weight ∈ {2, 0.5} (listed in that order on the command line) × seeds; one failed run."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - data=synthetic\n    - kl.ce.weight=2,0.5\n"
        "    - seed=0,1,2\n")
    for (weight, seed), acc in ACC.items():
        write_run(root / f"data=synthetic,kl.ce.weight={weight}" / f"seed={seed}",
                  ["data=synthetic", f"kl.ce.weight={weight}"], seed,
                  {"val/acc": acc + 0.01, "test/acc": acc, "test/nll": 1 - acc, "loss/total": 0.3,
                   "test/kl/ce/weight": float(weight)},
                  {"train/acc": [0.1 * seed, 0.5, acc], "val/acc": [0.3, acc + 0.01]})
    write_run(root / "data=synthetic,kl.ce.weight=2" / "seed=2", ["data=synthetic", "kl.ce.weight=2"],
              2, {}, status="failed")
    return root


def rows(report):
    return {row[0]: row for row in report.rows()}


def test_runs_are_grouped_by_their_overrides_except_the_seed(sweep):
    report = build_report([sweep], ["test/acc"])
    assert report.keys == ["kl.ce.weight"]
    assert report.common == {"data": "synthetic", "experiment": "classification"}
    assert [g.settings["kl.ce.weight"] for g in report.groups] == ["2", "0.5"]  # the sweep's order
    assert [g.seeds for g in report.groups] == [[0, 1], [0, 1, 2]]
    assert [(run.relative, run.reason) for run in report.left_out] == [
        ("data=synthetic,kl.ce.weight=2/seed=2", "failed")]


def test_mean_and_sample_std_over_seeds(sweep):
    report = build_report([sweep], ["test/acc", "test/nll"])
    (two, half) = report.stats
    values = [ACC[("0.5", s)] for s in (0, 1, 2)]
    assert half[0].mean == pytest.approx(np.mean(values), abs=1e-12)
    assert half[0].std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert (half[0].n, half[0].of) == (3, 3)
    assert two[1].mean == pytest.approx(1 - 0.72)
    assert rows(report)["0.5"] == ["0.5", "3", "0.8467 ± 0.0503", "0.1533 ± 0.0503"]


def test_reductions_of_logged_series(sweep):
    report = build_report([sweep], ["max:train/acc", "min:train/acc", "last:train/acc",
                                    "mean:train/acc", "first_step:train/acc>=0.85", "val/acc"])
    half = report.stats[1]
    assert half[0].mean == pytest.approx(np.mean([0.8, 0.84, 0.9]))
    assert half[1].mean == pytest.approx(np.mean([0.0, 0.1, 0.2]))
    assert half[2].mean == pytest.approx(half[0].mean)
    assert half[3].mean == pytest.approx(np.mean([(0.1 * s + 0.5 + a) / 3
                                                  for s, a in ((0, 0.8), (1, 0.84), (2, 0.9))]))
    # only seed 2 (acc 0.9) reaches 0.85, at its third logged step (step 20)
    assert (half[4].mean, half[4].n, half[4].of) == (20.0, 1, 3)
    assert rows(report)["0.5"][6] == "20 (1/3)"
    assert rows(report)["2"][6] == "n/a"


def test_a_metric_missing_from_the_summary_falls_back_to_its_last_logged_value(sweep):
    report = build_report([sweep], ["train/acc"])
    assert report.stats[1][0].mean == pytest.approx(np.mean([0.8, 0.84, 0.9]))


def test_default_metrics_are_the_objective_then_the_test_metrics(sweep):
    report = build_report([sweep])
    assert [m.spec for m in report.metrics] == ["val/acc", "test/acc", "test/nll"]


def test_metric_specs_parse():
    assert Metric.parse("test/acc") == Metric("test/acc", "test/acc")
    assert Metric.parse("max:episode/return").reduction == "max"
    first = Metric.parse("first_step:episode/return>=475")
    assert (first.tag, first.threshold, first.at_least) == ("episode/return", 475.0, True)
    assert not Metric.parse("first_step:val/loss<=1e-2").at_least


def test_a_single_seed_has_no_std():
    assert Stat.of_values([0.5], 1).text() == "0.5000"
    assert Stat.of_values([], 2).text() == "n/a"
    assert Stat.of_values([1234.0, 1236.0], 2).text() == "1235 ± 1"
    assert Stat.of_values([2e-5, 4e-5], 2).text() == "3.000e-05 ± 1.4e-05"


def test_stages_inside_a_run_are_part_of_it(tmp_path):
    write_run(tmp_path / "run", ["experiment=distill"], 0, {"test/acc": 0.9})
    write_run(tmp_path / "run" / "reference", ["experiment=classification"], 0, {"test/acc": 0.95})
    report = build_report([tmp_path], ["test/acc"])
    assert [len(g.runs) for g in report.groups] == [1]
    assert report.stats[0][0].mean == pytest.approx(0.9)


def test_command_writes_markdown_csv_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(sweep), "--metrics", "test/acc,test/nll", "--tags", "train/acc", "val/acc",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "0.8467 ± 0.0503" in printed and "kl.ce.weight" in printed
    markdown = (out / "report.md").read_text()
    assert "| kl.ce.weight | seeds | test/acc | test/nll |" in markdown
    assert "| 0.5 | 3 | 0.8467 ± 0.0503 | 0.1533 ± 0.0503 |" in markdown
    assert "![train_acc](train_acc.png)" in markdown
    table = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [r["kl.ce.weight"] for r in table] == ["2", "0.5"]
    assert table[1]["seeds"] == "0 1 2"
    assert float(table[1]["test/acc std"]) == pytest.approx(np.std([0.8, 0.84, 0.9], ddof=1))
    for name in ("train_acc.png", "val_acc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerunning_the_report_reproduces_its_files_byte_for_byte(sweep, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert main([str(sweep), "--tags", "train/acc", "--out", str(out)]) == 0
    for name in ("report.md", "report.csv", "train_acc.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert str(sweep) not in (first / "report.md").read_text()


def test_no_runs_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no completed runs" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_entry_point(sweep, tmp_path):
    result = subprocess.run([sys.executable, "-m", "klexp.report", str(sweep), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "report.csv").is_file()


def test_a_group_that_does_not_override_a_key_comes_before_those_that_do(tmp_path):
    write_run(tmp_path / "small" / "seed=0", ["task.hidden=[128]"], 0, {"test/acc": 0.9})
    write_run(tmp_path / "default" / "seed=0", [], 0, {"test/acc": 0.95})
    report = build_report([tmp_path], ["test/acc"])
    assert report.keys == ["task.hidden"]
    assert [row[0] for row in report.rows()] == ["", "[128]"]


# ---------------------------------------------------------------------------- a sweep as it really is
# Interrupted copies, jobs that never started, reruns, unwritable places: the report names what it
# leaves out, never crashes on it, and prints the table before it writes anything.


def test_a_truncated_summary_is_named_in_one_line_and_left_out(sweep, tmp_path, capsys):
    bad = sweep / "data=synthetic,kl.ce.weight=0.5" / "seed=1" / "summary.json"
    bad.write_text(bad.read_text()[:40])  # an interrupted copy of the sweep
    assert main([str(sweep), "--metrics", "test/acc", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if str(bad.parent) in line]
    assert len(lines) == 1 and "left out (unreadable summary.json" in lines[0]
    assert "0.8500 ± 0.0707" in printed  # seeds 0 and 2 of the 0.5 group: (0.80 + 0.90) / 2
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "- `data=synthetic,kl.ce.weight=0.5/seed=1`: unreadable summary.json" in markdown


def test_a_summary_that_is_not_an_object_is_left_out_too(sweep):
    (sweep / "data=synthetic,kl.ce.weight=2" / "seed=0" / "summary.json").write_text("null\n")
    report = build_report([sweep], ["test/acc"])
    assert [g.seeds for g in report.groups] == [[1], [0, 1, 2]]
    assert "unreadable summary.json: not a JSON object" in [run.reason for run in report.left_out]


def test_out_naming_an_existing_file_is_one_line(sweep, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine\n")
    assert main([str(sweep), "--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "is a file" in err
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_a_read_only_sweep_prints_its_table_then_one_line(sweep, monkeypatch, capsys):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([str(sweep), "--metrics", "test/acc"]) == 1
    captured = capsys.readouterr()
    assert "0.8467 ± 0.0503" in captured.out and "wrote" not in captured.out
    assert captured.err.count("\n") == 1
    assert f"cannot write {sweep / 'report'}: Read-only file system" in captured.err


def test_a_file_that_cannot_be_written_is_one_line(sweep, tmp_path, monkeypatch, capsys):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    assert main([str(sweep), "--metrics", "test/acc", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "0.8467 ± 0.0503" in captured.out
    assert captured.err == f"klexp: report: cannot write {tmp_path / 'out' / 'report.md'}: " \
                           f"No space left on device\n"


def hydra_job(job_dir: Path, overrides: list[str]) -> None:
    """A sweep job as Hydra leaves it before the run writes anything: ``.hydra/`` only."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_jobs_that_never_started_or_did_not_complete_are_listed_with_their_overrides(sweep, capsys,
                                                                                     tmp_path):
    hydra_job(sweep / "data=synthetic,kl.ce.weight=2" / "seed=3",
              ["data=synthetic", "kl.ce.weight=2", "seed=3"])
    write_run(sweep / "data=synthetic,kl.ce.weight=0.5" / "seed=3",
              ["data=synthetic", "kl.ce.weight=0.5"], 3, {}, status="interrupted")
    write_run(sweep / "data=synthetic,kl.ce.weight=0.5" / "seed=4",
              ["data=synthetic", "kl.ce.weight=0.5"], 4, {}, status="running")
    report = build_report([sweep], ["test/acc"])
    assert [(run.relative, run.reason, run.overrides) for run in report.left_out] == [
        ("data=synthetic,kl.ce.weight=0.5/seed=3", "interrupted",
         ("data=synthetic", "kl.ce.weight=0.5", "seed=3")),
        ("data=synthetic,kl.ce.weight=0.5/seed=4", KILLED,
         ("data=synthetic", "kl.ce.weight=0.5", "seed=4")),
        ("data=synthetic,kl.ce.weight=2/seed=2", "failed", ("data=synthetic", "kl.ce.weight=2", "seed=2")),
        ("data=synthetic,kl.ce.weight=2/seed=3", "never started",
         ("data=synthetic", "kl.ce.weight=2", "seed=3")),
    ]
    assert main([str(sweep), "--metrics", "test/acc", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert (f"left out (never started): {sweep / 'data=synthetic,kl.ce.weight=2' / 'seed=3'} — "
            f"data=synthetic kl.ce.weight=2 seed=3") in printed
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert ("Left out (4 run(s)):\n\n"
            "- `data=synthetic,kl.ce.weight=0.5/seed=3`: interrupted "
            "(`data=synthetic kl.ce.weight=0.5 seed=3`)\n") in markdown
    assert str(sweep) not in markdown


def test_a_sweep_where_nothing_completed_says_what_it_left_out(tmp_path, capsys):
    hydra_job(tmp_path / "0", ["seed=0"])
    write_run(tmp_path / "1", [], 1, {}, status="failed")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no completed runs" in err and "left out: 1 failed, 1 never started" in err


def test_a_rerun_of_one_config_and_seed_is_counted_once_the_latest(sweep, capsys, tmp_path):
    rerun = sweep / "rerun"
    write_run(rerun, ["data=synthetic", "kl.ce.weight=0.5"], 1, {"test/acc": 0.5})
    for path, end in ((rerun, "2026-01-02T00:00:00"),
                      (sweep / "data=synthetic,kl.ce.weight=0.5" / "seed=1", "2026-01-01T00:00:00")):
        summary = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps({**summary, "end_time": end}))
    report = build_report([sweep], ["test/acc"])
    half = report.groups[1]
    assert half.seeds == [0, 1, 2] and rerun.resolve() in [run.directory for run in half.runs]
    assert report.stats[1][0].mean == pytest.approx(np.mean([0.80, 0.5, 0.90]))
    (flagged,) = [run for run in report.left_out if run.reason == "rerun"]
    assert flagged.relative == "data=synthetic,kl.ce.weight=0.5/seed=1"
    assert flagged.counted.relative == "rerun"
    assert main([str(sweep), "--metrics", "test/acc", "--out", str(tmp_path / "out")]) == 0
    assert "left out (rerun): " in capsys.readouterr().out
    assert ("- `data=synthetic,kl.ce.weight=0.5/seed=1`: rerun of the same config and seed as "
            "`rerun` (the most recent, counted once)") in (tmp_path / "out" / "report.md").read_text()


def test_a_clean_sweep_has_no_left_out_section(sweep, tmp_path):
    (sweep / "data=synthetic,kl.ce.weight=2" / "seed=2" / "summary.json").unlink()
    (sweep / "data=synthetic,kl.ce.weight=2" / "seed=2").rename(tmp_path / "elsewhere")
    assert main([str(sweep), "--metrics", "test/acc", "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.endswith("(k/n): only k of the n seeds have a value.\n")
    assert "Left out" not in markdown


KILLED = "running, but no process owns it: killed; `klexp resume=RUN_DIR` continues it"


def test_a_running_record_is_told_live_while_its_owner_holds_the_lock_and_killed_after(sweep):
    run_dir = sweep / "data=synthetic,kl.ce.weight=0.5" / "seed=4"
    write_run(run_dir, ["data=synthetic", "kl.ce.weight=0.5"], 4, {}, status="running")
    # the owner: another process holding the directory's lock, as a live run does
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from klexp.app.lifecycle import "
         "claim; claim(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        reasons = {run.relative: run.reason for run in build_report([sweep], ["test/acc"]).left_out}
        assert reasons["data=synthetic,kl.ce.weight=0.5/seed=4"] == "running"
    finally:
        owner.communicate("")
    reasons = {run.relative: run.reason for run in build_report([sweep], ["test/acc"]).left_out}
    assert reasons["data=synthetic,kl.ce.weight=0.5/seed=4"] == KILLED
