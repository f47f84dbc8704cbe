"""Classification, where cross-entropy, label smoothing, distillation and the confidence penalty
are all KL terms between the task's outputs.

Outputs for KL terms:

* ``model``     — Categorical(logits) of the network;
* ``target``    — the label distribution: one-hot, or label-smoothed
  ``(1 − ε)·onehot + ε/K``; ``KL(target ‖ model) = CE(target, model) − H(target)``;
* ``uniform``   — the uniform distribution over K classes
  (``KL(model ‖ uniform) = log K − H(model)``, the confidence penalty);
* ``teacher``, ``teacher_T``, ``model_T`` — with a teacher checkpoint: the teacher's distribution,
  and teacher and student softened by the temperature T (Hinton et al. 2015 distil with
  ``T² · KL(teacher_T ‖ model_T)``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

from klexp.core.categorical import categorical_cross_entropy, categorical_entropy
from klexp.errors import require_finite_positive, require_unit_interval
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.nets.factory import NetFactory, check_net, net_spec
from klexp.nets.frozen import CHECKPOINT_NET_KEY, load_classifier
from klexp.nets.mlp import MLP
from klexp.tasks.base import OneStepTask, OptimizerFactory, SchedulerFactory, classification_metrics


class ClassificationTask(OneStepTask):
    """A classifier whose loss is made of KL terms from the config.

    Args:
        net: the network, a ``NetFactory`` (``klexp.nets.factory``) completed with the data's input
            size and class count; a 512-512 ReLU ``MLP`` when None.
        label_smoothing: ε of the ``target`` output, in [0, 1).
        temperature: T of ``teacher_T`` and ``model_T``.
        teacher_checkpoint: a checkpoint of a trained ClassificationTask; adds the teacher outputs.
        cross_entropy_loss: add plain cross-entropy with the true labels as the task's own loss
            (normally the ``ce`` KL term plays that part and the task loss is 0).
    """

    def __init__(
        self,
        net: NetFactory | None = None,
        label_smoothing: float = 0.0,
        temperature: float = 1.0,
        teacher_checkpoint: str | None = None,
        cross_entropy_loss: bool = False,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.net_factory = net or functools.partial(MLP, hidden=[512, 512])
        check_net(self.net_factory, "net")
        require_unit_interval("label_smoothing", label_smoothing)
        require_finite_positive("temperature", temperature)
        self.label_smoothing, self.temperature = label_smoothing, temperature
        self.teacher_checkpoint = teacher_checkpoint
        self.cross_entropy_loss = cross_entropy_loss
        self.net: nn.Module | None = None
        self.teacher: nn.Module | None = None

    @property
    def output_names(self) -> frozenset[str]:
        """The teacher outputs exist only with a teacher checkpoint."""
        teacher = {"teacher", "teacher_T", "model_T"} if self.teacher_checkpoint is not None else set()
        return frozenset({"model", "target", "uniform", *teacher})

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.build(self.data_fact("input_size"), self.data_fact("num_classes"))

    def build(self, input_size: int, num_classes: int) -> None:
        """Create the network (and load the teacher) for the data's shape."""
        self.input_size, self.num_classes = input_size, num_classes
        self.net = self.net_factory(in_features=input_size, out_features=num_classes)
        self.register_buffer("uniform_logits", torch.zeros(num_classes), persistent=False)
        self.metrics = nn.ModuleDict({
            f"{stage}_metrics": classification_metrics(num_classes, prefix=f"{stage}/")
            for stage in ("train", "val", "test")
        })
        if self.teacher_checkpoint is not None:
            self.teacher = load_classifier(self.teacher_checkpoint, input_size, num_classes)

    def net_spec(self) -> dict[str, Any]:
        """How a checkpoint describes the network (``klexp.nets.frozen.load_classifier`` reads it)."""
        return {"in_features": self.input_size, "out_features": self.num_classes,
                "net": net_spec(self.net_factory)}

    def train(self, mode: bool = True) -> ClassificationTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's dropout stays off while the student trains
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_NET_KEY] = self.net_spec()

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        """TensorBoard charts: ``CE(target, model) = KL(target ‖ model) + H(target)`` as three
        lines of one chart (the KL term named ``ce``), then accuracy, NLL and calibration error."""
        return {"Classification": {
            "CE = KL(target ‖ model) + H(target), train": [r"^loss/(ce|target_entropy)$",
                                                            r"^kl/ce/value$"],
            "CE = KL(target ‖ model) + H(target), val": [r"^val/(ce|target_entropy)$",
                                                          r"^val/kl/ce/value$"],
            "accuracy": [r"^(train|val)/acc$"],
            "NLL of the true label (nats)": [r"^(train|val)/nll$"],
            "expected calibration error": [r"^(train|val)/ece$"],
        }}

    # ------------------------------------------------------------------ the step

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.flatten(1))

    def target_logits(self, labels: Tensor) -> Tensor:
        """Log-probabilities of the (smoothed) label distribution; ``−inf`` where it is 0."""
        eps, classes = self.label_smoothing, self.num_classes
        probs = F.one_hot(labels, classes).to(self.uniform_logits.dtype) * (1 - eps) + eps / classes
        return probs.log()

    def step(self, batch: tuple[Tensor, Tensor], stage: str | None = None) -> dict[str, Any]:
        """The task's own loss (0, or cross-entropy with ``cross_entropy_loss``) and the outputs
        for the KL terms; ``stage`` defaults to where the trainer is."""
        images, labels = batch
        logits = self(images)
        target_logits = self.target_logits(labels)
        outputs: dict[str, Any] = {
            "model": Categorical(logits=logits, validate_args=False),
            "target": Categorical(logits=target_logits, validate_args=False),
            "uniform": Categorical(logits=self.uniform_logits, validate_args=False),
        }
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images.flatten(1))
            temperature = self.temperature
            outputs["teacher"] = Categorical(logits=teacher_logits, validate_args=False)
            outputs["teacher_T"] = Categorical(logits=teacher_logits / temperature,
                                               validate_args=False)
            outputs["model_T"] = Categorical(logits=logits / temperature, validate_args=False)

        task_loss = (F.cross_entropy(logits, labels) if self.cross_entropy_loss
                     else logits.new_zeros(()))
        self._log_metrics(stage or current_stage(self), logits, labels, target_logits)
        return {"loss": task_loss, **outputs}

    def _log_metrics(self, stage: str, logits: Tensor, labels: Tensor, target_logits: Tensor) -> None:
        """CE(target, model) = KL(target ‖ model) + H(target), shown side by side; NLL; accuracy, ECE."""
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits.detach().softmax(-1), labels)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        if not logs_now(self):
            return
        with torch.no_grad():
            cross_entropy = categorical_cross_entropy(target_logits, logits).mean()
            target_entropy = categorical_entropy(target_logits).mean()
            nll = F.cross_entropy(logits, labels)
        prefix = "loss" if stage == "train" else stage
        log_metrics(self, {f"{prefix}/ce": cross_entropy, f"{prefix}/target_entropy": target_entropy,
                           f"{stage}/nll": nll}, batch_size=len(labels), stage=stage)
