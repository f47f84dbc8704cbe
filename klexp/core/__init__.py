"""The KL library: divergences, estimators, schedules, controllers and shaping as pure torch code.

Nothing here knows about Lightning or Hydra; ``klexp.lightning`` turns these pieces into KL terms
that train.
"""

from klexp.core.categorical import (
    categorical_cross_entropy,
    categorical_entropy,
    categorical_js,
    categorical_kl,
    to_units,
)
from klexp.core.controllers import AdaptiveBeta, Controller, ProportionalController
from klexp.core.distributions import check_compatible
from klexp.core.divergences import cross_entropy, entropy, js, kl, reverse_kl
from klexp.core.estimators import ESTIMATORS, MONTE_CARLO_ESTIMATORS, kl_samples, monte_carlo_terms
from klexp.core.schedules import Constant, Cyclical, LinearWarmup, Schedule, as_schedule
from klexp.core.wasserstein import wasserstein1_categorical, wasserstein2_gaussian

__all__ = [
    "ESTIMATORS",
    "MONTE_CARLO_ESTIMATORS",
    "AdaptiveBeta",
    "Constant",
    "Controller",
    "Cyclical",
    "LinearWarmup",
    "ProportionalController",
    "Schedule",
    "as_schedule",
    "categorical_cross_entropy",
    "categorical_entropy",
    "categorical_js",
    "categorical_kl",
    "check_compatible",
    "cross_entropy",
    "entropy",
    "js",
    "kl",
    "kl_samples",
    "monte_carlo_terms",
    "reverse_kl",
    "to_units",
    "wasserstein1_categorical",
    "wasserstein2_gaussian",
]
