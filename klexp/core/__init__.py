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
from klexp.core.fdivergences import (
    F_DIVERGENCES,
    FDivergence,
    VariationalFDivergence,
    categorical_f_divergence,
    donsker_varadhan_bound,
    f_divergence,
    nwj_bound,
)
from klexp.core.sample_based import knn_kl
from klexp.core.schedules import Constant, Cyclical, LinearWarmup, Schedule, as_schedule
from klexp.core.sequences import SequenceDivergences, sequence_divergences
from klexp.core.wasserstein import (
    WassersteinGP,
    gradient_penalty,
    wasserstein1_categorical,
    wasserstein1_empirical_1d,
    wasserstein2_gaussian,
)

__all__ = [
    "ESTIMATORS",
    "F_DIVERGENCES",
    "MONTE_CARLO_ESTIMATORS",
    "AdaptiveBeta",
    "Constant",
    "Controller",
    "Cyclical",
    "FDivergence",
    "LinearWarmup",
    "ProportionalController",
    "Schedule",
    "SequenceDivergences",
    "VariationalFDivergence",
    "WassersteinGP",
    "as_schedule",
    "categorical_cross_entropy",
    "categorical_entropy",
    "categorical_f_divergence",
    "categorical_js",
    "categorical_kl",
    "check_compatible",
    "cross_entropy",
    "donsker_varadhan_bound",
    "entropy",
    "f_divergence",
    "gradient_penalty",
    "js",
    "kl",
    "kl_samples",
    "knn_kl",
    "monte_carlo_terms",
    "nwj_bound",
    "reverse_kl",
    "sequence_divergences",
    "to_units",
    "wasserstein1_categorical",
    "wasserstein1_empirical_1d",
    "wasserstein2_gaussian",
]
