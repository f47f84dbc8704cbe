"""Every benchmark is a documented command, so tests/test_docs_commands.py runs it, at its
smallest size, and checks that it prints the ratios it exists for (``RATIOS``). (What they
measure at full size is in docs/performance.md: speed is never asserted in a test.)"""

from __future__ import annotations

import shlex

from helpers import REPO

#: what each benchmark prints, whatever its size
RATIOS = {
    "bench_kl.py": ["ratio to F.kl_div", "target: klexp ≤ 1.1× F.kl_div"],
    "bench_vae.py": ["ratio klexp / plain", "ratio user+term / user/hand"],
    "bench_ppo.py": ["training-loop SPS (wall)", "end-to-end SPS (CPU time)", "target klexp ≥ 1.2× plain"],
    "bench_ddp.py": ["scaling 2 / 1 processes"],
}


def test_every_benchmark_is_a_documented_command_whose_ratios_are_checked():
    from test_docs_commands import COMMANDS, SCRIPT_SMOKE

    scripts = sorted(p.name for p in (REPO / "experiments" / "benchmarks").glob("bench_*.py"))
    assert scripts == sorted(RATIOS)
    documented = {shlex.split(c)[1] for c in COMMANDS if c.startswith("python experiments/benchmarks/")}
    assert documented == {f"experiments/benchmarks/{script}" for script in scripts}
    assert documented <= set(SCRIPT_SMOKE)
