"""A network defined outside klexp, for the tests that swap one in from the config."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class ResidualMLP(nn.Module):
    """``x ↦ W_out(h + f(h))`` with ``h = W_in x``: takes the same arguments as klexp's MLP (only the
    first hidden width is used), so ``task.net._target_=toy_nets.ResidualMLP`` swaps it in alone."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (16,),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        width = hidden[0]
        self.inp = nn.Linear(in_features, width)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h))
