"""The protocol between a task whose training step is an update phase — several optimiser steps
on one batch of data, as PPO's epochs of minibatches on a rollout — and its KL terms.

::

    phase = UpdatePhase(self)
    phase.start(outputs_on_the_batch)               # before the first step
    for epoch ...:
        for minibatch ...:
            loss = klexp.total_loss(self, {...})    # the terms measure and weight, per minibatch
            if phase.should_stop(epoch, index, "minibatch"):
                break                               # a TargetKL term saw its target passed
            ... step ...
        if stopped or phase.should_stop(epoch, index, "epoch"):
            break
    phase.end(outputs_on_the_batch)                 # with the final parameters

``start`` and ``end`` let each KL term measure itself on the whole batch before and after the
phase (``KLMeasure.measure_phase``), which is what a controller adapting to the rollout's KL or to the
KL after the update (the PPO paper's adaptive β) needs; stop decisions are agreed across DDP ranks,
so every rank takes the same number of steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from klexp.lightning.internals import trainer_of
from klexp.lightning.ranks import any_rank
from klexp.lightning.target_kl import Check, TargetKL
from klexp.lightning.term import KLMeasure, kl_terms_of


class UpdatePhase:
    """One update phase of ``module`` (see the module docstring)."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.trainer = trainer_of(module)
        self.terms: list[KLMeasure] = kl_terms_of(self.trainer)
        self.stoppers = [term for term in self.terms if isinstance(term, TargetKL)]

    def start(self, outputs: Mapping[str, Any]) -> None:
        """Before the first step: terms whose controller adapts to the rollout measure now."""
        for term in self.terms:
            term.measure_phase("rollout", outputs)

    def should_stop(self, epoch: int, minibatch: int, boundary: Check) -> bool:
        """Whether a ``TargetKL`` term ends the phase at this boundary (on every rank when any
        rank's term says so); the terms record where it stopped."""
        if not self.stoppers:
            return False
        stop = any_rank(self.trainer, any(term.exceeded(boundary) for term in self.stoppers))
        if stop:
            for term in self.stoppers:
                term.stopped_at(epoch, minibatch)
        return stop

    def end(self, outputs: Mapping[str, Any]) -> None:
        """Once the phase is over: every term measures the KL the update produced."""
        for term in self.terms:
            term.measure_phase("after_update", outputs)
