"""Bad input of every kind: a non-zero exit, one line naming the problem, nothing clobbered.

Each case is run the way a user would type it, against an existing finished run
(``klexp resume=<run dir> <bad input>``), so the test also checks that a failing command leaves
every file of that run directory as it was (logs may only grow).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, run_cli
from test_data import write_mnist_like

from klexp.app.cli import main
from klexp.data.idx import FILES, write_idx


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    result = run_cli([*FAST, "data=synthetic"], cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (root / "outputs" / "classification").iterdir()
    files = root / "files"
    good_idx = write_mnist_like(files / "idx")
    bad_magic = write_mnist_like(files / "bad_magic")
    (bad_magic / FILES["train"][1]).write_bytes(b"\x00\x00\x08\x03" + (bad_magic / FILES["train"][1]).read_bytes()[4:])
    truncated = write_mnist_like(files / "truncated")
    image_file = truncated / FILES["test"][0]
    image_file.write_bytes(image_file.read_bytes()[:-100])
    mismatch = write_mnist_like(files / "mismatch")
    write_idx(mismatch / FILES["test"][1], np.zeros(19, dtype=np.uint8))
    missing_labels = write_mnist_like(files / "missing_labels")
    (missing_labels / FILES["train"][1]).unlink()
    (files / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    return {"root": root, "run": run_dir, "idx": good_idx, "bad_magic": bad_magic,
            "truncated": truncated, "mismatch": mismatch, "missing_labels": missing_labels,
            "garbage": files / "garbage.ckpt", "ckpt": run_dir / "checkpoints" / "last.ckpt",
            "nothing": files / "does-not-exist"}


CASES = [
    # configs: composition
    (["foo=1"], "Could not override 'foo'"),
    (["kl.ce.wieght=1"], "Could not override 'kl.ce.wieght'"),
    (["experiment=nope"], "Could not find 'experiment/nope'"),
    (["kl=[ce,nope]"], "Could not load 'kl/nope'"),
    (["data=mnist_idx"], "data.root: a value is required (the config leaves it ???)"),
    (["+kl.ce.weight_from=${{nowhere}}"], "kl.ce.weight_from: cannot resolve"),
    # configs: keys, types and ranges of the classes they build
    (["+kl.ce.wieght=1"], "kl.ce.wieght: unknown key for KLTerm; did you mean 'weight'?"),
    (["+task.temprature=2"], "task.temprature: unknown key for ClassificationTask; did you mean 'temperature'?"),
    (["+task.net.hiden=[8]"], "task.net.hiden: unknown key for MLP; did you mean 'hidden'?"),
    (["kl.ce.weight=-1"], "kl.ce.weight: expected a finite number ≥ 0, got -1"),
    (["kl.ce.weight=inf"], "kl.ce.weight: expected a finite number ≥ 0, got inf"),
    (["experiment=vae_free_bits", "kl.prior.shaping.nats=inf"], "kl.prior.shaping.nats: expected a finite number ≥ 0, got inf"),
    (["+schedule@kl.ce.schedule=linear", "kl.ce.schedule.end=inf"], "kl.ce.schedule.end: expected a finite number ≥ 0, got inf"),
    (["task.temperature=inf"], "task.temperature: expected a finite number > 0, got inf"),
    (["experiment=ppo", "task.ent_coef=inf"], "task.ent_coef: expected a finite number ≥ 0, got inf"),
    (["kl.ce.direction=sideways"], "kl.ce.direction: expected one of forward, reverse, js, got 'sideways'"),
    (["kl.ce.estimator=k9"], "kl.ce.estimator: expected one of analytic, k1, k2, k3, got 'k9'"),
    (["+kl.ce.num_samples=0"], "kl.ce.num_samples: expected an integer > 0, got 0"),
    (["kl.ce.direction=js", "kl.ce.estimator=k3"], "kl.ce.estimator: Jensen–Shannon has no k1/k2/k3 estimator"),
    (["kl=[ce,distill]"], "kl.distill: KL term 'distill' reads 'teacher_T', 'model_T'; ClassificationTask returns "
                          "'model', 'target', 'uniform' (missing: 'teacher_T', 'model_T')"),
    (["kl.ce.p=targt"], "kl.ce: KL term 'ce' reads 'targt', 'model'; ClassificationTask returns 'model', 'target', "
                        "'uniform' (missing: 'targt')"),
    (["task.label_smoothing=1.0"], "task.label_smoothing: expected a number in [0, 1), got 1.0"),
    (["task.label_smoothing=-0.1"], "task.label_smoothing: expected a number in [0, 1), got -0.1"),
    (["task.temperature=0"], "task.temperature: expected a finite number > 0, got 0"),
    (["task.net.hidden=[0]"], "task.net.hidden: expected a list of positive layer widths, got [0]"),
    (["task.net.activation=swish"], "task.net.activation: expected one of relu, tanh, gelu, elu, got 'swish'"),
    (["task.net.dropout=1.5"], "task.net.dropout: expected a number in [0, 1), got 1.5"),
    (["data.batch_size=abc"], "data.batch_size: expected an integer, got 'abc'"),
    (["data.val_fraction=0.5", "data.test_fraction=0.6"], "data.test_fraction: expected val_fraction + test_fraction < 1"),
    (["data.augment=rotate"], "data.augment: expected one of none, shift, got 'rotate'"),
    (["seed=abc"], "seed: expected an integer, got 'abc'"),
    (["threads=0"], "threads: expected an integer ≥ 1 or null, got 0"),
    (["+schedule@kl.ce.schedule=linear", "kl.ce.schedule.steps=0"], "kl.ce.schedule.steps: expected an integer > 0, got 0"),
    (["+schedule@kl.ce.schedule=cyclical", "kl.ce.schedule.ratio=0"], "kl.ce.schedule.ratio: expected a number in (0, 1], got 0"),
    (["experiment=ppo_target_kl", "kl.target_kl.target=0"], "kl.target_kl.target: expected a number > 0, got 0"),
    (["experiment=ppo", "task.gamma=0"], "task.gamma: expected a number in (0, 1], got 0"),
    (["experiment=ppo", "task.gamma=1.5"], "task.gamma: expected a number in (0, 1], got 1.5"),
    (["experiment=ppo", "task.clip_coef=-0.2"], "task.clip_coef: expected a finite number ≥ 0, got -0.2"),
    (["experiment=vae_free_bits", "kl.prior.shaping.nats=-1"], "kl.prior.shaping.nats: expected a finite number ≥ 0, got -1"),
    (["experiment=ppo_kl_adaptive", "kl.old_policy_kl.schedule.factor=1"], "kl.old_policy_kl.schedule.factor: expected a number > 1, got 1"),
    # configs: NaN is no setting anywhere, named where it is written (not where it is interpolated)
    (["kl.ce.weight=nan"], "kl.ce.weight: expected a number, got nan"),
    (["task.optimizer.lr=nan"], "task.optimizer.lr: expected a number, got nan"),
    (["experiment=vae_free_bits", "kl.prior.shaping.nats=nan"], "kl.prior.shaping.nats: expected a number, got nan"),
    (["experiment=ppo_kl_adaptive", "++kl.old_policy_kl.schedule.max_value=nan"], "kl.old_policy_kl.schedule.max_value: expected a number, got nan"),
    (["experiment=distill", "distillation.alpha=nan"], "distillation.alpha: expected a number, got nan"),
    # configs: the Trainer's, its callbacks' and the logger's own arguments, and the optimiser's
    (["trainer.max_epochs=abc"], "trainer.max_epochs: expected an integer, got 'abc'"),
    (["trainer.log_every_n_steps=1.5"], "trainer.log_every_n_steps: expected an integer, got 1.5"),
    (["trainer.precision=13"], "trainer.precision: expected one of 64, 32, 16, transformer-engine, "),
    (["trainer.deterministic=sometimes"], "trainer.deterministic: expected one of true, false, warn, got 'sometimes'"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch: unknown key for Trainer; did you mean 'max_epochs'?"),
    (["trainer.devices=-3"], "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
    (["trainer.max_epochs=-5"], "trainer: `max_epochs` must be a non-negative integer or -1. You passed in -5."),
    (["callbacks.model_checkpoint.save_top_k=x"], "callbacks.model_checkpoint.save_top_k: expected an integer, got 'x'"),
    (["callbacks.model_checkpoint.save_top_k=-5"], "callbacks.model_checkpoint: Invalid value for save_top_k=-5. Must be >= -1"),
    (["callbacks.lr_monitor.logging_interval=hour"], "callbacks.lr_monitor.logging_interval: expected one of step, epoch, got 'hour'"),
    (["logger.name=[1,2]"], "logger.name: expected a string, got [1, 2]"),
    (["logger.default_hp_metric=maybe"], "logger.default_hp_metric: expected true or false, got 'maybe'"),
    (["task.optimizer.lr=abc"], "task.optimizer.lr: expected a number or a Tensor config (with _target_), got 'abc'"),
    # ids
    (["experiment=ppo", "env.id=NoSuchEnv-v0"], "task.env.id: 'NoSuchEnv-v0' is not a registered Gymnasium environment"),
    # files and paths
    (["data=mnist_idx", "data.root={nothing}"], "data.root: directory {nothing} does not exist"),
    (["data=mnist_idx", "data.root={missing_labels}"], "data.root: {missing_labels} has no train-labels-idx1-ubyte"),
    (["data=mnist_idx", "data.root={bad_magic}"], "train-labels-idx1-ubyte: magic number 0x00000803, expected 0x00000801"),
    (["data=mnist_idx", "data.root={truncated}"], "t10k-images-idx3-ubyte: header promises shape (20, 6, 6) = 720 bytes of data, found 620 (truncated)"),
    (["data=mnist_idx", "data.root={mismatch}"], "test has 20 images but 19 labels"),
    (["task.teacher_checkpoint={nothing}"], "task.teacher_checkpoint: {nothing} does not exist"),
    (["task.teacher_checkpoint={garbage}"], "task.teacher_checkpoint: {garbage} is not a readable checkpoint"),
    (["data=digits", "task.teacher_checkpoint={ckpt}"], "was trained for 16 inputs and 3 classes; the data has 64 inputs and 10 classes"),
    (["ckpt_path={nothing}"], "ckpt_path: {nothing} does not exist"),
    (["experiment=ppo_ref_kl", "stages=null", "task.reference_checkpoint={nothing}"], "task.reference_checkpoint: {nothing} does not exist"),
    (["experiment=ppo_ref_kl", "stages=null", "task.reference_checkpoint={ckpt}"], "task.reference_checkpoint: {ckpt} is not a klexp PPO checkpoint"),
]


def _snapshot(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_exits_non_zero_with_one_line_naming_the_problem(args, message, workspace,
                                                                   monkeypatch, capsys):
    assert len(CASES) >= 25
    paths = {k: v for k, v in workspace.items() if isinstance(v, Path)}
    args = [a.format(**paths) for a in args]
    message = message.format(**paths)
    run_dir = workspace["run"]
    before = _snapshot(run_dir)
    monkeypatch.chdir(workspace["root"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["klexp", f"resume={run_dir}", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code not in (0, None)
    stderr = capsys.readouterr().err
    assert any(message in line for line in stderr.splitlines()), stderr
    assert "Traceback" not in stderr
    after = _snapshot(run_dir)
    for path, content in before.items():
        if path.suffix == ".log":
            assert after[path].startswith(content), f"{path} was rewritten"
        else:
            assert after.get(path) == content, f"{path} was clobbered"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["resume={nothing}"], "resume: {nothing} is not a directory"),
     (["resume={idx}"], "resume: {idx} is not a klexp run directory")],
)
def test_bad_resume_target_is_named(args, message, workspace, monkeypatch, capsys):
    paths = {k: v for k, v in workspace.items() if isinstance(v, Path)}
    monkeypatch.setattr(sys, "argv", ["klexp", *(a.format(**paths) for a in args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code not in (0, None)
    assert message.format(**paths) in str(exit_.value.code) + capsys.readouterr().err


LIGHTNING_OUTPUT = ("GPU available", "Total params", "| Name")
# Lightning's start-up lines and the model summary, shown
VERBOSE = ["++verbose=true", "trainer.enable_model_summary=true"]


def _one_klexp_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("klexp:")]
    return line


@pytest.mark.parametrize(
    ("args", "message"),
    [(["experiment=ppo_pendulum", "kl=[uniform_kl]"],
      "kl.uniform_kl.q: a Gaussian policy over an unbounded action space has no uniform counterpart"),
     (["experiment=ppo", "kl=[reference_kl]"],
      "kl.reference_kl.q: the term reads 'reference', which needs task.reference_checkpoint"),
     (["experiment=bayes", "stages=null", "task.prior=scale_mixture"],
      "kl.weights.estimator: KL(q(w) ‖ scale-mixture prior) has no closed form")],
    ids=["uniform-under-continuous-actions", "reference-without-checkpoint", "analytic-kl-to-scale-mixture"],
)
def test_a_term_the_task_cannot_serve_is_reported_before_lightning_builds_anything(args, message, tmp_path):
    result = run_cli([*FAST, *VERBOSE, *args], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert message in _one_klexp_line(result.stderr), result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert not [text for text in LIGHTNING_OUTPUT if text in output], output


def test_kl_terms_are_checked_before_a_stage_trains(tmp_path):
    result = run_cli([*FAST, "data=synthetic", "experiment=distill", "kl.distill.weight=inf"], cwd=tmp_path,
                     timeout=120)
    assert result.returncode != 0
    assert "kl.distill.weight: expected a finite number ≥ 0, got inf" in _one_klexp_line(result.stderr)
    assert "stage teacher" not in result.stdout + result.stderr
    assert not list((tmp_path / "outputs").rglob("teacher"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["experiment=distill", "task.label_smoothing=2"],
     "task.label_smoothing: expected a number in [0, 1), got 2"),
    (["experiment=bayes", "task.prior=scale_mixture"],
     "kl.weights.estimator: KL(q(w) ‖ scale-mixture prior) has no closed form"),
    (["experiment=distill", "kl.distill.p=nope"], "kl.distill: KL term 'distill' reads 'nope'"),
])
def test_a_run_with_stages_checks_its_task_and_terms_before_the_first_stage_trains(overrides, message,
                                                                                    tmp_path):
    result = run_cli([*overrides, "data=synthetic", "callbacks.progress_bar=null"], cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert not [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
