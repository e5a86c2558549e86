"""The KL autoencoder of latent diffusion: MONAI's ``AutoencoderKL`` plus the latent scale it owns.

:class:`KLAutoencoder` wraps :class:`monai.networks.nets.AutoencoderKL` (Rombach et al. 2022's
KL-regularised autoencoder, the "AutoencoderKL" of the Xray2MRI paper) built from the
:class:`~medgen.config.UNetConfig` fields that fit it:

=====================  ==================================================================
``UNetConfig`` field   ``AutoencoderKL`` argument
=====================  ==================================================================
``spatial_dims``       ``spatial_dims`` (2: ``[B, C, H, W]``, 3: ``[B, C, D, H, W]``)
``in_channels``        ``in_channels`` (image channels encoded)
``out_channels``       ``out_channels`` (image channels decoded)
``channels``           ``channels`` (one level each; every level but the last halves the size)
``layers_per_block``   ``num_res_blocks``
``attention_levels``   ``attention_levels``
``norm_groups``        ``norm_num_groups``
``mid_attention``      ``with_encoder_nonlocal_attn`` / ``with_decoder_nonlocal_attn``
                       ("auto": iff the deepest level has attention)
=====================  ==================================================================

plus ``latent_channels`` (the channels of ``z``). The spatial downsampling factor is
``2 ** (len(channels) - 1)``: a ``[B, C, H, W]`` image has a ``[B, latent_channels, H/f, W/f]``
latent (every image side must be divisible by ``f``).

The latent scale. Diffusion assumes unit-variance data; the KL term (tiny, as in LDM) does not
make the latents unit-variance. The autoencoder therefore owns one constant, ``scale`` (a
registered buffer saved in its checkpoint with the weights): ``1 / std`` of the posterior means
over its first training batches after training (:meth:`KLAutoencoder.estimate_scale`, called by
the ``autoencoder_kl`` method at the end of ``fit``). :meth:`~KLAutoencoder.encode` returns
``mu * scale`` and :meth:`~KLAutoencoder.decode` divides by it, so nothing else holds that
constant (the Xray2MRI paper fixes it by hand to 0.2). ``scale == 0`` means "not estimated yet":
scaled encode/decode then raise :class:`LatentScaleError`; :meth:`~KLAutoencoder.reconstruct`
(the training pass) and unscaled encode/decode work without it.
"""
from __future__ import annotations

from typing import Iterable

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from medgen.config import UNetConfig

__all__ = ["KLAutoencoder", "LatentScaleError", "kl_divergence", "downsampling_factor"]


class LatentScaleError(RuntimeError):
    """The autoencoder's latent scale has not been estimated (one line)."""


def downsampling_factor(model: UNetConfig) -> int:
    """Spatial factor between an image and its latent: ``2 ** (len(model.channels) - 1)``."""
    return 2 ** (len(model.channels) - 1)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent element, averaged over all elements (a scalar).

    ``mu``, ``sigma``: the posterior ``[B, C_z, *S_z]``. ``0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)``;
    a mean (not LDM's sum) so that its weight does not depend on the latent size.
    """
    var = sigma.square()
    return 0.5 * (mu.square() + var - 1.0 - torch.log(var.clamp_min(1e-20))).mean()


class KLAutoencoder(nn.Module):
    """MONAI ``AutoencoderKL`` built from a :class:`UNetConfig`, with the latent scale (module docstring).

    ``net`` is the MONAI module; ``scale`` a float32 scalar buffer (0 = not estimated);
    ``factor`` the spatial downsampling factor; ``latent_channels`` the channels of ``z``.
    """

    def __init__(self, model: UNetConfig, latent_channels: int) -> None:
        super().__init__()
        if latent_channels < 1:
            raise ValueError(f"KLAutoencoder needs latent_channels >= 1, got {latent_channels}")
        if model.spatial_dims not in (2, 3):
            raise ValueError(f"KLAutoencoder: spatial_dims must be 2 or 3, got {model.spatial_dims}")
        if len(model.attention_levels) != len(model.channels):
            raise ValueError(f"KLAutoencoder: model.attention_levels {model.attention_levels} needs one entry per "
                             f"level of model.channels {model.channels}")
        bad = [c for c in model.channels if c % model.norm_groups]
        if bad:
            raise ValueError(f"KLAutoencoder: model.norm_groups={model.norm_groups} must divide every entry of "
                             f"model.channels {model.channels}")
        if model.mid_attention not in ("auto", "on", "off"):
            raise ValueError(f"KLAutoencoder: model.mid_attention must be auto, on or off, got '{model.mid_attention}'")
        mid = model.mid_attention == "on" or (model.mid_attention == "auto" and bool(model.attention_levels[-1]))
        self.spatial_dims = model.spatial_dims
        self.in_channels, self.out_channels = model.in_channels, model.out_channels
        self.latent_channels = latent_channels
        self.factor = downsampling_factor(model)
        self.net = AutoencoderKL(
            spatial_dims=model.spatial_dims, in_channels=model.in_channels, out_channels=model.out_channels,
            num_res_blocks=model.layers_per_block, channels=tuple(model.channels),
            attention_levels=tuple(bool(a) for a in model.attention_levels), latent_channels=latent_channels,
            norm_num_groups=model.norm_groups, with_encoder_nonlocal_attn=mid, with_decoder_nonlocal_attn=mid)
        self.register_buffer("scale", torch.zeros((), dtype=torch.float32))

    # ---- shapes -------------------------------------------------------------------------
    def latent_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Latent shape of an image batch shape ``(B, C, *S)``: ``(B, latent_channels, *S / factor)``."""
        shape = tuple(shape)
        self.check_spatial(shape[2:])
        return (shape[0], self.latent_channels, *(s // self.factor for s in shape[2:]))

    def check_spatial(self, spatial: tuple[int, ...]) -> None:
        """One-line ``ValueError`` unless ``spatial`` has ``spatial_dims`` sides, each divisible by ``factor``."""
        if len(spatial) != self.spatial_dims or any(s % self.factor or s < self.factor for s in spatial):
            raise ValueError(f"KLAutoencoder: image size {tuple(spatial)} must have {self.spatial_dims} sides, each a "
                             f"multiple of the downsampling factor {self.factor}")

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"KLAutoencoder: input {tuple(x.shape)} must be [B, {self.in_channels}, *S] with "
                             f"{self.spatial_dims} spatial dims")
        self.check_spatial(tuple(x.shape[2:]))

    # ---- the unscaled posterior (training) --------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)``, each ``[B, C_z, *S/f]``, of images ``x [B, C, *S]`` (unscaled latents)."""
        self._check_image(x)
        return self.net.encode(x)

    def reconstruct(self, x: torch.Tensor, *, sample: bool = False,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat [B, C_out, *S], mu, sigma)``: decode a posterior sample (``sample=True``, noise from
        ``generator``) or the posterior mean. Independent of ``scale``."""
        mu, sigma = self.posterior(x)
        z = mu
        if sample:
            device = generator.device if generator is not None else mu.device
            noise = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype).to(mu.device)
            z = mu + sigma * noise
        return self.net.decode(z), mu, sigma

    # ---- the scaled latent space (what a latent diffusion model sees) -----------------
    def _scale(self) -> torch.Tensor:
        if float(self.scale) <= 0:
            raise LatentScaleError("autoencoder latent scale not estimated: train the autoencoder with fit() "
                                   "(it estimates the scale at the end) or call estimate_scale(images)")
        return self.scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``mu * scale`` ``[B, C_z, *S/f]`` of images ``x [B, C_in, *S]`` (posterior mean)."""
        return self.posterior(x)[0] * self._scale()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C_out, *S]`` of scaled latents ``z [B, C_z, *S_z]`` (divided by ``scale`` first)."""
        if z.ndim != self.spatial_dims + 2 or z.shape[1] != self.latent_channels:
            raise ValueError(f"KLAutoencoder: latent {tuple(z.shape)} must be [B, {self.latent_channels}, *S_z] "
                             f"with {self.spatial_dims} spatial dims")
        return self.net.decode(z / self._scale())

    @torch.no_grad()
    def estimate_scale(self, images: Iterable[torch.Tensor]) -> float:
        """Set ``scale = 1 / std`` of the posterior means of ``images`` (an iterable of ``[B, C_in, *S]``
        batches, all used) and return it. The std is over every latent element of every batch
        (float64 sums, so the batching does not change it beyond rounding)."""
        n, total, total_sq = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for x in images:
            mu = self.posterior(x)[0].double()
            n += mu.numel()
            total += mu.sum().cpu()
            total_sq += mu.square().sum().cpu()
        if n < 2:
            raise ValueError("estimate_scale needs at least two latent elements")
        var = (total_sq - total * total / n) / (n - 1)
        std = float(var.clamp_min(0).sqrt())
        if not std > 0:
            raise ValueError("estimate_scale: the latents have zero variance (an untrained or collapsed encoder?)")
        self.scale.fill_(1.0 / std)
        return float(self.scale)
