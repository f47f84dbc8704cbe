"""Every benchmark runs, at its smallest size, and prints the ratios it exists for. (What they
measure at full size is in docs/performance.md: speed is never asserted in a test.)"""

from __future__ import annotations

import runpy
import sys

import pytest
from helpers import REPO

BENCHMARKS = {
    "bench_kl.py": (["--rows", "64", "--classes", "10", "--repeats", "2", "--threads", "1"],
                    ["ratio to F.kl_div", "target: klexp ≤ 1.1× F.kl_div"]),
    "bench_vae.py": (["--steps", "5", "--rounds", "1"],
                     ["ratio klexp / plain", "ratio user+term / user/hand"]),
    "bench_ppo.py": (["--total-timesteps", "2048", "--repeats", "1"],
                     ["training-loop SPS (wall)", "end-to-end SPS (CPU time)", "target klexp ≥ 1.2× plain"]),
    "bench_ddp.py": (["--timesteps", "2048", "--rounds", "1"], ["scaling 2 / 1 processes"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_every_benchmark_prints_its_ratios(script, capsys, monkeypatch):
    arguments, expected = BENCHMARKS[script]
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    try:
        runpy.run_path(str(REPO / "experiments" / "benchmarks" / script), run_name="__main__")
    except SystemExit as exit_info:
        assert exit_info.code in (None, 0)
    out = capsys.readouterr().out
    for line in expected:
        assert line in out, line
