"""The module contract (``klexp.lightning.contract``): each optional member, present or absent,
does what the contract's table says, klexp reads the members nowhere but through it, and a task
that reads KL terms refuses any other term in one line.

Where a member's effect needs a trainer it is tested with its consumer: ``log_step`` in
``test_lightning_logging.py`` (``OwnAxis`` and ``TwoWays``), ``configure_model_for`` in
``test_preflight.py`` (``LazyWithHook``, ``Lazy``, ``Eager``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from helpers import REPO
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

import klexp
from klexp.app.config_checks import ConfigError
from klexp.app.runner import check_terms_against_task
from klexp.errors import KlexpError, TermTypeError
from klexp.lightning import contract
from klexp.lightning.dashboards import event_files
from klexp.tasks.bayes import BayesByBackpropTask
from klexp.tasks.density_fit import DensityFitTask
from klexp.tasks.distill_seq import SequenceDistillTask
from klexp.tasks.ppo.envs import VectorEnvFactory
from klexp.tasks.ppo.task import PPOTask

PRIOR = klexp.KLTerm("prior", p="posterior", q="prior")


class Plain(pl.LightningModule):
    """A module with none of the contract's members."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        klexp.log_metrics(self, {"weight": self.layer.weight.sum()})
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Full(Plain):
    """A module with every member of the contract, found structurally (it declares nothing)."""

    output_names = frozenset({"posterior"})

    def check_terms(self, terms: Any) -> None:
        for term in terms:
            raise KlexpError(f"kl.{term.name}: Full takes no terms")

    def configure_model_for(self, datamodule: pl.LightningDataModule | None) -> None:
        self.built_for = datamodule

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"Mine": {"weight": [r"^weight$"]}}

    def log_step(self) -> int:
        return 7 * (self.global_step + 1)


CAPABILITIES = [contract.DeclaresOutputs, contract.ChecksTerms, contract.BuildsForData,
                contract.HasCharts, contract.HasLogStep]


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: c.__name__)
def test_a_module_has_a_capability_by_its_member_alone(capability):
    assert isinstance(Full(), capability)
    assert not isinstance(Plain(), capability)


def test_the_full_contract_is_every_capability_and_klexp_exports_it():
    assert isinstance(Full(), klexp.KlexpModule)
    assert not isinstance(Plain(), klexp.KlexpModule)
    assert {klexp.DeclaresOutputs, klexp.ChecksTerms, klexp.BuildsForData, klexp.HasCharts,
            klexp.HasLogStep} == set(CAPABILITIES)
    assert isinstance(PPOTask(VectorEnvFactory("CartPole-v1")), klexp.KlexpModule)


def test_a_declared_member_left_undefined_is_an_error_when_the_module_is_made():
    class Declared(Plain, klexp.HasLogStep):
        pass

    with pytest.raises(TypeError, match="log_step"):
        Declared()


class Outputs(Plain):
    """A module that declares its outputs and nothing else."""

    output_names = frozenset({"posterior"})


def test_declared_outputs_are_checked_against_the_terms_before_anything_is_built():
    assert contract.declared_outputs(Outputs()) == {"posterior"}
    with pytest.raises(ConfigError, match=r"^kl\.prior: KL term 'prior' reads 'posterior', 'prior'; "
                                          r"Outputs returns 'posterior' \(missing: 'prior'\)$"):
        check_terms_against_task([PRIOR], Outputs())
    # without output_names nothing is checked before the first step
    assert contract.declared_outputs(Plain()) is None
    check_terms_against_task([PRIOR], Plain())


def test_the_modules_own_check_of_its_terms_runs_when_it_has_one():
    with pytest.raises(KlexpError, match=r"^kl\.prior: Full takes no terms$"):
        check_terms_against_task([klexp.KLTerm("prior", p="posterior", q="posterior")], Full())
    check_terms_against_task([PRIOR], Plain())


def test_building_for_data_is_offered_only_by_a_module_that_can():
    assert contract.builds_for_data(Full()) and not contract.builds_for_data(Plain())


def test_charts_and_the_x_axis_default_to_none():
    assert contract.module_charts(Plain()) == {}
    assert contract.module_log_step(Plain()) is None
    assert contract.module_charts(Full()) == {"Mine": {"weight": [r"^weight$"]}}
    assert contract.module_log_step(Full()) == 7


def layout_of(log_dir: Path) -> dict[str, list[str]]:
    """The last Custom Scalars layout written (chart title → regexes), or none."""
    configs = [value for path in event_files(log_dir)
               for event in EventFileLoader(str(path)).Load() for value in event.summary.value
               if value.tag == "custom_scalars__config__"]
    if not configs:
        return {}
    proto = layout_pb2.Layout.FromString(tensor_util.make_ndarray(configs[-1].tensor).item())
    return {chart.title: list(chart.multiline.tag) for c in proto.category for chart in c.chart}


@pytest.mark.parametrize("module", [Full, Plain])
def test_the_dashboards_draw_the_modules_charts_beside_the_terms(module, tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 1)), batch_size=4)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    trainer = pl.Trainer(max_steps=2, logger=logger, log_every_n_steps=1, callbacks=[klexp.Dashboards()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module(), data)  # both write the tag "weight"; only Full charts it
    charts = {"weight — weight": [r"^weight$"]} if module is Full else {}  # one chart per tag it matches
    assert layout_of(Path(logger.log_dir)) == charts


# ------------------------------------------------------------------ what klexp reads from terms


def a_distill_term() -> klexp.DistillTerm:
    return klexp.DistillTerm("distill", klexp.ForwardKL(), teacher="old_policy", student="policy")


@pytest.mark.parametrize("task", [
    lambda: PPOTask(VectorEnvFactory("CartPole-v1")),
    lambda: BayesByBackpropTask(prior="scale_mixture"),
    DensityFitTask,
], ids=["PPOTask", "BayesByBackpropTask", "DensityFitTask"])
def test_a_task_that_reads_kl_terms_refuses_another_term_in_one_line(task):
    built = task()
    name = type(built).__name__
    with pytest.raises(TermTypeError, match=rf"^kl\.distill: {name} reads KL terms \(klexp\.KLTerm, "
                                            r"klexp\.KLPenalty, klexp\.TargetKL\), got a DistillTerm$"):
        built.check_terms([a_distill_term()])


def test_only_a_distillation_term_is_asked_whether_it_needs_the_students_samples():
    SequenceDistillTask(student_fraction=0.5).check_terms([klexp.KLTerm("kl", p="student", q="teacher")])


# ------------------------------------------------------------------ no duck typing left

#: names that hold a module or a term where klexp reads one
HOLDERS = {"module", "pl_module", "task", "term", "model", "lightning_module"}


def duck_typed_reads(source: str, where: str) -> list[str]:
    """``hasattr``/``getattr`` calls on a module or term (a holder name above) with the member's
    name written out: reading a member by duck typing. (A name taken from a table of hooks, as
    ``loss.wrap_steps`` does, is not a member of the contract.)"""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name) and node.args[0].id in HOLDERS
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            found.append(f"{where}:{node.lineno} {node.func.id}"
                         f"({node.args[0].id}, {node.args[1].value!r})")
    return found


def test_klexp_reads_a_modules_members_only_through_the_contract():
    contract_file = REPO / "klexp" / "lightning" / "contract.py"
    found = [read for path in sorted((REPO / "klexp").rglob("*.py")) if path != contract_file
             for read in duck_typed_reads(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


def test_the_scan_finds_what_it_looks_for():
    source = ('names = getattr(task, "output_names", None)\n'
              'if hasattr(pl_module, "custom_scalars"):\n    pass\n'
              'ok = hasattr(self, "x") and getattr(module, name)\n')
    assert duck_typed_reads(source, "probe.py") == ["probe.py:1 getattr(task, 'output_names')",
                                                    "probe.py:2 hasattr(pl_module, 'custom_scalars')"]
