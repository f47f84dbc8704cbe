"""The Lightning integration: KL terms as callbacks, the path by which they reach a module's loss,
step logging, DDP agreement, dashboards and the run record, and every touch of Lightning's
private state (``internals``)."""

from klexp.lightning.callbacks import FailureCheckpoint, RNGState
from klexp.lightning.checkpoint_io import AtomicCheckpointIO
from klexp.lightning.dashboards import Dashboards
from klexp.lightning.from_config import kl_stop, kl_term
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.lightning.loss import LossTerm, RewardTerm, Term, reward_penalty, total_loss
from klexp.lightning.phase import UpdatePhase
from klexp.lightning.profiler import NoProfiler
from klexp.lightning.run_summary import RunSummary
from klexp.lightning.target_kl import TargetKL
from klexp.lightning.term import KLMeasure, KLPenalty, KLTerm, kl_terms_of

__all__ = [
    "AtomicCheckpointIO",
    "Dashboards",
    "FailureCheckpoint",
    "KLMeasure",
    "KLPenalty",
    "KLTerm",
    "LossTerm",
    "NoProfiler",
    "RNGState",
    "RewardTerm",
    "RunSummary",
    "TargetKL",
    "Term",
    "UpdatePhase",
    "current_stage",
    "kl_stop",
    "kl_term",
    "kl_terms_of",
    "log_metrics",
    "logs_now",
    "reward_penalty",
    "total_loss",
]
