"""The "data" of a task that makes its own: step indices, resumable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from klexp.errors import require_positive_int


class StepIndices:
    """Indices 0 … n−1, one per training step, for a task whose steps make their own data (PPO's
    rollouts, a fit to a known density). It saves its position in checkpoints, so a resumed run
    continues with the next index; it is its own DataLoader (Lightning iterates it as one)."""

    def __init__(self, n: int) -> None:
        require_positive_int("n", n)
        self.n, self._start, self._next = n, 0, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        for index in range(start, self.n):
            self._next = index + 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"next": self._next}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._start = int(state["next"]) % self.n
