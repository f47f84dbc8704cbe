"""Image grids with plain torch (torchvision has no CPU build here), ready for TensorBoard's
``add_image``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def image_grid(images: Tensor, per_row: int, *, padding: int = 1, pad_value: float = 1.0,
               scale: int = 1) -> Tensor:
    """Tile ``N`` images into one ``(C, H', W')`` image, ``per_row`` to a row, in row-major order.

    ``images`` has shape ``(N, H, W)`` or ``(N, C, H, W)`` with values in ``[0, 1]`` (clamped).
    Each image is enlarged ``scale`` times by pixel repetition (8×8 digits are unreadable at their
    own size) and separated from its neighbours by ``padding`` pixels of ``pad_value``.
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must have shape (N, H, W) or (N, C, H, W) with N ≥ 1, "
                         f"got {tuple(images.shape)}")
    if per_row < 1 or scale < 1 or padding < 0:
        raise ValueError(f"per_row and scale must be ≥ 1 and padding ≥ 0, got {per_row}, {scale}, "
                         f"{padding}")
    images = images.detach().float().clamp(0.0, 1.0).cpu()
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    count, channels, height, width = images.shape
    columns = min(per_row, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = torch.full((channels, rows * cell_h + padding, columns * cell_w + padding), pad_value)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * cell_h, padding + column * cell_w
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def upscale_factor(height: int, width: int, target: int = 28) -> int:
    """The integer enlargement that brings an image's shorter side to at least ``target`` pixels."""
    return max(1, math.ceil(target / max(1, min(height, width))))
