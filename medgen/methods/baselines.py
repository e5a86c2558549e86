"""Trivial, non-trainable translators: the baseline rows every results table carries.

* ``identity``: the source itself (channel-matched to ``cfg.model.out_channels``), i.e.
  "do nothing" -- a model that does not beat it has learned nothing.
* ``gaussian_filter``: the source smoothed by :func:`scipy.ndimage.gaussian_filter` over the
  spatial axes only (option ``sigma`` in pixels, default ``DEFAULT_SIGMA``), a classical
  denoiser that must not be tuned on the test set.

Both have no parameters (``config.method`` is set to the baseline's name): :meth:`param_groups` is empty, so ``fit()`` does nothing. They
accept and ignore the sampling options of :class:`medgen.config.SampleConfig` (``sampler``,
``steps``, ...) so that notebooks can pass one set of options to every method; any other
unknown option is a one-line error. ``callback`` is called once with the result.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from medgen.config import RunConfig
from medgen.data.batch import Batch
from medgen.methods.base import Method, reject_unknown_options
from medgen.registry import METHODS, register

__all__ = ["Identity", "GaussianFilter", "match_channels", "DEFAULT_SIGMA"]

DEFAULT_SIGMA = 1.0  # pixels; about the best fixed sigma on toy_shapes training subjects at 32 px


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` ``[B, C, *S]`` -> ``[B, channels, *S]``: unchanged, repeated (C = 1) or averaged (channels = 1)."""
    c = x.shape[1]
    if c == channels:
        return x.clone()
    if c == 1:
        return x.repeat_interleave(channels, dim=1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot match {c} source channels to {channels} target channels")


class _Baseline(Method):
    """Shared plumbing: no parameters, option validation, one callback call."""

    name = "baseline"
    options: dict[str, Any] = {}  # option name -> default

    def __init__(self, config: RunConfig) -> None:
        # The config names this baseline, so results and checkpoints say what produced them.
        super().__init__(dataclasses.replace(config, method=self.name))

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """No optimiser groups: ``fit()`` is a no-op."""
        return {}

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"method '{self.name}' has no trainable parameters; there is nothing to train")

    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        reject_unknown_options(self.name, options, self.options)
        return {k: options.get(k, default) for k, default in self.options.items()}

    def _apply(self, source: torch.Tensor, **opts: Any) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """Source ``[B, C_s, *S]`` (model range) -> ``[B, C_t, *S]``; ``generator`` is unused."""
        if source.ndim not in (4, 5):
            raise ValueError(f"{self.name}: expected source [B, C, H, W] or [B, C, D, H, W], got {tuple(source.shape)}")
        out = self._apply(source, **self._resolve(options))
        if callback is not None:
            callback({"i": 0, "n": 1, "t": 0, "x": out, "x0": out})
        return out


@register(METHODS, "identity")
class Identity(_Baseline):
    """Returns the source, channel-matched to ``cfg.model.out_channels``."""

    name = "identity"
    options: dict[str, Any] = {}

    def _apply(self, source: torch.Tensor) -> torch.Tensor:
        return match_channels(source, self.config.model.out_channels)


@register(METHODS, "gaussian_filter")
class GaussianFilter(_Baseline):
    """Gaussian smoothing of the source over its spatial axes (option ``sigma``, pixels)."""

    name = "gaussian_filter"
    options: dict[str, Any] = {"sigma": DEFAULT_SIGMA}

    def _apply(self, source: torch.Tensor, sigma: float) -> torch.Tensor:
        if not sigma >= 0:
            raise ValueError(f"gaussian_filter: sigma must be >= 0, got {sigma}")
        spatial = source.ndim - 2
        arr = source.detach().cpu().double().numpy()
        smooth = gaussian_filter(arr, sigma=(0.0, 0.0) + (float(sigma),) * spatial, mode="reflect")
        out = torch.from_numpy(np.ascontiguousarray(smooth)).to(device=source.device, dtype=source.dtype)
        return match_channels(out, self.config.model.out_channels)
