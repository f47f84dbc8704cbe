"""experiment=bayes end to end: uncertainty out of distribution, the side-by-side baseline, the
Monte-Carlo KL path and the full default run."""

import pytest
from helpers import FAST, QUIET, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from klexp.errors import KlexpError
from klexp.record import read_summary

SETS = ("in_dist", "ood_noise", "ood_class")


def event_tags(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tb"),
                                   size_guidance={"histograms": 0, "scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator.Tags()


@pytest.mark.slow
def test_predictive_entropy_is_higher_out_of_distribution_than_on_test_digits(tmp_path):
    """A small Bayesian MLP on digits (class 9 held out): more uncertain on noise and on the unseen
    class than on test digits, both in total (entropy) and in its epistemic part (mutual information)."""
    summary = run_experiment(["experiment=bayes", "stages=null", *QUIET, "trainer.max_epochs=10",
                              "task.net.hidden=[64]", "task.eval_samples=10"], tmp_path)
    metrics = summary["metrics"]

    assert metrics["test/acc"] > 0.9
    for name in ("ood_noise", "ood_class"):
        assert metrics[f"test/entropy/{name}"] > metrics["test/entropy/in_dist"] + 0.3, name
        assert metrics[f"test/mutual_info/{name}"] > metrics["test/mutual_info/in_dist"], name
        assert metrics[f"test/ood_auroc/entropy/{name}"] > 0.8, name
    assert 0 < metrics["test/ece"] < 0.2 and metrics["test/nll"] > 0
    tags = event_tags(tmp_path)
    histograms = set(tags["histograms"])
    assert {f"test/entropy_histogram/{name}" for name in SETS} <= histograms
    assert {f"val/entropy_histogram/{name}" for name in SETS} <= histograms
    assert "test/entropy_histograms" in tags["images"]


def test_the_baseline_stage_is_reported_side_by_side_on_the_same_split(tmp_path):
    summary = run_experiment(["experiment=bayes", *FAST, "data.split_seed=3"], tmp_path)

    stage = read_summary(summary["stages"]["baseline"]["run_dir"])
    assert stage["status"] == "completed"
    assert {"experiment=classification", "data.holdout_class=9", "data.split_seed=3"} <= set(
        stage["overrides"])
    metrics = summary["metrics"]
    keys = ("acc", "ece", "nll", *(f"entropy/{name}" for name in SETS), "ood_auroc/entropy/ood_noise")
    for key in keys:
        assert f"test/{key}" in metrics and f"test/baseline/{key}" in metrics, key
    assert "test/baseline/entropy_histogram/ood_noise" in event_tags(tmp_path)["histograms"]


def test_scale_mixture_prior_trains_with_the_k3_estimator(tmp_path):
    summary = run_experiment(["experiment=bayes", "stages=null", *FAST, "trainer.log_every_n_steps=1",
                              "task.prior=scale_mixture", "kl.weights.estimator=k3",
                              "task.train_samples=2"], tmp_path)
    assert summary["status"] == "completed"
    assert summary["metrics"]["kl/weights/std"] > 0
    assert summary["metrics"]["test/kl/weights/value"] > 0


def test_scale_mixture_prior_with_the_analytic_estimator_fails_before_training(tmp_path):
    with pytest.raises(KlexpError, match=r"kl\.weights\.estimator: .*no closed form"):
        run_experiment(["experiment=bayes", "stages=null", *FAST, "task.prior=scale_mixture"], tmp_path)


@pytest.mark.slow
def test_default_bayes_run_reaches_95_percent_on_digits(tmp_path):
    summary = run_experiment(["experiment=bayes", "stages=null", *QUIET], tmp_path)
    metrics = summary["metrics"]
    assert metrics["test/acc"] >= 0.95
    assert metrics["test/entropy/ood_noise"] > metrics["test/entropy/in_dist"]
    assert metrics["test/entropy/ood_class"] > metrics["test/entropy/in_dist"]
