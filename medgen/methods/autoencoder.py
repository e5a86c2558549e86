"""``autoencoder_kl``: the KL autoencoder of latent diffusion, trained as a method of its own.

Options: :class:`AutoencoderOptions` (``cfg.options``; ``--set options.<field>=...``).

The network is :class:`medgen.nn.autoencoder.KLAutoencoder` (MONAI's ``AutoencoderKL``) built
from ``cfg.model`` and the options' ``latent_channels``. It trains on the
batch's image: ``batch.target``, or ``batch.source`` when the dataset has no target.

Losses (Rombach et al. 2022's first stage, without its perceptual term):

* ``"autoencoder"``: ``L1(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I))``, with ``x_hat`` decoded
  from a posterior sample drawn from fit's generator (L1 weighted by the batch's loss mask when
  it has one; KL averaged per latent element, :func:`~medgen.nn.autoencoder.kl_divergence`);
  plus ``adversarial_weight * GAN(D(x_hat), real)`` when ``adversarial_weight > 0``.
* ``"discriminator"`` (only when ``adversarial_weight > 0``; off by default): the PatchGAN of
  :mod:`medgen.nn.gan` (options ``disc_channels``, ``disc_layers``, ``gan_loss``) on images,
  ``0.5 * (GAN(D(x), real) + GAN(D(x_hat.detach()), fake))``; ``x_hat`` is the one the
  autoencoder step of the same batch produced.

No perceptual (LPIPS) term: LDM's autoencoder adds an LPIPS loss on VGG features, but no
perceptual network's weights exist offline on this machine, so reconstructions are trained
with L1 (+ KL, + the optional patch adversarial term) only.

The latent scale. At the end of ``fit`` (:meth:`after_fit`, on the EMA and the raw weights
alike), the scale is estimated from the first ``scale_batches`` training batches of fit's data
order (a pure function of the seed, so a resumed run gets the same scale) and saved in the
checkpoint as the ``autoencoder.scale`` buffer; see :mod:`medgen.nn.autoencoder`.

``translate(x)`` is ``decode(encode(x))`` with the posterior mean (deterministic; the scale
cancels): scored against the target, it is the autoencoder's reconstruction PSNR / SSIM, the
ceiling row of every latent-diffusion table (use a data config whose source is the target
image). :meth:`encode` / :meth:`decode` are the scaled latent space that
:class:`medgen.diffusion.latent.LatentSpace` gives a latent diffusion model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from medgen.config import ConfigError, MethodOptions, RunConfig, method_options, register_options
from medgen.data.batch import Batch
from medgen.methods.base import Method, reject_unknown_options
from medgen.nn.autoencoder import KLAutoencoder, kl_divergence
from medgen.nn.gan import GAN_LOSSES, build_discriminator, gan_loss
from medgen.registry import METHODS, register

__all__ = ["AutoencoderKLMethod", "AutoencoderOptions", "options_of"]


@register_options("autoencoder_kl")
@dataclass(frozen=True)
class AutoencoderOptions(MethodOptions):
    """Options of the ``autoencoder_kl`` method (``cfg.options``; the architecture is ``cfg.model``)."""

    latent_channels: int = 4  # channels of the latent z (LDM's f4 / f8 autoencoders use 3-4)
    kl_weight: float = 1e-6  # beta of the KL term (per latent element, against a per-pixel L1); LDM's tiny weight
    adversarial_weight: float = 0.0  # weight of the PatchGAN term of the autoencoder loss (0: off, no discriminator)
    disc_channels: int = 64  # base channels of the PatchGAN discriminator (ndf; used when adversarial_weight > 0)
    disc_layers: int = 3  # stride-2 blocks of the PatchGAN (3: 70x70 patches; fewer for small images)
    gan_loss: str = "vanilla"  # adversarial loss: "vanilla" (BCE with logits) or "lsgan" (least squares)
    scale_batches: int = 4  # training batches (fit's order, from step 0) whose latents set the latent scale

    def __post_init__(self) -> None:
        self.check("latent_channels", self.latent_channels >= 1, "must be >= 1")
        self.check("kl_weight", self.kl_weight >= 0, "must be >= 0")
        self.check("adversarial_weight", self.adversarial_weight >= 0, "must be >= 0")
        self.check("disc_channels", self.disc_channels >= 1, "must be >= 1")
        self.check("disc_layers", self.disc_layers >= 1, "must be >= 1")
        self.check("gan_loss", self.gan_loss in GAN_LOSSES, f"must be one of {', '.join(GAN_LOSSES)}")
        self.check("scale_batches", self.scale_batches >= 1, "must be >= 1")


def options_of(config: RunConfig) -> AutoencoderOptions:
    """The :class:`AutoencoderOptions` of a run config (``config.options``; None: the defaults)."""
    return method_options(config, AutoencoderOptions)


@register(METHODS, "autoencoder_kl")
class AutoencoderKLMethod(Method):
    """KL autoencoder (see the module docstring). ``autoencoder`` is the :class:`KLAutoencoder`;
    ``discriminator`` the PatchGAN or None."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.options = options_of(config)
        m = config.model
        if m.cond_image_channels:
            raise ConfigError("autoencoder_kl takes no condition: model.cond_image_channels must be 0")
        self.autoencoder = KLAutoencoder(m, self.options.latent_channels)
        self.discriminator = None
        if self.options.adversarial_weight > 0:
            self.discriminator = build_discriminator(self.options, in_channels=m.out_channels,
                                                     spatial_dims=m.spatial_dims)
        self._fake: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, x_hat) of the last autoencoder step

    # ---- the latent space ---------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def in_channels(self) -> int:
        """Image channels encoded."""
        return self.autoencoder.in_channels

    @property
    def out_channels(self) -> int:
        """Image channels decoded."""
        return self.autoencoder.out_channels

    @property
    def spatial_dims(self) -> int:
        return self.autoencoder.spatial_dims

    @property
    def factor(self) -> int:
        """Spatial downsampling factor image -> latent."""
        return self.autoencoder.factor

    @property
    def scale(self) -> float:
        """The latent scale (0 before it is estimated)."""
        return float(self.autoencoder.scale)

    def latent_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """``(B, C_z, *S/f)`` of an image batch shape ``(B, C, *S)``."""
        return self.autoencoder.latent_shape(shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C_z, *S/f]`` (posterior mean times the scale) of images ``x [B, C, *S]``."""
        return self.autoencoder.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C_out, *S]`` of scaled latents ``z [B, C_z, *S_z]``."""
        return self.autoencoder.decode(z)

    # ---- training -----------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """``"autoencoder"`` (then ``"discriminator"`` when the adversarial term is on)."""
        groups = {"autoencoder": [p for p in self.autoencoder.parameters() if p.requires_grad]}
        if self.discriminator is not None:
            groups["discriminator"] = [p for p in self.discriminator.parameters() if p.requires_grad]
        return groups

    @staticmethod
    def image_of(batch: Batch) -> torch.Tensor:
        """The image the autoencoder learns: ``batch.target``, else ``batch.source``."""
        return batch.target if batch.target is not None else batch.source

    def training_step(self, batch: Batch, group: str = "autoencoder",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses of ``group`` on the batch's image ``[B, C, *S]`` (module docstring).

        ``"autoencoder"`` returns ``{"loss", "l1", "kl"}`` (+ ``"adversarial"``); ``"discriminator"``
        returns ``{"loss"}``.
        """
        x = self.image_of(batch)
        if group == "autoencoder":
            o = self.options
            x_hat, mu, sigma = self.autoencoder.reconstruct(x, sample=True, generator=generator)
            l1 = _weighted_mean((x_hat - x).abs(), batch.mask)
            kl = kl_divergence(mu, sigma)
            out = {"l1": l1.detach(), "kl": kl.detach()}
            loss = l1 + o.kl_weight * kl
            if self.discriminator is not None:
                adv = gan_loss(self.discriminator(x_hat), True, self.options.gan_loss)
                loss = loss + o.adversarial_weight * adv
                out["adversarial"] = adv.detach()
                self._fake = (x, x_hat.detach())
            return {"loss": loss, **out}
        if group == "discriminator" and self.discriminator is not None:
            cached, self._fake = self._fake, None
            fake = cached[1] if cached is not None and cached[0].shape == x.shape and torch.equal(cached[0], x) else None
            if fake is None:
                with torch.no_grad():
                    fake = self.autoencoder.reconstruct(x)[0]
            kind = self.options.gan_loss
            loss = 0.5 * (gan_loss(self.discriminator(x), True, kind) + gan_loss(self.discriminator(fake), False, kind))
            return {"loss": loss}
        raise ValueError(f"autoencoder_kl has optimiser groups {', '.join(self.param_groups())}; got '{group}'")

    @torch.no_grad()
    def after_fit(self, batches: Iterable[Batch]) -> None:
        """Estimate the latent scale from the first ``scale_batches`` of ``batches`` (fit's training
        batches in order from step 0), in eval mode; called by ``fit`` when training is complete."""
        n = self.options.scale_batches
        was_training = self.training
        self.eval()
        try:
            images = (self.image_of(b) for _, b in zip(range(n), batches))
            self.autoencoder.estimate_scale(images)
        finally:
            self.train(was_training)

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """``decode(encode(source))``: the reconstruction ``[B, C_out, *S]`` of images ``source [B, C_in, *S]``
        from the posterior mean (deterministic, independent of the scale). Sampling options are
        accepted and ignored; ``callback`` is called once."""
        reject_unknown_options(self.config.method, options)
        out = self.autoencoder.reconstruct(source)[0]
        if callback is not None:
            callback({"i": 0, "n": 1, "t": 0, "x": out, "x0": out})
        return out


def _weighted_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]``, weighted per pixel by ``mask`` ``[B, 1, *S]`` if given."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1e-8)
