"""A teacher trained once is reused by one key: a stage whose ``checkpoint_to`` key the run already
sets is not run (docs/distill-seq.md), the given checkpoint is checked before anything is built,
and resuming such a run hands it no stage checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO, run_experiment
from omegaconf import OmegaConf

from klexp.app.resume import finished_stages
from klexp.app.stages import stages_to_run
from klexp.errors import KlexpError

STAGED = {"task": {"teacher_checkpoint": None},
          "stages": {"teacher": {"overrides": ["experiment=distill_seq_teacher"],
                                 "checkpoint_to": "task.teacher_checkpoint"},
                     "off": None}}
#: a few steps, one validation (as tests/test_docs_commands.py's smoke size for distill_seq)
SMOKE = ["trainer.max_steps=8", "data.num_train=512", "trainer.check_val_every_n_epoch=1",
         "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


def documented_reuse_command(checkpoint: Path) -> list[str]:
    """The overrides of the command docs/distill-seq.md shows for reusing a teacher, its
    placeholder path replaced by ``checkpoint``."""
    found = re.search(r"`klexp (experiment=distill_seq [^`]*)task\.teacher_checkpoint=<[^`]*`",
                      (REPO / "docs" / "distill-seq.md").read_text())
    assert found, "docs/distill-seq.md shows no command that reuses a teacher checkpoint"
    return [*found.group(1).split(), f"task.teacher_checkpoint={checkpoint}"]


def test_a_stage_runs_only_while_its_checkpoint_key_is_unset():
    cfg = OmegaConf.create(STAGED)
    assert list(stages_to_run(cfg)) == ["teacher"]
    cfg.task.teacher_checkpoint = "/somewhere/last.ckpt"
    assert stages_to_run(cfg) == {}


def test_resuming_a_run_that_reused_a_teacher_trains_no_stage_and_overrides_no_key(tmp_path):
    (tmp_path / ".hydra").mkdir()
    given = OmegaConf.create(STAGED)
    given.task.teacher_checkpoint = "/somewhere/last.ckpt"
    OmegaConf.save(given, tmp_path / ".hydra" / "config.yaml")
    assert finished_stages(tmp_path) == []  # its saved overrides give the key again
    OmegaConf.save(OmegaConf.create(STAGED), tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "teacher" / "checkpoints").mkdir(parents=True)
    (tmp_path / "teacher" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert finished_stages(tmp_path) == [
        "stages=null", f"task.teacher_checkpoint='{tmp_path / 'teacher' / 'checkpoints' / 'last.ckpt'}'"]


def test_a_missing_teacher_checkpoint_is_one_line_before_any_stage_trains_or_file_exists(tmp_path):
    words = documented_reuse_command(tmp_path / "nowhere.ckpt")
    with pytest.raises(KlexpError, match=r"^task\.teacher_checkpoint: .*nowhere\.ckpt does not exist$"):
        run_experiment([*words, *SMOKE], tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_documented_command_reuses_a_teacher_without_training_one(tmp_path):
    teacher = run_experiment(["experiment=distill_seq_teacher", *SMOKE], tmp_path / "teacher")
    assert teacher["status"] == "completed"
    checkpoint = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    words = documented_reuse_command(checkpoint)
    summary = run_experiment([*words, *SMOKE], tmp_path / "student")
    assert summary["status"] == "completed"
    assert summary["stages"] == {}
    assert not (tmp_path / "student" / "teacher").exists()
    assert summary["metrics"]["val/seq_kl_forward"] > 0  # scored against that teacher
