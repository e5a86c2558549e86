"""``ddpm``: an unconditional DDPM prior (the lung-ultrasound paper's model) and DPS reconstruction.

The network is :class:`medgen.nn.unet.UNet` built from ``cfg.model`` *without* a condition
(``cond_image_channels`` must be 0), wrapped in a
:class:`~medgen.diffusion.parameterization.Denoiser` by ``Denoiser.from_config`` (schedule,
prediction, clipping and -- when ``cfg.diffusion.learn_sigma`` is honoured by
``medgen.diffusion`` -- the learned variances of improved-diffusion).

* Training (:meth:`UnconditionalDDPM.training_step`): :func:`~medgen.diffusion.losses.diffusion_loss`
  with ``cond=None`` on the *image* of the batch: ``batch.target`` when the dataset has a
  target, else ``batch.source``. So the prior trains on a single-image dataset
  (``source="ct", target=""``: the lung prior's data) and equally on the target half of a
  paired dataset (e.g. ``us_linear -> ct``), never on a measurement.
* Generation (:meth:`UnconditionalDDPM.generate`): ``n`` images ``[n, C, H, W]`` at the
  training data's size (:attr:`~UnconditionalDDPM.image_shape`; ``H != W`` allowed) from
  ``x_T ~ N(0, I)`` drawn from the caller's generator, in chunks of ``batch_size``, with one of
  the shared samplers (options as ``cfg.sample``).
* Reconstruction (:meth:`UnconditionalDDPM.translate` / :meth:`~UnconditionalDDPM.reconstruct`):
  a measurement ``y = A(x) + noise`` -> images by diffusion posterior sampling,
  :func:`medgen.inverse.dps_reconstruct` with the operator ``make_operator(operator, size=...)``.
  ``translate`` returns the mean over ``n_samples`` posterior samples (the ``Method`` contract:
  one image per source); ``reconstruct`` returns every sample.

Latent mode: with an ``"autoencoder"`` parent in ``cfg.parents`` (an ``autoencoder_kl`` run)
the prior lives in that autoencoder's latent space (:mod:`medgen.diffusion.latent`): training
encodes the image, generation draws ``x_T`` at the latent shape, never clips x0 there, and
decodes (then clamps) the samples; ``model.in_channels`` / ``out_channels`` are the latent
channels. DPS reconstruction is pixel-space only (it differentiates through the network at
the image's shape): a latent prior refuses it with a one-line error.

This file only wires the shared pieces together; the algorithms live in ``medgen.diffusion``
and ``medgen.inverse``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from medgen.config import ConfigError, RunConfig
from medgen.data.batch import Batch
from medgen.diffusion.latent import PARENT, diffusion_config, space_of
from medgen.diffusion.losses import diffusion_loss
from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.samplers import sample
from medgen.diffusion.schedules import noise_like
from medgen.methods.base import Method
from medgen.nn.unet import UNet
from medgen.registry import METHODS, register

__all__ = ["UnconditionalDDPM", "OPTIONS", "DPS_OPTIONS", "DPS_DEFAULTS", "DPS_SAMPLER"]

OPTIONS = ("sampler", "steps", "eta", "spacing")  # generate() overrides of cfg.sample (no CFG: no condition)
# translate() / reconstruct(): OPTIONS plus the DPS settings below (defaults; sampling ones from cfg.sample)
DPS_DEFAULTS: dict[str, Any] = {
    "operator": "us_linear",  # a medgen.inverse.OPERATORS name, or an operator module (with .size)
    "operator_options": None,  # dict of make_operator options (e.g. {"sigma": 2.0} for blur)
    "scale": 10.0,  # guidance scale of the normalised DPS step (inverse.dps_reconstruct); a starting point to sweep
    "n_samples": 1,  # posterior samples per measurement (translate averages them)
    "normalize": True,  # DPS step-size normalisation zeta / ||y - A(x0_hat)||
}
DPS_OPTIONS = OPTIONS + tuple(DPS_DEFAULTS)
# DPS samples ancestrally (Chung et al.'s Algorithm 1) unless a sampler is asked for: guided DDIM with
# eta 0 diverged on the smoke lung prior (us_linear, scale 10, 25 steps: 10.7 dB vs 12.9 dB unguided,
# ancestral DDPM 22.1 dB), so cfg.sample.sampler (generation's DDIM) is not the reconstruction default.
DPS_SAMPLER = "ddpm"


@register(METHODS, "ddpm")
class UnconditionalDDPM(Method):
    """Unconditional diffusion prior (see the module docstring).

    ``denoiser`` is the :class:`Denoiser` holding the UNet (``net``) and its noise schedule.
    """

    optional_parent_names = (PARENT,)  # an "autoencoder" parent puts the model in its latent space
    is_translator = False  # translate() needs a measurement: the CLI offers generate / reconstruct instead

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        if config.model.cond_image_channels != 0:
            raise ConfigError(f"ddpm is unconditional: model.cond_image_channels must be 0, got "
                              f"{config.model.cond_image_channels}")
        self.denoiser = Denoiser.from_config(UNet(config.model), diffusion_config(config))  # no clipping in latent space

    @property
    def net(self) -> UNet:
        """The UNet (``denoiser.net``)."""
        return self.denoiser.net

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(C, *S)`` of one generated image: ``model.in_channels`` and the data's spatial size
        (:func:`medgen.data.datasets.spatial_shape`: ``(H, W)``, ``H`` = ``data.image_height``, the
        phantom's aspect ratio or ``data.image_size``; ``W`` = ``data.image_size``). In latent mode ``C``
        is the autoencoder's output channels."""
        from medgen.data.datasets import spatial_shape  # lazy: the datasets need the phantoms

        m = self.config.model
        return (space_of(self).image_channels(m.in_channels), *spatial_shape(self.config.data, m.spatial_dims))

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """One optimiser group, ``"model"``: the UNet's parameters."""
        return {"model": [p for p in self.net.parameters() if p.requires_grad]}

    def training_step(self, batch: Batch, group: str = "model",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Diffusion loss on the batch's image ``[B, C, *S]``: ``batch.target``, or ``batch.source``
        when the dataset has no target. Returns :func:`diffusion_loss`'s dict (``"loss"``,
        ``"diffusion"``, ``"x0"``; with ``cfg.diffusion.learn_sigma`` also ``"vlb"``, the hybrid loss
        weighted by ``cfg.diffusion.vlb_weight``)."""
        if group != "model":
            raise ValueError(f"ddpm has one optimiser group 'model', got '{group}'")
        space = space_of(self)
        x0 = space.encode(batch.target if batch.target is not None else batch.source)  # latent mode: [B, C_z, *S/f]
        if x0.shape[1] != self.config.model.in_channels:
            raise ValueError(f"ddpm: image has {x0.shape[1]} channels but model.in_channels="
                             f"{self.config.model.in_channels}")
        d = self.config.diffusion
        return diffusion_loss(self.denoiser, x0, None, generator=generator, loss=d.loss,  # vlb_weight: learn_sigma only
                              x0_weight=d.x0_loss_weight, mask=space.mask(batch.mask), vlb_weight=d.vlb_weight)

    def sampling_options(self, options: dict[str, Any], valid: tuple[str, ...] = OPTIONS) -> dict[str, Any]:
        """``cfg.sample`` (and, for DPS, :data:`DPS_DEFAULTS`) overridden by ``options``.

        ``guidance_scale`` (a ``cfg.sample`` field every caller may pass) is accepted only as 0:
        an unconditional model has no classifier-free guidance. A configured ``eta`` applies
        only to the ddim sampler (as in ``cddpm``). Unknown names are a one-line error.
        """
        options = dict(options)
        if float(options.pop("guidance_scale", 0.0)) != 0.0:
            raise ValueError("ddpm is unconditional: guidance_scale must be 0 (no classifier-free guidance)")
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ValueError(f"unknown option '{unknown[0]}' for method 'ddpm' (valid: {', '.join(valid)})")
        s = self.config.sample
        opts = {k: options.get(k, getattr(s, k, DPS_DEFAULTS.get(k))) for k in valid}
        if "eta" not in options and opts["sampler"] != "ddim":
            opts["eta"] = 0.0
        return opts

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None,
                 callback: Callable[[dict], None] | None = None, batch_size: int | None = None,
                 **options: Any) -> torch.Tensor:
        """``n`` samples of the prior: ``[n, C, H, W]`` (model range, clamped to [-1, 1]).

        ``options``: ``sampler`` ("ddpm", "ddim", "dpmpp"), ``steps``, ``eta`` (ddim), ``spacing``;
        defaults from ``cfg.sample``. All ``x_T`` ``[n, C, H, W]`` are drawn from ``generator`` first,
        then sampled ``batch_size`` at a time (default: all at once), so a fixed seed gives fixed
        images, and with a deterministic sampler (DDIM eta 0, DPM-Solver++) the same images for
        any ``batch_size``. ``callback`` receives each chunk's per-step dicts. In latent mode ``x_T`` is
        ``[n, C_z, *S/f]`` and each chunk is decoded by the autoencoder (``callback`` sees latents).
        """
        if n < 0 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"ddpm.generate: need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        opts, space = self.sampling_options(options), space_of(self)
        shape = self.image_shape
        template = torch.empty((n, self.config.model.in_channels, *space.spatial(shape[1:])), device=self._device())
        x_T = noise_like(template, generator)
        chunk = batch_size or max(1, n)
        parts = [space.decode(sample(opts["sampler"], self.denoiser, x_T[i:i + chunk], int(opts["steps"]), None,
                                     spacing=opts["spacing"], generator=generator, callback=callback,
                                     eta=float(opts["eta"])))
                 for i in range(0, n, chunk)]
        return torch.cat(parts).clamp(-1.0, 1.0) if parts else torch.empty((0, *shape), device=self._device())

    @torch.no_grad()
    def outputs_for(self, source: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``source.shape[0]`` generated images ``[B, C, H, W]`` (the source values are not used)."""
        return self.generate(source.shape[0], generator=generator)

    def operator(self, name: str = "us_linear", **options: Any) -> torch.nn.Module:
        """The :func:`medgen.inverse.make_operator` ``name`` at this model's image size (on its device)."""
        # Imported here, not at the top: medgen.inverse (DPS, operators) depends on the lung phantom and the
        # metrics; a module-level import would tie the methods package to them for every method.
        from medgen.inverse import make_operator

        return make_operator(name, size=self.image_shape[1:], **options).to(self._device())

    @torch.no_grad()
    def reconstruct(self, y: torch.Tensor, *, generator: torch.Generator | None = None,
                    callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """DPS posterior samples ``[n_samples, B, C, H, W]`` for measurements ``y [B, ...]``.

        ``options``: :data:`DPS_DEFAULTS` (``operator``, ``operator_options``, ``scale``,
        ``n_samples``, ``normalize``) and the sampling options (``cfg.sample`` defaults, but the
        sampler defaults to :data:`DPS_SAMPLER`, ancestral DDPM); see
        :func:`medgen.inverse.dps_reconstruct` for the step size. Gradients are enabled
        only inside the guidance (which differentiates through the network).
        """
        from medgen.inverse import dps_reconstruct  # lazy, as in operator()

        if space_of(self).latent:
            raise ValueError("ddpm: DPS reconstruction (translate / reconstruct) needs a pixel-space prior; this one "
                             "runs in an autoencoder's latent space (use generate)")
        o = self.sampling_options({"sampler": DPS_SAMPLER, **options}, DPS_OPTIONS)
        op = o["operator"]
        if isinstance(op, str):
            op = self.operator(op, **(o["operator_options"] or {}))
        elif o["operator_options"]:
            raise ValueError("ddpm: operator_options apply only to an operator given by name")
        samples = dps_reconstruct(self.denoiser, op, y.to(self._device()), scale=float(o["scale"]),
                                  steps=int(o["steps"]), n_samples=int(o["n_samples"]), sampler=o["sampler"],
                                  eta=float(o["eta"]), normalize=bool(o["normalize"]), generator=generator,
                                  callback=callback, channels=self.image_shape[0], spacing=o["spacing"])
        return samples.detach().clamp(-1.0, 1.0)

    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """Reconstruct images ``[B, C, H, W]`` from measurements ``source [B, ...]`` (e.g. ``us_linear``
        ``[B, 1, H, ceil(W / 2)]``, model-range images measured by the operator): the mean of
        :meth:`reconstruct`'s ``n_samples`` DPS samples (the sample itself for ``n_samples = 1``)."""
        return self.reconstruct(source, generator=generator, callback=callback, **options).mean(0)
