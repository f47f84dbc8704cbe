"""TensorBoard as a user sees it: ``tensorboard --logdir <sweep>`` serves the runs, their scalar
tags, the HParams table (each run's resolved config with its real final metrics, in a logdir that
mixes experiments too) and the custom-scalars layout. Checked through TensorBoard's HTTP data API,
the same one its web page reads."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import FAST, QUIET, run_experiment

WEIGHTS = ("0.5", "2")
DEADLINE_SECONDS = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small sweep laid out as ``klexp -m`` lays it out: <overrides>/seed=<n>/."""
    root = tmp_path_factory.mktemp("sweep")
    summaries = {}
    for weight in WEIGHTS:
        overrides = [*FAST, "data=synthetic", "trainer.log_every_n_steps=1", f"kl.ce.weight={weight}",
                     "seed=0"]
        summaries[weight] = run_experiment(overrides, root / f"kl.ce.weight={weight}" / "seed=0")
    # another experiment in the same logdir: other hparams, other metrics
    summaries["ppo"] = run_experiment(["experiment=ppo", *QUIET, "task.total_timesteps=256",
                                       "task.num_steps=64", "task.eval_episodes=2"], root / "ppo")
    return root, summaries


class TensorBoard:
    """A ``tensorboard`` process on 127.0.0.1 and a client for its data API."""

    def __init__(self, logdir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        executable = Path(sys.executable).with_name("tensorboard")
        self.process = subprocess.Popen(
            [str(executable), "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", self.url.rsplit(":", 1)[1]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(self, path: str, **query: str) -> object:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict) -> object:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_for_runs(self, count: int) -> list[str]:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tensorboard exited: {self.process.stderr.read()[-2000:]}")
            try:
                runs = self.get("/data/runs")
                if len(runs) >= count:
                    return runs
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"tensorboard served no {count} runs within {DEADLINE_SECONDS} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def board(sweep):
    root, _ = sweep
    server = TensorBoard(root)
    try:
        server.wait_for_runs(len(RUNS))
        yield server
    finally:
        server.stop()


def run_name(weight: str) -> str:
    return f"kl.ce.weight={weight}/seed=0/tb"


#: each run's events and its HParams session (a sub-run)
RUNS = [name for weight in WEIGHTS for name in (run_name(weight), f"{run_name(weight)}/hparams")] + [
    "ppo/tb", "ppo/tb/hparams"]


pytestmark = pytest.mark.slow


def test_every_run_of_the_sweep_is_served(board):
    assert sorted(board.get("/data/runs")) == sorted(RUNS)
    plugins = board.get("/data/plugins_listing")
    for plugin in ("scalars", "hparams", "custom_scalars"):
        assert plugins[plugin]["enabled"], plugin


def test_scalar_tags_follow_the_documented_scheme_and_serve_the_final_values(board, sweep):
    _, summaries = sweep
    tags = board.get("/data/plugin/scalars/tags")
    for weight in WEIGHTS:
        run_tags = set(tags[run_name(weight)])
        assert {"kl/ce/value", "kl/ce/weight", "kl/ce/loss", "loss/total", "val/acc", "test/acc",
                "val/kl/ce/value"} <= run_tags
        assert "hp_metric" not in run_tags
        points = board.get("/data/plugin/scalars/scalars", run=run_name(weight), tag="kl/ce/weight")
        assert {value for _, _, value in points} == {float(weight)}
        (*_, (_, _, final)) = board.get("/data/plugin/scalars/scalars", run=run_name(weight),
                                         tag="test/acc")
        assert final == pytest.approx(summaries[weight]["metrics"]["test/acc"], rel=1e-6)


def test_hparams_table_shows_every_runs_config_and_final_metrics_in_a_mixed_logdir(board, sweep):
    _, summaries = sweep
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {info["name"]: info for info in experiment["hparamInfos"]}
    # the union of both experiments' resolved configs
    assert {"kl.ce.weight", "seed", "experiment", "kl.ce.direction", "task.optimizer.lr",
            "data.batch_size", "task.clip_coef", "task.env.id"} <= set(hparams)
    assert "callbacks.progress_bar" not in hparams  # a display switch, not a hyperparameter
    # TensorBoard marks what differs between the runs (and shows those columns first)
    assert hparams["kl.ce.weight"].get("differs") and hparams["experiment"].get("differs")
    assert not hparams["seed"].get("differs")
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"final/test/acc", "final/test/nll", "final/test/ece", "final/val/acc",
            "final/test/return_mean"} <= metrics
    assert not [tag for tag in metrics if not tag.startswith(("final/val/", "final/test/"))]

    groups = board.post("/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"metric": {"tag": "final/test/acc", "group": ""}}],
    })["sessionGroups"]
    assert len(groups) == len(WEIGHTS) + 1
    for group in groups:
        values = {m["name"]["tag"].removeprefix("final/"): m["value"] for m in group["metricValues"]}
        if group["hparams"]["experiment"] == "ppo":
            expected = summaries["ppo"]["metrics"]["test/return_mean"]
            assert values["test/return_mean"] == pytest.approx(expected)
            continue
        weight = f"{group['hparams']['kl.ce.weight']:g}"
        for tag in ("test/acc", "test/nll", "val/acc"):
            assert values[tag] == pytest.approx(summaries[weight]["metrics"][tag], rel=1e-6), tag


def test_custom_scalars_layout_is_served(board):
    layout = board.get("/data/plugin/custom_scalars/layout")
    charts = {category["title"]: {chart["title"]: chart["multiline"]["tag"]
                                  for chart in category["chart"]}
              for category in layout["category"]}
    assert charts["KL terms"]["ce: value — kl/ce/value"] == ["^kl/ce/value$"]
    train = "CE = KL(target ‖ model) + H(target), train"
    assert charts["Classification"][f"{train} — loss/ce"] == ["^loss/ce$"]
    assert charts["Classification"][f"{train} — kl/ce/value"] == ["^kl/ce/value$"]
    assert charts["PPO"]["value loss — loss/value"] == ["^loss/value$"]  # the layouts of all runs
