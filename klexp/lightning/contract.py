"""What klexp reads from a user's ``LightningModule``: the module contract, in one place.

A module needs none of it: a plain ``LightningModule`` whose steps return ``{"loss": ...,
<named outputs>}`` works with every klexp term and callback. Each member below is optional, and a
module that has it gets what its line says; without it klexp does what the line's default says.

============================  =====================================  ================================
member                        read by, and when                      when absent
============================  =====================================  ================================
``output_names``              the ``klexp`` app, before anything is  a term's outputs are checked on
(``DeclaresOutputs``)         built: every output a configured term  the first training step instead
                              reads must be among them
``check_terms(terms)``        the ``klexp`` app, before anything is  no check of the module's own
(``ChecksTerms``)             built: raise a ``KlexpError`` (one
                              line) for terms the module cannot
                              serve
``configure_model_for(dm)``   the ``klexp`` app's check before a     a module that builds in
(``BuildsForData``)           run, on a copy of the module, before   ``configure_model`` is left to
                              any trainer exists: build what         Lightning; one built in its
                              ``configure_model`` builds, from the   constructor is checked as built
                              DataModule given                       there
``custom_scalars()``          ``klexp.Dashboards`` whenever it       only the ``KL terms`` section
(``HasCharts``)               rewrites the layout: ``{section:
                              {title: [tag regex, ...]}}``
``log_step()``                every scalar klexp writes (terms,      Lightning's logging step, and an
(``HasLogStep``)              ``klexp.log_metrics``): the x-axis     ``epoch`` scalar
                              (an RL task's environment steps)
============================  =====================================  ================================

``KlexpModule`` is all of them. A module declares the ones it has, for a static type checker to
check and for a reader to see, by subclassing (``class MyModule(pl.LightningModule,
klexp.HasLogStep)``: a declared member left undefined is an error when the module is made), or
simply defines them (structural typing: ``isinstance(module, klexp.HasLogStep)`` holds without a
declaration). The methods count where the module's class defines them, not as instance
attributes. klexp reads the members only through the functions below, so that this page stays
the one description of the contract.

Terms are the other thing klexp reads, and they are nominal types (``klexp.Term`` and its
subclasses): a task that reads a KL term's fields says so with ``klexp.lightning.term.kl_measures``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import pytorch_lightning as pl

if TYPE_CHECKING:
    from klexp.lightning.loss import Term

#: ``{section: {chart title: [tag regex, ...]}}``, as TensorBoard's Custom Scalars plugin lays out
Charts = Mapping[str, Mapping[str, Sequence[str]]]


@runtime_checkable
class DeclaresOutputs(Protocol):
    """The names of the outputs the module's steps return for its terms (a class attribute or a
    property), so that the ``klexp`` app checks a config's terms against them before anything is
    built."""

    @property
    @abstractmethod
    def output_names(self) -> Collection[str]: ...


@runtime_checkable
class ChecksTerms(Protocol):
    """The module's own check of the terms configured for it, before anything is built."""

    @abstractmethod
    def check_terms(self, terms: Sequence[Term]) -> None:
        """Raise a ``klexp.KlexpError`` (one line naming the term's key, ``kl.<name>…``, and what
        was expected) for a term the module cannot serve; change nothing."""


@runtime_checkable
class BuildsForData(Protocol):
    """A module that builds in ``configure_model`` from the trainer's DataModule, able to build
    the same from a DataModule it is given (klexp's ``Task`` base class has it)."""

    @abstractmethod
    def configure_model_for(self, datamodule: pl.LightningDataModule | None) -> None:
        """Build what ``configure_model`` builds, reading the data's facts from ``datamodule``."""


@runtime_checkable
class HasCharts(Protocol):
    """Custom Scalars charts of the module's own tags."""

    @abstractmethod
    def custom_scalars(self) -> Charts:
        """``{section: {title: [tag regex, ...]}}``; a chart whose regexes match no written tag is
        left out."""


@runtime_checkable
class HasLogStep(Protocol):
    """The module's own x-axis for everything klexp writes."""

    @abstractmethod
    def log_step(self) -> int:
        """The step the scalars written now go at, non-decreasing over a run. A module that is
        resumed saves the next step it will log at in its checkpoints under
        ``klexp.lightning.logging.LOG_STEP_KEY`` (the ``klexp`` app's logger purges from it)."""


@runtime_checkable
class KlexpModule(DeclaresOutputs, ChecksTerms, BuildsForData, HasCharts, HasLogStep, Protocol):
    """Every member of the module contract (see the module docstring); a module usually has a few,
    and declares those protocols instead."""


def declared_outputs(module: object) -> Collection[str] | None:
    """The outputs the module declares (``output_names``), or None when it declares none."""
    return module.output_names if isinstance(module, DeclaresOutputs) else None


def check_module_terms(module: object, terms: Sequence[Term]) -> None:
    """The module's own check of ``terms`` (``check_terms``), when it has one."""
    if _has(module, ChecksTerms):
        cast(ChecksTerms, module).check_terms(terms)


def builds_for_data(module: object) -> bool:
    """Whether the module can build itself for a DataModule given before a trainer exists."""
    return _has(module, BuildsForData)


def module_charts(module: object) -> dict[str, Mapping[str, Sequence[str]]]:
    """The module's own Custom Scalars charts (``custom_scalars()``), or none."""
    return dict(cast(HasCharts, module).custom_scalars()) if _has(module, HasCharts) else {}


def module_log_step(module: object) -> int | None:
    """The step the module's ``log_step()`` returns, or None when it has none (Lightning's logging
    step is then the x-axis)."""
    return int(cast(HasLogStep, module).log_step()) if _has(module, HasLogStep) else None


def _has(module: object, capability: type) -> bool:
    """Whether the module's class has the method ``capability`` names. ``issubclass`` is answered
    from ABCMeta's cache of the class (~1 µs), where ``isinstance`` with a runtime protocol looks
    the members up on every call (~20 µs on Python 3.11), and ``log_step`` is read at every
    write."""
    return issubclass(type(module), capability)
