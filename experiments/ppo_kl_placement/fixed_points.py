"""Where each KL cell's expected gradient leads on ``klexp/TokenSequence-v0``, without sampling or a
network: a tabular policy (one row of logits per prefix) climbs the exact on-policy expectation of
the cell's surrogate until it stops moving, and the policy it ends at is scored exactly.

For a policy ``π`` with state distribution ``d`` and rewards ``r`` (on the last token), a cell
with estimator ``k`` ascends, with ``β`` the KL weight,

    S(θ) = Σ_s d(s) Σ_a π_θ(a|s)·Q(s, a)  −  β·Σ_s d(s) Σ_a π_old(a|s)·ℓ_θ(s, a)

* reward placement: ``Q(s, a) = −β·k(s, a) + V(s a)``, ``V(s) = Σ_a π(a|s)·Q(s, a)`` and ``V(y) =
  r(y)`` on a finished sequence, with ``k`` measured on ``π_old`` (no gradient), as PPO subtracts
  it from the rollout's rewards; ``ℓ = 0``;
* loss placement: ``Q`` carries the reward only; ``ℓ_θ(s, a)`` is what ``klexp.core.measure``
  makes of the action ``a`` drawn from ``π_old`` (``ρ·k`` with ``importance_weight``, ``k`` as
  written without; the closed-form per-state KL for ``analytic``), the same code as training.

``d``, ``Q`` and ``π_old`` are ``π_θ`` detached: the gradient of ``S`` is the expected gradient
a PPO iteration starts from (its first minibatch, on-policy), the first column of the gradient
table in ``tests/test_kl_gradients.py`` extended to six steps. It ignores what PPO adds: sampling
noise, a value-function baseline, clipping, several epochs off-policy, and a network that must
generalise across prefixes. So it answers one question: if training followed its expected
gradient to a standstill, which policy would each cell reach, and how far is that from π*?

    python experiments/ppo_kl_placement/fixed_points.py --out experiments/ppo_kl_placement/results

writes ``fixed_points.md`` and ``fixed_points.csv``: per cell and β, the tabular end point's
``J* − J``, ``KL(π ‖ π*)``, ``KL(π ‖ π_ref)`` (sequence-level, nats; also split by the half of the
sequence where it is paid) and ``E[r]``, and how much the gap still moved over the last tenth of
the ascent (cells whose limit is a deterministic policy approach it only as their logits grow).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.distributions import Categorical

from klexp.core.categorical import categorical_kl
from klexp.core.measure import measure
from klexp.tasks.ppo.token_env import TokenSequenceProblem

F64 = torch.float64


@dataclass(frozen=True)
class Cell:
    """One estimator × placement of the study (``reward`` and ``loss`` may both be set)."""

    name: str
    estimator: str
    reward: bool
    loss: bool
    importance_weight: bool = False


#: the study's twelve cells, in the README's order
CELLS = (
    Cell("k1 · reward", "k1", reward=True, loss=False),
    Cell("k1 · loss", "k1", reward=False, loss=True),
    Cell("k1 · loss ρ", "k1", reward=False, loss=True, importance_weight=True),
    Cell("k2 · reward", "k2", reward=True, loss=False),
    Cell("k2 · loss", "k2", reward=False, loss=True),
    Cell("k2 · loss ρ", "k2", reward=False, loss=True, importance_weight=True),
    Cell("k3 · reward", "k3", reward=True, loss=False),
    Cell("k3 · loss", "k3", reward=False, loss=True),
    Cell("k3 · loss ρ", "k3", reward=False, loss=True, importance_weight=True),
    Cell("exact · reward", "analytic", reward=True, loss=False),
    Cell("exact · loss", "analytic", reward=False, loss=True),
    Cell("exact · loss + reward", "analytic", reward=True, loss=True),
)


class Tree:
    """The prefixes of ``problem`` as a tree: depth blocks of the ``(P, V)`` logits table (the
    children of block ``t`` are block ``t + 1`` in the same order, ``token_env``'s layout)."""

    def __init__(self, problem: TokenSequenceProblem) -> None:
        self.problem = problem
        self.vocab, self.length = problem.vocab_size, problem.length
        self.blocks = []
        start = 0
        for t in range(self.length):
            self.blocks.append(slice(start, start + self.vocab**t))
            start += self.vocab**t
        self.reference = problem.reference_prefix_logits.to(F64)
        self.rewards = problem.rewards.to(F64)
        #: every action at every prefix, as one draw each: ``(V, P)``
        self.actions = torch.arange(self.vocab).unsqueeze(-1).expand(self.vocab, problem.num_prefixes)

    def state_distribution(self, probs: Tensor) -> Tensor:
        """``d(s)``, the probability that ``π`` (``(P, V)`` probabilities) writes prefix ``s``."""
        d = probs.new_zeros(probs.shape[0])
        d[0] = 1.0
        for t in range(self.length - 1):
            here, below = self.blocks[t], self.blocks[t + 1]
            d[below] = (d[here].unsqueeze(-1) * probs[here]).reshape(-1)
        return d

    def kl_paid_by_half(self, logits: Tensor) -> tuple[float, float]:
        """``KL(π ‖ π_ref)`` of the policy with ``logits`` (``(P, V)``) split by where it is paid:
        ``Σ_t E_{s ~ d_t}[KL(π(·|s) ‖ π_ref(·|s))]`` over the first half of the tokens (``t < L/2``)
        and over the second (nats; the two add up to the sequence-level KL)."""
        log_probs = logits.to(F64).log_softmax(-1)
        per_state = categorical_kl(log_probs, self.reference.log_softmax(-1))
        paid = self.state_distribution(log_probs.exp()) * per_state
        half = self.blocks[self.length // 2].start
        return float(paid[:half].sum()), float(paid[half:].sum())

    def action_values(self, probs: Tensor, costs: Tensor) -> Tensor:
        """``Q(s, a) = −costs(s, a) + V(s a)`` by a backward pass, ``V(y) = r(y)`` at the leaves."""
        q = torch.empty_like(probs)
        below = self.rewards
        for t in reversed(range(self.length)):
            block = self.blocks[t]
            q[block] = below.view(-1, self.vocab) - costs[block]
            below = (probs[block] * q[block]).sum(-1)
        return q

    def per_action(self, policy: Categorical, estimator: str, importance_weight: bool,
                   sampled_from: Categorical | None) -> Tensor:
        """``k(s, a)`` of ``KL(policy ‖ π_ref)`` for every action ``a`` at every prefix, ``(P, V)``,
        as ``klexp.core.measure`` computes it on a rollout's actions."""
        reference = Categorical(logits=self.reference)
        if estimator == "analytic":
            return measure(policy, reference).elementwise.unsqueeze(-1).expand(-1, self.vocab)
        log_prob = sampled_from.log_prob(self.actions) if sampled_from is not None else None
        found = measure(policy, reference, estimator=estimator, samples=self.actions,
                        sample_log_prob=log_prob, importance_weight=importance_weight)
        return found.per_sample.transpose(0, 1)

    def surrogate(self, logits: Tensor, cell: Cell, beta: float) -> Tensor:
        """``S(θ)`` of the module docstring for a tabular policy with ``logits`` ``(P, V)``."""
        old = Categorical(logits=logits.detach())
        probs = old.probs
        d = self.state_distribution(probs)
        costs = torch.zeros_like(probs)
        if cell.reward:
            with torch.no_grad():
                costs = beta * self.per_action(old, cell.estimator, False, None)
        q = self.action_values(probs, costs)
        policy = Categorical(logits=logits)
        total = (d.unsqueeze(-1) * policy.probs * q).sum()
        if cell.loss:
            per_action = self.per_action(policy, cell.estimator, cell.importance_weight, old)
            total = total - beta * (d.unsqueeze(-1) * probs * per_action).sum()
        return total


@dataclass(frozen=True)
class EndPoint:
    """Exact scores of the tabular end point; ``first_half``, ``second_half``: its
    ``KL(π ‖ π_ref)`` by where it is paid (``Tree.kl_paid_by_half``); ``moved``: ``|gap − gap
    10 % earlier|``."""

    gap: float
    kl_optimum: float
    kl_reference: float
    reward: float
    first_half: float
    second_half: float
    moved: float


def end_point(tree: Tree, cell: Cell, beta: float, steps: int, lr: float) -> EndPoint:
    """Adam on the tabular logits from the uniform policy (where PPO's network starts), ``steps``
    ascent steps on ``S``; the end point scored by ``TokenSequenceProblem.metrics``."""
    logits = torch.zeros_like(tree.reference, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    earlier = None
    for step in range(steps):
        optimizer.zero_grad()
        (-tree.surrogate(logits, cell, beta)).backward()
        optimizer.step()
        if step == steps - steps // 10 - 1:
            earlier = float(tree.problem.metrics(logits.detach(), beta).gap)
    found = tree.problem.metrics(logits.detach(), beta)
    return EndPoint(float(found.gap), float(found.kl_optimum), float(found.kl_reference),
                    float(found.reward), *tree.kl_paid_by_half(logits.detach()),
                    abs(float(found.gap) - earlier))


def write(rows: list[tuple[Cell, float, EndPoint]], optimum: dict[float, tuple[float, float]],
          out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    betas = sorted(optimum)
    lines = ["Tabular end points of each cell's expected on-policy gradient (`fixed_points.py`; "
             "no sampling, no network). π*: " + "; ".join(
                 f"β = {b:g}: KL(π*‖π_ref) = {optimum[b][0]:.3f}, E*[r] = {optimum[b][1]:.3f}"
                 for b in betas) + ".", "",
             "| cell | β | J* − J | KL(π‖π*) | KL(π‖π_ref) | paid in the first half | in the second half "
             "| E[r] | gap moved, last 10 % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {cell.name} | {beta:g} | {p.gap:.4f} | {p.kl_optimum:.3f} | {p.kl_reference:.3f} | "
              f"{p.first_half:.3f} | {p.second_half:.3f} | {p.reward:.3f} | {p.moved:.1e} |"
              for cell, beta, p in rows]
    (out / "fixed_points.md").write_text("\n".join(lines) + "\n")
    with (out / "fixed_points.csv").open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["cell", "beta", "gap", "kl_optimum", "kl_reference", "kl_first_half",
                         "kl_second_half", "reward", "gap_moved"])
        writer.writerows([cell.name, beta, repr(p.gap), repr(p.kl_optimum), repr(p.kl_reference),
                          repr(p.first_half), repr(p.second_half), repr(p.reward), repr(p.moved)]
                         for cell, beta, p in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = TokenSequenceProblem()
    tree = Tree(problem)
    optimum = {}
    for beta in args.betas:
        best = problem.optimal_sequence_log_probs(beta)
        optimum[beta] = (float(problem.metrics(problem.optimal_prefix_logits(beta), beta).kl_reference),
                         float((best.exp() * problem.rewards).sum()))
    rows = []
    for cell in CELLS:
        for beta in args.betas:
            found = end_point(tree, cell, beta, args.steps, args.lr)
            rows.append((cell, beta, found))
            print(f"{cell.name:24s} β={beta:g}  gap {found.gap:.4f}  KL(π‖π*) {found.kl_optimum:.3f}  "
                  f"KL(π‖π_ref) {found.kl_reference:.3f}  E[r] {found.reward:.3f}  moved {found.moved:.1e}",
                  flush=True)
    write(rows, optimum, args.out)


if __name__ == "__main__":
    main()
