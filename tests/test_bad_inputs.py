"""Bad input of every kind: a non-zero exit, one line naming the problem, nothing clobbered.

Each case is run the way a user would type it, against an existing run that can be resumed (one
stopped by SIGTERM while testing: ``klexp resume=<run dir> <bad input>``), so the test also checks
that a failing command leaves every file of that run directory as it was (logs may only grow).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import FAST, cli, run_experiment
from pytorch_lightning.loggers import TensorBoardLogger
from test_data import write_disagreeing_idx, write_mnist_like

from klexp.app.cli import main
from klexp.data.idx import FILES, write_idx
from klexp.errors import KlexpError
from klexp.nets.frozen import CHECKPOINT_NET_KEY


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    # stopped while testing: interrupted, so `resume=` takes it (a completed run is not resumed)
    stop = ["data.eval_batch_size=16", "++trainer.limit_test_batches=3",
            "+callbacks.stop._target_=faults.SignalAt", "+callbacks.stop.stage=test", "+callbacks.stop.batch=1"]
    # in this process: klexp's and Lightning's handlers take the signal, as in a process of its own
    result = cli([*FAST, "data=synthetic", *stop], root)
    assert result.returncode == 143, result.stderr[-2000:]
    assert '"status": "interrupted"' in next((root / "outputs" / "classification").glob("*/summary.json")).read_text()
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
    # a checkpoint whose description of its network (hidden=[32]) does not match its weights
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint[CHECKPOINT_NET_KEY]["net"]["hidden"] = [32]
    torch.save(checkpoint, files / "misdescribed.ckpt")
    return {"root": root, "run": run_dir, "idx": good_idx, "bad_magic": bad_magic,
            "truncated": truncated, "mismatch": mismatch, "missing_labels": missing_labels,
            "test_shape": write_disagreeing_idx(files / "test_shape", "shape"),
            "test_labels": write_disagreeing_idx(files / "test_labels", "labels"),
            "garbage": files / "garbage.ckpt", "misdescribed": files / "misdescribed.ckpt", "ckpt": run_dir / "checkpoints" / "last.ckpt",
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
    (["task.net.hidden=[32]"], "ckpt_path: {ckpt} does not fit the task as configured: net.0.weight is 512×16 in "
                           "the checkpoint, expected 32×16"),
    (["experiment=ppo_ref_kl", "stages=null", "task.reference_checkpoint={nothing}"], "task.reference_checkpoint: {nothing} does not exist"),
    (["experiment=ppo_ref_kl", "stages=null", "task.reference_checkpoint={ckpt}"], "task.reference_checkpoint: {ckpt} is not a klexp PPO checkpoint"),
]


def _snapshot(directory: Path) -> dict[Path, bytes]:
    """Every file of the run, except its lock, which names the pid of its latest owner."""
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.name != "klexp.lock"}


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
    # Hydra's own mistakes too (a key or option that does not exist, an override it cannot parse)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    after = _snapshot(run_dir)
    for path, content in before.items():
        if path.suffix == ".log":
            assert after[path].startswith(content), f"{path} was rewritten"
        else:
            assert after.get(path) == content, f"{path} was clobbered"
    # Hydra records each command under .hydra/ and in the log; nothing of klexp's is added
    added = [path for path in after if path not in before]
    assert not [path for path in added if path.suffix != ".log" and ".hydra" not in path.parts]


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


# What the data files, a checkpoint, the environment or the task decide, in a new run: refused
# with one line before the logger, the Trainer or any file of the run exists. A message ending in
# "…" is the line's start (the rest is Gymnasium's own words).
DECIDED_BEFORE_BUILDING = [
    # split sizes against the data and its classes; the split's seed
    (["data=synthetic", "data.val_fraction=0"], "data.val_fraction: expected a number in (0, 1), got 0"),
    (["data=synthetic", "data.test_fraction=0"],
     "data.test_fraction: 0 holds out 0 of 600 examples and keeps 600; a split stratified by 3 classes "
     "needs 3 on each side (expected test_fraction between 0.005 and 0.995)"),
    (["data=synthetic", "data.val_fraction=0.001"],
     "data.val_fraction: 0.001 holds out 1 of 480 examples and keeps 479; a split stratified by 3 classes "
     "needs 3 on each side (expected val_fraction between 0.005 and 0.795)"),
    (["data=synthetic", "data.split_seed=-1"], "data.split_seed: expected an integer in [0, 4294967294], got -1"),
    # the run's seed, within what seed_everything takes
    (["data=synthetic", "seed=-1"], "seed: expected an integer in [0, 4294967295], got -1"),
    (["data=synthetic", "seed=5000000000"], "seed: expected an integer in [0, 4294967295], got 5000000000"),
    # interpolations in top-level keys
    (["data=synthetic", "objective=${{nowhere}}"], "objective: cannot resolve Interpolation key 'nowhere' not found"),
    (["data=synthetic", "seed=${{nowhere}}"], "seed: cannot resolve Interpolation key 'nowhere' not found"),
    # the environment can be made with its kwargs
    (["experiment=ppo", "env.id=LunarLander-v3"],
     "env.id: 'LunarLander-v3' needs a package that is not installed: Box2D is not installed…"),
    (["experiment=ppo", "+env.kwargs.foo=1"],
     "env.kwargs: 'CartPole-v1' cannot be made with {{'foo': 1}}: CartPoleEnv.__init__() got an unexpected "
     "keyword argument 'foo' (expected arguments its constructor takes)"),
    # train and test data agree
    (["data=mnist_idx", "data.root={test_shape}"],
     "data.root: t10k-images-idx3-ubyte holds 7×6 images, train-images-idx3-ubyte 6×6: expected test "
     "images of the training images' shape"),
    (["data=mnist_idx", "data.root={test_labels}"],
     "data.root: t10k-labels-idx1-ubyte holds classes [3, 4] that train-labels-idx1-ubyte does not: "
     "expected test classes among the training classes [0, 1, 2]"),
    # checkpoints against the task as built: the first key that does not fit, with both shapes
    (["data=synthetic", "task.net.hidden=[32]", "ckpt_path={ckpt}"],
     "ckpt_path: {ckpt} does not fit the task as configured: net.0.weight is 512×16 in the checkpoint, "
     "expected 32×16"),
    (["data=digits", "ckpt_path={ckpt}"],
     "ckpt_path: {ckpt} does not fit the task as configured: net.0.weight is 512×16 in the checkpoint, "
     "expected 512×64"),
    (["experiment=vae", "data=synthetic", "ckpt_path={ckpt}"],
     "ckpt_path: {ckpt} does not fit the task as configured: the checkpoint has no encoder.0.weight "
     "(expected 256×16)"),
    (["experiment=distill", "stages=null", "data=digits", "task.teacher_checkpoint={ckpt}"],
     "task.teacher_checkpoint: {ckpt} was trained for 16 inputs and 3 classes; the data has 64 inputs and "
     "10 classes"),
    # a run with stages: its network against what its stages will write, before the first trains
    (["experiment=ppo_ref_kl", "task.actor.hidden=[32]"],
     "task.init_from_reference: the reference network differs from this task's (task.actor): "
     "net.0.weight is 64×4 in the reference, expected 32×4"),
    (["experiment=bayes", "data=synthetic"], "data.holdout_class: expected a class in 0..2, got 9"),
    (["experiment=distill", "data=synthetic", "stages.teacher.overrides=['experiment=classification','data.holdout_class=7']"],
     "stages.teacher: data.holdout_class: expected a class in 0..2, got 7"),
    (["experiment=distill", "data=synthetic", "data.val_fraction=0.001"],
     "data.val_fraction: 0.001 holds out 1 of 480 examples and keeps 479; a split stratified by 3 classes "
     "needs 3 on each side (expected val_fraction between 0.005 and 0.795)"),
    (["experiment=distill", "stages=null", "data=synthetic", "task.teacher_checkpoint={misdescribed}"],
     "task.teacher_checkpoint: {misdescribed} does not fit its own network: net.0.weight is 512×16 in the "
     "checkpoint, expected 32×16"),
    # the task can do what the run asks of it
    (["data=ring"], "data: ClassificationTask needs a DataModule that provides 'input_size'; RingOfGaussians "
                    "does not"),
    (["experiment=fit_gaussian", "data=synthetic"],
     "test: the run tests on the test split, but DensityFitTask has no test_step (expected test=false, or a "
     "task with a test_step)"),
]


@pytest.fixture
def nothing_is_built(monkeypatch):
    """The logger and the Trainer refuse to be built: a check that comes after them fails."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built")

    monkeypatch.setattr(pl.Trainer, "__init__", refuse)
    monkeypatch.setattr(TensorBoardLogger, "__init__", refuse)


@pytest.mark.parametrize(("args", "message"), DECIDED_BEFORE_BUILDING,
                         ids=[" ".join(c[0]).replace("{{", "{").replace("}}", "}")
                              for c in DECIDED_BEFORE_BUILDING])
def test_what_data_checkpoints_and_environments_decide_is_decided_before_anything_is_built(
        args, message, workspace, tmp_path, nothing_is_built):
    paths = {k: v for k, v in workspace.items() if isinstance(v, Path)}
    message = message.format(**paths)
    run_dir = tmp_path / "run"
    with pytest.raises(KlexpError) as error:
        run_experiment([*FAST, *(a.format(**paths) for a in args)], run_dir)
    if message.endswith("…"):
        assert str(error.value).startswith(message[:-1])
    else:
        assert str(error.value) == message
    assert "\n" not in str(error.value)
    # no events file, no checkpoint, no summary.json: nothing of the run at all
    assert not [p for p in run_dir.rglob("*") if p.is_file()]


def test_a_refused_checkpoint_is_one_line_of_the_klexp_command_and_the_run_directory_stays_empty(
        workspace, tmp_path):
    result = cli([*FAST, "data=synthetic", "task.net.hidden=[32]", f"ckpt_path={workspace['ckpt']}"],
                 cwd=tmp_path)
    assert result.returncode != 0
    assert _one_klexp_line(result.stderr) == (
        f"klexp: ckpt_path: {workspace['ckpt']} does not fit the task as configured: net.0.weight is "
        "512×16 in the checkpoint, expected 32×16")
    assert "Traceback" not in result.stdout + result.stderr
    (run_dir,) = tmp_path.glob("outputs/*/*")
    # Hydra's record and log, and the lock this process held: nothing of the run
    assert not [p for p in run_dir.iterdir() if p.name not in (".hydra", "klexp.lock") and p.suffix != ".log"]


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
    result = cli([*FAST, *VERBOSE, *args], cwd=tmp_path)
    assert result.returncode != 0
    assert message in _one_klexp_line(result.stderr), result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert not [text for text in LIGHTNING_OUTPUT if text in output], output


def test_kl_terms_are_checked_before_a_stage_trains(tmp_path):
    result = cli([*FAST, "data=synthetic", "experiment=distill", "kl.distill.weight=inf"], cwd=tmp_path)
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
    result = cli([*overrides, "data=synthetic", "callbacks.progress_bar=null"], cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert not [p for p in run_dir.iterdir() if p.name not in (".hydra", "klexp.lock") and p.suffix != ".log"]
