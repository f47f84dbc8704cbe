"""The pieces of the dashboards, without a run: the Custom Scalars layout built from the tags a run
wrote, and the HParams a ``klexp`` run shows (its resolved config)."""

from __future__ import annotations

import math

from helpers import compose_config

from klexp.app.hparams import hparams_of
from klexp.lightning.dashboards import Series, custom_scalars_layout, nonfinite_note, term_charts


def written(*tags: str, nonfinite: dict[str, list[tuple[int, float]]] | None = None) -> dict[str, Series]:
    series = {tag: Series(steps=[1, 2, 3]) for tag in tags}
    for tag, points in (nonfinite or {}).items():
        series[tag].nonfinite = points
    return series


def test_a_chart_of_no_written_tag_is_left_out_and_one_of_several_is_split():
    charts = {"GAN": {"losses": [r"^loss/(critic|generator)$"],
                      "gradient penalty": [r"^gan/gradient_penalty$"]},
              "Empty": {"nothing": [r"^never$"]}}
    layout = custom_scalars_layout(charts, written("loss/generator", "loss/critic", "val/modes"))
    assert layout == {"GAN": {"losses — loss/critic": ["Multiline", ["^loss/critic$"]],
                              "losses — loss/generator": ["Multiline", ["^loss/generator$"]]}}


def test_training_comes_before_validation_before_test_and_tags_are_escaped():
    layout = custom_scalars_layout({"S": {"acc": [r"^(train|val|test)/acc$"], "x": [r"^a\.b\+c$"]}},
                                   written("test/acc", "val/acc", "train/acc", "a.b+c"))
    assert list(layout["S"]) == ["acc — train/acc", "acc — val/acc", "acc — test/acc", "x — a.b+c"]
    assert layout["S"]["x — a.b+c"] == ["Multiline", [r"^a\.b\+c$"]]


def test_a_tag_with_non_finite_points_says_so_and_gets_its_companions_chart():
    series = written("val/kl_modes", "val/kl_modes/nonfinite",
                     nonfinite={"val/kl_modes": [(1, math.inf), (3, math.nan)]})
    layout = custom_scalars_layout({"GAN": {"KL over modes": [r"^val/kl_modes"]}}, series)
    assert list(layout["GAN"]) == [
        "KL over modes — val/kl_modes (+inf/NaN points not drawn: see val/kl_modes/nonfinite)",
        "KL over modes — val/kl_modes/nonfinite"]
    note = nonfinite_note(series)
    assert "| `val/kl_modes` | +inf/NaN | 2 of 3 | 1, 3 |" in note


def test_each_term_charts_its_value_weight_and_loss():
    charts = term_charts(["ce"])["KL terms"]
    assert charts["ce: weight"] == ["^kl/ce/weight$", "^val/kl/ce/weight$"]
    assert term_charts([]) == {}


def test_the_hparams_of_a_run_are_its_resolved_config():
    overrides = ["experiment=gan", "divergence=wasserstein", "callbacks.progress_bar=null", "seed=3"]
    hparams = hparams_of(compose_config(overrides), overrides)
    assert hparams["experiment"] == "gan" and hparams["seed"] == 3
    assert hparams["divergence"] == "wasserstein"  # a config-group choice, in the user's words
    assert hparams["task.divergence.penalty_weight"] == 10.0
    assert hparams["task.generator_optimizer"] == "Adam"  # a _target_ as its class name
    assert hparams["task.generator_optimizer.lr"] == 1e-3
    assert hparams["task.critic.hidden"] == "[128, 128, 128]"
    assert hparams["data.num_modes"] == 8 and hparams["trainer.max_epochs"] == 3
    assert not [key for key in hparams if "_target_" in key or "_partial_" in key]
    assert "callbacks.progress_bar" not in hparams and "trainer.log_every_n_steps" not in hparams
    # the trainer node lists Lightning's defaults; a run shows only the settings it changes
    assert "trainer.max_steps" not in hparams and "trainer.accumulate_grad_batches" not in hparams
    assert all(isinstance(value, (int, float, str)) for value in hparams.values())
