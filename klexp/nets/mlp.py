"""The multilayer perceptron the tasks use by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from klexp.errors import require, require_in, require_unit_interval

Activation = Literal["relu", "tanh", "gelu", "elu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU,
                                           "elu": nn.ELU}


def check_mlp_args(hidden: Sequence[int], activation: str, dropout: float) -> None:
    require(all(isinstance(h, int) and h > 0 for h in hidden), "hidden",
            "a list of positive layer widths", list(hidden))
    require_in("activation", activation, tuple(ACTIVATIONS))
    require_unit_interval("dropout", dropout)


class MLP(nn.Sequential):
    """``Linear → activation → (dropout)`` for each hidden width, then a final ``Linear``.

    A ``nn.Sequential``, so its parameters are named ``0.weight``, ``0.bias``… as before it was a
    class of its own (checkpoints keep loading).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Activation = "relu",
        dropout: float = 0.0,
    ) -> None:
        check_mlp_args(hidden, activation, dropout)
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


#: the name the tasks called it by before networks came from the config
mlp = MLP
