"""A run's record, ``summary.json``, is standard JSON, non-finite metrics included."""

import json
import math

from klexp.lightning.run_summary import write_record
from klexp.record import SUMMARY_FILE, read_summary
from klexp.report import build_report


def test_non_finite_metrics_are_written_as_standard_json_and_read_back_as_floats(tmp_path):
    metrics = {"test/kl_modes": math.inf, "val/gap": -math.inf, "test/knn_kl": math.nan,
               "test/acc": 0.5}
    write_record(tmp_path / SUMMARY_FILE, {"status": "completed", "metrics": metrics,
                                           "history": [{"loss": math.nan}]})
    text = (tmp_path / SUMMARY_FILE).read_text()
    # a strict reader (JSON has no NaN or Infinity literal) accepts the record
    strict = json.loads(text, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))
    assert strict["metrics"] == {"test/kl_modes": "inf", "val/gap": "-inf", "test/knn_kl": "nan",
                                 "test/acc": 0.5}
    assert strict["history"] == [{"loss": "nan"}]
    read = read_summary(tmp_path)["metrics"]
    assert read["test/kl_modes"] == math.inf and read["val/gap"] == -math.inf
    assert math.isnan(read["test/knn_kl"]) and read["test/acc"] == 0.5


def test_the_report_reads_a_non_finite_final_metric_as_a_number(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    write_record(run / SUMMARY_FILE, {"status": "completed", "seed": 0, "overrides": [],
                                      "metrics": {"test/kl_modes": math.inf}})
    report = build_report([tmp_path], ["test/kl_modes"])
    assert not report.left_out
    assert [row for row in report.markdown().splitlines() if "inf" in row]
