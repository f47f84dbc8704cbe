"""Lightning DDP on CPU (gloo): KL values reduced across ranks match a single process. The
two-rank run is the documented DDP command (docs), with the sizes below appended."""

import json
import shlex

import pytest
from helpers import cli, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_docs_commands import COMMANDS

# 600 examples: 420 to train, 60 to validate, 120 to test — every split divides between 2 ranks
COMMON = ["data=synthetic", "trainer.max_epochs=2", "task.net.dropout=0.0", "data.augment=none",
          "callbacks.progress_bar=null", "trainer.log_every_n_steps=1", "trainer.accelerator=cpu"]


def documented_ddp_command() -> list[str]:
    """The arguments of the docs' one DDP command (tests/test_docs_commands.py leaves it to this
    file: two ranks are started once in the suite for it)."""
    (command,) = [c for c in COMMANDS if "trainer=ddp" in c]
    program, *args = shlex.split(command)
    assert program == "klexp" and "trainer=ddp" in args
    return args


def finished_run(root):
    (run_dir,) = (root / "outputs" / "classification").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return run_dir, summary, events


@pytest.mark.slow
def test_two_process_ddp_logs_the_same_kl_and_loss_as_one_process_with_the_same_global_batch(tmp_path):
    single_root, ddp_root = tmp_path / "single", tmp_path / "ddp"
    single_root.mkdir()
    ddp_root.mkdir()
    single = cli([*COMMON, "data.batch_size=64"], single_root)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli([*documented_ddp_command(), *COMMON, "data.batch_size=32"], cwd=ddp_root, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    _, single_summary, single_events = finished_run(single_root)
    ddp_dir, ddp_summary, ddp_events = finished_run(ddp_root)
    for key in ("val/kl/ce/value", "test/loss/total", "test/kl/ce/value", "val/acc"):
        assert ddp_summary["metrics"][key] == pytest.approx(single_summary["metrics"][key], rel=1e-4)
    for tag in ("kl/ce/value", "loss/total", "loss/ce"):
        single_values = [e.value for e in single_events.Scalars(tag)]
        ddp_values = [e.value for e in ddp_events.Scalars(tag)]
        assert len(ddp_values) == len(single_values) > 0
        assert ddp_values == pytest.approx(single_values, rel=1e-4), tag
    assert not list(ddp_dir.glob("**/summary.json"))[1:], "only rank 0 writes the summary"
