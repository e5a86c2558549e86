"""Where a denoiser-based method diffuses: pixels, or the latent space of an autoencoder parent.

A diffusion method (``cddpm``, ``ddpm``) whose run config names a parent ``"autoencoder"`` (an
``autoencoder_kl`` run, :mod:`medgen.methods.autoencoder`) runs in that autoencoder's latent
space; without one it runs on pixels, exactly as before. The method asks :func:`space_of` for
its space and routes every image through it, so it never branches on the mode:

==========================  ==========================  ======================================
call                        :class:`PixelSpace`         :class:`LatentSpace`
==========================  ==========================  ======================================
``encode(x [B,C,*S])``      ``x``                       ``ae.encode(x)``: ``[B, C_z, *S/f]``, scaled
``decode(z, clip=)``        ``z``                       ``ae.decode(z)`` ``[B, C, *S]``, clamped to
                                                        [-1, 1] iff ``clip`` (x0 clipping moves here)
``condition(cond)``         ``cond``                    ``cond.image`` encoded (``"encode"``) or
                                                        area-resized to the latent grid (``"resize"``)
``mask(m [B,1,*S])``        ``m``                       area-resized to ``[B, 1, *S/f]`` (pixel fractions)
``spatial(S)``              ``S``                       ``S / f``: where ``x_T`` is drawn
``cfg_null(null, cond)``    ``null``                    the latent of ``null(cond)`` (a black image)
==========================  ==========================  ======================================

So a latent method encodes its targets (and, with ``diffusion.latent_condition="encode"``, its
image condition) for training, draws ``x_T`` at the latent shape, samples, and decodes at the
end. Its denoiser never clips x0 (``clip_x0=False``, :func:`diffusion_config`): latents are not
in [-1, 1]; the method's ``clip_x0`` setting clamps the decoded image instead. The latent
scale is the autoencoder's own (a buffer in its checkpoint); nothing here holds a constant.
Model channels: the UNet's ``in_channels`` / ``out_channels`` are the latent channels, and with
``"encode"`` its ``cond_image_channels`` too (checked when the space is built).

Classifier-free guidance: the null condition is the black image of the *image* space mapped
like any condition (:meth:`LatentSpace.condition`), i.e. the latent of a black image.

The parent is frozen, in eval mode, outside the method's module tree (``Method.attach_parents``),
so it is neither trained nor saved with the child; the child's config names it, which puts it
in the child's cache key.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F

from medgen.config import ConfigError, DiffusionConfig, RunConfig

__all__ = ["PARENT", "CONDITION_MODES", "PixelSpace", "LatentSpace", "is_latent", "diffusion_config", "pixel_config",
           "space_of"]

PARENT = "autoencoder"  # the parent name that puts a diffusion method in latent space
CONDITION_MODES = ("resize", "encode")  # diffusion.latent_condition: how an image condition reaches the latent grid


def is_latent(config: RunConfig) -> bool:
    """True when ``config`` names an ``"autoencoder"`` parent (the method then runs in its latent space)."""
    return PARENT in (getattr(config, "parents", None) or {})


def diffusion_config(config: RunConfig) -> DiffusionConfig:
    """The diffusion config a method's :class:`~medgen.diffusion.parameterization.Denoiser` is built
    from: ``config.diffusion``, with ``clip_x0=False`` in latent space."""
    if is_latent(config):
        return dataclasses.replace(config.diffusion, clip_x0=False)
    return config.diffusion


def pixel_config(config: RunConfig) -> RunConfig:
    """The pixel-space twin of a latent config: no ``"autoencoder"`` parent, the model's in / out / condition
    channels those of the images (the autoencoder's), ``latent_condition`` at its default; ``config``
    itself when it is not latent. For baselines (identity) and the latent-vs-pixel benchmark."""
    if not is_latent(config):
        return config
    ae = config.parents[PARENT].model
    image_cond = ae.in_channels if config.diffusion.latent_condition == "encode" else config.model.cond_image_channels
    model = dataclasses.replace(config.model, in_channels=ae.out_channels, out_channels=ae.out_channels,
                                cond_image_channels=image_cond if config.model.cond_image_channels else 0)
    parents = {k: v for k, v in config.parents.items() if k != PARENT}
    diffusion = dataclasses.replace(config.diffusion, latent_condition=DiffusionConfig.latent_condition)
    return dataclasses.replace(config, parents=parents, model=model, diffusion=diffusion)


def _latent_condition_mode(config: RunConfig) -> str:
    mode = config.diffusion.latent_condition
    if mode not in CONDITION_MODES:
        raise ConfigError(f"diffusion.latent_condition must be one of {', '.join(CONDITION_MODES)}, got '{mode}'")
    return mode


class PixelSpace:
    """The identity: a method without an autoencoder parent diffuses on pixels (module docstring)."""

    latent = False

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, *, clip: bool = False) -> torch.Tensor:
        return z

    def condition(self, cond: Any) -> Any:
        return cond

    def mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        return mask

    def spatial(self, spatial: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        return tuple(spatial)

    def image_channels(self, channels: int) -> int:
        """Channels of the images a model with ``channels`` output channels produces."""
        return channels

    def source_channels(self, cond_image_channels: int) -> int:
        """Image channels of a source whose condition has ``cond_image_channels`` channels on the model's grid."""
        return cond_image_channels

    def cfg_null(self, null: Callable[[Any], Any], cond: Any) -> Callable[[Any], Any]:
        """The null-condition callable classifier-free guidance uses, given the image-space ``null`` and ``cond``."""
        return null


class LatentSpace(PixelSpace):
    """The scaled latent space of a trained ``autoencoder_kl`` method ``autoencoder`` (frozen, eval).

    ``condition_mode``: ``"resize"`` (area-resize an image condition to the latent grid) or
    ``"encode"`` (encode it with the autoencoder; its channels must be the autoencoder's input).
    """

    latent = True

    def __init__(self, autoencoder: Any, condition_mode: str = "resize") -> None:
        for name in ("encode", "decode", "latent_shape", "latent_channels", "factor", "spatial_dims", "in_channels",
                     "out_channels"):
            if not hasattr(autoencoder, name):
                raise ConfigError(f"the '{PARENT}' parent ({type(autoencoder).__name__}) is not an autoencoder: "
                                  f"it has no '{name}' (use an autoencoder_kl run)")
        if condition_mode not in CONDITION_MODES:
            raise ConfigError(f"diffusion.latent_condition must be one of {', '.join(CONDITION_MODES)}, "
                              f"got '{condition_mode}'")
        self.autoencoder = autoencoder
        self.condition_mode = condition_mode

    @property
    def channels(self) -> int:
        """Latent channels ``C_z``."""
        return int(self.autoencoder.latent_channels)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor ``f`` (image side / latent side)."""
        return int(self.autoencoder.factor)

    def _ready(self, x: torch.Tensor) -> Any:
        ae = self.autoencoder
        if next(ae.parameters()).device != x.device:
            ae.to(x.device)
        return ae

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, C_z, *S/f]`` (posterior mean) of images ``x [B, C, *S]``."""
        return self._ready(x).encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, clip: bool = False) -> torch.Tensor:
        """Images ``[B, C, *S]`` of latents ``z [B, C_z, *S_z]``; clamped to [-1, 1] when ``clip``."""
        x = self._ready(z).decode(z)
        return x.clamp(-1.0, 1.0) if clip else x

    def spatial(self, spatial: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """Latent spatial shape of an image's spatial shape ``S``: ``S / f`` (checked divisible)."""
        return tuple(self.autoencoder.latent_shape((1, 1, *spatial))[2:])

    def _image(self, image: torch.Tensor) -> torch.Tensor:
        if self.condition_mode == "encode":
            return self.encode(image)
        return F.adaptive_avg_pool2d(image, self.spatial(image.shape[2:])) if image.ndim == 4 else \
            F.adaptive_avg_pool3d(image, self.spatial(image.shape[2:]))

    def image_channels(self, channels: int) -> int:
        """The autoencoder's output channels (what :meth:`decode` returns)."""
        return int(self.autoencoder.out_channels)

    def source_channels(self, cond_image_channels: int) -> int:
        """``"encode"``: the autoencoder's input channels; ``"resize"``: ``cond_image_channels``."""
        return int(self.autoencoder.in_channels) if self.condition_mode == "encode" else cond_image_channels

    def cfg_null(self, null: Callable[[Any], Any], cond: Any) -> Callable[[Any], Any]:
        """The latent null condition: ``null(cond)`` (e.g. a black image) mapped like any condition."""
        latent_null = self.condition(null(cond))
        return lambda _cond: latent_null

    def condition(self, cond: Any) -> Any:
        """``cond`` with its image (a tensor ``[B, c, *S]``, or a condition dataclass's ``.image``) on
        the latent grid: encoded (``[B, C_z, *S/f]``) or area-resized (``[B, c, *S/f]``)."""
        if cond is None:
            return None
        if isinstance(cond, torch.Tensor):
            return self._image(cond)
        image = getattr(cond, "image", None)
        if dataclasses.is_dataclass(cond) and isinstance(image, torch.Tensor):
            return dataclasses.replace(cond, image=self._image(image))
        return cond

    def mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A loss mask ``[B, 1, *S]`` as per-latent-pixel weights ``[B, 1, *S/f]`` (area fractions)."""
        if mask is None:
            return None
        pool = F.adaptive_avg_pool2d if mask.ndim == 4 else F.adaptive_avg_pool3d
        return pool(mask.float(), self.spatial(mask.shape[2:]))

    def check(self, config: RunConfig, *, method: str) -> None:
        """One-line :class:`ConfigError` unless ``config.model``'s channels fit this latent space."""
        m, c = config.model, self.channels
        out = c * (2 if config.diffusion.learn_sigma else 1)
        if m.in_channels != c or m.out_channels != out:
            raise ConfigError(f"{method} in latent space: model.in_channels / out_channels must be the autoencoder's "
                              f"latent channels ({c} / {out}), got {m.in_channels} / {m.out_channels}")
        if m.spatial_dims != self.autoencoder.spatial_dims:
            raise ConfigError(f"{method} in latent space: model.spatial_dims={m.spatial_dims} but the autoencoder is "
                              f"{self.autoencoder.spatial_dims}D")
        if self.condition_mode == "encode" and m.cond_image_channels and m.cond_image_channels != c:
            raise ConfigError(f"{method} with diffusion.latent_condition='encode': model.cond_image_channels must be "
                              f"the latent channels ({c}), got {m.cond_image_channels}")


def space_of(method: Any) -> PixelSpace | LatentSpace:
    """The space ``method`` diffuses in: :class:`LatentSpace` over its attached ``"autoencoder"``
    parent when its config names one (checked against ``method.config.model``), else
    :class:`PixelSpace`. A named but unattached parent is a one-line error."""
    config = method.config
    if not is_latent(config):
        return PixelSpace()
    parent = (getattr(method, "parents", None) or {}).get(PARENT)
    name = config.method
    if parent is None:
        raise ConfigError(f"{name}: its config names an '{PARENT}' parent but none is attached (load the model with "
                          "zoo.resolve / train_or_load / load_translator, or call method.attach_parents)")
    space = LatentSpace(parent, _latent_condition_mode(config))
    space.check(config, method=name)
    return space
