from helpers import FAST, run_experiment


def test_default_experiment_runs_on_synthetic_data(tmp_path):
    summary = run_experiment([*FAST, "data=synthetic"], tmp_path)
    assert summary["status"] == "completed"
    assert "test/acc" in summary["metrics"]
    assert (tmp_path / "summary.json").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
