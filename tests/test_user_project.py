"""klexp as a plugin, seen from a user's own project (``tests/user_project``): a plain
LightningModule that subclasses nothing from klexp, its own DataModule and its own Hydra app. Every
check goes through klexp's public names only (``import klexp``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from helpers import cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

import klexp

PROJECT = Path(__file__).resolve().parent / "user_project"
sys.path.insert(0, str(PROJECT))

from tinyvae.data import Patterns  # noqa: E402
from tinyvae.model import TinyVAE  # noqa: E402


def trainer(tmp_path: Path, *callbacks: pl.Callback, **options: Any) -> pl.Trainer:
    settings = {"max_steps": 1, "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False,
                "limit_val_batches": 0, "default_root_dir": tmp_path, **options}
    return pl.Trainer(callbacks=list(callbacks), **settings)


class FirstStep(pl.Callback):
    """Records the loss Lightning back-propagated and the gradients it produced."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule,
                                 optimizer: Any) -> None:
        self.gradients = {n: p.grad.clone() for n, p in module.named_parameters()}

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.loss = outputs["loss"].detach().clone()


def first_step(tmp_path: Path, model: pl.LightningModule, *terms: pl.Callback) -> FirstStep:
    pl.seed_everything(0, verbose=False)
    record = FirstStep()
    trainer(tmp_path, *terms, record).fit(model, Patterns())
    return record


def test_a_kl_term_changes_the_loss_and_the_gradient_by_exactly_the_term(tmp_path):
    pl.seed_everything(1, verbose=False)
    with_term = first_step(tmp_path, TinyVAE(), klexp.KLTerm("prior", p="posterior", q="prior", weight=0.5))
    pl.seed_everything(1, verbose=False)
    by_hand = first_step(tmp_path, TinyVAE(kl_by_hand=0.5))
    pl.seed_everything(1, verbose=False)
    without = first_step(tmp_path, TinyVAE())
    torch.testing.assert_close(with_term.loss, by_hand.loss, rtol=1e-6, atol=0)
    assert with_term.loss > without.loss
    for name, gradient in by_hand.gradients.items():
        torch.testing.assert_close(with_term.gradients[name], gradient, rtol=1e-6, atol=1e-7)
        assert not torch.equal(without.gradients[name], gradient) or name.startswith("decoder")


def test_a_users_module_takes_a_shaped_term_through_the_public_api(tmp_path):
    """Free bits above every dimension's KL (λ = 100 nats, 2 latent dimensions): the term adds the
    constant 2λ to the loss and nothing to the gradient — the shaping holds the divergence it
    floors (``of``), given to ``KLTerm`` in place of its direction."""
    floored = klexp.KLTerm("prior", p="posterior", q="prior",
                           direction=klexp.FreeBits(100.0, of=klexp.Reverse("k3")))
    pl.seed_everything(1, verbose=False)
    with_term = first_step(tmp_path, TinyVAE(), floored)
    pl.seed_everything(1, verbose=False)
    without = first_step(tmp_path, TinyVAE())
    torch.testing.assert_close(with_term.loss, without.loss + 200.0, rtol=1e-6, atol=0)
    for name, gradient in without.gradients.items():
        torch.testing.assert_close(with_term.gradients[name], gradient, rtol=1e-6, atol=1e-7)


def test_a_term_whose_outputs_never_arrive_stops_the_first_batch_naming_both_sides(tmp_path):
    term = klexp.KLTerm("prior", p="posterior", q="prior")
    with pytest.raises(klexp.KlexpError) as error:
        trainer(tmp_path, term).fit(TinyVAE(forget_outputs=True), Patterns())
    assert str(error.value) == ("KL term 'prior' reads 'posterior', 'prior'; training_step returned "
                                "'loss' (missing: 'posterior', 'prior')")
    assert term.calls == 0


class ManualVAE(TinyVAE):
    """The same model under manual optimisation: the one call to make is ``klexp.total_loss``."""

    def __init__(self, call_total_loss: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.call_total_loss = call_total_loss

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        outputs = self.step(batch)
        loss = klexp.total_loss(self, outputs) if self.call_total_loss else outputs["loss"]
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.recorded = (loss.detach().clone(), {n: p.grad.clone() for n, p in self.named_parameters()})
        optimizer.step()


def test_under_manual_optimisation_total_loss_is_the_one_call(tmp_path):
    pl.seed_everything(2, verbose=False)
    model = ManualVAE()
    trainer(tmp_path, klexp.KLTerm("prior", p="posterior", q="prior", weight=0.5)).fit(model, Patterns())
    pl.seed_everything(2, verbose=False)
    reference = ManualVAE(kl_by_hand=0.5)
    trainer(tmp_path).fit(reference, Patterns())
    torch.testing.assert_close(model.recorded[0], reference.recorded[0], rtol=1e-6, atol=0)
    for name, gradient in reference.recorded[1].items():
        torch.testing.assert_close(model.recorded[1][name], gradient, rtol=1e-6, atol=1e-7)
    forgetful = ManualVAE(call_total_loss=False)
    with pytest.raises(klexp.KlexpError, match=r"under manual optimisation, back-propagate "
                                               r"klexp\.total_loss\(self, outputs\)"):
        trainer(tmp_path, klexp.KLTerm("prior", p="posterior", q="prior")).fit(forgetful, Patterns())


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tags_dashboards_and_run_record_reach_a_users_own_trainer(tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    term = klexp.KLTerm("prior", p="posterior", q="prior", log_dims=True,
                        schedule=klexp.LinearWarmup(steps=4))
    pl.seed_everything(0, verbose=False)
    run = trainer(tmp_path, term, klexp.Dashboards(), klexp.RunSummary(tmp_path), max_steps=6,
                  logger=logger, log_every_n_steps=1, limit_val_batches=1, val_check_interval=3)
    run.fit(TinyVAE(), Patterns())

    series = scalars(tmp_path / "tb")
    for tag in ("kl/prior/value", "kl/prior/weight", "kl/prior/loss", "kl/prior/dim_0",
                "loss/task", "loss/total", "val/kl/prior/value", "val/loss/total"):
        assert tag in series, tag
    assert [value for _, value in series["kl/prior/weight"]] == pytest.approx([0, .25, .5, .75, 1, 1])
    for (step, total), (_, task), (_, kl_loss) in zip(series["loss/total"], series["loss/task"],
                                                      series["kl/prior/loss"], strict=True):
        assert total == pytest.approx(task + kl_loss, rel=1e-6), step

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout.FromString(
        events.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    assert charts["prior: value — kl/prior/value"] == ["^kl/prior/value$"]
    assert charts["prior: weight — val/kl/prior/weight"] == ["^val/kl/prior/weight$"]
    session = EventAccumulator(str(tmp_path / "tb" / "hparams"), size_guidance={"scalars": 0})
    session.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        session.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info
    assert set(start.hparams) >= {"latent_dim", "lr"}
    assert "final/val/kl/prior/value" in session.Tags()["scalars"]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 0
    assert summary["metrics"]["val/kl/prior/value"] == pytest.approx(series["val/kl/prior/value"][-1][1])


# ---------------------------------------------------------------------------------------------
# The user's own Hydra app
# ---------------------------------------------------------------------------------------------


def run_app(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tinyvae.train <args>``: in this process (``helpers.cli``), unless ``env`` asks
    for a process of its own (another ``PYTHONPATH``)."""
    if env is None:
        return cli(args, cwd, app="tinyvae.train")
    environment = {**os.environ, "PYTHONPATH": str(PROJECT), **env}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "tinyvae.train", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_the_users_hydra_app_composes_klexps_config_groups(tmp_path):
    result = run_app(f"hydra.run.dir={tmp_path / 'run'}", "kl.prior.weight=2.0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "_target_: klexp.kl_term" in config and "_target_: klexp.LinearWarmup" in config
    weights = [value for _, value in scalars(tmp_path / "run" / "tb")["kl/prior/weight"]]
    assert weights[:3] == pytest.approx([0.0, 0.1, 0.2]) and weights[-1] == 2.0


def test_the_klexp_command_runs_a_users_task_and_data_from_its_config_dir(tmp_path):
    result = cli(["--config-dir", str(PROJECT / "conf"), "experiment=tinyvae", "callbacks.progress_bar=null",
                  "trainer.max_epochs=1", "trainer.log_every_n_steps=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "tinyvae").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective"] > 0
    assert "kl/prior/value" in scalars(run_dir / "tb")


@pytest.mark.slow
def test_a_killed_user_run_resumes_with_its_schedule_exactly_where_it_was(tmp_path):
    reference = run_app(f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    environment = {**os.environ, "PYTHONPATH": str(PROJECT)}
    # The user's DataLoader is a plain one, which Lightning restarts from its first batch on a
    # resume: only a checkpoint at an epoch's end (8 batches) resumes exactly.
    process = subprocess.Popen([sys.executable, "-m", "tinyvae.train", f"hydra.run.dir={killed_dir}",
                                "pause=0.1", "checkpoint_every=8"], cwd=tmp_path, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while time.time() < deadline:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["global_step"] >= 10:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert step == 16, "the kill must land while the KL weight is still warming up"

    resumed = run_app(f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={checkpoint}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = scalars(tmp_path / "reference" / "tb"), scalars(tmp_path / "resumed" / "tb")
    after = [(s, v) for s, v in expected["kl/prior/weight"] if s >= step]
    assert got["kl/prior/weight"] == after
    final = {name: torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
             for name, run in (("reference", tmp_path / "reference"), ("resumed", tmp_path / "resumed"))}
    for name, weight in final["reference"].items():
        assert torch.equal(weight, final["resumed"][name]), name


@pytest.mark.slow
def test_an_installed_klexp_adds_its_configs_to_any_hydra_app_by_its_plugin(tmp_path):
    """Installed as a distribution, klexp ships ``hydra_plugins.klexp_search_path``: the app then
    needs no ``hydra.searchpath`` line at all."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(PROJECT.parents[1])],
                   check=True, capture_output=True, timeout=300)
    result = run_app(f"hydra.run.dir={tmp_path / 'run'}", "hydra.searchpath=[]", "trainer.max_steps=2",
                     cwd=tmp_path, env={"PYTHONPATH": f"{target}{os.pathsep}{PROJECT}"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "_target_: klexp.kl_term" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    # the plugin and the configs are the installed copy's (an editable checkout has them too)
    code = "import hydra_plugins.klexp_search_path as p, klexp.conf as c; print(p.__file__, c.__file__)"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert all(Path(line).is_relative_to(target) for line in where.stdout.split()), where.stdout


def test_a_training_step_copies_from_the_device_once_for_the_finiteness_guard(tmp_path, monkeypatch):
    """On a GPU each copy to the host stalls the queue: in a step that logs nothing, klexp makes
    exactly one, the guard that the loss and every term's value are finite. (The user's own
    distributions validate their arguments, which copies too: not klexp's to count.)"""
    import traceback

    package = str(Path(klexp.__file__).parent)
    torch_files = str(Path(torch.__file__).parent)

    def caller_of_torch() -> str:
        """The file of the innermost frame outside torch and this test: who asked for the copy."""
        for frame in reversed(traceback.extract_stack()[:-2]):
            if not frame.filename.startswith(torch_files):
                return frame.filename
        return ""

    copies: list[str] = []
    inside = [False]

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if inside[0] and caller_of_torch().startswith(package):
                copies.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    class Counted(TinyVAE):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            inside[0] = True
            return super().training_step(batch, batch_idx)

    class Stop(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            inside[0] = False

    term = klexp.KLTerm("prior", p="posterior", q="prior", log_dims=True,
                        schedule=klexp.LinearWarmup(steps=10))
    trainer(tmp_path, term, Stop(), max_steps=4, log_every_n_steps=1000).fit(Counted(), Patterns())
    assert len(copies) == 4, copies  # one a step, whichever Tensor method makes it
