"""How per-token values of a batch of sequences combine into one loss, as an explicit choice,
with a normaliser fixed in advance so that the gradient does not depend on how an optimiser
step's sequences are split into micro-batches.

With ``v`` the per-token values ``(N, L)`` of a micro-batch of ``N`` sequences of up to ``L``
tokens and ``m`` the mask of real tokens:

==============  =========================  ===================================================
reduction       loss of a micro-batch      weight of one real token in the optimiser step
==============  =========================  ===================================================
``token``       ``Σ m·v / (N·L)``          ``1 / (B·L)``: every token alike
``sequence``    ``Σ m·v / N``              ``1 / B``: a sequence's tokens add up, so a long
                                           sequence weighs more than a short one
==============  =========================  ===================================================

``B = k·N`` is the number of sequences in the optimiser step (``k`` micro-batches: Lightning
divides each micro-batch's loss by ``accumulate_grad_batches``). Both normalisers are fixed per
micro-batch — the token *slots* ``N·L``, not the real tokens ``Σ m`` — so the step's loss is
``Σ_step m·v / (B·L)`` (or ``/ B``) however the step is split, provided every micro-batch has
``N`` sequences (the training batches of klexp's data modules do). Where there is no padding
(``m = 1``), ``token`` is the mean over all real tokens of the step. Dividing each micro-batch
by its own ``Σ m`` instead (a common choice) makes a token's weight depend on the other sequences
that happened to share its micro-batch: ``tests/test_distill_objectives.py`` shows the two
disagree under accumulation with padding, and this one agree.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Reduction = Literal["token", "sequence"]
REDUCTIONS: tuple[str, ...] = ("token", "sequence")


def reduce_tokens(values: Tensor, mask: Tensor | None = None, reduction: Reduction = "token") -> Tensor:
    """One loss from per-token ``values`` ``(N, L)`` (see the module docstring): ``token`` →
    ``Σ m·v / (N·L)``, ``sequence`` → ``Σ m·v / N``; ``mask`` marks the real tokens (all, if None)."""
    if values.dim() != 2:
        raise ValueError(f"values must be (sequences, tokens), got shape {tuple(values.shape)}")
    total = (values if mask is None else values.where(mask.bool(), 0.0)).sum()
    if reduction == "token":
        return total / values.numel()
    if reduction == "sequence":
        return total / values.shape[0]
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
