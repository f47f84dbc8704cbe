"""A token-writing environment whose KL-regularised optimum is known exactly.

``klexp/TokenSequence-v0``: a policy writes a sequence ``y = (y_1, …, y_L)`` of ``L`` tokens from a
vocabulary of ``V``, one token per step, and is rewarded for the finished sequence. A fixed
reference policy ``π_ref`` (an autoregressive table of logits, one row per prefix, drawn from a
seed) is the policy to stay close to, as in KL-regularised RL fine-tuning (Ziegler et al. 2019).

* Observation: the prefix written so far, flat: position ``t`` holds the one-hot of ``y_t`` once
  written and zeros before, shape ``(L·V,)``, float32 (all zeros at the start).
* Action: the next token, ``Discrete(V)``.
* Reward: ``r(y)`` on the step that writes the last token, 0 on the others; the episode then
  terminates (it is never truncated).

The reward is the *symmetry* of the sequence, the share of mirrored pairs that match:
``r(y) = (1/m) Σ_{i<m} [y_i = y_{L+1−i}]``, ``m = ⌊L/2⌋``, in ``[0, 1]``. Why this one:

* the regularised optimum ``π*(y) ∝ π_ref(y)·exp(r(y)/β)`` is neither ``π_ref`` (``r`` is not
  constant) nor one sequence: all ``V^⌈L/2⌉`` palindromes (64 for the defaults) share the top
  reward, and ``π*`` weighs them (and the near-palindromes) by their reference probability;
* it depends on the future: the reward of the first half is settled only when the second half
  copies it, so ``π*(a | prefix)`` carries the soft value of the rest of the sequence. The KL a
  policy pays in the second half (for copying tokens the reference finds unlikely there) is
  decided by the tokens it wrote in the first half; a per-state KL, which sees only the KL of the
  current state, misses that effect of an action on the KL of the states that follow;
* it is non-additive over tokens (pairs interact), so no token-by-token greedy view is optimal.

Everything below is exact by enumeration of the ``V^L`` sequences (4,096 for the defaults), in
float64. Prefixes are ordered by length, then lexicographically (the first token most
significant): row ``(V^t − 1)/(V − 1) + Σ_{i≤t} y_i·V^{t−i}`` holds the prefix ``y_1 … y_t``, so
the ``V^t`` prefixes of length ``t`` are a contiguous block and their children form the next
block in the same order; sequences are ordered lexicographically likewise. A policy is given by its
logits on every prefix, ``(P, V)`` with ``P = (V^L − 1)/(V − 1)`` (evaluate a network on
``TokenSequenceProblem.prefix_observations()`` in one batch). With ``β > 0`` the KL coefficient:

* ``π(y) = Π_t π(y_t | y_<t)``                                     (``sequence_log_probs``);
* ``J(π) = E_π[r] − β·KL(π ‖ π_ref)``                               (``exact_metrics``);
* ``π*(y) = π_ref(y)·exp(r(y)/β) / Z``, ``J* = β·log Z = β·log E_{π_ref}[exp(r/β)] = max_π J(π)``
  (``optimal_sequence_log_probs``, ``optimal_value``); ``J* − J(π) = β·KL(π ‖ π*) ≥ 0``, zero only
  at ``π*`` (substitute ``log π* = log π_ref + r/β − J*/β`` into ``KL(π ‖ π*)``);
* ``π*(a | s) ∝ π_ref(a | s)·exp(W(s a))`` with the soft value ``W(y) = r(y)/β`` at the leaves and
  ``W(s) = log Σ_a π_ref(a | s)·exp(W(s a))`` above, a soft Bellman backward pass
  (``optimal_prefix_logits``; ``β·W(root) = J*``).

KL values are in nats, rewards and objectives in reward units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from klexp.core.categorical import categorical_kl
from klexp.errors import (
    ConfigValueError,
    require,
    require_finite_non_negative,
    require_finite_positive,
)

ENV_ID = "klexp/TokenSequence-v0"
#: exact metrics enumerate every sequence: V^L is capped to keep them a few milliseconds' work
MAX_SEQUENCES = 2**20

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Pure functions on per-prefix logits and per-sequence tensors (float64, any device)
# ------------------------------------------------------------------------------------------------


def prefix_count(vocab_size: int, length: int) -> int:
    """``P = Σ_{t<L} V^t = (V^L − 1)/(V − 1)``: the prefixes on which a policy acts."""
    return sum(vocab_size**t for t in range(length))


def sequence_length(prefix_logits: Tensor) -> int:
    """``L`` such that ``prefix_logits`` (``(P, V)``) has one row per prefix of length ``< L``."""
    if prefix_logits.dim() != 2 or prefix_logits.shape[-1] < 2:
        raise ValueError(f"prefix logits must have shape (prefixes, V ≥ 2), got {tuple(prefix_logits.shape)}")
    rows, vocab_size = prefix_logits.shape
    length, count = 0, 0
    while count < rows:
        count += vocab_size**length
        length += 1
    if count != rows:
        raise ValueError(f"prefix logits of shape {tuple(prefix_logits.shape)}: {rows} rows is no "
                         f"prefix count (V^L − 1)/(V − 1) for V = {vocab_size}")
    return length


def symmetry_reward(sequences: Tensor) -> Tensor:
    """``r(y) = (1/m) Σ_{i<m} [y_i = y_{L+1−i}]`` with ``m = ⌊L/2⌋``, per row of ``(…, L)`` tokens,
    float64 in ``[0, 1]``."""
    half = sequences.shape[-1] // 2
    matches = sequences[..., :half] == sequences.flip(-1)[..., :half]
    return matches.to(F64).mean(-1)


def sequence_log_probs(prefix_logits: Tensor) -> Tensor:
    """``log π(y) = Σ_t log π(y_t | y_<t)`` for every sequence, ``(V^L,)`` in lexicographic order,
    from the policy's logits on every prefix (``(P, V)``, prefix order of the module docstring)."""
    length = sequence_length(prefix_logits)
    vocab_size = prefix_logits.shape[-1]
    log_probs = torch.log_softmax(prefix_logits, dim=-1)
    joint = log_probs.new_zeros(1)
    start = 0
    for t in range(length):
        block = log_probs[start : start + vocab_size**t]
        # prefix j of length t has children j·V + a, the next block's order
        joint = (joint.unsqueeze(-1) + block).reshape(-1)
        start += vocab_size**t
    return joint


def optimal_value(reference_log_probs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """``J* = β·log E_{π_ref}[exp(r/β)] = max_π E_π[r] − β·KL(π ‖ π_ref)``, from the reference's
    sequence log-probabilities and the rewards (both ``(V^L,)``)."""
    require_finite_positive("beta", beta)
    return beta * torch.logsumexp(reference_log_probs + rewards / beta, dim=-1)


def optimal_sequence_log_probs(reference_log_probs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """``log π*(y) = log π_ref(y) + r(y)/β − J*/β``: the maximiser of ``J``, ``(V^L,)``."""
    require_finite_positive("beta", beta)
    return torch.log_softmax(reference_log_probs + rewards / beta, dim=-1)


def optimal_prefix_logits(reference_prefix_logits: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """``log π*(a | s)`` on every prefix, ``(P, V)``, by the soft Bellman backward pass: soft values
    ``W(y) = r(y)/β`` at the sequences, ``log π*(a | s) = log π_ref(a | s) + W(s a) − W(s)`` with
    ``W(s) = log Σ_a π_ref(a | s)·exp(W(s a))``."""
    require_finite_positive("beta", beta)
    length = sequence_length(reference_prefix_logits)
    vocab_size = reference_prefix_logits.shape[-1]
    reference = torch.log_softmax(reference_prefix_logits.to(F64), dim=-1)
    optimal = torch.empty_like(reference)
    soft_value = rewards.to(F64) / beta
    end = reference.shape[0]
    for t in reversed(range(length)):
        start = end - vocab_size**t
        logits = reference[start:end] + soft_value.view(-1, vocab_size)
        soft_value = torch.logsumexp(logits, dim=-1)
        optimal[start:end] = logits - soft_value.unsqueeze(-1)
        end = start
    return optimal


@dataclass(frozen=True)
class ExactMetrics:
    """Exact values for a policy ``π`` (0-d float64 tensors): ``reward = E_π[r]``,
    ``kl_reference = KL(π ‖ π_ref)`` over whole sequences (nats), ``objective = J(π) = reward −
    β·kl_reference``, ``optimal_objective = J*``, ``gap = J* − J(π) ≥ 0`` and ``kl_optimum =
    KL(π ‖ π*) = gap/β`` (nats)."""

    reward: Tensor
    kl_reference: Tensor
    objective: Tensor
    optimal_objective: Tensor
    gap: Tensor
    kl_optimum: Tensor

    def scalars(self, prefix: str) -> dict[str, float]:
        """Every value as a float, tagged ``<prefix>/<name>``."""
        return {f"{prefix}/{field.name}": float(getattr(self, field.name)) for field in fields(self)}


def exact_metrics(prefix_logits: Tensor, reference_log_probs: Tensor, rewards: Tensor,
                  beta: float) -> ExactMetrics:
    """``ExactMetrics`` of the policy with logits ``prefix_logits`` (``(P, V)``, any float dtype)
    against the reference's sequence log-probabilities and the rewards (``(V^L,)`` each)."""
    log_probs = sequence_log_probs(prefix_logits.to(F64))
    reference_log_probs = reference_log_probs.to(log_probs.device)
    rewards = rewards.to(log_probs.device)
    reward = torch.linalg.vecdot(log_probs.exp(), rewards)
    kl_reference = categorical_kl(log_probs, reference_log_probs)
    objective = reward - beta * kl_reference
    optimal = optimal_value(reference_log_probs, rewards, beta)
    optimal_log_probs = optimal_sequence_log_probs(reference_log_probs, rewards, beta)
    return ExactMetrics(reward=reward, kl_reference=kl_reference, objective=objective,
                        optimal_objective=optimal, gap=optimal - objective,
                        kl_optimum=categorical_kl(log_probs, optimal_log_probs))


# ------------------------------------------------------------------------------------------------
# The problem: vocabulary, length, reward and reference, with its enumerations
# ------------------------------------------------------------------------------------------------


class TokenSequenceProblem:
    """What ``klexp/TokenSequence-v0`` is, independent of stepping: its reward, its reference
    policy and the enumerations behind the exact metrics (built on first use).

    Args:
        vocab_size: ``V ≥ 2`` tokens.
        length: ``L ≥ 2`` tokens per sequence (``V^L ≤ 2^20``).
        reference_seed: seed of the reference's logits.
        reference_scale: their scale: logits per prefix are ``scale · N(0, 1)`` draws (0: the
            uniform reference).
    """

    def __init__(self, vocab_size: int = 4, length: int = 6, reference_seed: int = 0,
                 reference_scale: float = 1.0) -> None:
        for key, value, least in (("vocab_size", vocab_size, 2), ("length", length, 2)):
            require(isinstance(value, int) and not isinstance(value, bool) and value >= least, key,
                    f"an integer ≥ {least}", value)
        if vocab_size**length > MAX_SEQUENCES:
            raise ConfigValueError("length", f"vocab_size^length = {vocab_size}^{length} sequences "
                                   f"exceed the {MAX_SEQUENCES} that exact metrics enumerate")
        require(isinstance(reference_seed, int) and not isinstance(reference_seed, bool)
                and reference_seed >= 0, "reference_seed", "an integer ≥ 0", reference_seed)
        require_finite_non_negative("reference_scale", reference_scale)
        self.vocab_size, self.length = vocab_size, length
        self.reference_seed, self.reference_scale = reference_seed, float(reference_scale)
        self.num_prefixes = prefix_count(vocab_size, length)
        self.num_sequences = vocab_size**length

    @cached_property
    def reference_prefix_logits(self) -> Tensor:
        """``π_ref``'s logits on every prefix, ``(P, V)`` float64: ``scale · N(0, 1)`` draws of
        numpy's PCG64 seeded with ``reference_seed``, row by row in prefix order."""
        generator = np.random.default_rng(self.reference_seed)
        draws = generator.standard_normal((self.num_prefixes, self.vocab_size))
        return torch.from_numpy(self.reference_scale * draws)

    @cached_property
    def sequences(self) -> Tensor:
        """Every sequence, ``(V^L, L)`` int64, in lexicographic order."""
        return self._digits(self.num_sequences, self.length)

    @cached_property
    def rewards(self) -> Tensor:
        """``r(y)`` for every sequence, ``(V^L,)`` float64."""
        return symmetry_reward(self.sequences)

    @cached_property
    def reference_log_probs(self) -> Tensor:
        """``log π_ref(y)`` for every sequence, ``(V^L,)`` float64."""
        return sequence_log_probs(self.reference_prefix_logits)

    @cached_property
    def _prefix_observations(self) -> Tensor:
        observations = torch.zeros(self.num_prefixes, self.length, self.vocab_size)
        start = 0
        for t in range(self.length):
            count = self.vocab_size**t
            if t:
                block = observations[start : start + count, :t]
                block.scatter_(-1, self._digits(count, t).unsqueeze(-1), 1.0)
            start += count
        return observations.flatten(1)

    def prefix_observations(self, dtype: torch.dtype = torch.float32,
                            device: torch.device | str | None = None) -> Tensor:
        """The observation of every prefix, ``(P, L·V)``, in prefix order: a policy network
        evaluated on it gives the ``(P, V)`` logits the exact functions take."""
        return self._prefix_observations.to(device=device, dtype=dtype)

    def prefix_index(self, observations: Tensor) -> Tensor:
        """The prefix row of each observation, ``(…,)`` int64, from observations ``(…, L·V)``."""
        if observations.shape[-1] != self.length * self.vocab_size:
            raise ValueError(f"observations must end in L·V = {self.length * self.vocab_size}, "
                             f"got shape {tuple(observations.shape)}")
        one_hot = observations.reshape(*observations.shape[:-1], self.length, self.vocab_size)
        written = one_hot.sum(-1) > 0.5
        tokens = one_hot.argmax(-1)
        filled = written.sum(-1, keepdim=True)
        position = torch.arange(self.length, device=observations.device)
        # token i of a prefix of length t is digit V^(t−1−i) of its row within its block
        place = torch.where(written, self.vocab_size ** (filled - 1 - position).clamp_min(0), 0)
        block_start = (self.vocab_size ** filled.squeeze(-1) - 1) // (self.vocab_size - 1)
        return block_start + (tokens * place).sum(-1)

    def reference_logits(self, observations: Tensor) -> Tensor:
        """``π_ref``'s logits for a batch of observations of prefixes ``(…, L·V)`` (not of finished
        sequences, on which nothing acts): ``(…, V)`` in the observations' dtype and device."""
        table = self.reference_prefix_logits.to(device=observations.device, dtype=observations.dtype)
        return table[self.prefix_index(observations)]

    def sequence_log_probs(self, prefix_logits: Tensor) -> Tensor:
        """``log π(y)`` for every sequence (``sequence_log_probs``), float64."""
        return sequence_log_probs(prefix_logits.to(F64))

    def optimal_value(self, beta: float) -> Tensor:
        """``J* = β·log E_{π_ref}[exp(r/β)]``."""
        return optimal_value(self.reference_log_probs, self.rewards, beta)

    def optimal_sequence_log_probs(self, beta: float) -> Tensor:
        """``log π*(y)`` for every sequence."""
        return optimal_sequence_log_probs(self.reference_log_probs, self.rewards, beta)

    def optimal_prefix_logits(self, beta: float) -> Tensor:
        """``log π*(a | s)`` on every prefix, ``(P, V)`` (soft Bellman backward pass)."""
        return optimal_prefix_logits(self.reference_prefix_logits, self.rewards, beta)

    def metrics(self, prefix_logits: Tensor, beta: float) -> ExactMetrics:
        """``ExactMetrics`` of the policy with logits ``prefix_logits`` on every prefix."""
        return exact_metrics(prefix_logits, self.reference_log_probs, self.rewards, beta)

    def reward(self, tokens: Sequence[int]) -> float:
        """``r(y)`` of one finished sequence of ``L`` tokens (``symmetry_reward`` for one sequence,
        in plain Python: an env step must cost microseconds)."""
        pairs = len(tokens) // 2
        return sum(tokens[i] == tokens[-1 - i] for i in range(pairs)) / pairs

    def _digits(self, count: int, width: int) -> Tensor:
        """The base-V digits of ``0 … count − 1``, most significant first, ``(count, width)``."""
        powers = self.vocab_size ** torch.arange(width - 1, -1, -1)
        return torch.arange(count).unsqueeze(-1) // powers % self.vocab_size

    def __repr__(self) -> str:
        return (f"TokenSequenceProblem(vocab_size={self.vocab_size}, length={self.length}, "
                f"reference_seed={self.reference_seed}, reference_scale={self.reference_scale})")


# ------------------------------------------------------------------------------------------------
# The Gymnasium environment
# ------------------------------------------------------------------------------------------------


class TokenSequenceEnv(gym.Env[np.ndarray, np.int64]):
    """``klexp/TokenSequence-v0``: write ``length`` tokens, then receive their symmetry reward
    (see the module docstring). Its ``problem`` holds the reference policy and the exact metrics;
    the keyword arguments are ``TokenSequenceProblem``'s."""

    def __init__(self, vocab_size: int = 4, length: int = 6, reference_seed: int = 0,
                 reference_scale: float = 1.0) -> None:
        self.problem = TokenSequenceProblem(vocab_size, length, reference_seed, reference_scale)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length * vocab_size,), np.float32)
        self.action_space = gym.spaces.Discrete(vocab_size)
        self._tokens: list[int] | None = None
        self._observation = np.zeros(length * vocab_size, np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._tokens = []
        self._observation[:] = 0.0
        return self._observation.copy(), {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._tokens is None or len(self._tokens) == self.problem.length:
            raise gym.error.ResetNeeded("the sequence is finished (or not begun): call reset()")
        token = int(action)
        if token != action or not 0 <= token < self.problem.vocab_size:
            raise ValueError(f"action must be a token in 0 … {self.problem.vocab_size - 1}, got {action!r}")
        self._observation[len(self._tokens) * self.problem.vocab_size + token] = 1.0
        self._tokens.append(token)
        terminated = len(self._tokens) == self.problem.length
        reward = self.problem.reward(self._tokens) if terminated else 0.0
        return self._observation.copy(), reward, terminated, False, {}


def _register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=f"{__name__}:TokenSequenceEnv")


_register()
