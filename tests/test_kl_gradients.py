"""Which gradient a KL term follows in policy optimisation, for every estimator × placement, proved
by exact expectation: the rollout is replaced by the enumeration of every action (sequence) with
its probability under the rollout policy ``π_old`` (float64, no sampling), so the gradient of the
weighted surrogate *is* the expected gradient of the surrogate each placement back-propagates. It
is compared with gradients of closed-form KLs taken by autograd.

Cells (the KL term's config in brackets; ``β = 1``):

* estimator: ``k1``, ``k2``, ``k3`` — Schulman's estimators of ``KL(π_θ ‖ π_ref)`` from the
  rollout's actions ``a ~ π_old`` (``k1 = log π_θ(a) − log π_ref(a)``, ``k2 = ½(log π_ref(a) −
  log π_θ(a))²``, ``k3 = r − 1 − log r`` with ``r = π_ref(a)/π_θ(a)``); ``analytic`` — the
  closed-form per-state ``KL(π_θ(·|s) ‖ π_ref(·|s))``.
* placement:
  ``reward`` [placement=reward] — ``r_t ← r_t − β·k(s_t, a_t)`` with the rollout policy (no
  gradient), then PPO's unclipped surrogate ``ρ_t·Ĝ_t`` with the reward-to-go ``Ĝ_t`` (the
  REINFORCE gradient on-policy);
  ``loss`` [placement=loss, samples_from=old_policy, importance_weight=false] — ``β·k(s_t, a_t)``
  back-propagated as written on the rollout's actions;
  ``loss_rho`` [the same with importance_weight=true] — ``β·ρ·k``, ``ρ = π_θ(a)/sg(π_old(a))``;
  ``loss_score`` [placement=loss, samples_from unset] — the draws are taken for π_θ's own and
  klexp adds the score-function term, ``k + sg(k)·(log π_θ(a) − sg(log π_θ(a)))``: the same as
  ``loss_rho`` on-policy, not after a first minibatch step (a PPO term must name its
  ``samples_from``).
  The analytic estimator uses no samples, so ρ does not apply: its ``loss_rho`` cell is its
  ``loss`` cell, as klexp computes it. ``loss+reward`` (analytic only): both at once.
  ``reward_fresh`` [placement=reward, samples unset: refused by ``KLTerm``] — the penalty from
  fresh draws ``x ~ π_old(·|s_t)`` instead of the action taken, in expectation over those draws:
  it does not depend on ``a_t``, so at a state it gives no gradient, and over steps only the
  part that flows through the states that follow.

Labels, one state (``π_θ = softmax(θ)``): ``reverse KL`` = ``∇KL(π_θ ‖ π_ref)``, ``forward KL`` =
``∇KL(π_ref ‖ π_θ)``, ``zero``, ``other`` (differs from all three). On-policy ``π_old = π_θ``
(numerically, detached); off-policy ``π_old ≠ π_θ``, as after a first minibatch step.

Labels, two steps (a first action, then a second whose distribution depends on the first, on-policy),
against the sequence-level ``KL_seq(π_θ ‖ π_ref) = Σ_t E_{s_t}[KL(π_θ(·|s_t) ‖ π_ref(·|s_t))]``:
``full`` = ``∇KL_seq``; ``partial`` = its direct part only, ``∇ Σ_s sg(d(s))·KL(π_θ(·|s) ‖ π_ref(·|s))``
with ``d`` the state distribution (the effect of an action on the KL of the states that follow is
missed); ``future`` = the rest, ``full − partial``; ``partial forward`` = ``∇ Σ_s sg(d(s))·
KL(π_ref(·|s) ‖ π_θ(·|s))``; ``zero``; ``other`` (differs from all of these).

Sources: Schulman, "Approximating KL Divergence" (2020); Tang & Munos 2025 (arXiv 2506.09477);
Liu et al. 2025 (arXiv 2510.01555); Shah et al. 2025 (arXiv 2512.21852); DeepSeek-V3.2 (arXiv
2512.02556) for the ρ-weighted k3.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Categorical

from klexp.core import categorical_kl, kl, kl_samples
from klexp.core.measure import measure

F64 = torch.float64
ESTIMATORS = ("k1", "k2", "k3", "analytic")
PLACEMENTS = ("reward", "loss", "loss_rho")
SETTINGS = ("one state, on-policy", "one state, off-policy", "two steps, on-policy")

#: cell → the expected gradient it follows, per setting (``SETTINGS``); the README quotes this.
GRADIENT_TABLE: dict[tuple[str, str], tuple[str, str, str]] = {
    # (estimator, placement):        one state,     one state,            two steps,
    #                                on-policy      off-policy            on-policy
    ("k1", "reward"):               ("reverse KL", "other",               "full"),
    ("k1", "loss"):                 ("zero",       "other",               "zero"),
    ("k1", "loss_rho"):             ("reverse KL", "reverse KL",          "partial"),
    ("k1", "loss_score"):           ("reverse KL", "other",               "partial"),
    ("k2", "reward"):               ("other",      "other",               "other"),
    ("k2", "loss"):                 ("reverse KL", "other",               "partial"),
    ("k2", "loss_rho"):             ("other",      "other",               "other"),
    ("k2", "loss_score"):           ("other",      "other",               "other"),
    ("k3", "reward"):               ("other",      "other",               "other"),
    ("k3", "loss"):                 ("forward KL", "other",               "partial forward"),
    ("k3", "loss_rho"):             ("reverse KL", "reverse KL",          "partial"),
    ("k3", "loss_score"):           ("reverse KL", "other",               "partial"),
    ("analytic", "reward"):         ("zero",       "zero",                "future"),
    ("analytic", "loss"):           ("reverse KL", "reverse KL",          "partial"),
    ("analytic", "loss_rho"):       ("reverse KL", "reverse KL",          "partial"),
    ("analytic", "loss+reward"):    ("reverse KL", "reverse KL",          "full"),
    ("k1", "reward_fresh"):         ("zero",       "zero",                "future"),
    ("k2", "reward_fresh"):         ("zero",       "zero",                "other"),
    ("k3", "reward_fresh"):         ("zero",       "zero",                "future"),
}
ONE_STATE_LABELS = {"reverse KL", "forward KL", "zero", "other"}
TWO_STEP_LABELS = {"full", "partial", "future", "partial forward", "zero", "other"}

# gradients "match" at float64 rounding; "other" must stand clear of every reference by far more
MATCH = {"rtol": 1e-9, "atol": 1e-11}
CLEAR = 1e-4


# ------------------------------------------------------------------ an enumerated rollout


@dataclass
class Step:
    """Step ``t`` of every enumerated trajectory: ``π_θ(·|s_t)``, ``π_old(·|s_t)`` (detached) and
    ``π_ref(·|s_t)`` as logits ``(N, K)``, and the action ``a_t`` ``(N,)``."""

    logits: Tensor
    old_logits: Tensor
    reference_logits: Tensor
    actions: Tensor

    def policy(self) -> Categorical:
        return Categorical(logits=self.logits)

    def old(self) -> Categorical:
        return Categorical(logits=self.old_logits)

    def reference(self) -> Categorical:
        return Categorical(logits=self.reference_logits)

    def ratio(self) -> Tensor:
        """``ρ_t = π_θ(a_t|s_t) / sg(π_old(a_t|s_t))``."""
        return torch.exp(self.policy().log_prob(self.actions) - self.old().log_prob(self.actions))


@dataclass
class Enumerated:
    """Every trajectory ``n`` with its probability under ``π_old`` (``weights``, detached)."""

    steps: list[Step]
    weights: Tensor


def loss_surrogate(rollout: Enumerated, estimator: str, importance_weight: bool) -> Tensor:
    """``E_{π_old}[Σ_t cell(s_t, a_t)]``, the cell being what klexp's ``measure`` makes of the
    rollout's actions (``samples``, drawn from ``π_old``: ``sample_log_prob``)."""
    total = torch.zeros((), dtype=F64)
    for step in rollout.steps:
        per_state = measure(step.policy(), step.reference(), estimator=estimator, samples=step.actions,
                            sample_log_prob=step.old().log_prob(step.actions),
                            importance_weight=importance_weight).elementwise
        total = total + (rollout.weights * per_state).sum()
    return total


def score_function_surrogate(rollout: Enumerated, estimator: str) -> Tensor:
    """``E_{π_old}[Σ_t cell(s_t, a_t)]`` with the actions given as samples of π_θ itself."""
    total = torch.zeros((), dtype=F64)
    for step in rollout.steps:
        per_state = measure(step.policy(), step.reference(), estimator=estimator,
                            samples=step.actions).elementwise
        total = total + (rollout.weights * per_state).sum()
    return total


def reward_surrogate(rollout: Enumerated, estimator: str) -> Tensor:
    """``E_{π_old}[Σ_t ρ_t·Ĝ_t]`` with ``Ĝ_t = Σ_{t'≥t} k(s_t', a_t')``: the penalties measured with
    the rollout policy (no gradient) and carried by the policy-gradient surrogate (a KL to be
    minimised, hence ``+``: the reward is ``−β·k``)."""
    with torch.no_grad():
        penalties = torch.stack([measure(step.old(), step.reference(), estimator=estimator,
                                         samples=step.actions).elementwise for step in rollout.steps])
        returns_to_go = penalties.flip(0).cumsum(0).flip(0)
    ratios = torch.stack([step.ratio() for step in rollout.steps])
    return (rollout.weights * (ratios * returns_to_go).sum(0)).sum()


def fresh_penalty(step: Step, estimator: str) -> Tensor:
    """``E_{x~π_old(·|s_t)}[k(x)]`` per trajectory, by enumerating ``x``: the penalty of draws made
    afresh at each state, whatever action the rollout took there."""
    classes = step.old_logits.shape[-1]
    every_x = torch.arange(classes).unsqueeze(-1).expand(classes, step.actions.shape[0])
    terms = kl_samples(step.old(), step.reference(), estimator=estimator, samples=every_x)
    return (step.old().probs.T * terms).sum(0)


def fresh_reward_surrogate(rollout: Enumerated, estimator: str) -> Tensor:
    """``reward_surrogate`` with the penalties of fresh draws (``fresh_penalty``)."""
    with torch.no_grad():
        penalties = torch.stack([fresh_penalty(step, estimator) for step in rollout.steps])
        returns_to_go = penalties.flip(0).cumsum(0).flip(0)
    ratios = torch.stack([step.ratio() for step in rollout.steps])
    return (rollout.weights * (ratios * returns_to_go).sum(0)).sum()


def surrogate(rollout: Enumerated, estimator: str, placement: str) -> Tensor:
    if placement == "reward":
        return reward_surrogate(rollout, estimator)
    if placement == "reward_fresh":
        return fresh_reward_surrogate(rollout, estimator)
    if placement == "loss+reward":
        return loss_surrogate(rollout, estimator, False) + reward_surrogate(rollout, estimator)
    if placement == "loss_score":
        return score_function_surrogate(rollout, estimator)
    return loss_surrogate(rollout, estimator, importance_weight=placement == "loss_rho")


def gradient(value: Tensor, parameters: list[Tensor]) -> Tensor:
    """``∇value`` flattened over ``parameters`` (zeros for a parameter it does not depend on)."""
    grads = torch.autograd.grad(value, parameters, allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


# ------------------------------------------------------------------ the two settings


@dataclass
class OneState:
    """``π_θ = softmax(θ)`` against a fixed ``π_ref``; ``π_old = softmax(old)``."""

    theta: Tensor
    reference: Tensor
    old: Tensor

    def rollout(self) -> Enumerated:
        k = self.theta.shape[-1]
        step = Step(self.theta.expand(k, k), self.old.expand(k, k), self.reference.expand(k, k),
                    torch.arange(k))
        return Enumerated([step], weights=self.old.softmax(-1))

    def references(self) -> dict[str, Tensor]:
        def policy() -> Categorical:  # afresh for each gradient: a graph is freed once used
            return Categorical(logits=self.theta)

        reference = Categorical(logits=self.reference)
        return {"reverse KL": gradient(kl(policy(), reference), [self.theta]),
                "forward KL": gradient(kl(reference, policy()), [self.theta]),
                "zero": torch.zeros_like(self.theta)}

    def cell(self, estimator: str, placement: str) -> Tensor:
        return gradient(surrogate(self.rollout(), estimator, placement), [self.theta])


@dataclass
class TwoSteps:
    """A first action ``a_1 ~ softmax(θ_1)``, then ``a_2 ~ softmax(θ_2[a_1])``; the reference and
    the rollout policy have the same shape (``(K,)`` and ``(K, K)`` logits)."""

    first: Tensor
    second: Tensor
    reference_first: Tensor
    reference_second: Tensor

    @property
    def parameters(self) -> list[Tensor]:
        return [self.first, self.second]

    def rollout(self) -> Enumerated:
        k = self.first.shape[-1]
        first_actions = torch.arange(k).repeat_interleave(k)
        second_actions = torch.arange(k).repeat(k)
        old_first, old_second = self.first.detach(), self.second.detach()
        weights = (old_first.log_softmax(-1)[first_actions]
                   + old_second.log_softmax(-1)[first_actions, second_actions]).exp()
        n = k * k
        return Enumerated([
            Step(self.first.expand(n, k), old_first.expand(n, k), self.reference_first.expand(n, k),
                 first_actions),
            Step(self.second[first_actions], old_second[first_actions],
                 self.reference_second[first_actions], second_actions),
        ], weights)

    def sequence_kl(self) -> Tensor:
        """``KL_seq(π_θ ‖ π_ref)`` over the ``K²`` sequences, as one categorical over them."""

        def joint(first: Tensor, second: Tensor) -> Tensor:
            return (first.log_softmax(-1).unsqueeze(-1) + second.log_softmax(-1)).reshape(-1)

        return categorical_kl(joint(self.first, self.second),
                              joint(self.reference_first, self.reference_second))

    def per_state_kls(self, forward: bool = False) -> tuple[Tensor, Tensor]:
        """``KL`` at the first state and at each second state (``KL(π_ref ‖ π_θ)`` if ``forward``)."""
        pairs = [(Categorical(logits=self.first), Categorical(logits=self.reference_first)),
                 (Categorical(logits=self.second), Categorical(logits=self.reference_second))]
        first, second = (kl(q, p) if forward else kl(p, q) for p, q in pairs)
        return first, second

    def references(self) -> dict[str, Tensor]:
        reached = self.first.softmax(-1)  # d(s_2 = a_1), the state distribution of the second step
        first, second = self.per_state_kls()
        forward_first, forward_second = self.per_state_kls(forward=True)
        return {
            "full": gradient(self.sequence_kl(), self.parameters),
            "partial": gradient(first + (reached.detach() * second).sum(), self.parameters),
            "future": gradient((reached * second.detach()).sum(), self.parameters),
            "partial forward": gradient(forward_first + (reached.detach() * forward_second).sum(),
                                        self.parameters),
            "zero": torch.zeros(sum(p.numel() for p in self.parameters), dtype=F64),
        }

    def cell(self, estimator: str, placement: str) -> Tensor:
        return gradient(surrogate(self.rollout(), estimator, placement), self.parameters)


def one_state(seed: int, off_policy: bool, k: int = 4) -> OneState:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g, dtype=F64).requires_grad_()
    reference = torch.randn(k, generator=g, dtype=F64)
    shift = 0.7 * torch.randn(k, generator=g, dtype=F64) if off_policy else 0.0
    return OneState(theta, reference, (theta.detach() + shift))


def two_steps(seed: int, k: int = 3) -> TwoSteps:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=F64)

    return TwoSteps(draw(k).requires_grad_(), draw(k, k).requires_grad_(), draw(k), draw(k, k))


def setting(column: int, seed: int) -> OneState | TwoSteps:
    return (one_state(seed, off_policy=False), one_state(seed, off_policy=True), two_steps(seed))[column]


SEEDS = range(5)
CELLS = [(column, cell) for column in range(len(SETTINGS)) for cell in GRADIENT_TABLE]


def cell_id(case: tuple[int, tuple[str, str]]) -> str:
    column, (estimator, placement) = case
    return f"{SETTINGS[column]}: {estimator} in {placement}"


def assert_follows(found: Tensor, label: str, references: dict[str, Tensor]) -> None:
    if label == "other":
        for name, expected in references.items():
            distance = (found - expected).norm().item()
            assert distance > CLEAR * (1 + expected.norm().item()), f"matches {name}"
    else:
        torch.testing.assert_close(found, references[label], **MATCH)


# ------------------------------------------------------------------ the table


def test_the_table_has_every_estimator_in_every_placement_and_only_known_labels():
    expected = ({(e, p) for e in ESTIMATORS for p in PLACEMENTS} | {("analytic", "loss+reward")}
                | {(e, "loss_score") for e in ESTIMATORS if e != "analytic"}
                | {(e, "reward_fresh") for e in ESTIMATORS if e != "analytic"})
    assert set(GRADIENT_TABLE) == expected
    for one, off, two in GRADIENT_TABLE.values():
        assert {one, off} <= ONE_STATE_LABELS and two in TWO_STEP_LABELS


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("column", range(len(SETTINGS)), ids=SETTINGS)
def test_the_reference_gradients_of_each_instance_are_far_apart(column, seed):
    """So that a match names one gradient, and "other" differs from each of them."""
    references = list(setting(column, seed).references().values())
    for i, a in enumerate(references):
        for b in references[i + 1 :]:
            assert (a - b).norm().item() > 100 * CLEAR


@pytest.mark.parametrize("case", CELLS, ids=[cell_id(c) for c in CELLS])
def test_each_cell_follows_the_gradient_the_table_names(case):
    column, (estimator, placement) = case
    label = GRADIENT_TABLE[estimator, placement][column]
    for seed in SEEDS:
        instance = setting(column, seed)
        assert_follows(instance.cell(estimator, placement), label, instance.references())


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 4), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.0, 3.0),
       column=st.sampled_from(range(len(SETTINGS))))
def test_every_named_gradient_holds_for_any_policy_and_reference(k, seed, scale, column):
    """The identities of the table (every cell but "other") for random logits of any scale,
    including equal policy and reference (scale 0: every gradient is zero)."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return scale * torch.randn(*shape, generator=g, dtype=F64)

    if column < 2:
        theta = draw(k).requires_grad_()
        old = theta.detach() + (draw(k) if column == 1 else 0.0)
        instance: OneState | TwoSteps = OneState(theta, draw(k), old)
    else:
        instance = TwoSteps(draw(k).requires_grad_(), draw(k, k).requires_grad_(), draw(k), draw(k, k))
    references = instance.references()
    for (estimator, placement), labels in GRADIENT_TABLE.items():
        if labels[column] != "other":
            torch.testing.assert_close(instance.cell(estimator, placement), references[labels[column]],
                                       rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------ the facts the table rests on


def expected_k2(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    """``E_{a~π}[k2(a)] = Σ_a π(a)·½(log π_ref(a) − log π(a))²``, the value k2 estimates."""
    log_p, log_q = policy_logits.log_softmax(-1), reference_logits.log_softmax(-1)
    return (log_p.exp() * 0.5 * (log_q - log_p).square()).sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_what_the_other_cells_of_one_state_follow(seed):
    """Closed forms of the "other" cells worth knowing: on-policy, k3 in the reward follows
    ``∇KL(π ‖ π_ref) − ∇KL(π_ref ‖ π)``, k2 in the reward ``∇E_π[k2] − ∇KL(π ‖ π_ref)``, k2 as a
    ρ-weighted loss ``∇E_π[k2]``; off-policy, k1 as a plain loss follows ``−∇KL(π_old ‖ π_θ)``:
    it pushes π_θ away from the rollout policy, whatever the reference."""
    instance = one_state(seed, off_policy=False)
    references = instance.references()
    of_k2 = gradient(expected_k2(instance.theta, instance.reference), [instance.theta])
    torch.testing.assert_close(instance.cell("k3", "reward"),
                               references["reverse KL"] - references["forward KL"], **MATCH)
    torch.testing.assert_close(instance.cell("k2", "reward"), of_k2 - references["reverse KL"], **MATCH)
    torch.testing.assert_close(instance.cell("k2", "loss_rho"), of_k2, **MATCH)
    moved = one_state(seed, off_policy=True)
    away = gradient(kl(Categorical(logits=moved.old), Categorical(logits=moved.theta)), [moved.theta])
    torch.testing.assert_close(moved.cell("k1", "loss"), -away, **MATCH)



@pytest.mark.parametrize("seed", SEEDS)
def test_the_sequence_kl_is_the_sum_of_the_expected_per_state_kls(seed):
    instance = two_steps(seed)
    first, second = instance.per_state_kls()
    by_states = first + (instance.first.softmax(-1) * second).sum()
    torch.testing.assert_close(instance.sequence_kl(), by_states, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_future_part_is_what_a_per_state_view_misses(seed):
    """``full = partial + future``, and the future part is no rounding residue."""
    references = two_steps(seed).references()
    torch.testing.assert_close(references["full"], references["partial"] + references["future"],
                               rtol=1e-10, atol=1e-12)
    assert references["future"].norm().item() > 0.01


def test_the_enumerated_rollout_weights_every_sequence_by_its_probability():
    instance = two_steps(0)
    rollout = instance.rollout()
    assert rollout.weights.sum().item() == pytest.approx(1.0, abs=1e-14)
    # sequence (a_1, a_2) = (2, 1) is row 2·K + 1
    expected = instance.first.softmax(-1)[2] * instance.second[2].softmax(-1)[1]
    assert rollout.weights[7].item() == pytest.approx(expected.item(), rel=1e-14)
    assert rollout.steps[0].actions[7].item() == 2 and rollout.steps[1].actions[7].item() == 1


def test_on_policy_the_cells_estimate_the_kl_value_they_name():
    """The surrogates are the usual values at ``π_old = π_θ``: k1, k3 and analytic estimate
    ``KL(π_θ ‖ π_ref)`` without bias in either loss form and in the reward; k2 does not."""
    instance = one_state(0, off_policy=False)
    value = kl(Categorical(logits=instance.theta), Categorical(logits=instance.reference)).item()
    for estimator in ("k1", "k3", "analytic"):
        for placement in PLACEMENTS:
            found = surrogate(instance.rollout(), estimator, placement).item()
            assert found == pytest.approx(value, rel=1e-12), (estimator, placement)
    assert surrogate(instance.rollout(), "k2", "loss").item() != pytest.approx(value, rel=1e-3)
