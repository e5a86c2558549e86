"""What the ``medgen`` commands do beyond parsing their arguments (:mod:`medgen.cli` parses and dispatches).

* :func:`sample_options` -- ``translate()`` keyword options from a config's ``sample`` section.
* :func:`translate_image` -- ``medgen sample``: one ``[H, W]`` image (or a ``[K, H, W]`` stack for a
  source of ``K`` channels) in [0, 1] translated at the model's size, with the model's per-sample
  conditions (``--cond uca=32.5``), and resized back; :func:`source_channels` says how many
  images the model's source takes.
* :func:`evaluation_frame` -- ``medgen evaluate``: :func:`medgen.evaluate.evaluate` rows of the
  model and of the identity baseline (DESIGN.md: every table carries a trivial baseline row).

Writing phantom and dataset folders (``medgen phantoms``) lives in :mod:`medgen.data.writers`.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from medgen.config import RunConfig

if TYPE_CHECKING:  # numpy, torch and pandas load with the command that needs them, not with the CLI
    import numpy as np

__all__ = ["sample_options", "source_channels", "translate_image", "evaluation_frame", "identity_baseline"]


def sample_options(cfg: RunConfig) -> dict[str, Any]:
    """``translate()`` keyword options from ``cfg.sample``."""
    s = cfg.sample
    return {"sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance_scale": s.guidance_scale}


def source_channels(cfg: RunConfig) -> int:
    """How many images the model's source takes (``model.cond_image_channels``, of the pixel-space twin
    for a latent model; 1 for a model without an image condition): the number of ``--input`` files
    of ``medgen sample``."""
    from medgen.diffusion.latent import pixel_config

    return max(1, int(pixel_config(cfg).model.cond_image_channels))


def translate_image(translator: Any, image: np.ndarray, cfg: RunConfig, *, seed: int = 0, name: str = "image",
                    notes: list[str] | None = None, cond: Mapping[str, float] | None = None) -> np.ndarray:
    """Translate ``image`` ``[H, W]`` (or a ``[K, H, W]`` stack, one image per source channel) in [0, 1]
    at the model's size; returns ``[H, W]`` in [0, 1].

    An image of another size is resized to the model's ``(H, W)`` (``spatial_shape(data)``:
    ``data.image_size`` wide, ``data.image_height`` or the data's aspect ratio high; antialiased
    bilinear, :func:`~medgen.data.io.to_model_range`) and the result resized back, with a note
    (appended to ``notes``, or warned when ``notes`` is None). ``seed`` seeds the sampling noise;
    ``cfg.sample`` gives the sampler options. ``cond``: the model's per-sample conditions
    ``{key: value}`` (its ``condition_keys``); a missing or unknown key is a one-line ``ValueError``.
    """
    import torch

    from medgen.data.datasets import spatial_shape
    from medgen.data.io import from_model_range, to_model_range

    size = spatial_shape(translator.config.data)  # (H, W): may be non-square (the coronal spine's 2:1)
    hw = tuple(image.shape[-2:])
    if hw != size:
        note = (f"{name} is {hw[0]}x{hw[1]}; the model works at {size[0]}x{size[1]}, "
                "so the image is resized in and the result resized back")
        if notes is None:
            warnings.warn(note, stacklevel=2)
        else:
            notes.append(note)
    if image.ndim == 3:
        channels = source_channels(translator.config)
        if image.shape[0] != channels:
            raise ValueError(f"{name}: a stack of {image.shape[0]} images but the model's source has {channels} channels")
        source = torch.cat([to_model_range(channel, size) for channel in image], dim=1)  # [1, K, H, W]
    else:
        source = to_model_range(image, size)
    values = {k: float(v) for k, v in (cond or {}).items()}
    if hasattr(translator, "check_conditions"):
        translator.check_conditions(values, 1)  # a missing / unknown key fails before sampling
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        pred = translator.translate(source, generator=generator, cond=values or None, **sample_options(cfg))
    result = from_model_range(pred[:1, :1])
    if result.shape != hw:
        result = from_model_range(to_model_range(result, hw))
    return result


def identity_baseline(cfg: RunConfig) -> Any:
    """The trivial baseline that returns its input, configured like ``cfg`` (DESIGN.md: every table carries one);
    for a latent model, like its pixel-space twin (image channels, no autoencoder parent)."""
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.diffusion.latent import pixel_config
    from medgen.registry import METHODS, lookup

    return lookup(METHODS, "identity")(replace(pixel_config(cfg), method="identity"))


def evaluation_frame(translator: Any, dataset: Any, metrics: Sequence[str], *, options: Mapping[str, Any],
                     seed: int = 0, batch_size: int = 16, baseline: bool = True) -> Any:
    """Per-sample rows of ``translator`` and, with ``baseline``, of :func:`identity_baseline` on ``dataset``.

    Each run is :func:`medgen.evaluate.evaluate` (``score(predict(...))``) with ``data_range`` 2.0
    (the model range ``[-1, 1]``) and a generator seeded with ``seed``; ``options`` go to the
    model's ``translate`` (the baseline takes none). Returns one DataFrame, column ``method``
    telling the runs apart.
    """
    import pandas as pd
    import torch

    from medgen.evaluate import evaluate

    runs = [(translator, dict(options))]
    if baseline:
        runs.append((identity_baseline(translator.config), {}))
    frames = []
    for model, run_options in runs:
        generator = torch.Generator().manual_seed(seed)
        frames.append(evaluate(model, dataset, tuple(metrics), data_range=2.0, batch_size=batch_size,
                               generator=generator, **run_options))
    return pd.concat(frames, ignore_index=True)
