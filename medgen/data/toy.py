"""``toy_shapes``: the built-in paired toy task of the quickstart (notebook 00).

Dataset card
------------
* **Target** (clean): a small anatomical phantom on a dark background -- one large "body"
  ellipse of soft-tissue intensity holding 2-5 "organs" (ellipses, rotated rectangles and
  triangles) of random intensity, painted in order so later shapes occlude earlier ones.
* **Source** (degraded, ultrasound-like): the target blurred by a Gaussian PSF
  (``sigma = BLUR_SIGMA_PX * size / 32`` pixels), multiplied by spatially correlated,
  fully developed speckle (unit mean, ``SPECKLE_LOOKS`` looks, grain ``SPECKLE_GRAIN_PX``),
  plus additive Gaussian noise of standard deviation ``ADDITIVE_NOISE_STD``, clipped to
  the valid range.
* **Range**: both images are float32 ``[1, H, W]`` in model range ``[-1, 1]``
  (``-1`` is black); ``mask`` is all ones. Metrics use ``data_range=2``.
* **Keys**: ``data.source`` / ``data.target`` pick the item's images by name, ``"source"`` (degraded)
  or ``"target"`` (clean); the default is the pair above, ``source="target"`` gives clean -> clean
  (what an autoencoder learns, so that ``evaluate`` scores its reconstruction).
* **Size**: ``W = DataConfig.image_size``, ``H = DataConfig.image_height`` or ``W`` (square); the
  shapes are drawn in coordinates normalised per axis, so a non-square image stretches them;
  ``n_train`` / ``n_test`` samples.
* **Subjects**: one sample per subject; subject ``k`` has ``patient_id`` ``"toy-{k:06d}"``.
  Train subjects are ``k = 0 .. n_train-1``; test subjects start at ``TEST_OFFSET``, so the
  splits are disjoint for any ``n_train`` and the test set does not change when the
  training set grows.
* **Determinism**: sample ``k`` depends only on ``(seed, k)`` (a per-sample NumPy
  ``Generator``); the geometry is drawn before the noise, so it is the same at every size.
* **Difficulty** (32 px, 1,024 training subjects, ``data_range=2``): the degraded source
  scores about 17.6 dB PSNR against the target and a Gaussian filter of the source
  (sigma 1 px, the ``gaussian_filter`` baseline) about 21.1 dB: a model must beat both
  rows to have learned anything.

Rendering is written by hand (NumPy, vectorised over the samples of a chunk) because no
dependency draws random filled shapes into a batch; the blur uses
:func:`scipy.ndimage.gaussian_filter`.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

from medgen.config import DataConfig
from medgen.data.phantoms.base import TEST_OFFSET  # first test subject, shared with the phantoms
from medgen.data.splits import split_hash as _split_hash
from medgen.registry import DATASETS, register

__all__ = ["ToyShapes", "make_pairs", "patient_id", "TEST_OFFSET"]

MAX_ORGANS = 5  # organs per phantom are drawn from 2 .. MAX_ORGANS
BLUR_SIGMA_PX = 1.0  # PSF standard deviation in pixels at 32 px (scaled with the image size)
SPECKLE_LOOKS = 4  # looks averaged into the multiplicative speckle: relative std 1/sqrt(looks)
SPECKLE_GRAIN_PX = 0.75  # speckle grain (correlation) standard deviation in pixels at 32 px
ADDITIVE_NOISE_STD = 0.03  # additive Gaussian noise on the [0, 1] intensity scale
BACKGROUND = 0.02  # intensity of the background on the [0, 1] scale
PRECOMPUTE_PIXELS = 1 << 22  # precompute the whole split when n * H * W is at most this
CHUNK = 256  # samples rendered at once (bounds the memory of vectorised rendering)
SPLITS = ("train", "test")
IMAGE_KEYS = ("source", "target")  # data.source / data.target: "target" as the source gives clean -> clean (an autoencoder's data)


def patient_id(number: int) -> str:
    """The subject id of subject ``number``: ``"toy-000123"``."""
    return f"toy-{number:06d}"


def _draw_params(rng: np.random.Generator) -> np.ndarray:
    """Shape parameters of one phantom: ``[1 + MAX_ORGANS, 8]`` rows
    ``(active, kind, cx, cy, a, b, angle, intensity)``; row 0 is the body ellipse."""
    rows = np.zeros((1 + MAX_ORGANS, 8))
    rows[0] = (1, 0, *rng.normal(0, 0.05, 2), *rng.uniform(0.6, 0.9, 2), rng.uniform(0, np.pi),
               rng.uniform(0.25, 0.45))
    n_organs = rng.integers(2, MAX_ORGANS + 1)
    for i in range(1, 1 + MAX_ORGANS):
        rows[i] = (i <= n_organs, rng.integers(0, 3), *rng.uniform(-0.45, 0.45, 2),
                   *rng.uniform(0.1, 0.3, 2), rng.uniform(0, np.pi), rng.uniform(0.05, 1.0))
    return rows


def _shape_masks(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-masks ``[n, H, W]`` of one shape per sample; ``params`` is ``[n, 8]``."""
    p = params.astype(np.float32)[:, :, None, None]
    dx, dy = x - p[:, 2], y - p[:, 3]
    cos, sin = np.cos(p[:, 6]), np.sin(p[:, 6])
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    a, b, kind = p[:, 4], p[:, 5], p[:, 1]
    ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    rect = (np.abs(u) <= a * 0.8) & (np.abs(v) <= b * 0.8)
    # Triangle with vertices at radius a on angles 90, 210, 330 degrees of the rotated frame,
    # squashed by b / a along v: inside = on the inner (left) side of all three edges.
    verts = [(a * np.cos(t), b * np.sin(t)) for t in np.deg2rad([90.0, 210.0, 330.0])]
    triangle = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        triangle &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return np.where(kind == 0, ellipse, np.where(kind == 1, rect, triangle))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of a size given as one side (square) or as ``(H, W)``."""
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _render(params: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Clean phantoms ``[n, H, W]`` on the ``[0, 1]`` scale from ``[n, 1+MAX_ORGANS, 8]`` params."""
    h, w = _hw(size)
    ys, xs = (((np.arange(s) + 0.5) / s * 2.0 - 1.0).astype(np.float32) for s in (h, w))
    y, x = np.meshgrid(ys, xs, indexing="ij")
    img = np.full((params.shape[0], h, w), BACKGROUND)
    for k in range(params.shape[1]):
        inside = _shape_masks(params[:, k], x[None], y[None]) & (params[:, k, 0:1, None] > 0)
        img = np.where(inside, params[:, k, 7, None, None], img)
    return img


def _speckle(rngs: list[np.random.Generator], size: int | tuple[int, int]) -> np.ndarray:
    """Unit-mean, spatially correlated speckle intensity ``[n, H, W]``.

    Each look is ``|h * z|^2`` for complex white Gaussian noise ``z`` and a Gaussian grain
    kernel ``h`` (fully developed speckle: exponential marginal); ``SPECKLE_LOOKS`` looks are
    averaged (Gamma marginal, relative std ``1 / sqrt(looks)``).
    """
    h, w = _hw(size)
    grain = SPECKLE_GRAIN_PX * w / 32.0
    z = np.stack([rng.standard_normal((SPECKLE_LOOKS, 2, h, w), dtype=np.float32) for rng in rngs])
    z = gaussian_filter(z, sigma=(0, 0, 0, grain, grain), mode="wrap")
    delta = np.zeros((h, w))
    delta[0, 0] = 1.0
    energy = float((gaussian_filter(delta, grain, mode="wrap") ** 2).sum())  # E|h * z|^2 / 2
    return (z**2).sum(axis=2).mean(axis=1) / (2.0 * energy)


def make_pairs(numbers: np.ndarray | list[int], size: int | tuple[int, int],
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render subjects ``numbers`` at ``size`` px (one side: square; or ``(H, W)``).

    Returns ``(source, target)``, each float32 ``[n, 1, H, W]`` in model range ``[-1, 1]``. Blur
    and speckle grain scale with the width ``W``.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    h, w = _hw(size)
    if numbers.size == 0:
        empty = np.zeros((0, 1, h, w), dtype=np.float32)
        return empty, empty.copy()
    rngs = [np.random.default_rng([seed, int(k)]) for k in numbers]
    target = _render(np.stack([_draw_params(rng) for rng in rngs]), size)
    sigma = BLUR_SIGMA_PX * w / 32.0
    blurred = gaussian_filter(target, sigma=(0.0, sigma, sigma), mode="nearest")
    speckle = _speckle(rngs, size)
    noise = np.stack([rng.normal(0.0, ADDITIVE_NOISE_STD, (h, w)) for rng in rngs])
    source = np.clip(blurred * speckle + noise, 0.0, 1.0)
    to_model = lambda a: (a[:, None] * 2.0 - 1.0).astype(np.float32)  # noqa: E731
    return to_model(source), to_model(target)


@register(DATASETS, "toy_shapes")
class ToyShapes(Dataset):
    """Paired toy phantoms (see the module's dataset card).

    Items are dicts ``{source [1,H,W], target [1,H,W], mask [1,H,W] (ones), patient_id: str}``.
    ``patient_ids`` lists the subjects in index order; ``split_hash`` fingerprints them.
    """

    def __init__(self, cfg: DataConfig, split: str, *, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' for toy_shapes (choose from {', '.join(SPLITS)})")
        n = cfg.n_train if split == "train" else cfg.n_test
        if not 0 <= n <= TEST_OFFSET:
            raise ValueError(f"toy_shapes {split} size must be in [0, {TEST_OFFSET}], got {n}")
        if cfg.image_size < 8:
            raise ValueError(f"toy_shapes needs data.image_size >= 8, got {cfg.image_size}")
        bad = [k for k in (cfg.source, cfg.target) if k not in IMAGE_KEYS]
        if bad:
            raise ValueError(f"toy_shapes has images {', '.join(IMAGE_KEYS)}; data.source / data.target '{bad[0]}' "
                             "is none of them")
        self.split, self.size, self.seed = split, cfg.image_size, seed
        self.keys = (cfg.source, cfg.target)  # which image is the item's source and its target
        self.numbers = np.arange(n) + (0 if split == "train" else TEST_OFFSET)
        self.patient_ids = [patient_id(int(k)) for k in self.numbers]
        self.split_hash = _split_hash(self.patient_ids) if n else ""
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.shape = (cfg.image_height or cfg.image_size, cfg.image_size)  # (H, W) of every image
        if self.shape[0] < 8:
            raise ValueError(f"toy_shapes needs data.image_height 0 or >= 8, got {cfg.image_height}")
        if n * self.shape[0] * self.shape[1] <= PRECOMPUTE_PIXELS:
            self._cache = self._generate(self.numbers)

    def _generate(self, numbers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source, target)`` tensors ``[n, 1, H, W]``, rendered in chunks of ``CHUNK``."""
        parts = [make_pairs(numbers[i:i + CHUNK], self.shape, self.seed) for i in range(0, len(numbers), CHUNK)]
        if not parts:
            parts = [make_pairs([], self.shape, self.seed)]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, index: int) -> dict[str, object]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"toy_shapes {self.split} index {index} out of range for {len(self)} samples")
        index = index % len(self)
        if self._cache is not None:
            source, target = self._cache[0][index], self._cache[1][index]
        else:
            src, tgt = self._generate(self.numbers[index:index + 1])
            source, target = src[0], tgt[0]
        images = {"source": source, "target": target}
        source, target = images[self.keys[0]], images[self.keys[1]]
        return {"source": source, "target": target, "mask": torch.ones_like(target),
                "patient_id": self.patient_ids[index]}

    def __repr__(self) -> str:
        return f"ToyShapes(split={self.split!r}, n={len(self)}, size={self.size}, split_hash={self.split_hash!r})"
