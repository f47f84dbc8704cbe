"""The dashboards of a short run of every experiment (and of a user's own module), read back from
the event files as TensorBoard reads them: no Custom Scalars chart that cannot fill, one line per
chart, one step axis per RL run, an HParams session with the resolved config and the final
metrics, and every non-finite value said."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from helpers import FAST, QUIET, run_experiment
from tensorboard import data_compat
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

import klexp
import klexp.record
from klexp.lightning.dashboards import (
    FINAL_PREFIX,
    HPARAMS_RUN,
    NONFINITE_NOTE,
    NONFINITE_SUFFIX,
    event_files,
)

pytestmark = pytest.mark.slow

USER_PROJECT = Path(__file__).resolve().parent / "user_project"
PPO = [*QUIET, "+trainer.enable_progress_bar=false", "task.total_timesteps=768", "task.num_steps=64",
       "task.eval_episodes=2", "trainer.log_every_n_steps=1"]
RUNS = {
    "classification": ["experiment=classification", "data=synthetic", *FAST, "trainer.log_every_n_steps=1"],
    "vae": ["experiment=vae", *FAST, "trainer.log_every_n_steps=1", "schedule@kl.prior.schedule=linear",
            "kl.prior.schedule.steps=20", "trainer.check_val_every_n_epoch=1"],
    "bayes": ["experiment=bayes", "stages=null", *FAST, "trainer.log_every_n_steps=1"],
    "ppo": ["experiment=ppo", *PPO],
    "ppo_tokens": ["experiment=ppo_tokens", *PPO],
    "gan": ["experiment=gan", *FAST, "data.num_train=1000", "trainer.log_every_n_steps=1"],
    "gan_wasserstein": ["experiment=gan", "divergence=wasserstein", *FAST, "data.num_train=1000",
                        "trainer.log_every_n_steps=1"],
    "fit_gaussian": ["experiment=fit_gaussian", *QUIET, "trainer.max_epochs=1"],
    "distill_seq_teacher": ["experiment=distill_seq_teacher", *FAST, "trainer.check_val_every_n_epoch=1",
                            "trainer.log_every_n_steps=1"],
}
RL_RUNS = ("ppo", "ppo_tokens")
#: hparams each experiment's table must show (beside experiment and seed)
HPARAMS = {
    "classification": {"task.optimizer": "AdamW", "task.optimizer.lr": 1e-3, "task.net.hidden": "[512, 512]",
                       "kl.ce.weight": 1.0, "kl.ce.direction": "forward", "data.batch_size": 64,
                       "data": "synthetic"},
    "vae": {"kl.prior.weight": 1.0, "kl.prior.schedule": "LinearWarmup", "kl.prior.schedule.steps": 20,
            "task.latent_dim": 8, "task.optimizer.lr": 1e-3},
    "bayes": {"kl.weights.shaping": "PerExample", "task.prior": "gaussian", "task.net.hidden": "[200, 200]"},
    "ppo": {"task.optimizer.lr": 2.5e-4, "task.clip_coef": 0.2, "task.actor.hidden": "[64, 64]",
            "task.env.id": "CartPole-v1", "task.total_timesteps": 768},
    "ppo_tokens": {"kl.reference_kl.weight": 0.1, "kl.reference_kl.placement": "loss",
                   "kl.reference_kl.estimator": "analytic"},
    "gan": {"task.divergence.divergence": "js", "task.generator_optimizer.lr": 1e-3,
            "task.critic_optimizer.betas": "[0.5, 0.9]", "task.critic.hidden": "[128, 128, 128]"},
    "gan_wasserstein": {"divergence": "wasserstein", "task.divergence.penalty_weight": 10.0},
    "fit_gaussian": {"kl.fit.direction": "forward", "kl.fit.estimator": "k1"},
    "distill_seq_teacher": {"task.hidden": "[128, 128]", "kl.seq_nll.weight": 1.0, "data": "MarkovSequences"},
}


class UserVAE:
    """The user project's TinyVAE with its own charts: one of a tag it writes, one of a tag it
    never writes (which must not appear)."""

    def __new__(cls):
        from tinyvae.model import TinyVAE

        class Charted(TinyVAE):
            def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
                return {"Tiny VAE": {"KL": [r"^(val/)?kl/prior/value$"], "never": [r"^no/such/tag$"]}}

        return Charted()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """One logdir with a short run of every experiment and a user's module, as a user would open
    it with ``tensorboard --logdir``."""
    root = tmp_path_factory.mktemp("dashboards")
    for name, overrides in RUNS.items():
        run_experiment([*overrides, "seed=0"], root / name)
    sys.path.insert(0, str(USER_PROJECT))
    from tinyvae.data import Patterns

    pl.seed_everything(0, verbose=False)
    logger = pl.loggers.TensorBoardLogger(root / "user", name="tb", version="", default_hp_metric=False)
    trainer = pl.Trainer(callbacks=[klexp.KLTerm("prior", p="posterior", q="prior"), klexp.Dashboards()],
                         max_steps=6, logger=logger, log_every_n_steps=1, limit_val_batches=1,
                         val_check_interval=3, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(UserVAE(), Patterns())
    return root


def events(run: Path) -> list:
    """The events of one TensorBoard run directory (not its sub-runs), in file order."""
    return [event for path in event_files(run)
            for event in EventFileLoader(str(path)).Load()]


def scalar_points(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar point written, in file order (no purging, unlike EventAccumulator)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for event in events(run):
        for value in event.summary.value:
            value = data_compat.migrate_value(value)
            if value.metadata.plugin_data.plugin_name == "scalars":
                number = float(tensor_util.make_ndarray(value.tensor).item())
                points.setdefault(value.tag, []).append((event.step, number))
    return points


def layout(run: Path) -> dict[str, list[str]]:
    """The last Custom Scalars layout written (the one TensorBoard shows): chart title → regexes."""
    configs = [value for event in events(run) for value in event.summary.value
               if value.tag == "custom_scalars__config__"]
    proto = layout_pb2.Layout.FromString(tensor_util.make_ndarray(configs[-1].tensor).item())
    return {chart.title: list(chart.multiline.tag) for c in proto.category for chart in c.chart}


def session(run: Path) -> tuple[dict, dict[str, float]]:
    """The HParams session of a run: its hparams and its metrics (the session run's scalars,
    ``final/<tag>``), by tag."""
    start = [value for event in events(run / HPARAMS_RUN) for value in event.summary.value
             if value.tag == "_hparams_/session_start_info"]
    (info,) = start
    data = plugin_data_pb2.HParamsPluginData.FromString(info.metadata.plugin_data.content)
    hparams = {k: v.number_value if v.HasField("number_value") else v.string_value
               for k, v in data.session_start_info.hparams.items()}
    points = scalar_points(run / HPARAMS_RUN)
    assert all(tag.startswith(FINAL_PREFIX) for tag in points)
    return hparams, {tag.removeprefix(FINAL_PREFIX): series[-1][1] for tag, series in points.items()}


def runs(logdir: Path) -> list[Path]:
    return [logdir / name / "tb" for name in [*RUNS, "user"]]


def test_every_custom_scalars_chart_shows_exactly_one_written_tag(logdir):
    for run in runs(logdir):
        written = set(scalar_points(run))
        charts = layout(run)
        assert charts, run
        for title, patterns in charts.items():
            matched = {tag for tag in written if any(re.search(p, tag) for p in patterns)}
            assert len(matched) == 1, (run, title, matched)


def test_a_users_module_gets_its_charts_through_the_same_path(logdir):
    charts = layout(logdir / "user" / "tb")
    assert "KL — kl/prior/value" in charts and "KL — val/kl/prior/value" in charts
    assert not [title for title in charts if title.startswith("never")]
    assert "prior: value — kl/prior/value" in charts  # the KL term's own section


def test_charts_that_cannot_fill_are_left_out_and_scales_are_apart(logdir):
    gan, wasserstein = layout(logdir / "gan" / "tb"), layout(logdir / "gan_wasserstein" / "tb")
    assert not [t for t in gan if "gradient penalty" in t]
    assert [t for t in wasserstein if "gradient penalty" in t]
    ppo, tokens = layout(logdir / "ppo" / "tb"), layout(logdir / "ppo_tokens" / "tb")
    assert not [t for t in ppo if t.startswith("exact")]
    assert [t for t in tokens if t.startswith("exact")]
    assert ppo["value loss — loss/value"] == ["^loss/value$"]


def test_an_rl_run_has_one_step_axis_test_metrics_included(logdir):
    for name in RL_RUNS:
        points = scalar_points(logdir / name / "tb")
        env_steps = {int(value) for _, value in points["time/env_steps"]}
        assert {step for _, step in [(0, s) for s, _ in points["time/env_steps"]]} == env_steps
        for tag, series in points.items():
            assert {step for step, _ in series} <= env_steps, tag
        assert points["test/return_mean"][-1][0] == max(env_steps)
        assert "epoch" not in points


def test_every_scalar_is_written_in_step_order(logdir):
    """TensorBoard draws a scalar's points in the order of their steps; a tag written on two
    step axes (Lightning's ``epoch`` beside env steps) jumps back and cannot be read."""
    for run in runs(logdir):
        for tag, series in scalar_points(run).items():
            steps = [step for step, _ in series]
            assert steps == sorted(steps), (run, tag, steps)


def test_hparams_hold_the_resolved_config_and_the_final_metrics(logdir):
    for name, expected in HPARAMS.items():
        hparams, metrics = session(logdir / name / "tb")
        assert hparams["experiment"] == name.split("_wasserstein")[0] and hparams["seed"] == 0
        for key, value in expected.items():
            assert hparams.get(key) == (pytest.approx(value) if isinstance(value, float) else value), (
                name, key, hparams.get(key))
        summary = klexp.record.read_summary(logdir / name)["metrics"]
        final = {k: v for k, v in summary.items() if k.startswith(("val/", "test/"))}
        assert final and set(final) <= set(metrics), name
        for tag, value in final.items():
            assert metrics[tag] == pytest.approx(value, rel=1e-6), (name, tag)
        assert not [value for value in events(logdir / name / "tb" / HPARAMS_RUN)
                    for value in value.summary.value if value.tag == "_hparams_/experiment"]


def test_non_finite_values_are_said_not_hidden(logdir):
    run = logdir / "gan" / "tb"
    points = scalar_points(run)
    assert any(math.isinf(value) for _, value in points["val/kl_modes"])  # a short GAN misses modes
    for tag, series in points.items():
        bad = [step for step, value in series if not math.isfinite(value)]
        if bad and not tag.endswith(NONFINITE_SUFFIX):
            assert [step for step, _ in points[tag + NONFINITE_SUFFIX]] == bad, tag
    charts = layout(run)
    assert [t for t in charts if t.endswith("— val/kl_modes (+inf points not drawn: see "
                                            "val/kl_modes/nonfinite)")]
    assert [t for t in charts if t.endswith("— val/kl_modes/nonfinite")]
    notes = [value for event in events(run) for value in event.summary.value
             if value.tag.startswith(NONFINITE_NOTE)]
    text = tensor_util.make_ndarray(notes[-1].tensor).item().decode()
    assert "`val/kl_modes` | +inf" in text and "`test/kl_modes` | +inf" in text
    _, metrics = session(run)
    assert math.isinf(metrics["test/kl_modes"])  # the HParams table shows it too


def test_names_say_whose_and_no_chart_repeats_another(logdir):
    gan = scalar_points(logdir / "gan" / "tb")
    assert {"lr-Adam/generator", "lr-Adam-1/critic"} <= set(gan)
    assert "loss/total" not in gan  # no KL term: it would repeat loss/task
    ppo = scalar_points(logdir / "ppo" / "tb")
    assert "loss/total" not in ppo and "loss/task" in ppo
    assert "episode/length" not in ppo  # CartPole pays 1 a step: the length is the return
    assert "episode/length" in scalar_points(logdir / "ppo_tokens" / "tb")
    assert "loss/total" in scalar_points(logdir / "classification" / "tb")


def test_event_files_are_read_in_the_order_they_were_made_not_by_name(tmp_path):
    """A run's writers 9 and 10, made in one second, sort 10 first by name: its points then read
    out of step order (seen once when a worker had made nine writers before a run)."""
    names = ["events.out.tfevents.1796691126.vm.host.2187.10",
             "events.out.tfevents.1796691126.vm.host.2187.9",
             "events.out.tfevents.1796691125.vm.host.2187.11"]
    for name in names:
        (tmp_path / name).touch()
    assert [path.name for path in event_files(tmp_path)] == [names[2], names[1], names[0]]
