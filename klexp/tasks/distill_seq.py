"""Distillation of autoregressive models where the truth is known: a student learns from a frozen
teacher over a sequence space small enough to enumerate, and is scored at each validation by the
exact sequence-level divergences (``klexp.core.sequences``).

Which sequences a training step sees is config: ``source`` = ``data`` (the batch) or ``teacher``
(as many sequences drawn from the teacher), replaced with probability ``student_fraction`` (GKD's
λ) by the student's own samples. The objective is a KL term's (``klexp.DistillTerm`` with a
``klexp.core.distill_objectives`` objective, or a plain ``klexp.KLTerm``).

Outputs for the terms (batch shape ``(N, L)``, one distribution per position):

* ``student`` — Categorical of the student's next-token logits, teacher-forced on ``tokens``;
* ``teacher`` — the same for the teacher (with a teacher checkpoint);
* ``target``  — the one-hot distribution of the next token in ``tokens``
  (``KL(target ‖ student)`` is the student's NLL: how the teacher is trained);
* ``tokens``  — the sequences ``(N, L)``.

Logged at each validation, exactly (``reference`` = the teacher, or the true source without
one): ``val/seq_kl_forward`` = KL(reference ‖ student), ``val/seq_kl_reverse``, ``val/seq_tv``,
``val/student_entropy``, ``val/reference_entropy`` and the teacher-forced token averages
``val/token_kl_{forward,reverse}_on_{reference,student}``; with a teacher also
``val/true_kl_forward`` = KL(truth ‖ student); and ``val/nll``, the student's per-token NLL on
held-out data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical

from klexp.core.sequences import prefix_tree, sample_sequences, sequence_divergences
from klexp.errors import KlexpError, require_in, require_unit_interval
from klexp.lightning.distill_term import DistillTerm
from klexp.lightning.logging import log_metrics
from klexp.lightning.loss import Term
from klexp.nets.autoregressive import PrefixMLP
from klexp.nets.frozen import load_frozen, read_checkpoint
from klexp.nets.mlp import Activation, check_mlp_args
from klexp.tasks.base import OptimizerFactory, SchedulerFactory, Task

Source = Literal["data", "teacher"]
SOURCES: tuple[str, ...] = ("data", "teacher")
#: where a SequenceDistillTask checkpoint describes its network
CHECKPOINT_NET_KEY = "klexp_sequence_net"


class SequenceDistillTask(Task):
    """A student ``PrefixMLP`` trained by KL terms, optionally from a frozen teacher.

    Args:
        hidden, activation: the student (vocabulary and length come from the data).
        teacher_checkpoint: a checkpoint of a trained SequenceDistillTask (a stage); adds the
            ``teacher`` output.
        source: ``data`` or ``teacher``: whose sequences a training step sees.
        student_fraction: λ, the probability that a step sees the student's own samples instead
            (GKD's on-policy fraction); 1 for objectives that need them.
    """

    def __init__(self, hidden: Sequence[int] = (96, 64), activation: Activation = "relu",
                 teacher_checkpoint: str | None = None, source: Source = "data",
                 student_fraction: float = 0.0, optimizer: OptimizerFactory | None = None,
                 lr_scheduler: SchedulerFactory | None = None) -> None:
        super().__init__(optimizer, lr_scheduler)
        check_mlp_args(hidden, activation, 0.0)
        require_in("source", source, SOURCES)
        require_unit_interval("student_fraction", student_fraction, closed_right=True)
        self.hidden, self.activation = list(hidden), activation
        self.teacher_checkpoint, self.source = teacher_checkpoint, source
        self.student_fraction = float(student_fraction)
        self.student: PrefixMLP | None = None
        self.teacher: PrefixMLP | None = None

    @property
    def output_names(self) -> frozenset[str]:
        teacher = {"teacher"} if self.teacher_checkpoint is not None else set()
        return frozenset({"student", "target", "tokens", *teacher})

    def check_terms(self, terms: Sequence[Term]) -> None:
        """Refuse, before anything is built, teacher samples without a teacher and an objective
        that needs the student's own samples on steps that would not all have them."""
        if self.source == "teacher" and self.teacher_checkpoint is None:
            raise KlexpError("task.source: teacher samples need task.teacher_checkpoint (or a "
                             "teacher stage); got source=teacher without one")
        for term in terms:
            if isinstance(term, DistillTerm) and term.needs_student_samples and self.student_fraction != 1:
                raise KlexpError(
                    f"kl.{term.name}: {term.objective!r} estimates KL(S ‖ T) at the student's own "
                    f"tokens; set task.student_fraction=1 (got {self.student_fraction})")

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.student is not None:
            return
        self.build(self.data_fact("vocab_size"), self.data_fact("length"))

    def build(self, vocab_size: int, length: int) -> None:
        """Create the student (and load the teacher) for the data's sequence space."""
        self.vocab_size, self.length = vocab_size, length
        self.student = PrefixMLP(vocab_size, length, self.hidden, self.activation)
        if self.teacher_checkpoint is not None:
            self.teacher = load_sequence_model(self.teacher_checkpoint, vocab_size, length)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_NET_KEY] = self.student.spec()

    # ------------------------------------------------------------------ the step

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> dict[str, Any]:
        return self.outputs(self.training_tokens(batch[0]))

    def training_tokens(self, data: Tensor) -> Tensor:
        """The sequences of this step: the student's own with probability λ, else the source's."""
        if self.student_fraction > 0 and (self.student_fraction == 1 or
                                          float(torch.rand(())) < self.student_fraction):
            return sample_sequences(self.student.next_token, len(data), self.length, device=data.device)
        if self.source == "teacher":
            return sample_sequences(self.teacher.next_token, len(data), self.length, device=data.device)
        return data

    def outputs(self, tokens: Tensor) -> dict[str, Any]:
        """The task's loss (0: the terms are the loss) and the outputs for the terms."""
        logits = self.student(tokens)
        target = F.one_hot(tokens, self.vocab_size).to(logits.dtype).log()
        outputs: dict[str, Any] = {
            "loss": logits.new_zeros(()),
            "student": Categorical(logits=logits, validate_args=False),
            "target": Categorical(logits=target, validate_args=False),
            "tokens": tokens,
        }
        if self.teacher is not None:
            with torch.no_grad():
                outputs["teacher"] = Categorical(logits=self.teacher(tokens), validate_args=False)
        return outputs

    def validation_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        self._log_nll(batch[0], "val")

    def test_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        self._log_nll(batch[0], "test")

    def _log_nll(self, tokens: Tensor, stage: str) -> None:
        logits = self.student(tokens)
        nll = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        log_metrics(self, {f"{stage}/nll": nll}, stage=stage, batch_size=tokens.numel())

    def on_validation_epoch_end(self) -> None:
        self._log_exact("val")

    def on_test_epoch_end(self) -> None:
        self._log_exact("test")

    # ------------------------------------------------------------------ exact evaluation

    def exact_metrics(self) -> dict[str, Tensor]:
        """The exact sequence-level metrics of the module docstring (float64, by enumeration)."""
        truth = self.data_fact("true_next_token").next_token
        with torch.no_grad():
            student = prefix_tree(self.student.next_token, self.vocab_size, self.length)
            reference = prefix_tree(truth if self.teacher is None else self.teacher.next_token,
                                    self.vocab_size, self.length)
            measured = sequence_divergences(reference, student, self.vocab_size, self.length)
            metrics = {
                "seq_kl_forward": measured.kl_forward, "seq_kl_reverse": measured.kl_reverse,
                "seq_tv": measured.tv, "student_entropy": measured.student_entropy,
                "reference_entropy": measured.teacher_entropy,
                "token_kl_forward_on_reference": measured.token_kl_forward_on_teacher,
                "token_kl_reverse_on_reference": measured.token_kl_reverse_on_teacher,
                "token_kl_forward_on_student": measured.token_kl_forward_on_student,
                "token_kl_reverse_on_student": measured.token_kl_reverse_on_student,
            }
            if self.teacher is not None:
                true_tree = prefix_tree(truth, self.vocab_size, self.length)
                metrics["true_kl_forward"] = sequence_divergences(
                    true_tree, student, self.vocab_size, self.length).kl_forward
        return metrics

    def _log_exact(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = {f"{stage}/{name}": value.float() for name, value in self.exact_metrics().items()}
        log_metrics(self, metrics, stage=stage, batch_size=1)


def load_sequence_model(path: str, vocab_size: int, length: int,
                        key: str = "task.teacher_checkpoint") -> PrefixMLP:
    """The frozen network of a SequenceDistillTask checkpoint, checked against the data."""
    checkpoint, spec = read_checkpoint(path, key, CHECKPOINT_NET_KEY, "sequence-model")
    if (spec["vocab_size"], spec["length"]) != (vocab_size, length):
        raise KlexpError(f"{key}: {path} was trained on {spec['vocab_size']} tokens × length "
                         f"{spec['length']}; the data has {vocab_size} × {length}")
    net = PrefixMLP(spec["vocab_size"], spec["length"], spec["hidden"], spec["activation"])
    return load_frozen(net, checkpoint, "student", key, path)
