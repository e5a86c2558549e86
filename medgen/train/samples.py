"""Sample grids that :func:`medgen.train.fit` writes every ``train.sample_every`` steps.

:func:`save_sample_grid`: one PNG, one row per sample, columns source | prediction | target,
from model-range ``[-1, 1]`` tensors ``[B, C, *S]`` (3D volumes show their middle slice).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _to_rgb(x: torch.Tensor) -> np.ndarray:
    """``[C, *S]`` model-range image (middle slice of 3D) -> ``[H, W, 3]`` uint8."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[:, x.shape[1] // 2]
    x = x if x.shape[0] == 3 else x[:1].expand(3, -1, -1)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def save_sample_grid(path: str | os.PathLike, source: torch.Tensor, prediction: torch.Tensor,
                     target: torch.Tensor | None = None, *, min_size: int = 64, gap: int = 2) -> Path:
    """Save a PNG grid, one row per sample: source | prediction | target.

    source ``[B, C_s, *S]``, prediction ``[B, C_t, *S]``, target ``[B, C_t, *S]`` or None, model
    range ``[-1, 1]``; 3D volumes show their middle slice; tiles are enlarged (nearest) to at
    least ``min_size`` pixels. Returns the path.
    """
    columns = [source, prediction] + ([target] if target is not None else [])
    tiles = [[_to_rgb(col[i]) for col in columns] for i in range(source.shape[0])]
    h, w = tiles[0][0].shape[:2]
    scale = max(1, math.ceil(min_size / max(h, w)))
    th, tw = h * scale, w * scale
    grid = np.full((len(tiles) * (th + gap) - gap, len(columns) * (tw + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            grid[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = big
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
