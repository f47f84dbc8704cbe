"""Specification of ``KLTerm`` as a unit: what loss it returns for given outputs, what it logs, how
its schedule advances, and which mistakes it rejects. No Trainer is needed for most of this: a
term is called as ``term(outputs, stage, step)`` and flushes its tallies in the batch-end hooks;
``total_loss`` (the finiteness guard and the output checks) runs against a stand-in module.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import RunningStage
from scipy.spatial.distance import jensenshannon
from torch.distributions import Categorical, Independent, Normal

from klexp.core import AdaptiveBeta, LinearWarmup
from klexp.core.controllers import Controller
from klexp.core.directions import Forward, JensenShannon, Reverse
from klexp.core.estimate import ClosedForm, MonteCarlo, OnSamples
from klexp.core.shaping import Capacity, FreeBits, PerExample
from klexp.errors import ConfigValueError, KlexpError, NonFiniteError
from klexp.lightning.from_config import kl_term
from klexp.lightning.loss import reward_penalty, total_loss
from klexp.lightning.target_kl import TargetKL
from klexp.lightning.term import KLPenalty, KLTerm

F64 = torch.float64
LN2 = math.log(2.0)
# Cover & Thomas, Example 2.3.1: p = (1/2, 1/2), q = (1/4, 3/4).
FORWARD_NATS = (1 - 0.5 * math.log2(3)) * LN2    # D(p‖q) = 0.2075 bits
REVERSE_NATS = (0.75 * math.log2(3) - 1) * LN2   # D(q‖p) = 0.1887 bits


class Recorder:
    """Stands in for the LightningModule, attached to no trainer: collects what the term logs."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], dict[str, Any]]] = []
        self._trainer = None

    def log_dict(self, metrics: dict[str, float], **kwargs: Any) -> None:
        self.logged.append(({k: float(v) for k, v in metrics.items()}, kwargs))

    @property
    def last(self) -> dict[str, float]:
        return self.logged[-1][0]


def trainer_at(step: int) -> Any:
    return SimpleNamespace(global_step=step)


def training_trainer(writes_this_step: bool, callbacks: tuple[Any, ...] = (), step: int = 0) -> Any:
    """A trainer in its training stage, on a step Lightning writes to the loggers or not."""
    return SimpleNamespace(state=SimpleNamespace(stage=RunningStage.TRAINING), fast_dev_run=False,
                           _logger_connector=SimpleNamespace(should_update_logs=writes_this_step),
                           accumulate_grad_batches=1, world_size=1, callbacks=list(callbacks),
                           global_step=step)


def module_holding(*terms: KLTerm, step: int = 0) -> Recorder:
    """A stand-in module whose trainer holds ``terms``, on a training step that is not written."""
    module = Recorder()
    module._trainer = training_trainer(False, terms, step)
    return module


def end_train_batch(term: KLTerm, module: Recorder, step: int = 0) -> None:
    term.on_train_batch_end(trainer_at(step), module, None, None, 0)


def coin_outputs(batch: int = 2) -> dict[str, Any]:
    return {
        "p": Categorical(probs=torch.tensor([[0.5, 0.5]] * batch, dtype=F64)),
        "q": Categorical(probs=torch.tensor([[0.25, 0.75]] * batch, dtype=F64)),
    }


def gaussian_outputs(mu: torch.Tensor) -> dict[str, Any]:
    """``posterior = N(μ, I)`` against ``prior = N(0, I)``: per-dimension KL ``μ²/2``."""
    return {
        "posterior": Independent(Normal(mu, torch.ones_like(mu)), 1),
        "prior": Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1),
        "num_train": 100,
    }


MU = torch.tensor([[0.1, 1.0, 2.0], [0.3, 1.0, 0.0]], dtype=F64)
# Per element and dimension μ²/2: [[0.005, 0.5, 2.0], [0.045, 0.5, 0.0]].
KL_PER_ELEMENT = [2.505, 0.545]
KL_PER_DIM = [0.025, 0.5, 1.0]  # batch means


# --------------------------------------------------------------------------------------------
# Direction and sign on known answers.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("forward", FORWARD_NATS),
        ("reverse", REVERSE_NATS),
        ("js", jensenshannon([0.5, 0.5], [0.25, 0.75]) ** 2),
    ],
)
def test_direction_selects_the_divergence_and_the_loss_is_positive(direction, expected):
    term = KLTerm("coin", p="p", q="q", direction=direction, weight=3.0)
    loss = term(coin_outputs(), "train", step=0)
    assert loss.item() == pytest.approx(3.0 * expected, rel=1e-12)
    module = Recorder()
    end_train_batch(term, module)
    assert module.last["kl/coin/value"] == pytest.approx(expected, rel=1e-12)
    assert module.last["kl/coin/weight"] == 3.0
    assert module.last["kl/coin/loss"] == pytest.approx(3.0 * expected, rel=1e-12)


def test_reduction_mean_or_sum_over_the_batch():
    mean = KLTerm("coin", p="p", q="q")(coin_outputs(batch=4), "train", 0)
    total = KLTerm("coin", p="p", q="q", reduction="sum")(coin_outputs(batch=4), "train", 0)
    assert mean.item() == pytest.approx(FORWARD_NATS, rel=1e-12)
    assert total.item() == pytest.approx(4 * FORWARD_NATS, rel=1e-12)


def test_gradient_descent_on_the_term_moves_q_towards_p():
    """The sign check of STYLE.md: minimising KL(target ‖ model) makes the model fit the target."""
    logits = torch.zeros(2, dtype=F64, requires_grad=True)
    term = KLTerm("fit", p="target", q="model")
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        outputs = {"target": Categorical(probs=torch.tensor([0.2, 0.8], dtype=F64)),
                   "model": Categorical(logits=logits)}
        term(outputs, "train", 0).backward()
        optimizer.step()
    assert torch.softmax(logits, -1).detach().numpy() == pytest.approx([0.2, 0.8], abs=1e-3)


# --------------------------------------------------------------------------------------------
# Shaping: free bits, capacity, per-example share; schedules.
# --------------------------------------------------------------------------------------------

def test_free_bits_floor_each_dimension_and_stop_its_gradient():
    """Kingma et al. 2016: loss = Σ_i max(λ, batch-mean KL_i); no gradient below λ."""
    mu = MU.clone().requires_grad_()
    term = KLTerm("kl", p="posterior", q="prior", direction=FreeBits(0.1, of=Forward(log_dims=True)),
                  weight=2.0)
    loss = term(gaussian_outputs(mu), "train", 0)
    assert loss.item() == pytest.approx(2.0 * (0.1 + 0.5 + 1.0), rel=1e-12)
    loss.backward()
    # ∂/∂μ_bi of 2 · mean_b μ²/2 = 2μ_bi/B for dimensions above the floor, 0 below it.
    assert mu.grad[:, 0].tolist() == [0.0, 0.0]
    assert mu.grad[:, 1:].numpy() == pytest.approx((MU[:, 1:]).numpy())
    module = Recorder()
    end_train_batch(term, module)
    assert module.last["kl/kl/value"] == pytest.approx(sum(KL_PER_ELEMENT) / 2, rel=1e-12)
    assert [module.last[f"kl/kl/dim_{i}"] for i in range(3)] == pytest.approx(KL_PER_DIM, rel=1e-12)


def test_free_bits_with_sum_reduction_scale_with_the_batch():
    term = KLTerm("kl", p="posterior", q="prior", direction=FreeBits(0.1), reduction="sum")
    assert term(gaussian_outputs(MU), "train", 0).item() == pytest.approx(2 * 1.6, rel=1e-12)


@pytest.mark.parametrize("capacity", [2.0, LinearWarmup(steps=10, start=0.0, end=5.0)],
                         ids=["number", "schedule"])
def test_capacity_penalises_the_distance_to_the_target_kl(capacity):
    """Burgess et al. 2018: loss = γ·|KL − C(t)|; C(4) = 2 for the schedule too."""
    mu = MU.clone().requires_grad_()
    term = KLTerm("kl", p="posterior", q="prior", direction=Capacity(capacity), weight=10.0)
    loss = term(gaussian_outputs(mu), "train", step=4)
    value = sum(KL_PER_ELEMENT) / 2
    assert loss.item() == pytest.approx(10.0 * abs(value - 2.0), rel=1e-12)
    loss.backward()
    # KL (1.525) is below C: the loss pushes the KL up, so its gradient is −10·∂KL/∂μ.
    assert mu.grad.numpy() == pytest.approx((-10.0 * MU / 2).numpy())


def test_per_example_share_scales_the_loss_but_not_the_logged_value():
    term = KLTerm("weights", p="posterior", q="prior", direction=PerExample("num_train"), weight=1.0)
    loss = term(gaussian_outputs(MU), "train", 0)
    value = sum(KL_PER_ELEMENT) / 2
    assert loss.item() == pytest.approx(value / 100, rel=1e-12)
    module = Recorder()
    end_train_batch(term, module)
    assert module.last["kl/weights/value"] == pytest.approx(value, rel=1e-12)
    assert module.last["kl/weights/loss"] == pytest.approx(value / 100, rel=1e-12)


def test_the_schedule_multiplies_the_weight_and_the_logged_weight_is_the_one_used():
    """The loss at step t uses weight·schedule(t); the batch-end hook runs after the optimiser
    step (Lightning's global_step is t + 1 by then), yet the logged weight is that of step t."""
    term = KLTerm("coin", p="p", q="q", weight=2.0, schedule=LinearWarmup(steps=10))
    module = Recorder()
    for step in (0, 5, 12):
        loss = term(coin_outputs(), "train", step)
        used = 2.0 * min(1.0, step / 10)
        assert loss.item() == pytest.approx(used * FORWARD_NATS, rel=1e-12)
        end_train_batch(term, module, step=step + 1)
        assert module.last["kl/coin/weight"] == pytest.approx(used)
        assert module.last["kl/coin/loss"] == pytest.approx(used * FORWARD_NATS, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Monte-Carlo estimates and their standard deviation.
# --------------------------------------------------------------------------------------------

def test_monte_carlo_term_uses_given_samples_and_logs_their_std():
    p = Categorical(logits=torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=F64))
    q = Categorical(logits=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64))
    actions = torch.tensor([1, 2])
    log_ratio = q.log_prob(actions) - p.log_prob(actions)
    per_sample = log_ratio.expm1() - log_ratio  # k3
    term = KLTerm("policy", p="old", q="new", estimator=OnSamples("actions", "k3"))
    loss = term({"old": p, "new": q, "actions": actions}, "train", 0)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-12)
    module = Recorder()
    end_train_batch(term, module)
    assert module.last["kl/policy/std"] == pytest.approx(per_sample.std().item(), rel=1e-12)


def test_analytic_terms_log_no_std_and_fresh_draws_have_a_positive_std():
    module = Recorder()
    analytic = KLTerm("coin", p="p", q="q")
    analytic(coin_outputs(), "train", 0)
    end_train_batch(analytic, module)
    assert "kl/coin/std" not in module.last
    torch.manual_seed(0)
    sampled = KLTerm("kl", p="posterior", q="prior", estimator=MonteCarlo("k1", num_samples=64))
    sampled(gaussian_outputs(MU), "train", 0)
    end_train_batch(sampled, module)
    assert module.last["kl/kl/std"] > 0
    assert module.last["kl/kl/value"] == pytest.approx(sum(KL_PER_ELEMENT) / 2, abs=0.5)


# --------------------------------------------------------------------------------------------
# Logging and controllers.
# --------------------------------------------------------------------------------------------

class RecordingController(Controller):
    def __init__(self, adapt_to: str = "after_update") -> None:
        self.beta, self.adapt_to = 1.0, adapt_to
        self.updates: list[float] = []

    def update(self, measured_kl: float) -> None:
        self.updates.append(measured_kl)


def test_controller_updates_once_per_train_batch_with_the_batch_mean():
    schedule = RecordingController()
    term = KLTerm("kl", p="posterior", q="prior", schedule=schedule)
    module = Recorder()
    first, second = gaussian_outputs(MU), gaussian_outputs(2 * MU)  # two minibatches, one batch
    term(first, "train", 0)
    term(second, "train", 0)
    end_train_batch(term, module)
    value = sum(KL_PER_ELEMENT) / 2
    assert schedule.updates == [pytest.approx((value + 4 * value) / 2)]
    assert module.last["kl/kl/value_max"] == pytest.approx(4 * value)
    # Validation and test never move a controller; a batch without calls does not either.
    term(first, "val", 0)
    term.on_validation_batch_end(trainer_at(1), module, None, None, 0)
    term(first, "test", 0)
    term.on_test_batch_end(trainer_at(1), module, None, None, 0)
    end_train_batch(term, module)
    assert len(schedule.updates) == 1


def test_adaptive_beta_doubles_once_per_batch_however_many_calls():
    term = KLTerm("kl", p="posterior", q="prior", schedule=AdaptiveBeta(target=0.1, initial=1.0))
    module = Recorder()
    for _ in range(3):
        term(gaussian_outputs(MU), "train", 0)
    end_train_batch(term, module)
    assert term.current_weight(1) == 2.0
    assert module.last["kl/kl/weight"] == 1.0  # the weight the batch's losses used


def test_validation_and_test_log_epoch_means_under_their_prefix():
    term = KLTerm("coin", p="p", q="q")
    module = Recorder()
    term(coin_outputs(), "val", 0)
    term.on_validation_batch_end(trainer_at(0), module, None, None, 0)
    metrics, options = module.logged[-1]
    assert set(metrics) == {"val/kl/coin/value", "val/kl/coin/weight", "val/kl/coin/loss"}
    assert options["on_epoch"] and not options["on_step"]
    term(coin_outputs(), "test", 0)
    term.on_test_batch_end(trainer_at(0), module, None, None, 0)
    assert "test/kl/coin/value" in module.last
    term(coin_outputs(), "train", 0)
    end_train_batch(term, module)
    assert set(module.last) == {"kl/coin/value", "kl/coin/weight", "kl/coin/loss"}


def test_state_dict_round_trip_restores_the_controller():
    term = KLTerm("old_policy", p="posterior", q="prior", schedule=AdaptiveBeta(target=0.1))
    module = Recorder()
    for _ in range(2):
        term(gaussian_outputs(MU), "train", 0)
        end_train_batch(term, module)
    assert term.current_weight(0) == 4.0
    restored = KLTerm("old_policy", p="posterior", q="prior", schedule=AdaptiveBeta(target=0.1))
    restored.load_state_dict(term.state_dict())
    assert restored.current_weight(0) == 4.0
    assert restored.state_key == term.state_key
    assert "old_policy" in term.state_key
    other = KLTerm("reference", p="posterior", q="prior", schedule=AdaptiveBeta(target=0.1))
    assert other.state_key != term.state_key


def test_a_controller_adapts_to_the_phase_measurement_it_names():
    """A task with update phases measures each term before and after the phase; the controller
    takes the value its ``adapt_to`` names, the batch mean otherwise."""
    module = Recorder()
    for adapt_to, expected in (("after_update", 4.0), ("rollout", 9.0), ("batch", 1.0)):
        controller = RecordingController(adapt_to)
        term = KLTerm("kl", p="posterior", q="prior", schedule=controller)
        value = sum(KL_PER_ELEMENT) / 2
        term.measure_phase("rollout", gaussian_outputs(3 * MU))
        term(gaussian_outputs(MU), "train", 0)
        term.measure_phase("after_update", gaussian_outputs(2 * MU))
        end_train_batch(term, module)
        assert controller.updates == [pytest.approx(expected * value)]
        assert module.last["kl/kl/value_after_update"] == pytest.approx(4 * value)
        assert ("kl/kl/value_rollout" in module.last) == (adapt_to == "rollout")


def test_non_finite_values_stop_the_step_naming_the_term():
    term = KLTerm("coin", p="p", q="q")
    zero = torch.zeros((), dtype=F64)
    zero_q = {"loss": zero, "p": Categorical(probs=torch.tensor([0.5, 0.5])),
              "q": Categorical(probs=torch.tensor([1.0, 0.0]))}
    with pytest.raises(NonFiniteError, match=r"KL term 'coin' is inf at step 3 \(train\); p=p"):
        total_loss(module_holding(term, step=3), zero_q)
    # A NaN from a diverged model must not be hidden as a finite KL.
    nan_q = {"loss": zero, "p": Categorical(logits=torch.tensor([0.0, 1.0])),
             "q": Categorical(logits=torch.tensor([0.0, math.nan]), validate_args=False)}
    with pytest.raises(NonFiniteError, match=r"coin.*nan"):
        total_loss(module_holding(term, step=3), nan_q)
    # check_finite=False leaves the term unchecked, but the loss it makes infinite is not
    quiet = KLTerm("coin", p="p", q="q", check_finite=False)
    assert math.isinf(quiet(zero_q).item())
    with pytest.raises(NonFiniteError, match=r"the train loss is inf at step 3 \(task loss 0.0\)"):
        total_loss(module_holding(quiet, step=3), zero_q)
    # a measuring term (weight 0) adds nothing, yet its NaN is caught
    with pytest.raises(NonFiniteError, match="coin"):
        total_loss(module_holding(KLTerm("coin", p="p", q="q", weight=0.0)), nan_q)


def test_finite_values_whose_sum_overflows_pass_the_finiteness_guard():
    # the guard copies one number to the host, the sum of the loss and the terms' values; a sum
    # that overflows while every value is finite must not stop the run
    far = {"loss": torch.tensor(3.3e38),  # float32, as are the Normals: max ≈ 3.4e38
           "p": Normal(torch.tensor(1e19), torch.tensor(1.0)),
           "q": Normal(torch.tensor(0.0), torch.tensor(1.0))}
    term = KLTerm("far", p="p", q="q", weight=0.0)  # measured, not added: KL = 5e37
    assert math.isinf((far["loss"] + torch.tensor(5e37)).item())
    assert total_loss(module_holding(term), far).item() == pytest.approx(3.3e38)


def test_total_loss_adds_every_term_to_the_task_loss():
    terms = (KLTerm("a", p="p", q="q", weight=2.0), KLTerm("b", p="q", q="p"))
    task = torch.tensor(0.5, dtype=F64)
    total = total_loss(module_holding(*terms), {"loss": task, **coin_outputs()})
    assert total.item() == pytest.approx(0.5 + 2 * FORWARD_NATS + REVERSE_NATS, rel=1e-12)
    assert [term.calls for term in terms] == [1, 1]


# --------------------------------------------------------------------------------------------
# Mistakes a config can make.
# --------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"name": "my term"}, "name"),
    ({"p": ""}, "p"),
    ({"direction": "sideways"}, "direction"),
    ({"estimator": "k4"}, "estimator"),
    ({"weight": -1.0}, "weight"),
    ({"weight": math.inf}, "weight"),
    ({"weight": math.nan}, "weight"),
    ({"reduction": "max"}, "reduction"),
    ({"schedule": 0.5}, "schedule"),
    ({"direction": "js", "estimator": "k3"}, "estimator"),
    ({"direction": FreeBits(0.1, of=Reverse("k3")), "estimator": "k1"}, "estimator"),
    ({"direction": "js", "log_dims": True}, "log_dims"),
]


@pytest.mark.parametrize(("kwargs", "key"), BAD_ARGUMENTS,
                         ids=[f"{key}-{i}" for i, (_, key) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_config_value_error_naming_the_argument(kwargs, key):
    arguments = {"name": "kl", "p": "posterior", "q": "prior", **kwargs}
    with pytest.raises(ConfigValueError) as error:
        KLTerm(**arguments)
    assert error.value.key == key


@pytest.mark.parametrize(("make", "key"), [(lambda: MonteCarlo("k4"), "k"),
                                           (lambda: MonteCarlo("k1", num_samples=0), "num_samples"),
                                           (lambda: OnSamples(""), "samples"),
                                           (lambda: OnSamples("actions", samples_from=""), "samples_from"),
                                           (lambda: OnSamples("actions", importance_weight="yes"),
                                            "importance_weight")])
def test_bad_estimators_name_their_argument(make, key):
    with pytest.raises(ConfigValueError) as error:
        make()
    assert error.value.key == key


# The config's flat keys (klexp.kl_term): the draws and the placement become types; what cannot
# be said with the types is refused naming the key.
BAD_CONFIGS = [
    ({"num_samples": 0}, "num_samples"),
    ({"estimator": "k9"}, "estimator"),
    ({"placement": "everywhere"}, "placement"),
    ({"samples_from": "old"}, "samples_from"),
    ({"samples": "actions", "num_samples": 4}, "num_samples"),
    ({"estimator": OnSamples("actions"), "samples": "actions"}, "samples"),
    # k on fresh draws does not depend on the action taken: tests/test_kl_gradients.py, reward_fresh
    ({"placement": "reward", "estimator": "k1"}, "estimator"),
    ({"placement": "reward", "estimator": "k3"}, "estimator"),
    ({"placement": "reward", "shaping": FreeBits(0.1)}, "shaping"),
    # the term's direction is what its shaping shapes: free bits need a KL, and `of` is not a key
    ({"direction": "js", "shaping": FreeBits(0.1)}, "shaping"),
    ({"shaping": FreeBits(0.1, of="reverse")}, "shaping"),
    ({"shaping": "free_bits"}, "shaping"),
]


@pytest.mark.parametrize(("kwargs", "key"), BAD_CONFIGS,
                         ids=[f"{key}-{i}" for i, (_, key) in enumerate(BAD_CONFIGS)])
def test_bad_config_keys_raise_config_value_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigValueError) as error:
        kl_term(**{"name": "kl", "p": "posterior", "q": "prior", **kwargs})
    assert error.value.key == key


def test_the_config_keys_build_the_types_they_name():
    fresh = kl_term("kl", "posterior", "prior", estimator="k1", num_samples=64)
    assert type(fresh) is KLTerm and isinstance(fresh.estimator, MonteCarlo)
    assert (fresh.estimator.k, fresh.estimator.num_samples) == ("k1", 64)
    drawn = kl_term("kl", "policy", "reference", placement="reward", estimator="k3", samples="actions",
                    samples_from="old_policy", importance_weight=False, shaping=None)
    assert type(drawn) is KLPenalty and isinstance(drawn.estimator, OnSamples)
    assert (drawn.estimator.samples, drawn.estimator.samples_from) == ("actions", "old_policy")
    assert drawn.estimator.importance_weight is False
    # a closed form ignores the draw keys: switching estimators is one override
    exact = kl_term("kl", "policy", "reference", samples="actions", samples_from="old_policy")
    assert isinstance(exact.estimator, ClosedForm) and exact.reads() == ("policy", "reference")


def test_a_monte_carlo_term_in_the_reward_takes_the_rollouts_actions_and_the_exact_one_none():
    KLPenalty("kl", "policy", "reference", estimator=OnSamples("actions", "k1"))
    KLPenalty("kl", "policy", "reference", estimator="analytic")
    with pytest.raises(ConfigValueError, match=r"^estimator: a k1 penalty in the reward must be taken "
                                               r"on the actions the rollout took"):
        KLPenalty("kl", "policy", "reference", estimator="k1")


@pytest.mark.parametrize(("shaping", "key"), [(lambda: FreeBits(-0.5), "nats"),
                                              (lambda: Capacity(-1.0), "target"),
                                              (lambda: PerExample(""), "count"),
                                              (lambda: FreeBits(0.1, of=JensenShannon()), "of"),
                                              (lambda: FreeBits(0.1, of="js"), "of"),
                                              (lambda: Capacity(1.0, of="sideways"), "of")])
def test_bad_shapings_name_their_argument(shaping, key):
    with pytest.raises(ConfigValueError) as error:
        shaping()
    assert error.value.key == key


@pytest.mark.parametrize("role", ["p", "q", "samples", "shaping"])
def test_an_unknown_output_name_is_named_with_the_available_ones(role):
    arguments = {"name": "kl", "p": "posterior", "q": "prior", "estimator": "k3"}
    arguments.update({"direction": PerExample("typo", of=Forward("k3")), "estimator": None}
                     if role == "shaping"
                     else {"estimator": OnSamples("typo")} if role == "samples" else {role: "typo"})
    term = KLTerm(**arguments)
    with pytest.raises(KlexpError) as error:
        term.check_outputs(frozenset({"posterior", "prior", "num_train"}), "VAETask returns")
    message = str(error.value)
    assert message.startswith("KL term 'kl' reads ")
    assert "VAETask returns 'num_train', 'posterior', 'prior' (missing: 'typo')" in message


def test_a_training_step_missing_an_output_stops_at_once_naming_it():
    term = KLTerm("kl", p="posterior", q="typo")
    with pytest.raises(KlexpError, match=r"KL term 'kl' reads 'posterior', 'typo'; total_loss was given "
                                         r"'loss', 'num_train', 'posterior', 'prior' \(missing: 'typo'\)"):
        total_loss(module_holding(term), {**gaussian_outputs(MU), "loss": torch.zeros(())})
    not_a_distribution = KLTerm("kl", p="posterior", q="num_train")
    with pytest.raises(ConfigValueError, match="distribution"):
        not_a_distribution(gaussian_outputs(MU), "train", 0)


def test_evaluation_skips_a_term_whose_outputs_are_missing():
    term = KLTerm("kl", p="posterior", q="prior")
    module = module_holding(term)
    loss = total_loss(module, {"loss": torch.ones(())}, stage="val")
    assert loss.item() == 1.0 and term.calls == 0


def test_free_bits_need_independent_distributions():
    term = KLTerm("kl", p="p", q="q", direction=FreeBits(0.1))
    with pytest.raises(ConfigValueError) as error:
        term(coin_outputs(), "train", 0)
    assert error.value.key == "shaping"


def test_a_term_is_a_lightning_callback():
    assert isinstance(KLTerm("kl", p="posterior", q="prior"), pl.Callback)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_monte_carlo_gradient_through_a_trainable_categorical_p_matches_the_analytic_one(estimator):
    """Categorical draws are not reparameterised: the score-function term makes the gradient right."""
    torch.manual_seed(0)
    p_logits = torch.tensor([0.5, -0.3, 0.1], requires_grad=True)
    q = Categorical(logits=torch.tensor([0.0, 0.4, -0.6]))

    def gradient(term: KLTerm) -> torch.Tensor:
        p_logits.grad = None
        term({"model": Categorical(logits=p_logits), "uniform": q}, "train", 0).backward()
        return p_logits.grad.clone()

    analytic = gradient(KLTerm(name="t", p="model", q="uniform"))
    sampled = gradient(KLTerm(name="t", p="model", q="uniform",
                              estimator=MonteCarlo(estimator, num_samples=200_000)))
    torch.testing.assert_close(sampled, analytic, atol=0.01, rtol=0.05)


def test_draws_from_another_distribution_are_importance_weighted():
    """Draws of π_old used for KL(π_θ ‖ π_ref): each term is weighted by ρ = π_θ(a)/π_old(a), or
    used as written when importance_weight is off."""
    old = Categorical(logits=torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=F64))
    new = Categorical(logits=torch.tensor([[0.3, 0.2, -1.0], [1.0, 0.5, 0.0]], dtype=F64))
    ref = Categorical(logits=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64))
    actions = torch.tensor([1, 2])
    outputs = {"old": old, "new": new, "ref": ref, "actions": actions}
    log_ratio = ref.log_prob(actions) - new.log_prob(actions)
    k3 = log_ratio.expm1() - log_ratio
    rho = (new.log_prob(actions) - old.log_prob(actions)).exp()
    weighted = KLTerm("ref", p="new", q="ref", estimator=OnSamples("actions", "k3", samples_from="old"))
    assert weighted(outputs).item() == pytest.approx((rho * k3).mean().item(), rel=1e-12)
    assert set(weighted.reads()) == {"new", "ref", "actions", "old"}
    plain = KLTerm("ref", p="new", q="ref",
                   estimator=OnSamples("actions", "k3", samples_from="old", importance_weight=False))
    assert plain(outputs).item() == pytest.approx(k3.mean().item(), rel=1e-12)
    # draws of the distribution the estimator samples need no weight
    direct = KLTerm("old", p="old", q="new", estimator=OnSamples("actions", "k3", samples_from="old"))
    log_ratio = new.log_prob(actions) - old.log_prob(actions)
    assert direct(outputs).item() == pytest.approx((log_ratio.expm1() - log_ratio).mean().item())
    assert set(direct.reads()) == {"old", "new", "actions"}


@pytest.mark.parametrize("estimator", ["analytic", "k3"])
def test_per_dimension_kl_is_measured_only_on_the_training_steps_lightning_writes(estimator):
    term = KLTerm("kl", p="posterior", q="prior", estimator=estimator, log_dims=True)
    for writes in (False, True):
        term._trainer = training_trainer(writes)
        torch.manual_seed(0)
        value = term(gaussian_outputs(MU), "train", 0)
        tally = term._tallies["train"]
        assert bool(tally.dims) == writes
        assert (len(tally.stds) == 1) == (writes and estimator != "analytic")
        if estimator == "analytic":
            assert value.item() == pytest.approx(sum(KL_PER_ELEMENT) / 2, rel=1e-12)
            if writes:
                assert tally.dims[0].tolist() == pytest.approx(KL_PER_DIM, rel=1e-12)
        term._tallies["train"] = type(tally)()
    # evaluation always measures them: its epoch means are always logged
    term(gaussian_outputs(MU), "val", 0)
    assert term._tallies["val"].dims


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_logging_per_dimension_does_not_change_the_estimator(estimator):
    posterior = Independent(Normal(torch.randn(32, 6), torch.rand(32, 6) + 0.2), 1)
    prior = Independent(Normal(torch.zeros(6), torch.ones(6)), 1)
    outputs = {"posterior": posterior, "prior": prior}
    values = []
    for log_dims in (False, True):
        torch.manual_seed(3)
        term = KLTerm(name="t", p="posterior", q="prior", estimator=MonteCarlo(estimator, num_samples=8),
                      log_dims=log_dims)
        measurement = term.measure(outputs)
        if log_dims:
            assert measurement.per_dim.shape == (6,)
        values.append(term.reduce(measurement.elementwise))
        values.append(torch.randn(()))  # the random stream goes on as if no dimension was drawn
    torch.testing.assert_close(values[0], values[2])
    torch.testing.assert_close(values[1], values[3])


def test_per_dimension_values_of_nested_independent_distributions_split_every_event_dimension():
    """``Independent(Independent(Normal, 1), 1)`` has two event dimensions: free bits floor each
    of its 2 × 3 entries, as for the flat ``Independent(Normal, 2)``."""
    mu = torch.tensor([[[0.1, 1.0, 2.0], [0.3, 1.0, 0.0]]] * 4, dtype=F64)
    def outputs(nested: bool) -> dict[str, Any]:
        def wrap(loc: torch.Tensor) -> Independent:
            base = Normal(loc, torch.ones_like(loc))
            return Independent(Independent(base, 1), 1) if nested else Independent(base, 2)
        return {"posterior": wrap(mu), "prior": wrap(torch.zeros_like(mu))}
    values = [KLTerm("kl", p="posterior", q="prior", direction=FreeBits(0.1, of=Forward(log_dims=True)))(
                  outputs(n))
              for n in (False, True)]
    assert values[0].item() == values[1].item() == pytest.approx(0.1 + 0.5 + 2.0 + 0.1 + 0.5 + 0.1)


def test_jensen_shannon_is_never_split_per_dimension():
    posterior = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
    from klexp.core.measure import measure
    with pytest.raises(ValueError, match="Jensen–Shannon does not split"):
        measure(posterior, posterior, direction="js", per_dim="report")


# --------------------------------------------------------------------------------------------
# The three types on one feeding path: total_loss feeds loss terms and measuring terms, and
# reward_penalty the reward terms.
# --------------------------------------------------------------------------------------------

def test_total_loss_feeds_a_target_kl_which_adds_nothing_but_is_guarded():
    stop = TargetKL("stop", p="p", q="q", target=0.1, estimator="analytic")
    penalty = KLPenalty("reward", p="p", q="q")
    task_loss = torch.tensor(0.5, dtype=F64)
    total = total_loss(module_holding(stop, penalty), {**coin_outputs(), "loss": task_loss})
    assert total is task_loss  # nothing added, not even a zero
    assert (stop.calls, penalty.calls) == (1, 0)  # the penalty is reward_penalty's
    assert float(stop.latest) == pytest.approx(FORWARD_NATS, rel=1e-12)
    nan_q = {**coin_outputs(), "q": Categorical(logits=torch.full((2, 2), math.nan, dtype=F64),
                                                validate_args=False),
             "loss": task_loss}
    with pytest.raises(NonFiniteError, match=r"^KL term 'stop' is nan"):
        total_loss(module_holding(stop), nan_q)


def test_reward_penalty_feeds_only_the_reward_terms_per_element():
    loss_term, penalty = KLTerm("loss", p="p", q="q"), KLPenalty("reward", p="p", q="q", weight=2.0)
    module = module_holding(loss_term, penalty)
    found = reward_penalty(module, coin_outputs(batch=3))
    assert found.tolist() == pytest.approx([2.0 * FORWARD_NATS] * 3, rel=1e-12)
    assert (loss_term.calls, penalty.calls) == (0, 1)


def test_a_reward_penalty_resumes_the_controller_a_reward_placed_kl_term_saved():
    # before the types, a reward penalty was KLTerm(..., placement="reward"): same checkpoint key
    assert KLPenalty("ref", p="p", q="q").state_key == KLTerm("ref", p="p", q="q").state_key
