"""What a user sees on TensorBoard after a run, read back from the event files."""

from pathlib import Path

import pytest
from helpers import QUIET, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2


def load_events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def confidence_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("confidence")
    summary = run_experiment(
        [*QUIET, "experiment=confidence_penalty", "data=synthetic", "trainer.max_epochs=2",
         "trainer.log_every_n_steps=1", "kl.confidence.weight=0.2"],
        run_dir,
    )
    return run_dir, summary, load_events(run_dir)


def test_every_kl_term_logs_value_weight_and_loss(confidence_run):
    _, _, events = confidence_run
    tags = set(events.Tags()["scalars"])
    for term in ("ce", "confidence"):
        for part in ("value", "weight", "loss"):
            assert f"kl/{term}/{part}" in tags
            assert f"val/kl/{term}/{part}" in tags
            assert f"test/kl/{term}/{part}" in tags
    weights = [e.value for e in events.Scalars("kl/confidence/weight")]
    assert weights and all(w == pytest.approx(0.2) for w in weights)


def test_loss_parts_accuracy_and_calibration_are_logged(confidence_run):
    _, _, events = confidence_run
    tags = set(events.Tags()["scalars"])
    expected = {"loss/task", "loss/total", "loss/ce", "loss/target_entropy", "train/acc",
                "val/acc", "val/ece", "val/nll", "val/loss/total", "test/acc", "test/ece",
                "test/nll"}
    assert expected <= tags


def test_cross_entropy_is_kl_plus_target_entropy_on_the_dashboard(confidence_run):
    _, _, events = confidence_run
    ce = events.Scalars("loss/ce")
    kl = {e.step: e.value for e in events.Scalars("kl/ce/value")}
    entropy = {e.step: e.value for e in events.Scalars("loss/target_entropy")}
    assert ce
    for event in ce:
        assert event.value == pytest.approx(kl[event.step] + entropy[event.step], rel=1e-5, abs=1e-6)


def test_total_loss_is_the_sum_of_the_weighted_terms(confidence_run):
    _, _, events = confidence_run
    total = {e.step: e.value for e in events.Scalars("loss/total")}
    ce = {e.step: e.value for e in events.Scalars("kl/ce/loss")}
    penalty = {e.step: e.value for e in events.Scalars("kl/confidence/loss")}
    for step, value in total.items():
        assert value == pytest.approx(ce[step] + penalty[step], rel=1e-5)


def test_hparams_tab_lists_the_run_with_its_final_metrics(confidence_run):
    run_dir, summary, events = confidence_run
    session = EventAccumulator(str(run_dir / "tb" / "hparams"), size_guidance={"scalars": 0})
    session.Reload()
    content = session.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in content  # TensorBoard merges every run's sessions
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["kl.confidence.weight"].number_value == pytest.approx(0.2)
    assert hparams["experiment"].string_value == "confidence_penalty"
    assert {"final/test/acc", "final/val/acc", "final/test/ece"} <= set(session.Tags()["scalars"])
    assert "hp_metric" not in set(events.Tags()["scalars"])
    final_acc = events.Scalars("test/acc")[-1].value
    assert final_acc == pytest.approx(summary["metrics"]["test/acc"])
    assert session.Scalars("final/test/acc")[-1].value == pytest.approx(final_acc)


def test_custom_scalars_layout_has_each_terms_value_weight_and_loss(confidence_run):
    _, _, events = confidence_run
    event = events.Tensors("custom_scalars__config__")[-1]  # TensorBoard shows the last one
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category
              for chart in category.chart}
    for term in ("ce", "confidence"):
        for part in ("value", "weight", "loss"):
            assert charts[f"{term}: {part} — kl/{term}/{part}"] == [f"^kl/{term}/{part}$"]
            assert charts[f"{term}: {part} — val/kl/{term}/{part}"] == [f"^val/kl/{term}/{part}$"]
