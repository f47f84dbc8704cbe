"""`.ci/run` — the README's test command on this checkout — fails CI when a test fails and when
pytest collects nothing (its exit code 5), and passes when the tests pass. `PYTEST_ARGS` narrows
the run to a few tests so the suite does not run itself."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import REPO


def ci_run(pytest_args: str) -> subprocess.CompletedProcess[str]:
    # one pytest worker: the few tests here need no more, and each worker is a Python start-up
    return subprocess.run([str(REPO / ".ci" / "run")], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTEST_ARGS": pytest_args,
                                            "WORKERS": "1", "MAKEFLAGS": ""})


@pytest.mark.slow
def test_ci_fails_when_pytest_collects_nothing(tmp_path):
    # a folder without tests: collecting the suite only to deselect all of it took minutes
    result = ci_run(f"{tmp_path} -p no:cacheprovider")
    assert result.returncode != 0
    assert "no tests ran" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_ci_fails_when_a_test_fails_and_passes_when_it_passes(tmp_path):
    (tmp_path / "test_one.py").write_text("import os\n\n\ndef test_one():\n"
                                          "    assert os.environ.get('KLEXP_CI_PROBE') != 'fail'\n")
    os.environ["KLEXP_CI_PROBE"] = "fail"
    try:
        failing = ci_run(f"{tmp_path / 'test_one.py'} -p no:cacheprovider")
    finally:
        del os.environ["KLEXP_CI_PROBE"]
    passing = ci_run(f"{tmp_path / 'test_one.py'} -p no:cacheprovider")
    assert failing.returncode != 0 and "1 failed" in failing.stdout, failing.stdout[-2000:]
    assert passing.returncode == 0 and "1 passed" in passing.stdout, passing.stdout[-2000:]
