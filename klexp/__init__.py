"""klexp: KL divergence as a first-class, configurable part of PyTorch Lightning training.

The names a user's own project needs, importable from ``klexp`` itself. They load on first use,
so ``from klexp import kl`` needs only torch, and the Lightning integration loads with the first
Lightning name::

    from klexp import KLTerm, LinearWarmup, total_loss, kl
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS: dict[str, str] = {
    # the KL library (klexp.core): pure torch
    **dict.fromkeys(
        ["kl", "reverse_kl", "js", "entropy", "cross_entropy", "kl_samples", "monte_carlo_terms",
         "categorical_kl", "categorical_entropy", "categorical_cross_entropy", "categorical_js",
         "wasserstein1_categorical", "wasserstein2_gaussian", "wasserstein1_empirical_1d",
         "f_divergence", "categorical_f_divergence", "F_DIVERGENCES", "FDivergence",
         "VariationalFDivergence", "donsker_varadhan_bound", "nwj_bound", "knn_kl",
         "gradient_penalty", "WassersteinGP", "Schedule", "Constant",
         "LinearWarmup", "Cyclical", "Controller", "AdaptiveBeta", "ProportionalController"],
        "klexp.core"),
    **dict.fromkeys(["Shaping", "FreeBits", "Capacity", "PerExample"], "klexp.core.shaping"),
    **dict.fromkeys(["Estimator", "ClosedForm", "MonteCarlo", "OnSamples"], "klexp.core.estimate"),
    **dict.fromkeys(["Direction", "Forward", "Reverse", "JensenShannon"], "klexp.core.directions"),
    # distillation of sequence models: token-level objectives, reductions, exact sequence metrics
    **dict.fromkeys(["gkd_generalised_jsd", "generalised_jsd", "skew_kl", "taid_target", "taid_kl",
                     "top_k_truncated_kl", "top_k_tail_kl", "sampled_kl_terms", "reward_surrogate"],
                    "klexp.core.distill"),
    **dict.fromkeys(["TokenObjective", "ForwardKL", "ReverseKL", "GeneralisedJS", "SkewKL", "TAID",
                     "TopK", "SampledReverseKL"], "klexp.core.distill_objectives"),
    "TaidSchedule": "klexp.core.taid",
    "reduce_tokens": "klexp.core.reduction",
    **dict.fromkeys(["sequence_divergences", "SequenceDivergences", "prefix_tree", "sample_sequences",
                     "all_sequences"], "klexp.core.sequences"),
    "DistillTerm": "klexp.lightning.distill_term",
    # what klexp reads from a LightningModule: the module contract (all of it optional)
    **dict.fromkeys(["KlexpModule", "DeclaresOutputs", "ChecksTerms", "BuildsForData", "HasCharts",
                     "HasLogStep"], "klexp.lightning.contract"),
    # the Lightning integration (klexp.lightning)
    **dict.fromkeys(
        ["KLTerm", "KLPenalty", "TargetKL", "KLMeasure", "kl_term", "kl_stop", "LossTerm", "RewardTerm",
         "Term", "total_loss", "reward_penalty", "UpdatePhase",
         "log_metrics", "logs_now", "Dashboards", "RunSummary", "RNGState", "FailureCheckpoint",
         "AtomicCheckpointIO", "NoProfiler"],
        "klexp.lightning"),
    # errors
    **dict.fromkeys(["KlexpError", "ConfigValueError", "NonFiniteError"], "klexp.errors"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'klexp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
