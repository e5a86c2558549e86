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

Scalar conditions (``cfg.diffusion.conditions``, e.g. ``("uca",)``): the method's
``condition_keys``. Training takes each key from the items' labels (``batch.meta``);
``translate(source, cond={"uca": tensor [B]})`` needs every key (a missing or unknown one is
a one-line error). Each scalar becomes ``model.cond_vector_dim / len(keys)`` sinusoidal
features (:func:`embed_scalars`), concatenated into the UNet's vector condition
(``Condition(vector=...)``, whose MLP adds it to the time embedding). The null condition of
classifier-free guidance (training dropout and CFG sampling) blanks the image and zeroes
the vector (an all-zero vector is no scalar's embedding).

Latent mode: with an ``"autoencoder"`` parent in ``cfg.parents`` (an ``autoencoder_kl`` run)
the same model diffuses in that autoencoder's latent space (:mod:`medgen.diffusion.latent`):
training encodes the target, and the source too with ``diffusion.latent_condition="encode"``
(else it is area-resized to the latent grid); sampling draws ``x_T`` at the latent shape
``[B, C_z, *S/f]``, never clips x0 there, and decodes the result to ``[B, C, *S]`` (clamped to
[-1, 1] when ``diffusion.clip_x0``). ``model.in_channels`` / ``out_channels`` are then the
latent channels; the CFG null condition is the latent of the black image.

This file only wires the shared pieces together; every algorithm lives in ``medgen.diffusion``.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding

from medgen.config import ConfigError, RunConfig
from medgen.data.batch import Batch
from medgen.diffusion.guidance import CFGDenoiser, drop_condition, null_condition
from medgen.diffusion.latent import PARENT, diffusion_config, space_of
from medgen.diffusion.losses import diffusion_loss
from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.samplers import sample
from medgen.diffusion.schedules import noise_like
from medgen.methods.base import Conditions, Method
from medgen.nn.unet import Condition, UNet
from medgen.registry import METHODS, register

__all__ = ["ConditionalDDPM", "OPTIONS", "embed_scalars", "SCALAR_FREQUENCIES"]

OPTIONS = ("sampler", "steps", "eta", "guidance_scale", "spacing")  # translate() overrides of cfg.sample
# Angular frequencies (rad per label unit) of the scalar-condition features, geometric from the first to
# the second: they tell apart values from about 1e-3 (a slice depth in [0, 1]) to about 60 units (degrees).
SCALAR_FREQUENCIES = (1000.0, 0.1)


def embed_scalars(values: dict[str, torch.Tensor], keys: Sequence[str], dim: int) -> torch.Tensor:
    """Scalar conditions ``{key: [B]}`` -> features ``[B, dim]``: per key (in ``keys`` order)
    ``dim // len(keys)`` sinusoids (diffusers' ``get_timestep_embedding``, cos first) at the
    :data:`SCALAR_FREQUENCIES`, concatenated. ``dim`` must be a multiple of ``2 * len(keys)``."""
    width = dim // len(keys)
    high, low = SCALAR_FREQUENCIES
    return torch.cat([get_timestep_embedding(values[k], width, flip_sin_to_cos=True, downscale_freq_shift=0,
                                             scale=high, max_period=high / low) for k in keys], dim=1)


def null_condition_with_vector(cond: Condition, null_value: float = -1.0) -> Condition:
    """The CFG null condition: the image filled with ``null_value`` and the vector (if any) zeroed."""
    null = null_condition(cond, null_value=null_value)
    if cond.vector is None:
        return null
    return dataclasses.replace(null, vector=torch.zeros_like(cond.vector))


@register(METHODS, "cddpm")
class ConditionalDDPM(Method):
    """Conditional diffusion translator (see the module docstring).

    ``denoiser`` is the :class:`Denoiser` holding the UNet (``net``) and its noise schedule.
    """

    optional_parent_names = (PARENT,)  # an "autoencoder" parent puts the model in its latent space

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        if config.model.cond_image_channels <= 0:
            raise ConfigError("cddpm needs model.cond_image_channels > 0 (the number of source channels)")
        self.condition_keys = tuple(config.diffusion.conditions)
        _check_scalar_conditions(self.condition_keys, config.model.cond_vector_dim)
        self.denoiser = Denoiser.from_config(UNet(config.model), diffusion_config(config))  # no clipping in latent space
        self._null = partial(null_condition_with_vector, null_value=config.diffusion.null_value)

    @property
    def net(self) -> UNet:
        """The UNet (``denoiser.net``)."""
        return self.denoiser.net

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """One optimiser group, ``"model"``: the UNet's parameters."""
        return {"model": [p for p in self.net.parameters() if p.requires_grad]}

    def condition(self, source: torch.Tensor, cond: Conditions | None = None) -> Condition:
        """``Condition(image=source, vector=embed_scalars(cond))`` for a source ``[B, cond_image_channels, *S]``
        and the scalar conditions ``cond`` ``{key: [B]}`` (both checked; ``vector`` None without keys)."""
        values = self.check_conditions(cond, source.shape[0])
        m = self.config.model
        if source.ndim != m.spatial_dims + 2:
            raise ValueError(f"cddpm: source {tuple(source.shape)} must have {m.spatial_dims} spatial dims "
                             f"(model.spatial_dims={m.spatial_dims})")
        channels = space_of(self).source_channels(m.cond_image_channels)  # latent "encode": the autoencoder's input
        if source.shape[1] != channels:
            raise ValueError(f"cddpm: source has {source.shape[1]} channels but model.cond_image_channels="
                             f"{m.cond_image_channels}" + ("" if channels == m.cond_image_channels else
                                                           f" (encoded from {channels} image channels)"))
        if not self.condition_keys:
            return Condition(image=source)
        values = {k: v.to(device=source.device, dtype=torch.float32) for k, v in values.items()}
        vector = embed_scalars(values, self.condition_keys, m.cond_vector_dim).to(source.dtype)
        return Condition(image=source, vector=vector)

    def training_step(self, batch: Batch, group: str = "model",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Diffusion loss on ``batch.target`` ``[B, C_t, *S]`` given ``batch.source`` ``[B, C_s, *S]``
        (and the items' labels named by ``condition_keys``, from ``batch.meta``).

        Returns ``{"loss", "diffusion", "x0"}`` (see :func:`diffusion_loss`). Condition dropout
        draws from ``generator`` before the loss draws ``t`` and the noise.
        """
        if group != "model":
            raise ValueError(f"cddpm has one optimiser group 'model', got '{group}'")
        if batch.target is None:
            raise ValueError("cddpm: training needs paired batches (batch.target is None)")
        d, space = self.config.diffusion, space_of(self)
        cond = drop_condition(self.condition(batch.source, self.batch_conditions(batch)), d.cond_drop_prob,
                              self._null, generator)  # dropped in image space, then mapped (latent mode)
        return diffusion_loss(self.denoiser, space.encode(batch.target), space.condition(cond), generator=generator,
                              loss=d.loss, x0_weight=d.x0_loss_weight, mask=space.mask(batch.mask))

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
    def translate(self, source: torch.Tensor, *, cond: Conditions | None = None,
                  generator: torch.Generator | None = None, callback: Callable[[dict], None] | None = None,
                  **options: Any) -> torch.Tensor:
        """Sample targets ``[B, model.out_channels, *S]`` for a source ``[B, C_s, *S]`` (model range);
        in latent mode ``[B, C, *S]`` decoded by the autoencoder (``callback`` then sees latents).

        ``cond``: ``{key: values [B]}`` for every key of ``condition_keys`` (``cfg.diffusion.conditions``);
        None without conditions. A missing or unknown key is a one-line ``ValueError``.
        ``options``: ``sampler`` ("ddpm", "ddim", "dpmpp"), ``steps``, ``eta`` (ddim),
        ``guidance_scale`` (CFG w; 0 = plain conditional), ``spacing``; defaults from ``cfg.sample``.
        ``x_T`` and any sampler noise come from ``generator`` (a fixed seed gives a fixed result).
        """
        opts, space = self.sampling_options(options), space_of(self)
        condition = self.condition(source, cond)
        denoiser: Any = self.denoiser
        if opts["guidance_scale"] != 0:
            denoiser = CFGDenoiser(self.denoiser, opts["guidance_scale"], space.cfg_null(self._null, condition))
        spatial = space.spatial(source.shape[2:])  # latent mode: S / f
        template = source.new_empty((source.shape[0], self.config.model.out_channels, *spatial))
        x_T = noise_like(template, generator)
        out = sample(opts["sampler"], denoiser, x_T, int(opts["steps"]), space.condition(condition),
                     spacing=opts["spacing"], generator=generator, callback=callback, eta=float(opts["eta"]))
        return space.decode(out, clip=self.config.diffusion.clip_x0)


def _check_scalar_conditions(keys: tuple[str, ...], vector_dim: int) -> None:
    """``diffusion.conditions`` against ``model.cond_vector_dim`` (one-line ConfigError)."""
    if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"diffusion.conditions must be distinct label names, got {list(keys)}")
    if keys and (vector_dim <= 0 or vector_dim % (2 * len(keys))):
        raise ConfigError(f"cddpm: diffusion.conditions={list(keys)} need model.cond_vector_dim > 0 and a multiple of "
                          f"2 x {len(keys)} (sin and cos features per condition), got {vector_dim}")
    if vector_dim and not keys:
        raise ConfigError(f"cddpm: model.cond_vector_dim={vector_dim} needs diffusion.conditions (the scalar labels "
                          "it embeds)")
