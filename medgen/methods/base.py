"""The Method / Translator interface shared by every diffusion model and GAN.

``fit()`` trains any :class:`Method`; notebooks, ``evaluate()`` and the demos only call
:meth:`Method.translate`, so they never branch on the kind of model.

A method owns one or more optimiser groups (``{"model": params}`` for diffusion,
``{"generator": ..., "discriminator": ...}`` for GANs). Each optimiser step, ``fit()``
calls :meth:`training_step` once per group, in the order of :meth:`param_groups`, and
back-propagates the returned ``"loss"`` into that group's parameters only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
from torch import nn

from medgen.config import RunConfig, SampleConfig
from medgen.data.batch import Batch

# The CLI and notebooks pass one set of sampling options (cfg.sample's fields) to every method;
# methods that do not sample accept them with no effect.
IGNORED_OPTIONS = tuple(f.name for f in dataclasses.fields(SampleConfig))


def reject_unknown_options(method: str, options: Iterable[str], valid: Iterable[str] = ()) -> None:
    """One-line ``ValueError`` for the first option that is neither in ``valid`` nor ignored."""
    valid = tuple(valid)
    unknown = [k for k in options if k not in valid and k not in IGNORED_OPTIONS]
    if unknown:
        known = "valid: " + ", ".join(valid) if valid else "it has none"
        raise ValueError(f"unknown option '{unknown[0]}' for method '{method}' ({known}; "
                         f"ignored: {', '.join(IGNORED_OPTIONS)})")


class Method(nn.Module):
    """Base class. Subclasses set ``self.config`` and implement the three methods below."""

    config: RunConfig

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimiser groups, in the order they are stepped: name -> parameters."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def training_step(self, batch: Batch, group: str, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses for optimiser group ``group`` on ``batch``; must contain the scalar ``"loss"``."""
        raise NotImplementedError

    @torch.no_grad()
    def outputs_for(self, source: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the method produces for a dataset batch ``source [B, C_s, *S]``: ``[B, C_t, *S]``.

        Translators translate it (the default); an unconditional generator ignores the values
        and generates ``B`` images. Used by the training loop's sample grids and by the
        fp16-export check, which must not care which kind of method they hold.
        """
        return self.translate(source, generator=generator)

    @torch.no_grad()
    def translate(
        self,
        source: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        **options,
    ) -> torch.Tensor:
        """Map a source batch ``[B, C_s, *S]`` (model range) to a target batch ``[B, C_t, *S]``.

        ``options`` override the sampling config for this call (``sampler``, ``steps``, ``eta``,
        ``guidance_scale``); ``callback`` receives a dict per sampling step.
        """
        raise NotImplementedError
