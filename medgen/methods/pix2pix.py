"""``pix2pix``: paired adversarial translation (Isola et al. 2017) with the spine paper's SSIM term.

Options: :class:`Pix2PixOptions` (``cfg.options``; ``--set options.<field>=...``).

Networks (``medgen.nn.gan``, built from the options): the generator ``generator``
(``"unet"``: the pix2pix UNet with ``gen_downs`` down/up blocks and decoder dropout
``dropout``; ``"sa_unet"``: the medgen UNet of ``cfg.model`` at t = 0; ``"resnet"``: the
CUT/CycleGAN ResNet generator) and the PatchGAN discriminator (``disc_layers`` stride-2 blocks,
70x70 at 3) on the channel concatenation ``Concat([source, image])``. 2D or 3D as
``cfg.model.spatial_dims`` says. Channels: source = ``cfg.model.cond_image_channels`` (as for
``cddpm``, so one model section serves both), target = ``cfg.model.out_channels``.

Losses (two optimiser groups, stepped by ``fit()`` in this order):

* ``"generator"``: ``lambda_gan * GAN(D(src, G(src)), real) + lambda_l1 * L1(G(src), tgt)
  + lambda_ssim * (1 - SSIM(G(src), tgt))``. L1 and the SSIM-map mean are weighted by the
  batch's loss mask when it has one (as ``cddpm``'s diffusion loss is). The SSIM term is the
  "weighted SSIM loss" the paper adds, citing Finck et al. 2022; what it is and where that
  reading comes from is in :mod:`medgen.nn.gan` (:func:`~medgen.nn.gan.ssim_loss`). The
  paper's reference code trains ``10 * (L1 + 1 * (1 - SSIM))`` with an LSGAN loss of weight
  1, i.e. ``lambda_l1 = 10, lambda_ssim = 10, gan_loss = "lsgan"`` here; pix2pix's own
  defaults are ``lambda_l1 = 100`` with the vanilla GAN loss and no SSIM.
* ``"discriminator"``: ``0.5 * (GAN(D(src, tgt), real) + GAN(D(src, G(src).detach()), fake))``
  (``gan_loss``: ``"vanilla"`` BCE with logits or ``"lsgan"``, per patch), at learning rate
  ``lr_d`` when it is > 0 (pix2pix's own setting is one rate for both, 2e-4), else ``train.lr``. The fake is
  the one the generator step of the same batch produced (cached, so G runs once per step, as
  in pix2pix and the reference); a discriminator step without a preceding generator step on
  the same source recomputes it under ``no_grad``.

``translate(source)`` returns ``G(source)``, deterministic: the generator runs in eval mode
(dropout off; InstanceNorm has no running statistics, so nothing else changes). Unlike the
original pix2pix, which keeps dropout on at test time as its only noise, a trained pix2pix
here is a deterministic map. ``generator`` is unused; ``callback`` is called once. Options:
none of its own; the sampling options of ``cfg.sample`` (``sampler``, ``steps``, ``eta``,
``guidance_scale``, ``spacing``) are accepted and ignored, as by the baselines, because the
CLI and notebooks pass one set of options to every method; any other option is a one-line
error that names it.

pix2pix's Adam betas (0.5, 0.999) are ``train.betas`` in the preset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medgen.config import ConfigError, RunConfig, method_options, register_options
from medgen.data.batch import Batch
from medgen.methods.adversarial import AdversarialOptions, GeneratorTranslator, discriminator_settings
from medgen.methods.base import GroupSettings
from medgen.nn.gan import build_discriminator, build_generator, gan_loss, ssim_loss
from medgen.registry import METHODS, register

__all__ = ["Pix2Pix", "Pix2PixOptions"]


@register_options("pix2pix")
@dataclass(frozen=True)
class Pix2PixOptions(AdversarialOptions):
    """pix2pix's options: the generator / PatchGAN / GAN loss of :class:`AdversarialOptions`, plus the paired terms.

    Defaults: pix2pix's L1 weight 100 with no SSIM term; the spine paper's reference code
    uses ``lambda_l1 = lambda_ssim = 10`` with ``gan_loss = "lsgan"`` (its presets).
    """

    lambda_l1: float = 100.0  # weight of the (mask-weighted) L1 to the target
    lambda_ssim: float = 0.0  # weight of the weighted-SSIM loss 1 - SSIM (the spine paper's added term; 0 = off)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_l1", "lambda_ssim"):
            self.check(name, getattr(self, name) >= 0, "must be >= 0")



def _weighted_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]``, weighted per pixel by ``mask`` ``[B, 1, *S]`` if given."""
    if mask is None:
        return values.mean()
    w = mask.to(values.dtype).expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1e-12)


@register(METHODS, "pix2pix")
class Pix2Pix(GeneratorTranslator):
    """Paired GAN translator (see the module docstring). ``net``: generator; ``discriminator``: PatchGAN."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.options = g = method_options(config, Pix2PixOptions)
        m = config.model
        _validate(config)
        self.source_channels, self.target_channels = m.cond_image_channels, m.out_channels
        self.net = build_generator(g, in_channels=m.cond_image_channels, out_channels=m.out_channels,
                                   spatial_dims=m.spatial_dims, model=m)
        self.discriminator = build_discriminator(g, in_channels=m.cond_image_channels + m.out_channels,
                                                 spatial_dims=m.spatial_dims)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"generator"`` (G's parameters), then ``"discriminator"`` (D's)."""
        return {"generator": [p for p in self.net.parameters() if p.requires_grad],
                "discriminator": [p for p in self.discriminator.parameters() if p.requires_grad]}

    def optim_settings(self) -> dict[str, GroupSettings]:
        """The discriminator at ``options.lr_d`` when it is > 0 (else both groups at ``train.lr``)."""
        return discriminator_settings(self.options)

    def _check_batch(self, batch: Batch) -> None:
        if batch.target is None:
            raise ValueError("pix2pix: training needs paired batches (batch.target is None)")
        self._check_source(batch.source)
        if batch.target.shape[1] != self.target_channels or batch.target.shape[2:] != batch.source.shape[2:]:
            raise ValueError(f"pix2pix: target {tuple(batch.target.shape)} must be [B, {self.target_channels}, "
                             f"{', '.join(map(str, batch.source.shape[2:]))}] (model.out_channels, source size)")

    def _check_source(self, source: torch.Tensor) -> None:
        dims = self.config.model.spatial_dims
        if source.ndim != dims + 2:
            raise ValueError(f"pix2pix: source {tuple(source.shape)} must have {dims} spatial dims "
                             f"(model.spatial_dims={dims})")
        if source.shape[1] != self.source_channels:
            raise ValueError(f"pix2pix: source has {source.shape[1]} channels but model.cond_image_channels="
                             f"{self.source_channels}")

    def training_step(self, batch: Batch, group: str,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses of ``group`` on a paired ``batch`` (source ``[B, C_s, *S]``, target ``[B, C_t, *S]``).

        ``"generator"`` -> ``{"loss", "adv", "l1", "ssim"}`` (``ssim`` = 1 - SSIM, only computed
        when ``lambda_ssim > 0``); ``"discriminator"`` -> ``{"loss", "real", "fake"}``. Dropout
        draws from the global torch RNG (``fit()`` seeds it every step); ``generator`` is unused.
        """
        self._check_batch(batch)
        if group == "generator":
            return self._generator_step(batch)
        if group == "discriminator":
            return self._discriminator_step(batch)
        raise ValueError(f"pix2pix has optimiser groups 'generator' and 'discriminator', got '{group}'")

    def _generator_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        g = self.options
        fake = self.net(batch.source)  # [B, C_t, *S]
        self._remember(batch.source, fake.detach())
        # 1. adversarial: the discriminator should call (source, fake) real
        adv = gan_loss(self.discriminator(torch.cat([batch.source, fake], dim=1)), True, g.gan_loss)
        # 2. paired terms against the target, mask-weighted
        l1 = _weighted_mean((fake - batch.target).abs(), batch.mask)
        loss = g.lambda_gan * adv + g.lambda_l1 * l1
        out = {"adv": adv.detach(), "l1": l1.detach()}
        if g.lambda_ssim > 0:
            ssim = ssim_loss(fake, batch.target, batch.mask)
            loss = loss + g.lambda_ssim * ssim
            out["ssim"] = ssim.detach()
        return {"loss": loss, **out}

    def _discriminator_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        kind = self.options.gan_loss
        fake = self._recall(batch.source)
        real = gan_loss(self.discriminator(torch.cat([batch.source, batch.target], dim=1)), True, kind)
        fake_loss = gan_loss(self.discriminator(torch.cat([batch.source, fake], dim=1)), False, kind)
        return {"loss": 0.5 * (real + fake_loss), "real": real.detach(), "fake": fake_loss.detach()}


def _validate(config: RunConfig) -> None:
    """One-line :class:`ConfigError` for settings pix2pix cannot run (its options check themselves)."""
    if config.model.cond_image_channels <= 0:
        raise ConfigError("pix2pix needs model.cond_image_channels > 0 (the number of source channels)")
