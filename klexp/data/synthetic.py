"""Synthetic labelled "images" for fast tests: a Gaussian mixture squashed into [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

from klexp.data.images import ImageClassData
from klexp.errors import require_finite_positive, require_positive_int


class GaussianMixtureData(ImageClassData):
    """``num_examples`` points of ``num_classes`` well-separated Gaussian clusters in
    ``height × width`` dimensions, mapped through a sigmoid so that pixels lie in [0, 1]."""

    def __init__(
        self,
        num_examples: int = 600,
        num_classes: int = 3,
        height: int = 4,
        width: int = 4,
        separation: float = 3.0,
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        require_positive_int("num_examples", num_examples)
        require_positive_int("num_classes", num_classes)
        require_positive_int("height", height)
        require_positive_int("width", width)
        require_finite_positive("separation", separation)
        super().__init__(**kwargs)
        self.num_examples, self.classes = num_examples, num_classes
        self.height, self.width, self.separation = height, width, separation
        self.data_seed = data_seed

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.data_seed)
        dims = self.height * self.width
        centres = torch.randn(self.classes, dims, generator=generator) * self.separation / 2
        labels = torch.arange(self.num_examples) % self.classes
        points = centres[labels] + torch.randn(self.num_examples, dims, generator=generator)
        images = torch.sigmoid(points).view(-1, self.height, self.width)
        return images, labels
