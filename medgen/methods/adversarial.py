"""What the GAN translators share: their options' common part and, for pix2pix / CUT, the cached fake.

:class:`AdversarialOptions` is the part of the options of pix2pix, CUT and SynDiff that builds
the generator and the PatchGAN (:func:`medgen.nn.gan.build_generator` /
:func:`~medgen.nn.gan.build_discriminator`) and sets the adversarial loss and the
discriminator's learning rate (``lr_d``, applied by :func:`discriminator_settings`).

:class:`GeneratorTranslator` is a :class:`~medgen.methods.base.Method` whose translation is
one deterministic generator pass ``self.net(source)``. Subclasses set ``self.net``, implement
``_check_source(source)`` and the two optimiser groups' losses. The generator step stores its
fake with :meth:`_remember`; the discriminator step of the same batch takes it back with
:meth:`_recall`, so the generator runs once per optimiser step (as in pix2pix and CUT); a
discriminator step without a preceding generator step on the same source recomputes it
under ``no_grad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from medgen.config import MethodOptions, RunConfig
from medgen.methods.base import IGNORED_OPTIONS, GroupSettings, Method, reject_unknown_options
from medgen.nn.gan import GAN_LOSSES, GENERATORS

__all__ = ["AdversarialOptions", "GeneratorTranslator", "IGNORED_OPTIONS", "discriminator_settings"]


@dataclass(frozen=True)
class AdversarialOptions(MethodOptions):
    """Generator, PatchGAN discriminator, adversarial loss and discriminator rate of a GAN translator."""

    generator: str = "unet"  # "unet" (pix2pix's UNet), "resnet" (CUT's ResNet), "sa_unet" (the model UNet with t fixed)
    gen_channels: int = 64  # base feature channels of the generator (ngf); sa_unet uses model.channels
    gen_downs: int = 5  # down/up blocks of the pix2pix UNet; strided down convs of the ResNet generator
    res_blocks: int = 8  # residual blocks of the ResNet generator
    dropout: float = 0.2  # generator dropout (pix2pix UNet decoder blocks; the spine paper's 20 %)
    disc_channels: int = 64  # base channels of the PatchGAN discriminator (ndf)
    disc_layers: int = 3  # stride-2 down-convolution blocks of the PatchGAN discriminator (3: 70x70 patches)
    gan_loss: str = "vanilla"  # adversarial loss: "vanilla" (BCE with logits) or "lsgan" (least squares)
    lambda_gan: float = 1.0  # weight of the adversarial term of the generator loss
    lr_d: float = 0.0  # learning rate of the "discriminator" group (0: train.lr, as the generator)

    def __post_init__(self) -> None:
        self.check("generator", self.generator in GENERATORS, f"must be one of {', '.join(GENERATORS)}")
        self.check("gan_loss", self.gan_loss in GAN_LOSSES, f"must be one of {', '.join(GAN_LOSSES)}")
        for name in ("gen_channels", "disc_channels"):
            self.check(name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "must be an integer >= 1")
        for name in ("gen_downs", "res_blocks", "disc_layers"):
            self.check(name, _is_int(getattr(self, name)) and getattr(self, name) >= 0, "must be an integer >= 0")
        self.check("dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        self.check("lambda_gan", self.lambda_gan >= 0, "must be >= 0")
        self.check("lr_d", self.lr_d >= 0, "must be >= 0 (0: train.lr)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def discriminator_settings(options: AdversarialOptions, group: str = "discriminator") -> dict[str, GroupSettings]:
    """``optim_settings()`` of a GAN: ``group`` at ``options.lr_d`` when it is > 0, else nothing (train.lr)."""
    return {group: GroupSettings(lr=options.lr_d)} if options.lr_d > 0 else {}
_MAX_CACHED = 64  # generator steps without discriminator steps: the cache is cleared, not grown


class GeneratorTranslator(Method):
    """A translator whose output is ``self.net(source)`` (see the module docstring)."""

    net: torch.nn.Module

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self._fakes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # source.data_ptr() -> (source, G(source))

    def _check_source(self, source: torch.Tensor) -> None:
        raise NotImplementedError

    def _remember(self, source: torch.Tensor, fake: torch.Tensor) -> None:
        """Keep ``fake = G(source)`` (detached) for the discriminator step of the same batch."""
        if len(self._fakes) >= _MAX_CACHED:
            self._fakes.clear()
        self._fakes[source.data_ptr()] = (source, fake)

    def _recall(self, source: torch.Tensor) -> torch.Tensor:
        """The fake remembered for ``source``, or ``G(source)`` recomputed without gradient."""
        cached = self._fakes.pop(source.data_ptr(), None)
        if cached is not None and cached[0].shape == source.shape and torch.equal(cached[0], source):
            return cached[1]
        with torch.no_grad():
            return self.net(source)

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """``G(source)``: ``[B, C_s, *S]`` (model range) -> ``[B, model.out_channels, *S]``, deterministic.

        The generator runs in eval mode (dropout off) and is restored to its previous mode;
        ``generator`` is unused; ``callback`` is called once. Sampling options are accepted
        and ignored (:data:`IGNORED_OPTIONS`); any other option is a one-line error.
        """
        reject_unknown_options(self.config.method, options)
        self._check_source(source)
        was_training = self.net.training
        self.net.eval()
        try:
            out = self.net(source)
        finally:
            self.net.train(was_training)
        if callback is not None:
            callback({"i": 0, "n": 1, "t": 0, "x": out, "x0": out})
        return out
