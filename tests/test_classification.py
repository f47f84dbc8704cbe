"""The classification experiment: KL terms from config, distillation through a teacher stage."""

import pytest
import torch
from helpers import FAST, run_experiment
from torch.distributions import Categorical

from klexp import core as divergences
from klexp.tasks.classification import ClassificationTask


def built_task(**kwargs) -> ClassificationTask:
    task = ClassificationTask(**kwargs)
    task.build(input_size=16, num_classes=4)
    return task


def test_target_is_one_hot_or_label_smoothed():
    labels = torch.tensor([0, 3])
    hard = built_task().target_logits(labels).exp()
    assert torch.equal(hard, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    smooth = built_task(label_smoothing=0.2).target_logits(labels).exp()
    assert smooth[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])
    assert smooth.sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_ce_term_is_cross_entropy_minus_target_entropy():
    task = built_task(label_smoothing=0.1)
    images, labels = torch.rand(8, 4, 4), torch.randint(0, 4, (8,))
    logits = task(images)
    target_logits = task.target_logits(labels)
    kl = divergences.kl(Categorical(logits=target_logits), Categorical(logits=logits))
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1,
                                                      reduction="none")
    entropy = divergences.categorical_entropy(target_logits)
    torch.testing.assert_close(kl, cross_entropy - entropy)


def test_confidence_penalty_is_log_k_minus_model_entropy():
    logits = torch.randn(5, 4)
    penalty = divergences.kl(Categorical(logits=logits), Categorical(logits=torch.zeros(4)))
    expected = torch.log(torch.tensor(4.0)) - Categorical(logits=logits).entropy()
    torch.testing.assert_close(penalty, expected)


@pytest.mark.parametrize("experiment", ["classification", "label_smoothing", "confidence_penalty"])
def test_classification_variants_run_end_to_end(experiment, tmp_path):
    summary = run_experiment([*FAST, f"experiment={experiment}", "data=synthetic"], tmp_path)
    assert summary["status"] == "completed"
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0


def test_distill_trains_a_teacher_stage_then_a_student_that_reads_it(tmp_path):
    summary = run_experiment([*FAST, "experiment=distill", "data=synthetic"], tmp_path)
    teacher = summary["stages"]["teacher"]
    assert (tmp_path / "teacher" / "checkpoints" / "last.ckpt").is_file()
    assert "test/acc" in teacher["metrics"]
    assert summary["metrics"]["test/kl/distill/weight"] == pytest.approx(0.5 * 4.0 * 4.0)
    assert summary["metrics"]["test/kl/ce/weight"] == pytest.approx(0.5)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    teacher_state = torch.load(teacher["checkpoint"], weights_only=True)["state_dict"]
    torch.testing.assert_close(state["teacher.0.weight"], teacher_state["net.0.weight"])


@pytest.mark.slow
def test_default_experiment_beats_sklearns_mlp_on_digits(tmp_path):
    """The default run (digits, ce term) reaches ≥ 98.5 % test accuracy. (How long it takes is
    measured on a quiet machine and reported in docs/classification.md, not asserted here: the
    same run takes twice as long when others share the machine.)"""
    summary = run_experiment(["callbacks.progress_bar=null"], tmp_path)
    assert summary["metrics"]["test/acc"] >= 0.985


def test_metric_states_are_checkpointed_and_a_checkpoint_without_them_still_loads():
    """Accuracy and calibration accumulate over an epoch: their states are in the state_dict, so
    a run resumed mid-epoch ends it with every batch's metrics (tests/lifecycle: two kills in one
    epoch); a checkpoint written before that starts them empty instead of failing to load."""
    task = built_task()
    metrics = task.metrics["train_metrics"]
    metrics.update(torch.randn(6, 4), torch.randint(0, 4, (6,)))
    state = task.state_dict()
    assert any(key.startswith("metrics.train_metrics.acc.") for key in state)
    resumed = built_task()
    resumed.load_state_dict(state)
    assert resumed.metrics["train_metrics"].compute() == metrics.compute()
    old = {k: v for k, v in state.items() if not k.startswith("metrics.")}
    checkpoint = {"state_dict": old}
    fresh = built_task()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
