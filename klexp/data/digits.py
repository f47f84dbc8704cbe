"""scikit-learn's handwritten digits: 1,797 8×8 images in 10 classes, shipped inside scikit-learn."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor

from klexp.data.images import ImageClassData


class DigitsData(ImageClassData):
    """The embedded default data set; intensities 0–16 scaled to [0, 1]."""

    def load(self) -> tuple[Tensor, Tensor]:
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        return images, torch.tensor(digits.target, dtype=torch.long)
