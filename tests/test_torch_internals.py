"""Pins every assumption ``klexp.core.torch_internals`` makes about torch to the installed torch:
a distribution's state is its instance dictionary (parameters, wrapped distributions, lazily
derived values cached under their names, derived again once dropped), torch derives a categorical's
or Bernoulli's logits from its probabilities as ``derived_logits`` does, and the hand-written
autograd function ``LogRatio`` has the value and the derivatives of ``log p − log q`` under every
transform klexp uses. A torch upgrade that breaks one fails here, naming it."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from klexp.core import torch_internals as internals

F64 = torch.float64


@pytest.mark.parametrize("family", [Categorical, Bernoulli])
@pytest.mark.parametrize("given", ["probs", "logits"])
def test_the_given_parameter_is_held_and_the_other_cached_under_its_name_on_first_read(family, given):
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=F64)
    value = probs if given == "probs" else probs.log()
    d = family(**{given: value})
    other = "logits" if given == "probs" else "probs"
    state = internals.state_of(d)
    assert given in state, f"torch no longer holds the given {given} as an instance attribute"
    assert state[given] is getattr(d, given)
    assert other not in state, f"torch now derives {other} eagerly"
    derived = getattr(d, other)
    assert state[other] is derived, f"torch's lazy_property no longer caches {other} in the instance"
    assert internals.given_probs(d) == (given == "probs")


@pytest.mark.parametrize("family", [Categorical, Bernoulli])
def test_torch_derives_logits_from_probs_as_derived_logits_does(family):
    probs = torch.tensor([[0.0, 0.25, 0.75], [1e-30, 0.5, 0.5]], dtype=torch.float32)
    d = family(probs=probs, validate_args=False)
    expected = internals.derived_logits(probs, binary=family is Bernoulli)
    assert torch.equal(d.logits, expected), "torch's logits from probs are no longer probs_to_logits"


def test_expand_copies_the_cached_values_and_given_probs_still_tells_them_apart():
    built_from_probs = Categorical(probs=torch.tensor([0.2, 0.8]))
    _ = built_from_probs.logits
    expanded = built_from_probs.expand((3,))
    assert {"probs", "logits"} <= set(internals.state_of(expanded)), "expand no longer copies the cache"
    assert internals.given_probs(expanded)
    built_from_logits = Categorical(logits=torch.tensor([3.0, -40.0]))
    _ = built_from_logits.probs
    assert not internals.given_probs(built_from_logits.expand((3,)))


def test_the_state_holds_every_parameter_and_the_wrapped_distribution():
    loc, scale = torch.zeros(2, 3), torch.ones(2, 3)
    normal = Normal(loc, scale)
    assert internals.state_of(normal)["loc"] is loc and internals.state_of(normal)["scale"] is scale
    wrapped = Independent(normal, 1)
    assert internals.state_of(wrapped)["base_dist"] is normal


def test_a_copy_with_changed_state_computes_with_it_and_derives_a_dropped_value_again():
    probs = torch.tensor([[0.25, 0.75]], dtype=torch.float32)
    d = Categorical(probs=probs)
    _ = d.logits
    copied = internals.copy_with_state(d, {"probs": probs.to(F64)}, drop="logits")
    assert "logits" not in internals.state_of(copied) and "logits" in internals.state_of(d)
    assert copied.logits.dtype == F64, "a dropped lazy value is no longer derived again on read"
    assert copied.log_prob(torch.tensor([1])).dtype == F64
    assert copied.batch_shape == d.batch_shape
    normal = Normal(torch.zeros(2), torch.ones(2))
    moved = internals.copy_with_state(normal, {"loc": torch.full((2,), 3.0)})
    assert moved.mean.tolist() == [3.0, 3.0] and normal.mean.tolist() == [0.0, 0.0]


def log_probs() -> tuple[torch.Tensor, torch.Tensor]:
    log_p = torch.log_softmax(torch.tensor([[0.3, -1.2, 2.0, 0.1], [1.0, 0.0, -0.5, 0.2]], dtype=F64), -1)
    log_q = torch.log_softmax(torch.tensor([[1.0, 0.4, -0.3, 0.0], [0.0, 2.0, 0.5, -1.0]], dtype=F64), -1)
    return log_p, log_q


def test_log_ratio_applies_the_zero_log_zero_rule_and_keeps_plus_infinity():
    inf = float("inf")
    log_p = torch.tensor([-inf, -inf, 0.0, -1.0])
    log_q = torch.tensor([-inf, -2.0, -inf, -0.5])
    assert internals.log_ratio(log_p, log_q).tolist() == [0.0, 0.0, inf, -0.5]


def test_log_ratio_has_the_derivatives_of_the_difference_backward_forward_and_under_vmap():
    """The ``torch.autograd.Function`` contract ``LogRatio`` is written against: ``setup_context``
    with a static ``forward``, a hand-written ``backward`` and ``jvp``, a generated vmap rule, and
    an in-place edit of the forward's own output. (tests/test_divergences.py runs jvp and vmap of
    the divergences built on it.)"""
    log_p, log_q = (t.requires_grad_() for t in log_probs())
    assert torch.autograd.gradcheck(internals.log_ratio, (log_p, log_q), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(internals.log_ratio, (log_p, log_q))
    batched = torch.func.vmap(internals.log_ratio)(log_p.detach(), log_q.detach())
    torch.testing.assert_close(batched, log_p.detach() - log_q.detach(), rtol=0, atol=0)
