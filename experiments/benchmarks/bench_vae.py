"""Training-step throughput of the klexp VAE (Lightning + the KL term) against a plain PyTorch loop.

Both sides train the same model (the ``experiment=vae`` config's encoder and decoder, built with
``klexp.nets.mlp``) on the same batches (the config's DataModule: dynamically binarised digits,
batch 128) with the same optimiser and thread count, in the same process. Rounds alternate which
side runs first, so machine noise hits both; each side's rate is the median over rounds, timed
after a warm-up of 100 steps. The klexp side is the run the config describes — TensorBoard logger,
the KL term with per-dimension logging, the default callbacks — without validation, checkpoints
and the progress bar, which are not training steps.

Two clocks: wall time (what a user waits for) and the process's CPU time (steps per CPU-second),
which a busy shared machine disturbs far less; the ratio is reported for both. A third side,
"bare", runs the plain loop's step in a LightningModule with no logging, KL term or callbacks
(and klexp's ``NoProfiler``, as the klexp side has):
Lightning's own per-step cost, the floor of any Lightning path at this (tiny) step size.

    .venv/bin/python experiments/benchmarks/bench_vae.py [--steps 1500] [--rounds 5] [override ...]

A plugin pair measures what a KL term costs a user's own module: "user + term" is a plain
LightningModule (subclassing nothing from klexp) whose step returns
``{"loss": reconstruction, "posterior": q, "prior": p}``, trained with one ``klexp.KLTerm``;
"user by hand" is the same module adding ``kl_divergence(q, p).mean()`` to its loss itself. Both
run with the same Lightning defaults (no logger, Lightning's own profiler).

Prints steps/s of each side, the ratio klexp / plain (target ≥ 0.8), bare / plain, klexp / bare,
and user + term / user by hand (target ≥ 0.95). The overhead is a nearly fixed time per step, so
the ratios grow with the batch: compare ``data.batch_size=64`` (the batch the DESIGN's reference
VAE uses) with the experiment's 128.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import Checkpoint, ProgressBar
from torch.distributions import Independent, Normal, kl_divergence

from klexp import KLTerm, NoProfiler
from klexp.app.cli import CONFIG_DIR, CONFIG_NAME, register_resolvers
from klexp.app.runner import build_callbacks, build_terms, instantiate_node
from klexp.nets.mlp import mlp

WARMUP_STEPS = 100
BENCH_OVERRIDES = ["trainer.limit_val_batches=0", "test=false", "trainer.enable_model_summary=false",
                   "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false"]


def load_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The composed ``experiment=vae`` config with the bench's and the user's overrides."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME,
                      overrides=["experiment=vae", *BENCH_OVERRIDES, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


class Clock:
    """Wall and CPU time between ``start`` and ``stop``, as steps per second."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, steps: int) -> tuple[float, float]:
        return (steps / (time.perf_counter() - self.wall), steps / (time.process_time() - self.cpu))


class _StepTimer(pl.Callback):
    """Times from the start of step ``WARMUP_STEPS`` to the end of training."""

    def __init__(self) -> None:
        self.clock = Clock()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.clock.start()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rates = self.clock.stop(trainer.global_step - WARMUP_STEPS)


def klexp_rates(cfg: DictConfig, steps: int) -> tuple[float, float]:
    """Train with Lightning as the runner builds the run; (wall, CPU) steps/s after the warm-up."""
    with open_dict(cfg):
        cfg.trainer.max_steps = WARMUP_STEPS + steps
    pl.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate_node(cfg.data, "data")
    task = instantiate_node(cfg.task, "task")
    timer = _StepTimer()
    kept = [c for c in build_callbacks(cfg.callbacks) if not isinstance(c, (Checkpoint, ProgressBar))]
    logger = instantiate_node(cfg.logger, "logger")
    trainer = instantiate_node(cfg.trainer, "trainer", logger=logger,
                               callbacks=[*build_terms(cfg.kl), *kept, timer])
    trainer.fit(task, datamodule=datamodule)
    return timer.rates


def _networks(cfg: DictConfig, pixels: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    task = cfg.task
    return (mlp(pixels, task.encoder.hidden, 2 * task.latent_dim, task.encoder.activation),
            mlp(task.latent_dim, task.decoder.hidden, pixels, task.decoder.activation))


def negative_elbo(encoder: torch.nn.Module, decoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Bernoulli NLL (summed over pixels, mean over the batch) plus the closed-form
    ``KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²)``, by hand."""
    x = images.flatten(1)
    mean, log_var = encoder(x).chunk(2, dim=-1)
    z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
    recon = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum") / len(x)
    kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(-1).mean()
    return recon + kl


class BareVAE(pl.LightningModule):
    """The plain loop's step in a bare LightningModule: no logging, no KL term, no callbacks."""

    def __init__(self, cfg: DictConfig, pixels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = _networks(cfg, pixels)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return negative_elbo(self.encoder, self.decoder, batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate_node(self.cfg.task.optimizer, "task.optimizer")(self.parameters())


class UserVAE(pl.LightningModule):
    """A user's own VAE module: its step returns the reconstruction NLL and the two
    distributions; with ``kl_by_hand`` it adds ``KL(q ‖ p)`` to its loss itself instead."""

    def __init__(self, cfg: DictConfig, pixels: int, kl_by_hand: bool) -> None:
        super().__init__()
        self.cfg, self.kl_by_hand = cfg, kl_by_hand
        self.encoder, self.decoder = _networks(cfg, pixels)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, object]:
        x = batch[0].flatten(1)
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        posterior = Independent(Normal(mean, (0.5 * log_var).exp()), 1)
        prior = Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 1)
        recon = F.binary_cross_entropy_with_logits(self.decoder(posterior.rsample()), x,
                                                   reduction="sum") / len(x)
        if self.kl_by_hand:
            return {"loss": recon + kl_divergence(posterior, prior).mean()}
        return {"loss": recon, "posterior": posterior, "prior": prior}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate_node(self.cfg.task.optimizer, "task.optimizer")(self.parameters())


def user_rates(cfg: DictConfig, steps: int, kl_by_hand: bool) -> tuple[float, float]:
    """A user's module in a Trainer with Lightning's defaults, with one KL term or the KL by hand."""
    pl.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.setup("fit")
    timer = _StepTimer()
    terms = [] if kl_by_hand else [KLTerm("prior", p="posterior", q="prior")]
    trainer = pl.Trainer(max_steps=WARMUP_STEPS + steps, logger=False, callbacks=[*terms, timer],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         deterministic=cfg.trainer.deterministic)
    trainer.fit(UserVAE(cfg, datamodule.input_size, kl_by_hand), datamodule=datamodule)
    return timer.rates


def bare_lightning_rates(cfg: DictConfig, steps: int) -> tuple[float, float]:
    """Lightning's own loop around the plain step (the floor of any Lightning path); steps/s."""
    pl.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.setup("fit")
    timer = _StepTimer()
    trainer = pl.Trainer(max_steps=WARMUP_STEPS + steps, logger=False, callbacks=[timer],
                         profiler=NoProfiler(), enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         deterministic=cfg.trainer.deterministic)
    trainer.fit(BareVAE(cfg, datamodule.input_size), datamodule=datamodule)
    return timer.rates


def plain_rates(cfg: DictConfig, steps: int) -> tuple[float, float]:
    """The same VAE, data and optimiser in a hand-written loop minimising the negative ELBO;
    (wall, CPU) steps/s."""
    pl.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.setup("fit")
    encoder, decoder = _networks(cfg, datamodule.input_size)
    optimizer = instantiate_node(cfg.task.optimizer, "task.optimizer")(
        [*encoder.parameters(), *decoder.parameters()])
    batches = datamodule.train_dataloader()
    clock, done = Clock(), 0
    while done < WARMUP_STEPS + steps:
        for images, _ in batches:
            if done == WARMUP_STEPS:
                clock.start()
            loss = negative_elbo(encoder, decoder, images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == WARMUP_STEPS + steps:
                break
    return clock.stop(steps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. kl.prior.log_dims=false")
    args = parser.parse_args(argv)

    sides = {"plain": plain_rates, "klexp": klexp_rates, "bare": bare_lightning_rates,
             "user+term": lambda cfg, steps: user_rates(cfg, steps, kl_by_hand=False),
             "user/hand": lambda cfg, steps: user_rates(cfg, steps, kl_by_hand=True)}
    results: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(args.overrides, Path(scratch))
        torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else torch.get_num_threads())
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for side in order:
                run_cfg = load_config(args.overrides, Path(scratch) / f"{side}{round_index}")
                wall, cpu = sides[side](run_cfg, args.steps)
                results[side].append((wall, cpu))
                print(f"round {round_index + 1}: {side:9s} {wall:6.1f} steps/s wall, "
                      f"{cpu:6.1f} steps per CPU-second", flush=True)

    medians = {side: [statistics.median(r[i] for r in rates) for i in (0, 1)]
               for side, rates in results.items()}
    print(f"\nexperiment=vae {' '.join(args.overrides)}: threads {torch.get_num_threads()}, "
          f"batch {cfg.data.batch_size}, {args.steps} timed steps × {args.rounds} rounds (medians)")
    print(f"{'':26s} {'wall steps/s':>14s} {'CPU steps/s':>14s}")
    for side, label in (("plain", "plain PyTorch loop"), ("klexp", "klexp (Lightning)"),
                        ("bare", "bare Lightning"), ("user+term", "user + KL term"),
                        ("user/hand", "user, KL by hand")):
        print(f"{label:26s} {medians[side][0]:14.1f} {medians[side][1]:14.1f}")
    for side, base, note in (("klexp", "plain", "target ≥ 0.8"), ("bare", "plain", "Lightning's own loop"),
                             ("klexp", "bare", "klexp's own share"),
                             ("user+term", "user/hand", "a KL term in a user's module; target ≥ 0.95")):
        ratios = [medians[side][i] / medians[base][i] for i in (0, 1)]
        print(f"{f'ratio {side} / {base}':26s} {ratios[0]:14.2f} {ratios[1]:14.2f}   ({note})")


if __name__ == "__main__":
    main()
