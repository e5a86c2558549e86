"""``cddpm``: conditional DDPM translation with the source image channel-concatenated to x_t.

The network is :class:`medgen.nn.unet.UNet` built from ``cfg.model`` with
``cond_image_channels`` = source channels (the condition enters as
``Condition(image=source)``, concatenated to ``x_t`` before ``conv_in``), wrapped once in a
:class:`~medgen.diffusion.parameterization.Denoiser` with ``cfg.diffusion.prediction``
(eps / x0 / v). Training is :func:`~medgen.diffusion.losses.diffusion_loss`, with per-sample
classifier-free condition dropout (``cfg.diffusion.cond_drop_prob``; the null condition is a
black image of value ``cfg.diffusion.null_value``). Sampling draws ``x_T ~ N(0, I)`` from the
caller's generator and runs one of the shared samplers (DDPM, DDIM with eta, DPM-Solver++ 2M)
over respaced timesteps; with ``guidance_scale != 0`` the denoiser is wrapped in a
:class:`~medgen.diffusion.guidance.CFGDenoiser`. Works for 2D (``[B, C, H, W]``) and 3D
(``[B, C, D, H, W]``) as set by ``cfg.model.spatial_dims``.

This file only wires the shared pieces together; every algorithm lives in ``medgen.diffusion``.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from medgen.config import ConfigError, RunConfig
from medgen.data.batch import Batch
from medgen.diffusion.guidance import CFGDenoiser, drop_condition, null_condition
from medgen.diffusion.losses import diffusion_loss
from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.samplers import sample
from medgen.diffusion.schedules import noise_like
from medgen.methods.base import Method
from medgen.nn.unet import Condition, UNet
from medgen.registry import METHODS, register

__all__ = ["ConditionalDDPM", "OPTIONS"]

OPTIONS = ("sampler", "steps", "eta", "guidance_scale", "spacing")  # translate() overrides of cfg.sample


@register(METHODS, "cddpm")
class ConditionalDDPM(Method):
    """Conditional diffusion translator (see the module docstring).

    ``denoiser`` is the :class:`Denoiser` holding the UNet (``net``) and its noise schedule.
    """

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        if config.model.cond_image_channels <= 0:
            raise ConfigError("cddpm needs model.cond_image_channels > 0 (the number of source channels)")
        self.denoiser = Denoiser.from_config(UNet(config.model), config.diffusion)
        self._null = partial(null_condition, null_value=config.diffusion.null_value)

    @property
    def net(self) -> UNet:
        """The UNet (``denoiser.net``)."""
        return self.denoiser.net

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """One optimiser group, ``"model"``: the UNet's parameters."""
        return {"model": [p for p in self.net.parameters() if p.requires_grad]}

    def condition(self, source: torch.Tensor) -> Condition:
        """``Condition(image=source)`` for a source ``[B, cond_image_channels, *S]`` (checked)."""
        m = self.config.model
        if source.ndim != m.spatial_dims + 2:
            raise ValueError(f"cddpm: source {tuple(source.shape)} must have {m.spatial_dims} spatial dims "
                             f"(model.spatial_dims={m.spatial_dims})")
        if source.shape[1] != m.cond_image_channels:
            raise ValueError(f"cddpm: source has {source.shape[1]} channels but model.cond_image_channels="
                             f"{m.cond_image_channels}")
        return Condition(image=source)

    def training_step(self, batch: Batch, group: str = "model",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Diffusion loss on ``batch.target`` ``[B, C_t, *S]`` given ``batch.source`` ``[B, C_s, *S]``.

        Returns ``{"loss", "diffusion", "x0"}`` (see :func:`diffusion_loss`). Condition dropout
        draws from ``generator`` before the loss draws ``t`` and the noise.
        """
        if group != "model":
            raise ValueError(f"cddpm has one optimiser group 'model', got '{group}'")
        if batch.target is None:
            raise ValueError("cddpm: training needs paired batches (batch.target is None)")
        d = self.config.diffusion
        cond = drop_condition(self.condition(batch.source), d.cond_drop_prob, self._null, generator)
        return diffusion_loss(self.denoiser, batch.target, cond, generator=generator, loss=d.loss,
                              x0_weight=d.x0_loss_weight, mask=batch.mask)

    def sampling_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``cfg.sample`` overridden by ``options``; unknown names are a one-line error.

        A configured ``eta`` applies only to the ddim sampler; an explicit ``eta`` with another
        sampler is an error (raised by the sampler).
        """
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown option '{unknown[0]}' for method 'cddpm' (valid: {', '.join(OPTIONS)})")
        s = self.config.sample
        opts = {k: options.get(k, getattr(s, k)) for k in OPTIONS}
        if "eta" not in options and opts["sampler"] != "ddim":
            opts["eta"] = 0.0
        return opts

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """Sample targets ``[B, model.out_channels, *S]`` for a source ``[B, C_s, *S]`` (model range).

        ``options``: ``sampler`` ("ddpm", "ddim", "dpmpp"), ``steps``, ``eta`` (ddim),
        ``guidance_scale`` (CFG w; 0 = plain conditional), ``spacing``; defaults from ``cfg.sample``.
        ``x_T`` and any sampler noise come from ``generator`` (a fixed seed gives a fixed result).
        """
        opts = self.sampling_options(options)
        cond = self.condition(source)
        denoiser: Any = self.denoiser
        if opts["guidance_scale"] != 0:
            denoiser = CFGDenoiser(self.denoiser, opts["guidance_scale"], self._null)
        template = source.new_empty((source.shape[0], self.config.model.out_channels, *source.shape[2:]))
        x_T = noise_like(template, generator)
        return sample(opts["sampler"], denoiser, x_T, int(opts["steps"]), cond, spacing=opts["spacing"],
                      generator=generator, callback=callback, eta=float(opts["eta"]))
