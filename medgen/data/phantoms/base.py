"""The contract every phantom simulator implements (one module per anatomy).

A phantom module (``spine_coronal``, ``spine_sagittal``, ``knee``, ``lung``) defines one
:class:`PhantomSpec` named ``SPEC`` and registers it in :data:`medgen.registry.PHANTOMS`::

    SPEC = register_phantom(PhantomSpec(
        name="knee", card=__doc__, generate=generate,
        modalities={"xray": Modality("xray", "film density", 0.0, 1.0), ...},
        labels={"kl_grade": "Kellgren-Lawrence grade 0-4 (int)", ...},
        controls={"kl_grade": Control(0, 4, step=1, default=2)},
        sizes={"ci": Sizes(32, 32, 8), "smoke": ..., "cpu": ..., "paper": Sizes(256, 256, 50)},
    ))

``generate(numbers, *, seed=0, sizes, **controls) -> dict[str, np.ndarray]`` renders the
subjects ``numbers`` (ints). Every returned array has a leading axis of length
``len(numbers)``: images in physical units (HU for CT, film density in [0, 1] for
radiographs, fixed arbitrary units for MRI / ultrasound), label maps as integers, scalar
labels as ``[n]`` arrays, landmarks as ``[n, ..., 2|3]`` arrays in pixel coordinates
``(row, col)`` / ``(slice, row, col)``. Subject ``k`` depends only on ``(seed, k)``
(:func:`subject_rng`), so a subject is the same whichever batch renders it.

``controls`` fix the randomly drawn parameters (the demo's sliders: Cobb angle, depth,
KL grade, ...); an unknown control or a value outside its range raises
:class:`PhantomError` naming it (:meth:`PhantomSpec.check_controls`).

Images enter the model through :meth:`Modality.to_model`, a *fixed* linear map of the
modality's physical range ``[low, high]`` onto ``[-1, 1]`` (clipped) -- never each
image's own minimum/maximum -- and leave it through :meth:`Modality.from_model`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medgen.registry import PHANTOMS, register

__all__ = ["PRESETS", "TEST_OFFSET", "PhantomError", "Modality", "Control", "Sizes", "PhantomSpec",
           "subject_rng", "register_phantom", "as_numbers"]

PRESETS = ("ci", "smoke", "cpu", "paper")
TEST_OFFSET = 500_000  # subject numbers of test splits start here (train: 0 .. n_train - 1)


class PhantomError(ValueError):
    """Bad phantom request (unknown control, value out of range, bad size); one-line message."""


@dataclass(frozen=True)
class Modality:
    """One image a phantom renders, and its fixed map to the model range."""

    key: str  # key of the array in generate()'s output, e.g. "ct", "t1w", "xray", "us_vpi"
    unit: str  # physical unit, e.g. "HU", "film density", "a.u. (MRI)"
    low: float  # physical value mapped to -1 (values below are clipped)
    high: float  # physical value mapped to +1 (values above are clipped)
    description: str = ""  # one line: what this image shows and hides

    def to_model(self, arr: np.ndarray) -> np.ndarray:
        """Physical units -> float32 model range ``[-1, 1]`` (clipped; any shape)."""
        scaled = (np.asarray(arr, dtype=np.float64) - self.low) / (self.high - self.low)
        return (np.clip(scaled, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)

    def from_model(self, x: np.ndarray) -> np.ndarray:
        """Model range ``[-1, 1]`` -> physical units (float32; any shape)."""
        x = np.asarray(x, dtype=np.float64)
        return ((x + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)


@dataclass(frozen=True)
class Control:
    """A parameter the caller (e.g. a demo slider) may fix instead of drawing it."""

    low: float  # smallest allowed value
    high: float  # largest allowed value
    step: float = 0.0  # slider step (0: continuous; 1: integer)
    default: float = 0.0  # slider start value
    description: str = ""  # one line shown beside the slider


@dataclass(frozen=True)
class Sizes:
    """Rendered size of one subject (pixels / slices)."""

    height: int  # rows of a 2D image (cranio-caudal for spines)
    width: int  # columns of a 2D image
    depth: int = 0  # slices of a 3D volume (0: the phantom renders 2D images only)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8 or self.depth < 0:
            raise PhantomError(f"phantom sizes must be >= 8 px (depth >= 0), got {self}")


@dataclass(frozen=True)
class PhantomSpec:
    """Everything the datasets, the CLI, the notebook and the demo need to know about a phantom."""

    name: str  # registry name, e.g. "spine_coronal"
    card: str  # dataset card: what it models, what it ignores, parameter ranges
    generate: Callable[..., dict[str, np.ndarray]]  # generate(numbers, *, seed, sizes, **controls)
    modalities: Mapping[str, Modality]  # image keys of generate()'s output -> their unit and range
    labels: Mapping[str, str]  # non-image keys of generate()'s output -> "meaning [unit]"
    controls: Mapping[str, Control] = field(default_factory=dict)  # fixable parameters
    sizes: Mapping[str, Sizes] = field(default_factory=dict)  # preset name -> rendered size
    label_maps: Sequence[str] = ()  # keys of integer label images (segmentations), stored like images

    def sizes_for(self, preset: str) -> Sizes:
        """The rendered size at ``preset`` (ci, smoke, cpu or paper)."""
        if preset not in self.sizes:
            raise PhantomError(f"phantom '{self.name}' has no size for preset '{preset}' "
                               f"(choose from {', '.join(self.sizes)})")
        return self.sizes[preset]

    def sizes_at(self, image_size: int, depth: int = 0) -> Sizes:
        """The size for a model input of width ``image_size``: the ``paper`` aspect ratio, and
        ``depth`` slices (0: the ``paper`` depth scaled with the width, at least 4; 2D stays 2D)."""
        ref = self.sizes["paper"]
        height = max(8, int(round(image_size * ref.height / ref.width)))
        if ref.depth == 0:
            return Sizes(height, image_size, 0)
        return Sizes(height, image_size, depth or max(4, int(round(ref.depth * image_size / ref.width))))

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, float]:
        """Validate fixed parameters; unknown names and out-of-range values raise PhantomError."""
        out = {}
        for key, value in controls.items():
            if value is None:
                continue
            if key not in self.controls:
                known = ", ".join(sorted(self.controls)) or "none"
                raise PhantomError(f"unknown control '{key}' for phantom '{self.name}' (known: {known})")
            c = self.controls[key]
            v = float(value)
            if not np.isfinite(v) or not c.low <= v <= c.high:
                raise PhantomError(f"control '{key}' of phantom '{self.name}' must be in "
                                   f"[{c.low:g}, {c.high:g}], got {value!r}")
            out[key] = v
        return out

    def __call__(self, numbers: Sequence[int] | np.ndarray | int, *, seed: int = 0,
                 sizes: Sizes | str = "ci", **controls: Any) -> dict[str, np.ndarray]:
        """Render subjects: ``spec([0, 1, 2], seed=0, sizes="cpu", cobb=30)``."""
        if isinstance(sizes, str):
            sizes = self.sizes_for(sizes)
        return self.generate(as_numbers(numbers), seed=seed, sizes=sizes, **self.check_controls(controls))


def as_numbers(numbers: Sequence[int] | np.ndarray | int) -> np.ndarray:
    """Subject numbers as a 1D int64 array (an int ``n`` means ``range(n)``); negatives are errors."""
    arr = np.arange(numbers) if isinstance(numbers, (int, np.integer)) else np.asarray(numbers, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and arr.min() < 0):
        raise PhantomError(f"subject numbers must be a 1D list of non-negative ints, got shape {arr.shape}")
    return arr.astype(np.int64)


def subject_rng(name: str, seed: int, number: int) -> np.random.Generator:
    """The generator of subject ``number`` of phantom ``name``: depends only on (name, seed, number)."""
    return np.random.default_rng([zlib.crc32(name.encode()), int(seed), int(number)])


def register_phantom(spec: PhantomSpec) -> PhantomSpec:
    """Add ``spec`` to :data:`medgen.registry.PHANTOMS` and return it."""
    missing = [p for p in PRESETS if p not in spec.sizes]
    if missing:
        raise PhantomError(f"phantom '{spec.name}' lacks sizes for preset(s) {', '.join(missing)}")
    register(PHANTOMS, spec.name)(spec)
    return spec
