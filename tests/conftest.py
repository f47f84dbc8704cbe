import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _small_thread_pool():
    """Tests use tiny tensors: one thread avoids oversubscribing the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_addoption(parser):
    """Options of the fault-injection suite (tests/lifecycle)."""
    group = parser.getgroup("lifecycle", "run lifecycle fault injection (tests/lifecycle)")
    group.addoption("--lifecycle-seed", type=int, default=None,
                    help="seed of the generated sequences (default: KLEXP_LIFECYCLE_SEED or 20)")
    group.addoption("--lifecycle-soak", type=int, default=None, metavar="N",
                    help="a soak: N sequences of 4 operations (default: KLEXP_SOAK, else 1 of 3)")
