"""Every job of a sweep checked before the first one runs.

Hydra composes a sweep's jobs one by one as they start, so a value only one job has
(``kl.ce.weight=1,-1``) used to be found once the jobs before it had trained, and the sweep ended
half done. ``check_sweep_jobs`` composes each job's config as Hydra's basic sweeper will (the
product of ``hydra.sweeper.params`` and the command line's sweeps) and makes the checks every run
makes before it builds anything (``check_run_settings``, ``check_config``, and its KL terms built:
their weights, schedules and estimators), before the sweep's directory exists; the first job that
fails them ends the command in one line naming the job. A sweeper of another kind (Optuna's, which
proposes its jobs as it goes) is not read ahead. What a job's data, checkpoints or environment
decide is still checked by the job as it starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from klexp.app.hydra_internals import BASIC_SWEEPER
from klexp.errors import KlexpError


class SweepJobRefused(KlexpError):
    """A job of a sweep would be refused by the checks every run makes before it builds anything."""


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job of the sweep ``config`` describes, in the order Hydra's basic
    sweeper runs them (the sweeper's ``params``, then the command line; a later override of a key
    replaces an earlier one); None for another sweeper, or a sweep this cannot expand (Hydra names
    what it cannot)."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    given = [f"{key}={value}" for key, value in params.items()]
    given += [str(o) for o in config.hydra.overrides.task]
    choices: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(given):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:
                return None
    except Exception:
        return None
    return [list(job) for job in itertools.product(*choices.values())]


def check_sweep_jobs(config: DictConfig, compose: Callable[[Sequence[str]], DictConfig]) -> None:
    """Compose (``compose``: overrides → the job's config) and check every job of the sweep
    ``config`` describes; ``SweepJobRefused`` names the first job refused and why."""
    jobs = job_overrides(config)
    if not jobs or len(jobs) < 2:  # one job checks itself before it builds anything
        return
    # torch and Lightning, for a sweep of several jobs only: the command loads neither to decide
    from klexp.app.config_checks import check_config, check_run_settings
    from klexp.app.runner import build_terms

    # every job lists the same keys in the same order: the swept ones are those whose values differ
    varying = [index for index in range(len(jobs[0])) if len({job[index] for job in jobs}) > 1]
    for number, job in enumerate(jobs):
        own = [o for o in job if not o.lstrip("+~").startswith("hydra.")]
        cfg = compose(own)
        if "paths" in cfg:
            with open_dict(cfg):
                cfg.paths.output_dir = "<the job's directory>"  # Hydra's, decided as it starts
        try:
            check_run_settings(cfg)
            check_config(cfg)
            build_terms(cfg.get("kl"))
        except KlexpError as error:
            named = " ".join(job[index] for index in varying) or f"#{number}"
            raise SweepJobRefused(f"sweep job {named}: {error} (no job of the sweep has run)") from None
