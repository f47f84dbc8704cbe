"""Specification of the GAN experiment family: the 2-D toy data (``klexp.data.toys2d``), the
mode metrics (``klexp.tasks.gan_metrics``), the task (``klexp.tasks.gan``) and its configs."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import FAST, QUIET, compose_config, run_experiment
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from klexp.app.cli import CONFIG_DIR
from klexp.app.config_checks import ConfigError, check_config
from klexp.app.runner import instantiate_node
from klexp.core.fdivergences import GENERATOR_GRADIENTS, VariationalFDivergence
from klexp.core.wasserstein import WassersteinGP
from klexp.data.toys2d import GridOfGaussians, RingOfGaussians, grid_means, ring_means
from klexp.errors import ConfigValueError
from klexp.nets.mlp import MLP
from klexp.tasks.gan import GANTask
from klexp.tasks.gan_metrics import mode_histogram, mode_metrics

DIVERGENCES = sorted(p.stem for p in (CONFIG_DIR / "divergence").glob("*.yaml"))
LN8 = math.log(8.0)


# --------------------------------------------------------------------------------------------
# Data: PacGAN's ring and grid
# --------------------------------------------------------------------------------------------


def test_ring_has_eight_distinct_unit_means_an_eighth_turn_apart():
    """The known bug: linspace(0, 2π, 8) puts the first and last means on one point."""
    means = ring_means()
    assert means.shape == (8, 2)
    torch.testing.assert_close(means.norm(dim=1), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(means[0], torch.tensor([1.0, 0.0], dtype=torch.float64))
    gaps = torch.cdist(means, means) + 10 * torch.eye(8, dtype=torch.float64)
    assert gaps.min().item() == pytest.approx(2 * math.sin(math.pi / 8))


def test_grid_means_are_the_25_points_of_minus_4_to_4_step_2():
    expected = {(float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    assert {tuple(m.tolist()) for m in grid_means()} == expected


@pytest.mark.parametrize(("data", "std"), [(RingOfGaussians, 0.01), (GridOfGaussians, 0.05)])
def test_points_cover_every_mode_equally_with_the_mode_std(data, std):
    module = data(num_train=20_000, num_eval=100)
    module.setup()
    points = module.points["train"]
    nearest = torch.cdist(points.double(), module.means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=len(module.means)).double()
    expected = len(points) / len(module.means)
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)
    offsets = points.double() - module.means[nearest]
    assert offsets.std().item() == pytest.approx(std, rel=0.03)
    assert module.mode_std == std and module.data_dim == 2


def test_points_come_from_data_seed_and_the_run_seed_only_shuffles_them():
    a, b = RingOfGaussians(num_train=500, seed=0), RingOfGaussians(num_train=500, seed=1)
    c = RingOfGaussians(num_train=500, data_seed=1)
    for module in (a, b, c):
        module.setup()
    assert torch.equal(a.points["train"], b.points["train"])
    assert not torch.equal(a.points["train"], c.points["train"])
    first_a = next(iter(a.train_dataloader()))[0]
    first_b = next(iter(b.train_dataloader()))[0]
    assert first_a.shape == (100, 2) and not torch.equal(first_a, first_b)


def test_evaluation_sets_are_one_batch_of_fresh_points_each():
    module = GridOfGaussians(num_train=1_000, num_eval=2_500)
    module.setup()
    val, test = list(module.val_dataloader()), list(module.test_dataloader())
    assert len(val) == len(test) == 1
    assert val[0][0].shape == test[0][0].shape == (2_500, 2)
    assert not torch.equal(val[0][0], test[0][0])


def test_toy_data_reject_bad_settings_naming_the_key():
    with pytest.raises(ConfigValueError, match="std"):
        RingOfGaussians(std=0.0)
    with pytest.raises(ConfigValueError, match="side"):
        GridOfGaussians(side=0)
    with pytest.raises(ConfigValueError, match="num_eval"):
        RingOfGaussians(num_eval=0)


# --------------------------------------------------------------------------------------------
# Mode metrics (PacGAN's definitions)
# --------------------------------------------------------------------------------------------


def _ring_samples(per_mode: list[int], offset: float = 0.0) -> torch.Tensor:
    """``per_mode[k]`` samples on ring mode k, pushed ``offset`` outwards."""
    means = ring_means().float()
    return torch.cat([means[k].repeat(n, 1) * (1 + offset) for k, n in enumerate(per_mode)])


def _data() -> torch.Tensor:
    module = RingOfGaussians(num_train=10, num_eval=500)
    module.setup()
    return module.points["val"]


def test_samples_on_every_mode_capture_all_modes_with_zero_kls():
    metrics = mode_metrics(_ring_samples([5] * 8), _data(), ring_means(), 0.01)
    assert metrics["modes"].item() == 8 and metrics["high_quality"].item() == 100.0
    assert metrics["kl_modes"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["reverse_kl_modes"].item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(metrics["knn_kl"].item())


def test_a_collapsed_generator_captures_one_mode_with_reverse_kl_ln_8_and_infinite_kl():
    metrics = mode_metrics(_ring_samples([40, 0, 0, 0, 0, 0, 0, 0]), _data(), ring_means(), 0.01)
    assert metrics["modes"].item() == 1 and metrics["high_quality"].item() == 100.0
    assert metrics["kl_modes"].item() == math.inf
    assert metrics["reverse_kl_modes"].item() == pytest.approx(LN8, rel=1e-6)


def test_hand_computed_histogram_and_quality():
    """Modes 0, 1, 2 hold 2, 1, 1 good samples (h = ½, ¼, ¼, 0…), 4 more samples lie 5σ out:
    HQ = 4/8 = 50 %, 3 modes, KL(h ‖ u) = ½ ln 4 + ¼ ln 2 + ¼ ln 2 = 1.5 ln 2."""
    good = _ring_samples([2, 1, 1, 0, 0, 0, 0, 0])
    bad = _ring_samples([0, 0, 0, 4, 0, 0, 0, 0], offset=0.05)
    metrics = mode_metrics(torch.cat([good, bad]), _data(), ring_means(), 0.01)
    assert metrics["modes"].item() == 3 and metrics["high_quality"].item() == 50.0
    assert metrics["reverse_kl_modes"].item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert metrics["kl_modes"].item() == math.inf


def test_a_sample_is_high_quality_strictly_within_three_sigma():
    means = torch.zeros(1, 2)
    samples = torch.tensor([[0.0299, 0.0], [0.0301, 0.0]])
    assert mode_histogram(samples, means, 0.01).tolist() == [1]


def test_no_high_quality_sample_makes_both_mode_kls_infinite():
    metrics = mode_metrics(torch.full((10, 2), 3.0), _data(), ring_means(), 0.01)
    assert metrics["modes"].item() == 0 and metrics["high_quality"].item() == 0.0
    assert metrics["kl_modes"].item() == metrics["reverse_kl_modes"].item() == math.inf


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def _event_tags(run_dir: Path) -> tuple[set[str], set[str]]:
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    scalars, images = set(), set()
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        images |= set(events.Tags()["images"])
    return scalars, images


@pytest.mark.slow
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_choice_composes_validates_and_runs(divergence, tmp_path):
    summary = run_experiment(["experiment=gan", f"divergence={divergence}", *FAST, "data.num_train=1000",
                              "trainer.log_every_n_steps=1"], tmp_path)
    metrics = summary["metrics"]
    for split in ("val", "test"):
        for name in ("modes", "high_quality", "kl_modes", "reverse_kl_modes", "knn_kl"):
            assert f"{split}/{name}" in metrics
    scalars, _ = _event_tags(tmp_path)
    cfg = compose_config(["experiment=gan", f"divergence={divergence}"])
    name = instantiate_node(cfg.task.divergence, "task.divergence").name
    assert {"loss/critic", f"gan/{name}_bound"} <= scalars


def test_the_docs_say_which_gradient_each_generator_follows_as_the_tested_table_does():
    """docs/gan.md's table is GENERATOR_GRADIENTS, each cell of which tests/test_fdivergences.py
    derives at the optimal critic."""
    page = (Path(__file__).parents[1] / "docs" / "gan.md").read_text()
    section = page.split("## Which gradient the generator follows", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row, minimax, non_saturating in ((c.strip() for c in cells) for cells in rows):
        documented[row.strip("`"), "minimax"] = minimax
        documented[row.strip("`"), "non_saturating"] = non_saturating
    assert documented == GENERATOR_GRADIENTS


def test_the_kl_config_says_its_generator_seeks_modes_and_minimax_covers_mass():
    objective = instantiate_node(OmegaConf.load(CONFIG_DIR / "divergence" / "kl.yaml"), "task.divergence")
    assert objective.generator_follows == "KL(Q ‖ P)"
    comment = (CONFIG_DIR / "divergence" / "kl.yaml").read_text()
    assert "KL(Q_model ‖ P_data): mode seeking" in comment


def test_there_is_one_divergence_file_per_training_choice():
    assert DIVERGENCES == ["gan", "gan_ns", "hellinger", "js", "kl", "pearson", "reverse_kl", "wasserstein"]


def test_the_divergence_is_an_object_from_config_not_a_name_the_task_branches_on(tmp_path):
    cfg = compose_config(["experiment=gan", "divergence=wasserstein", "data=grid"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    check_config(cfg)
    task = instantiate_node(cfg.task, "task")
    assert isinstance(task.divergence, WassersteinGP)
    assert task.divergence.critic_steps == 5 and task.divergence.penalty_weight == 10.0
    assert instantiate_node(cfg.data, "data").means.shape == (25, 2)
    gan = instantiate_node(compose_config(["experiment=gan", "divergence=gan"]).task, "task")
    assert isinstance(gan.divergence, VariationalFDivergence)
    assert gan.divergence.generator_loss_kind == "minimax"


def test_a_config_typo_in_the_divergence_fails_at_start_naming_the_key(tmp_path):
    cfg = compose_config(["experiment=gan", "+task.divergence.lamda=3"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"task\.divergence\.lamda"):
        check_config(cfg)
    cfg = compose_config(["experiment=gan", "task.divergence.divergence=jensen"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="divergence"):
        check_config(cfg)


def test_a_kl_term_on_the_gan_task_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"kl\.prior"):
        run_experiment(["experiment=gan", "kl=[prior]", *FAST], tmp_path)


@pytest.mark.parametrize(("divergence", "batches", "optimizer_steps"),
                         [("js", 3, 6), ("wasserstein", 10, 12)])
def test_generator_updates_after_every_critic_steps_critic_updates(divergence, batches, optimizer_steps,
                                                                    tmp_path):
    """One batch = one critic update; WGAN-GP's 5 critic updates per generator update make 10
    batches 10 + 2 optimiser steps (Lightning's global_step counts both)."""
    summary = run_experiment(["experiment=gan", f"divergence={divergence}", *QUIET,
                              f"trainer.max_steps={optimizer_steps}", "trainer.max_epochs=-1",
                              "trainer.limit_val_batches=0", "test=false"], tmp_path)
    assert summary["status"] == "completed"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == optimizer_steps
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == batches


def test_generator_schedule_resumes_from_global_step():
    """The critic-update count is recovered from global_step = c + ⌊c / k⌋ alone."""
    for k in (1, 2, 5):
        global_step = 0
        for critic_update in range(40):
            assert global_step - global_step // (k + 1) == critic_update
            global_step += 1 + ((critic_update + 1) % k == 0)


def test_validation_logs_the_samples_figure_and_the_metrics(tmp_path):
    run_experiment(["experiment=gan", *QUIET, "trainer.limit_train_batches=4", "trainer.max_epochs=2",
                    "trainer.log_every_n_steps=1", "task.contour_resolution=20", "test=false"], tmp_path)
    scalars, images = _event_tags(tmp_path)
    assert "val/samples" in images
    assert {"val/modes", "val/high_quality", "val/knn_kl", "loss/generator", "gan/js_bound"} <= scalars


def test_a_diverged_gan_stops_training_and_is_still_evaluated(tmp_path):
    """NaN generator weights from the third batch on (global_step 4: two updates a batch):
    training ends at the next logged batch, the fourth, and the final evaluation scores the
    diverged generator instead of failing the run (or a sweep)."""
    poison = ["+callbacks.poison._target_=helpers.PoisonWeights", "+callbacks.poison.step=4"]
    with pytest.warns(UserWarning, match="diverged"):
        summary = run_experiment(["experiment=gan", *QUIET, *poison, "data.num_train=2000",
                                  "trainer.log_every_n_steps=2"], tmp_path)
    assert summary["status"] == "completed"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 4
    assert summary["metrics"]["test/modes"] == 0
    assert summary["metrics"]["test/diverged"] == 1.0
    assert math.isnan(summary["metrics"]["test/knn_kl"])


def test_the_task_runs_in_float64_with_every_tensor_in_the_module_dtype():
    task = GANTask(VariationalFDivergence("hellinger"), generator=partial(MLP, hidden=[8]),
                   critic=partial(MLP, hidden=[8]))
    task.build(2)
    task.double()
    task.register_buffer("modes", ring_means(), persistent=False)
    task.mode_std = 0.01
    assert task.sample(5).dtype == torch.float64
    assert task.sample(5, torch.Generator().manual_seed(0)).dtype == torch.float64
    figure = task.samples_figure(_data().double(), task.sample(50))
    assert figure.axes


def test_task_rejects_bad_settings_naming_the_key():
    with pytest.raises(ConfigValueError, match="noise_dim"):
        GANTask(WassersteinGP(), noise_dim=0)
    with pytest.raises(ConfigValueError, match="mode_threshold"):
        GANTask(WassersteinGP(), mode_threshold=0.0)
