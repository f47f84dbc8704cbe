"""What a ``klexp`` run prints: a progress bar, the final metrics and where the logs are.

Lightning's own start-up lines (accelerators found, an advertisement for a logging service, how
many batches it will use, why it stopped) and the model summary are one switch away: ``verbose=true``
shows them; by default they are silenced for the run, and so are warnings that are known to be
benign for klexp's runs and that no config can act on.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: Lightning's informational output, one logger for all of it
LIGHTNING_LOGGER = "pytorch_lightning"
#: (message pattern, why it is benign) of warnings silenced unless ``verbose``
BENIGN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*isinstance\(treespec, LeafSpec\).*", "raised inside Lightning by torch's pytree API"),
    (r".*module\(s\) in eval mode.*", "frozen teachers, baselines and reference policies are meant to be"),
    (r".*does not have many workers.*", "klexp's data sets live in memory; workers would be slower"),
    (r".*is smaller than the logging interval.*", "short runs log what they have"),
    (r".*GPU available but not used.*", "the config chose the accelerator"),
)


@contextmanager
def run_output(verbose: bool) -> Iterator[None]:
    """Inside, Lightning's informational lines and the benign warnings are shown only when
    ``verbose``; outside, everything is as it was."""
    logger = logging.getLogger(LIGHTNING_LOGGER)
    level = logger.level
    with warnings.catch_warnings():
        if not verbose:
            logger.setLevel(logging.WARNING)
            for pattern, _ in BENIGN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            logger.setLevel(level)
