"""PPO throughput with Lightning's DDP: global env-steps per second with 1 and 2 processes.

Each side is a real ``klexp experiment=ppo`` run (a fresh process, as a user runs it), with the
same global number of env steps; under DDP each rank steps its own vector of environments and the
logged ``time/sps`` counts the steps of all ranks. Sides alternate over rounds so that machine
noise hits both; the medians are compared.

    .venv/bin/python experiments/benchmarks/bench_ddp.py [--timesteps 100000] [--rounds 3] [override ...]

On a machine with N free cores, up to N processes can scale; this one has 2 cores, so 2 processes
is the whole machine (1 torch thread each, as the PPO config sets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

SIDES = {
    "1 process": ["trainer.devices=1"],
    "2 processes (DDP, gloo)": ["trainer=ddp", "trainer.devices=2"],
}


def run_sps(overrides: Sequence[str], workdir: Path) -> float:
    """Run PPO in ``workdir`` and return the global env-steps/s it logged last."""
    result = subprocess.run([sys.executable, "-m", "klexp", "experiment=ppo", *overrides],
                            cwd=workdir, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    (summary,) = (workdir / "outputs" / "ppo").glob("*/summary.json")
    return float(json.loads(summary.read_text())["metrics"]["time/sps"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args(argv)
    common = [f"task.total_timesteps={args.timesteps}", "task.eval_episodes=2",
              "trainer.accelerator=cpu", "callbacks.progress_bar=null", *args.overrides]

    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(SIDES) if round_index % 2 == 0 else list(reversed(SIDES))
            for side in order:
                workdir = Path(scratch) / f"{round_index}-{len(rates[side])}-{side[0]}"
                workdir.mkdir()
                sps = run_sps([*common, *SIDES[side]], workdir)
                rates[side].append(sps)
                print(f"round {round_index + 1}: {side:26s} {sps:9.0f} env-steps/s", flush=True)

    medians = {side: statistics.median(values) for side, values in rates.items()}
    print(f"\nPPO CartPole, {args.timesteps} global env steps, {args.rounds} rounds (medians)")
    for side, sps in medians.items():
        print(f"{side:28s} {sps:9.0f} env-steps/s")
    one, two = medians.values()
    print(f"{'scaling 2 / 1 processes':28s} {two / one:9.2f}×")


if __name__ == "__main__":
    main()
