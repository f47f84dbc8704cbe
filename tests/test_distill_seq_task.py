"""The sequence-distillation family: one short end-to-end run (teacher stage, then a student scored
exactly), the distillation term in a user's own LightningModule through klexp's public names, and
the reductions' invariance under gradient accumulation in a real Trainer."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import QUIET, run_experiment
from torch.distributions import Categorical
from torch.utils.data import DataLoader, TensorDataset

import klexp
from klexp.core.sequences import sequence_divergences
from klexp.data.markov import MarkovSequences
from klexp.errors import KlexpError
from klexp.nets.autoregressive import PrefixMLP
from klexp.tasks.distill_seq import SequenceDistillTask, load_sequence_model

# the teacher stage inherits the data and trainer overrides: it trains 128 steps too
SHORT = [*QUIET, "data.num_train=2048", "trainer.max_steps=128", "test=false"]
EXACT = ["val/seq_kl_forward", "val/seq_kl_reverse", "val/seq_tv", "val/student_entropy",
         "val/reference_entropy", "val/token_kl_forward_on_reference", "val/token_kl_reverse_on_student",
         "val/true_kl_forward"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("distill_seq")
    return run_dir, run_experiment(["experiment=distill_seq", *SHORT], run_dir)


@pytest.mark.slow
def test_a_run_trains_the_teacher_as_a_stage_and_logs_the_exact_metrics(distilled):
    run_dir, summary = distilled
    metrics = summary["metrics"]
    assert all(math.isfinite(metrics[name]) for name in EXACT), sorted(metrics)
    assert 0 <= metrics["val/seq_tv"] <= 1
    assert metrics["val/seq_kl_forward"] >= 0 and metrics["val/seq_kl_reverse"] >= 0
    assert (run_dir / "teacher" / "checkpoints" / "last.ckpt").is_file()
    assert summary["stages"]["teacher"]["metrics"]["val/seq_kl_forward"] > 0  # teacher vs truth


@pytest.mark.slow
def test_the_student_gets_much_closer_to_its_teacher_than_an_untrained_one(distilled):
    run_dir, summary = distilled
    teacher = load_sequence_model(str(run_dir / "teacher" / "checkpoints" / "last.ckpt"), 8, 6)
    torch.manual_seed(0)
    untrained = PrefixMLP(8, 6, [96, 64])
    with torch.no_grad():
        start = sequence_divergences(teacher.next_token, untrained.next_token, 8, 6).kl_forward
    assert summary["metrics"]["val/seq_kl_forward"] < float(start) / 3


# ------------------------------------------------------------------ the task's own decisions


def built_task(**kwargs) -> SequenceDistillTask:
    task = SequenceDistillTask(**kwargs)
    task.build(8, 6)
    return task


def test_an_objective_that_needs_the_students_samples_is_refused_off_policy():
    term = klexp.DistillTerm("onpolicy", klexp.SampledReverseKL("k1", "reward"))
    with pytest.raises(KlexpError, match=r"^kl\.onpolicy: .*set task\.student_fraction=1 \(got 0\.5\)$"):
        SequenceDistillTask(student_fraction=0.5).check_terms([term])
    SequenceDistillTask(student_fraction=1.0).check_terms([term])


def test_teacher_samples_need_a_teacher():
    with pytest.raises(KlexpError, match=r"^task\.source: teacher samples need"):
        SequenceDistillTask(source="teacher").check_terms([])


def test_lambda_one_trains_on_the_students_own_samples_and_zero_on_the_data():
    data = MarkovSequences(num_train=64, num_val=8, num_test=8).splits["train"]
    torch.manual_seed(0)
    assert torch.equal(built_task(student_fraction=0.0).training_tokens(data), data)
    on_policy = built_task(student_fraction=1.0).training_tokens(data)
    assert on_policy.shape == data.shape and not torch.equal(on_policy, data)


def test_the_outputs_are_one_distribution_per_position():
    task = built_task()
    outputs = task.outputs(torch.randint(0, 8, (4, 6)))
    assert outputs["student"].batch_shape == (4, 6) and outputs["target"].batch_shape == (4, 6)
    # KL(target ‖ student) is the next token's NLL
    nll = torch.nn.functional.cross_entropy(outputs["student"].logits.flatten(0, 1),
                                            outputs["tokens"].flatten())
    torch.testing.assert_close(klexp.kl(outputs["target"], outputs["student"]).mean(), nll)


# ------------------------------------------------------------------ a user's own module


class TinyDistillation(pl.LightningModule):
    """A user's module: a student and a frozen teacher over (N, L) token batches, with padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = PrefixMLP(5, 4, [16])
        self.teacher = PrefixMLP(5, 4, [16]).requires_grad_(False)
        self.gradients: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        tokens, mask = batch
        return {"loss": torch.zeros(()), "teacher": Categorical(logits=self.teacher(tokens)),
                "student": Categorical(logits=self.student(tokens)), "tokens": tokens, "mask": mask}

    def on_before_optimizer_step(self, optimizer):
        self.gradients.append(torch.cat([p.grad.flatten() for p in self.student.parameters()]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


def sequences(n: int = 32):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (n, 4), generator=generator)
    lengths = torch.randint(1, 5, (n,), generator=generator)
    mask = (torch.arange(4) < lengths[:, None]).float()   # sequences of 1–4 real tokens
    return TensorDataset(tokens, mask)


def first_step_gradient(objective, reduction: str, batch_size: int, accumulate: int):
    module = TinyDistillation()
    term = klexp.DistillTerm("distill", objective, mask="mask", reduction=reduction)
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[term])
    trainer.fit(module, DataLoader(sequences(), batch_size=batch_size))
    return module.gradients[0], term


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_accumulating_four_micro_batches_gives_the_gradient_of_one_batch_four_times_larger(reduction):
    whole, _ = first_step_gradient(klexp.ForwardKL(), reduction, batch_size=32, accumulate=1)
    accumulated, _ = first_step_gradient(klexp.ForwardKL(), reduction, batch_size=8, accumulate=4)
    torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-7)
    assert whole.abs().sum() > 0


def test_taids_t_moves_once_per_optimiser_step_and_travels_in_the_terms_state():
    objective = klexp.TAID(klexp.TaidSchedule(total_steps=4))
    module = TinyDistillation()
    term = klexp.DistillTerm("taid", objective, mask="mask")
    trainer = pl.Trainer(max_steps=4, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[term])
    trainer.fit(module, DataLoader(sequences(64), batch_size=8))
    assert objective.schedule.steps == 4
    assert objective.schedule.value() > 0.4
    fresh = klexp.DistillTerm("taid", klexp.TAID(klexp.TaidSchedule(total_steps=4)))
    fresh.load_state_dict(term.state_dict())
    assert fresh.objective.schedule.state_dict() == objective.schedule.state_dict()


def test_a_term_refuses_something_that_is_not_an_objective():
    with pytest.raises(klexp.ConfigValueError, match=r"^objective: expected a token objective"):
        klexp.DistillTerm("x", objective="forward")
