"""The study's compute measure, counted, not timed: multiply-accumulates (MACs) of the networks
over the token positions a training step evaluates.

A ``PrefixMLP`` evaluates one position (a prefix) at the cost of its weight matrices, whether
teacher-forced or while sampling (it has no cache to reuse), so per position:

* the student, forward and backward on the step's sequences: ``3·S`` (backward ≈ 2 × forward);
* the teacher, forward (no gradient) on them: ``T``;
* sampling the step's sequences from the teacher (``task.source=teacher``), on the steps that do
  not take the student's own: ``(1 − λ)·T``;
* sampling them from the student (on-policy, probability λ = ``task.student_fraction``): ``λ·S``

with ``S`` and ``T`` the MACs of one position through the student and the teacher. A step of
``B`` sequences of length ``L`` costs ``B·L`` times the sum, in expectation over λ's draws. Not
counted: the objectives' own arithmetic over the 8-token vocabulary (at most a few hundred
operations a position against 3,000–24,000 MACs of the nets: under 1 % for every objective),
the optimiser's update, the exact evaluation (the same for every run) and the teacher's training
(done once, shared by all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from klexp.nets.autoregressive import PrefixMLP


def position_macs(vocab_size: int, length: int, hidden: Sequence[int]) -> int:
    """Multiply-accumulates of one position through a ``PrefixMLP`` (its weight matrices)."""
    net = PrefixMLP(vocab_size, length, hidden)
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class StepCost:
    """What one training step evaluates, per position: ``student`` and ``teacher`` are the MACs of
    one position through each net, ``source`` and ``student_fraction`` the task's."""

    student: int
    teacher: int
    source: str = "data"
    student_fraction: float = 0.0

    def per_position(self) -> float:
        """Expected MACs per token position of one step (the module docstring's sum)."""
        lam = self.student_fraction
        teacher_samples = (1 - lam) * self.teacher if self.source == "teacher" else 0.0
        return 3 * self.student + self.teacher + teacher_samples + lam * self.student

    def step(self, positions: int) -> float:
        """Expected MACs of one step over ``positions`` = batch size × length token positions."""
        return positions * self.per_position()


def matched_steps(cost: StepCost, reference: StepCost, reference_steps: int) -> int:
    """The number of steps of ``cost`` whose compute is closest to ``reference_steps`` steps of
    ``reference`` (same batch)."""
    return max(1, round(reference_steps * reference.per_position() / cost.per_position()))
