"""How the VAE's KL choices shape training: β ordering, free bits, the cyclical schedule, resume.

Short real runs on dynamically binarised digits (10 batches of 128 per epoch); the values checked are
read back from what the run logged to TensorBoard.
"""

from __future__ import annotations

import pytest
from helpers import QUIET, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LATENT_DIMS = 8


def scalars(run_dir, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def run_vae(tmp_path, name: str, *overrides: str) -> tuple[dict, object]:
    run_dir = tmp_path / name
    summary = run_experiment(["experiment=vae", *QUIET, "task.iw_samples=10", *overrides], run_dir)
    assert summary["status"] == "completed"
    return summary["metrics"], run_dir


@pytest.mark.slow
def test_larger_beta_gives_less_kl_and_worse_reconstruction(tmp_path):
    """The β sweep `klexp -m experiment=vae kl.prior.weight=0.5,1,4`, short: the final KL falls and
    the reconstruction NLL rises with β (Higgins et al. 2017)."""
    results = {}
    for beta in (0.5, 1.0, 4.0):
        metrics, _ = run_vae(tmp_path, f"beta{beta}", f"kl.prior.weight={beta}", "trainer.max_steps=400")
        results[beta] = (metrics["test/kl"], metrics["test/recon_nll"])
    kls = [results[b][0] for b in (0.5, 1.0, 4.0)]
    recons = [results[b][1] for b in (0.5, 1.0, 4.0)]
    assert kls[0] > kls[1] > kls[2], results
    assert recons[0] < recons[1] < recons[2], results


def training_kl_per_dimension(run_dir, last_steps: int) -> list[float]:
    """Each dimension's batch-mean KL — what free bits acts on — averaged over the last steps."""
    means = []
    for i in range(LATENT_DIMS):
        series = scalars(run_dir, f"kl/prior/dim_{i}")
        tail = [series[s] for s in sorted(series)[-last_steps:]]
        means.append(sum(tail) / len(tail))
    return means


@pytest.mark.slow
def test_with_free_bits_no_trained_dimension_sits_below_lambda(tmp_path):
    """Free bits λ (Kingma et al. 2016): below λ a dimension's KL has no gradient, so nothing pushes
    it lower, while reconstruction rewards using it; trained, every dimension carries ≳ λ nats.
    Without free bits, β = 1 collapses some dimensions far below λ on the same data."""
    lam, tolerance = 0.5, 0.1
    common = ("trainer.max_steps=400", "trainer.log_every_n_steps=1")
    _, free_bits_dir = run_vae(tmp_path, "free_bits", "+shaping@kl.prior.shaping=free_bits",
                               f"kl.prior.shaping.nats={lam}", *common)
    _, plain_dir = run_vae(tmp_path, "plain", *common)
    with_free_bits = training_kl_per_dimension(free_bits_dir, last_steps=40)
    without = training_kl_per_dimension(plain_dir, last_steps=40)
    assert min(with_free_bits) >= lam * (1 - tolerance), with_free_bits
    assert min(without) < lam * (1 - tolerance), without


CYCLICAL_STEPS = 80  # M = 4 cycles of 20 steps, β rising over the first R = 0.5 of each


@pytest.mark.slow
def test_cyclical_beta_is_the_published_schedule_at_every_training_step(tmp_path):
    """Fu et al. (2019), eq. 5, with T = 80, M = 4, R = 0.5: β_t = f(τ), τ = mod(t − 1, ⌈T/M⌉)/(T/M),
    f(τ) = τ/R for τ ≤ R else 1, for iteration t = step + 1. The weight the term used at each step is
    read back from its log, and its loss is that weight times its value."""
    _, run_dir = run_vae(tmp_path, "cyclical", "experiment=vae_cyclical",
                         f"trainer.max_steps={CYCLICAL_STEPS}", "trainer.log_every_n_steps=1")
    weight = scalars(run_dir, "kl/prior/weight")
    value, loss = scalars(run_dir, "kl/prior/value"), scalars(run_dir, "kl/prior/loss")
    published = {0: 0.0, 1: 0.1, 5: 0.5, 9: 0.9, 10: 1.0, 19: 1.0, 20: 0.0, 25: 0.5, 30: 1.0,
                 40: 0.0, 47: 0.7, 59: 1.0, 60: 0.0, 70: 1.0, 79: 1.0}
    for step, beta in published.items():
        assert weight[step] == pytest.approx(beta, abs=1e-6), step
        assert loss[step] == pytest.approx(beta * value[step], rel=1e-4, abs=1e-6), step
    assert sorted(weight) == list(range(CYCLICAL_STEPS))


@pytest.mark.slow
def test_resuming_mid_annealing_continues_beta_from_the_checkpoint_step(tmp_path):
    """Linear warm-up over 100 steps (Bowman et al. 2016), stopped at step 50 — mid-epoch and
    mid-annealing — and resumed from the checkpoint with the Trainer's ckpt_path: the weights of
    steps 50…99 are those of the schedule and of an uninterrupted run."""
    annealed = ("experiment=vae_annealed", "kl.prior.schedule.steps=100", "trainer.log_every_n_steps=1",
                "callbacks.model_checkpoint.every_n_train_steps=10")
    _, whole_dir = run_vae(tmp_path, "whole", *annealed, "trainer.max_steps=100")
    _, first_dir = run_vae(tmp_path, "first", *annealed, "trainer.max_steps=50")
    checkpoint = first_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    _, resumed_dir = run_vae(tmp_path, "resumed", *annealed, "trainer.max_steps=100",
                             f"ckpt_path={checkpoint}")
    whole = scalars(whole_dir, "kl/prior/weight")
    resumed = scalars(resumed_dir, "kl/prior/weight")
    assert sorted(resumed) == list(range(50, 100))
    for step in range(50, 100):
        assert resumed[step] == pytest.approx(step / 100, abs=1e-6), step
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6), step
    first = scalars(first_dir, "kl/prior/weight")
    assert first[49] == pytest.approx(0.49) and resumed[50] == pytest.approx(0.5)
