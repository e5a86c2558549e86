"""What the single-generator GAN translators (pix2pix, CUT) share: the cached fake and ``translate``.

:class:`GeneratorTranslator` is a :class:`~medgen.methods.base.Method` whose translation is
one deterministic generator pass ``self.net(source)``. Subclasses set ``self.net``, implement
``_check_source(source)`` and the two optimiser groups' losses. The generator step stores its
fake with :meth:`_remember`; the discriminator step of the same batch takes it back with
:meth:`_recall`, so the generator runs once per optimiser step (as in pix2pix and CUT); a
discriminator step without a preceding generator step on the same source recomputes it
under ``no_grad``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from medgen.config import RunConfig
from medgen.methods.base import IGNORED_OPTIONS, Method, reject_unknown_options

__all__ = ["GeneratorTranslator", "IGNORED_OPTIONS"]
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
