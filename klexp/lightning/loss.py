"""How terms reach a module's loss: the one public path, used by klexp's own tasks as by any
``LightningModule``.

A module exposes the named distributions of each step in the mapping its step returns, and the
trainer holds the terms::

    def training_step(self, batch, batch_idx):
        ...
        return {"loss": reconstruction_nll, "posterior": q, "prior": p}

    Trainer(callbacks=[KLTerm("prior", p="posterior", q="prior")])

When the trainer sets up, the terms wrap the module's ``training_step``, ``validation_step`` and
``test_step`` (on the instance; the class is untouched and the wrappers go at teardown). After each
step the wrapper replaces ``"loss"`` by ``total_loss`` of the returned mapping,
``loss + Σ_terms term(outputs)``, which Lightning then back-propagates.

Why a wrapper and a function: the wrapper makes the natural contract — return your distributions —
work with no call at all, so a term can never be configured and silently left out. Under manual
optimisation the module back-propagates by itself, so there ``total_loss(self, outputs)`` is the one
call to make (``self.manual_backward(klexp.total_loss(self, {...}))``); a step that called it is
not added to again.

Checks, every training step: a term that received nothing (its outputs missing from the returned
mapping, or no ``total_loss`` call under manual optimisation) stops the run with one line naming
the term, the outputs it reads and what the step returned. In validation and test a term whose
outputs are missing is skipped: an evaluation step need not return distributions. The loss and
every term's value are checked to be finite with one device-to-host copy per step (agreed across
DDP ranks); a failure names the term and describes its distributions.

Logged: ``loss/task`` and ``loss/total`` on the training steps Lightning writes, and
``<stage>/loss/task``, ``<stage>/loss/total`` as epoch means in validation and test;
``loss/total`` only when a term adds to the loss (else it repeats ``loss/task``).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.data import extract_batch_size
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor

from klexp.errors import KlexpError, NonFiniteError
from klexp.lightning.internals import trainer_of
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.lightning.ranks import all_ranks_agree

STEPS: dict[str, str] = {"training_step": "train", "validation_step": "val", "test_step": "test"}
_WRAPPED = "_klexp_wrapped_steps"


class Term(pl.Callback, ABC):
    """A callback fed the named outputs of each step. Its type says which call feeds it and what
    it gives back: a ``LossTerm`` adds to the loss (``total_loss``), a ``RewardTerm`` penalises the
    reward (``reward_penalty``), and any other term only measures, fed by ``total_loss`` alongside
    the loss terms (``klexp.TargetKL``). Every one gets the wrapping, the output checks and the
    finiteness guard of this module."""

    name: str
    #: what messages call the term
    label: str = "term"
    check_finite: bool = True
    #: how many times the term received outputs (``total_loss`` / ``reward_penalty`` calls)
    calls: int = 0

    @abstractmethod
    def reads(self) -> tuple[str, ...]:
        """The names of the outputs the term needs."""

    @abstractmethod
    def take(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor | None, Tensor]:
        """What the term gives the call that feeds it (a loss, a penalty per element, or None) and
        the value it measured (detached; for the guard)."""

    def describe(self, outputs: Mapping[str, Any]) -> str:
        """What the outputs the term read looked like, for a non-finite value's message."""
        return ""

    def missing(self, outputs: Collection[str]) -> list[str]:
        """The outputs the term reads that are not among ``outputs``."""
        return [name for name in self.reads() if name not in outputs]

    def check_outputs(self, available: Collection[str], where: str) -> None:
        """Raise ``KlexpError`` naming the term, what it reads and what ``where`` provides, if an
        output it reads is not ``available``. The one check of a term's outputs: at start-up
        against the outputs a module declares, and on every training step against the ones it
        returned."""
        missing = self.missing(available)
        if missing:
            raise KlexpError(
                f"{self.label} '{self.name}' reads {_names(self.reads())}; {where} "
                f"{_names(sorted(map(str, available))) or 'nothing'} (missing: {_names(missing)})"
            )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        wrap_steps(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        unwrap_steps(pl_module)


class LossTerm(Term):
    """A term added to the module's loss: a subclass implements ``reads`` and ``contribute``.
    ``KLTerm`` is the one klexp ships."""

    @abstractmethod
    def contribute(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor, Tensor]:
        """The term's loss on one batch and the value it measured (detached; for the guard)."""

    def take(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor | None, Tensor]:
        return self.contribute(outputs, stage, step)

    def __call__(self, outputs: Mapping[str, Any], stage: str = "train", step: int = 0) -> Tensor:
        """The term's loss on ``outputs`` (``contribute`` without the measured value)."""
        return self.contribute(outputs, stage, step)[0]


class RewardTerm(Term):
    """A term an RL task subtracts from its rewards (``reward_penalty``): a subclass implements
    ``reads`` and ``penalty``. ``KLPenalty`` is the one klexp ships."""

    @abstractmethod
    def penalty(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor, Tensor]:
        """The penalty per batch element (no gradient) and the value measured."""

    def take(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor | None, Tensor]:
        return self.penalty(outputs, stage, step)


def terms_of(trainer: pl.Trainer | None) -> list[Term]:
    """The terms among a trainer's callbacks, in the order they were given."""
    if trainer is None:
        return []
    return [callback for callback in trainer.callbacks if isinstance(callback, Term)]


def _fed_by_total_loss(term: Term) -> bool:
    return not isinstance(term, RewardTerm)


def terms_in_loss(trainer: pl.Trainer | None) -> bool:
    """Whether any of the trainer's terms adds to the loss (else ``loss/total`` would repeat
    ``loss/task``, and is not logged)."""
    return any(isinstance(term, LossTerm) for term in terms_of(trainer))


def total_loss(module: pl.LightningModule, outputs: Mapping[str, Any], *, stage: str | None = None,
               log: bool = True, batch_size: int | None = None) -> Tensor:
    """``outputs["loss"] + Σ term(outputs)`` over the trainer's loss terms, checked to be finite;
    each term, and each term that only measures, records what it measured for its logs.

    ``stage`` defaults to where the trainer is (``train``, ``val`` or ``test``). In evaluation a
    term whose outputs are missing is skipped, and ``"loss"`` may be missing too (the terms are
    then only measured, and the sum of their losses returned). ``log`` writes ``loss/task`` and,
    when a term adds to the loss, ``loss/total`` (pass False when a step calls this several times
    and logs its own means);
    ``batch_size`` weighs them in evaluation's epoch means (by default Lightning infers it from
    the batch)."""
    trainer = trainer_of(module)
    stage = stage or current_stage(module)
    task_loss = outputs.get("loss")
    if task_loss is None and stage == "train":
        raise KlexpError(f"total_loss: the outputs of a training step need a 'loss' (the module's own "
                         f"loss, 0 if it has none); got {_names(map(str, outputs)) or 'nothing'}")
    step = trainer.global_step if trainer is not None else 0
    loss = task_loss
    terms = [term for term in terms_of(trainer) if _fed_by_total_loss(term)]
    given, guarded = _feed(terms, outputs, stage, step, "total_loss was given",
                           skip_missing=stage != "train")
    for term_loss in given:
        loss = term_loss if loss is None else loss + term_loss
    if loss is None:
        return torch.zeros(())
    _check_finite(trainer, stage, step, loss, task_loss, guarded, outputs)
    if log and task_loss is not None and logs_now(module):
        prefix = "loss" if stage == "train" else f"{stage}/loss"
        parts = {f"{prefix}/task": task_loss.detach()}
        if terms_in_loss(trainer):
            parts[f"{prefix}/total"] = loss.detach()
        log_metrics(module, parts, stage=stage, batch_size=batch_size)
    return loss


def reward_penalty(module: pl.LightningModule, outputs: Mapping[str, Any], *,
                   stage: str | None = None) -> Tensor | None:
    """``Σ_terms weight · k`` per element over the trainer's reward terms, or None when there are
    none; an RL task subtracts it from the rewards of the steps ``outputs`` describe
    (``r_t ← r_t − β·k(s_t, a_t)``) before computing advantages, so the policy gradient carries the
    KL through the return (see the KL-placement table in the docs). No gradient flows through it."""
    trainer = trainer_of(module)
    stage = stage or current_stage(module)
    step = trainer.global_step if trainer is not None else 0
    terms = [term for term in terms_of(trainer) if isinstance(term, RewardTerm)]
    given, guarded = _feed(terms, outputs, stage, step, "reward_penalty was given", skip_missing=False)
    total: Tensor | None = None
    for penalty in given:
        total = penalty if total is None else total + penalty
    if total is not None:
        _check_finite(trainer, stage, step, total.sum(), None, guarded, outputs)
    return total


def _feed(terms: list[Term], outputs: Mapping[str, Any], stage: str, step: int, where: str, *,
          skip_missing: bool) -> tuple[list[Tensor], list[tuple[Term, Tensor]]]:
    """The one path by which terms receive a step's outputs: each term, in order, is checked to
    find what it reads (or skipped, with ``skip_missing``), takes the outputs and counts the call;
    returns what they gave (None left out) and the values the guard must check."""
    given: list[Tensor] = []
    guarded: list[tuple[Term, Tensor]] = []
    for term in terms:
        if skip_missing and term.missing(outputs):
            continue
        term.check_outputs(outputs, where)
        gives, value = term.take(outputs, stage, step)
        term.calls += 1
        if gives is not None:
            given.append(gives)
        if term.check_finite:
            guarded.append((term, value))
    return given, guarded


def _check_finite(trainer: pl.Trainer | None, stage: str, step: int, loss: Tensor,
                  task_loss: Tensor | None, guarded: list[tuple[Term, Tensor]],
                  outputs: Mapping[str, Any]) -> None:
    """One device-to-host copy for the loss and every guarded term's value: their sum, which is
    finite when they all are (a finite sum that overflows is told apart by looking at each value,
    which only a failing step pays for); on a non-finite one, the first term at fault (or the loss)
    is named and described."""
    probe = loss.detach()
    for _, value in guarded:
        probe = probe + value
    finite = math.isfinite(probe.item()) or _each_finite(loss, guarded)
    if all_ranks_agree(trainer, finite):
        return
    if finite:
        raise NonFiniteError(f"the {stage} loss turned non-finite on another rank at step {step}")
    for term, value in guarded:
        if not math.isfinite(float(value)):
            raise NonFiniteError(f"{term.label} '{term.name}' is {float(value)} at step {step} "
                                 f"({stage}); {term.describe(outputs)}")
    task = f" (task loss {float(task_loss)})" if task_loss is not None else ""
    raise NonFiniteError(f"the {stage} loss is {float(loss)} at step {step}{task}")


def _each_finite(loss: Tensor, guarded: list[tuple[Term, Tensor]]) -> bool:
    return all(math.isfinite(float(value)) for value in (loss, *(v for _, v in guarded)))


# ---------------------------------------------------------------------------------------------
# Wrapping the module's steps
# ---------------------------------------------------------------------------------------------


def wrap_steps(module: pl.LightningModule) -> None:
    """Wrap the module's own ``training_step``, ``validation_step`` and ``test_step`` (see the
    module docstring); a second call does nothing."""
    if _WRAPPED in vars(module):
        return
    wrapped = []
    for name, stage in STEPS.items():
        if is_overridden(name, module):
            setattr(module, name, _wrapped_step(module, getattr(module, name), stage))
            wrapped.append(name)
    object.__setattr__(module, _WRAPPED, wrapped)


def unwrap_steps(module: pl.LightningModule) -> None:
    """Remove the wrappers ``wrap_steps`` installed."""
    for name in vars(module).pop(_WRAPPED, []):
        vars(module).pop(name, None)


def _wrapped_step(module: pl.LightningModule, step: Callable[..., Any], stage: str) -> Callable[..., Any]:
    @functools.wraps(step)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        terms = terms_of(trainer_of(module))
        if not terms:
            return step(*args, **kwargs)
        calls_before = [term.calls for term in terms]
        output = step(*args, **kwargs)
        called_itself = any(term.calls != before for term, before in zip(terms, calls_before, strict=True))
        if stage != "train":
            if isinstance(output, Mapping) and not called_itself:
                total = total_loss(module, output, stage=stage, batch_size=_batch_size(args))
                if "loss" in output:
                    output = {**output, "loss": total}
            return output
        if module.automatic_optimization:
            if output is None:
                return output  # Lightning skips the batch: nothing is trained, nothing to add
            if isinstance(output, Mapping) and not called_itself:
                for term in terms:
                    if _fed_by_total_loss(term):
                        term.check_outputs(output, "training_step returned")
                output = {**output, "loss": total_loss(module, output, stage=stage)}
        received = [term.calls != before for term, before in zip(terms, calls_before, strict=True)]
        _check_all_received(terms, received, output, module)
        return output

    return wrapped


def _check_all_received(terms: list[Term], called: list[bool], output: Any,
                        module: pl.LightningModule) -> None:
    for term, received in zip(terms, called, strict=True):
        if received:
            continue
        if isinstance(output, Mapping):
            term.check_outputs(output, "training_step returned")
        if not module.automatic_optimization:
            how = ("under manual optimisation, back-propagate klexp.total_loss(self, outputs) "
                   "with outputs = {'loss': ..., " + ", ".join(f"{n!r}: ..." for n in term.reads()) + "}")
        elif isinstance(term, RewardTerm):
            how = "a reward-placed term needs the task to call klexp.reward_penalty"
        else:
            how = f"training_step returned {_shape_of(output)}; return a mapping with 'loss' and them"
        raise KlexpError(f"{term.label} '{term.name}' reads {_names(term.reads())}, but "
                         f"received nothing in training_step: {how}")


def _batch_size(step_args: tuple[Any, ...]) -> int:
    """The size of the batch a step was given, as Lightning would infer it (1 when it holds no
    tensor, e.g. a step index)."""
    try:
        return extract_batch_size(step_args[0]) if step_args else 1
    except MisconfigurationException:
        return 1


def _names(names: Any) -> str:
    return ", ".join(repr(n) for n in names)


def _shape_of(output: Any) -> str:
    if isinstance(output, Mapping):
        return "{" + ", ".join(repr(k) for k in output) + "}"
    return "None" if output is None else f"a {type(output).__name__}"
