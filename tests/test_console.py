"""What a run prints: by default the progress bar, the final metrics and where the logs are;
Lightning's own output one switch away (``verbose=true``)."""

from __future__ import annotations

import pytest
from helpers import cli

SMALL = ["data=synthetic", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
LIGHTNING_CHATTER = ["GPU available", "TPU available", "litlogger", "Total params", "Total FLOPs",
                     "`Trainer.fit` stopped", "treespec"]


@pytest.mark.parametrize("verbose", [False, True])
def test_the_default_run_prints_progress_metrics_and_where_the_logs_are(verbose, tmp_path):
    result = cli([*SMALL, f"verbose={str(verbose).lower()}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for expected in ("final metrics", "test/acc", "run directory: ",
                     "view them with:  tensorboard --logdir "):
        assert expected in output, expected
    assert f"run directory: {tmp_path}/outputs/classification/" in output
    shown = [line for line in LIGHTNING_CHATTER[:5] if line in output]
    assert shown == (LIGHTNING_CHATTER[:5] if verbose else []), shown
    if not verbose:
        assert not [line for line in LIGHTNING_CHATTER if line in output]


def test_importing_the_command_changes_no_global_warning_filter():
    import importlib
    import warnings

    import klexp.app.cli

    before = list(warnings.filters)
    importlib.reload(klexp.app.cli)
    assert warnings.filters == before
