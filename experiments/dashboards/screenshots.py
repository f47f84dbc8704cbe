"""Screenshots of klexp's TensorBoard dashboards as a user sees them: a short run of each
experiment into one logdir, ``tensorboard --logdir`` served on 127.0.0.1, and a headless Chromium
(Debian's ``chromium`` driven by playwright, no browser download) opened on each tab — Time
Series, Custom Scalars, HParams, Images, Text — one PNG a tab.

    python experiments/dashboards/screenshots.py --out screenshots

``--no-browser`` stops after the runs and a check that TensorBoard serves them (for a machine
without Chromium); ``--logdir`` reuses runs made before (skips runs that exist).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false"]
#: seconds-long runs whose charts still have a few points each
RUNS: dict[str, list[str]] = {
    "classification": ["experiment=classification", "trainer.max_epochs=3", "trainer.limit_train_batches=10",
                       "trainer.log_every_n_steps=2"],
    "vae": ["experiment=vae", "trainer.max_steps=60", "trainer.check_val_every_n_epoch=2",
            "trainer.log_every_n_steps=5", "task.iw_samples=5", "schedule@kl.prior.schedule=linear",
            "kl.prior.schedule.steps=40"],
    "bayes": ["experiment=bayes", "stages=null", "trainer.max_epochs=2", "trainer.limit_train_batches=10",
              "trainer.log_every_n_steps=2", "task.eval_samples=2"],
    "ppo": ["experiment=ppo", "task.total_timesteps=8192", "trainer.log_every_n_steps=1",
            "task.eval_episodes=2"],
    "ppo_tokens": ["experiment=ppo_tokens", "task.total_timesteps=8192", "trainer.log_every_n_steps=1"],
    "gan": ["experiment=gan", "trainer.max_epochs=1", "trainer.limit_train_batches=400",
            "trainer.val_check_interval=100", "trainer.log_every_n_steps=20"],
    "fit_gaussian": ["experiment=fit_gaussian", "trainer.max_epochs=2"],
}
TABS = ["timeseries", "custom_scalars", "hparams", "images", "text"]
#: the older dashboards' run filter, in the page address: only the runs' own events, not their
#: HParams sessions (``…/tb/hparams``)
VIEW = {tab: "&regexInput=tb%24" for tab in ("custom_scalars", "images", "text")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_runs(logdir: Path, names: list[str]) -> None:
    """A short run of each experiment into ``<logdir>/<name>`` (kept when it exists)."""
    for name in names:
        if (logdir / name / "summary.json").exists():
            continue
        command = [sys.executable, "-m", "klexp", *RUNS[name], *QUIET, f"hydra.run.dir={logdir / name}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{name}: the run failed: {result.stderr[-2000:]}")
        print(f"ran {name}")


def serve(logdir: Path) -> tuple[subprocess.Popen, str]:
    """``tensorboard --logdir`` on 127.0.0.1, once it serves every run."""
    port = free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(tensorboard), "--logdir", str(logdir), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tensorboard exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as response:
                if json.load(response):
                    return server, url
        except OSError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("tensorboard served no run within 120 s")


def screenshot(url: str, out: Path, chromium: str, width: int, height: int) -> list[Path]:
    """One full-page PNG of each tab."""
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        # the older dashboards keep "Ignore outliers in chart scaling" in local storage: off, as
        # its quantiles hide the line of a series of two or three points (a short run's validation)
        page.add_init_script("window.localStorage.setItem('_ignoreYOutliers', 'false')")
        for tab in TABS:
            page.goto(f"{url}/#{tab}{VIEW.get(tab, '')}")
            page.wait_for_load_state("networkidle")
            if tab == "timeseries":
                hide_sessions(page)
            time.sleep(10)  # charts fetch their data one by one after the page loads
            path = out / f"{tab}.png"
            page.screenshot(path=str(path), full_page=False)
            shots.append(path)
        browser.close()
    return shots


def hide_sessions(page: object) -> None:
    """Time Series: hide the HParams sessions (``…/tb/hparams``) with the run filter."""
    from playwright.sync_api import Error

    try:
        page.locator("input[placeholder='Filter runs (regex)']").first.fill("tb$")
    except Error as error:
        print(f"timeseries: the page changed, left as it is ({str(error).splitlines()[0]})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("screenshots"), help="where the PNGs go")
    parser.add_argument("--logdir", type=Path, help="the runs' logdir (default: a temporary one)")
    parser.add_argument("--experiments", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--no-browser", action="store_true", help="runs and server only, no screenshots")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        logdir = args.logdir or Path(scratch)
        make_runs(logdir, args.experiments)
        server, url = serve(logdir)
        try:
            if args.no_browser:
                print(f"tensorboard served {url}; no screenshots (--no-browser)")
                return
            args.out.mkdir(parents=True, exist_ok=True)
            for path in screenshot(url, args.out, args.chromium, args.width, args.height):
                print(f"wrote {path}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
