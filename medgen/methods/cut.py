"""``cut``: contrastive unpaired translation (Park et al. 2020, "CUT") with the spine paper's generators.

Options: :class:`CUTOptions` (``cfg.options``; ``--set options.<field>=...``).

Networks (``medgen.nn.gan``, built from the options): the generator ``G: source -> target``,
``[B, cfg.model.cond_image_channels, H, W] -> [B, cfg.model.out_channels, H, W]`` (``"resnet"``:
CUT's ResNet generator, the paper's setting ``gen_downs = 1, res_blocks = 8, dropout = 0``;
``"sa_unet"``: the medgen UNet of ``cfg.model`` at t = 0), an **unconditional** PatchGAN on
target-domain images only, and one MLP head per NCE feature tap (:attr:`CUT.heads`:
Linear(C_l, 256) -> ReLU -> Linear(256, 256), then L2 normalisation; CUT's ``PatchSampleF``).
The heads are built at construction from a dry forward of G (CUT builds them lazily), so the
optimiser and every checkpoint see them. 2D is what the paper trains and what is tested.

Feature taps: ResNet -- the outputs of ``G.layers[k]`` for ``k`` in ``nce_layers`` (the
paper's ``0, 4, 8, 12, 16``); SA-UNet -- "after every down-convolution and the first
up-convolution" (supplement): hooks on every encoder ``Downsample`` and on the deepest decoder
``Upsample`` (:func:`sa_unet_taps`; ``nce_layers`` unused). Hooks live for one call only.

Losses (two optimiser groups, stepped by ``fit()`` in this order):

* ``"generator"`` (G and the heads): ``lambda_gan * GAN(D(G(src)), real) + lambda_nce * NCE``
  with ``NCE = PatchNCE(src, G(src))`` or, with ``nce_idt``, ``0.5 * (PatchNCE(src, G(src))
  + PatchNCE(tgt, G(tgt)))``. :func:`patch_nce_loss`: at every tap ``nce_patches`` locations
  (the same for ``x``, ``y`` and every image of the batch); each query from ``y = G(x)`` must
  pick its own key from ``x`` (detached) against the other sampled locations of the same image,
  temperature ``nce_temperature``. CUT's defaults, which the paper keeps: lambda_gan =
  lambda_nce = 1, nce_idt on, tau = 0.07, 256 patches, LSGAN.
* ``"discriminator"``: ``0.5 * (GAN(D(tgt), real) + GAN(D(G(src).detach()), fake))`` per patch
  (``gan_loss``), at learning rate ``lr_d`` when it is > 0, else ``train.lr``; the fake is
  cached from the generator step of the same batch, as in :mod:`medgen.methods.pix2pix`, else
  recomputed under ``no_grad``.

Training batches need ``target`` (the ``unpaired`` kind: another patient's CT); CUT never
compares ``G(src)`` with ``tgt`` pixel-wise, so ``batch.mask`` is unused (and CUT has no L1 or
SSIM weights). Every width follows the configured channels, so grayscale works
(the reference implementation fails on 1-channel input).

``translate(source)`` returns ``G(source)``, deterministic (eval mode), with pix2pix's option
policy (the sampling options of ``cfg.sample`` ignored, any other a one-line error);
``generator`` is unused; ``callback`` is called once. Not supported: ``generator = "unet"`` (the
paper runs CUT with the ResNet and the SA-UNet).

Paper-faithfulness notes (taps, single-channel images, sizes, timings): docs/paper_notes.md#cut
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medgen.config import ConfigError, RunConfig, method_options, register_options
from medgen.data.batch import Batch
from medgen.methods.adversarial import AdversarialOptions, GeneratorTranslator, discriminator_settings
from medgen.methods.base import GroupSettings
from medgen.nn.gan import INIT_STD, ResnetGenerator, SAUNetGenerator, build_discriminator, build_generator, gan_loss
from medgen.nn.layers import Downsample, Upsample
from medgen.registry import METHODS, register

__all__ = ["CUT", "CUTOptions", "patch_nce_loss", "sample_patches", "sa_unet_taps", "NCE_DIM", "CUT_GENERATORS"]

NCE_DIM = 256  # width of every MLP head (CUT's netF_nc; the paper keeps 256)
L2_EPS = 1e-7  # added to the norm before L2 normalisation (as CUT's Normalize)
CUT_GENERATORS = ("resnet", "sa_unet")  # CUTOptions.generator choices


@register_options("cut")
@dataclass(frozen=True)
class CUTOptions(AdversarialOptions):
    """CUT's options: generator / PatchGAN / GAN loss (:class:`AdversarialOptions`) and PatchNCE.

    Defaults: the spine paper's CUT (ResNet with one down/up conv, 8 residual blocks, no
    dropout, LSGAN) with CUT's PatchNCE defaults (lambda_nce 1, identity term on, tau 0.07,
    256 patches, layers 0, 4, 8, 12, 16).
    """

    generator: str = "resnet"  # "resnet" (CUT's ResNet) or "sa_unet" (the model UNet with t fixed)
    gen_downs: int = 1  # strided down convs of the ResNet generator
    dropout: float = 0.0  # generator dropout
    gan_loss: str = "lsgan"  # adversarial loss: "lsgan" (CUT's) or "vanilla"
    lambda_nce: float = 1.0  # PatchNCE weight
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)  # ResNet generator layers whose features enter PatchNCE
    nce_idt: bool = True  # also PatchNCE on (target -> G(target)) identity pairs
    nce_temperature: float = 0.07  # PatchNCE softmax temperature tau
    nce_patches: int = 256  # patches sampled per layer for PatchNCE

    legacy_gan = {"lambda_l1": 0.0, "lambda_ssim": 0.0}  # what the presets wrote in the old `gan` section

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check("generator", self.generator in CUT_GENERATORS, f"must be {' or '.join(CUT_GENERATORS)}")
        self.check("lambda_nce", self.lambda_nce >= 0, "must be >= 0")
        self.check("nce_layers", len(self.nce_layers) > 0 and all(k >= 0 for k in self.nce_layers),
                   "must be non-empty generator layer indices >= 0")
        self.check("nce_temperature", self.nce_temperature > 0, "must be > 0")
        self.check("nce_patches", self.nce_patches >= 1, "must be >= 1")


# --------------------------------------------------------------------------------------
# PatchNCE
# --------------------------------------------------------------------------------------
def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """PatchNCE loss per query patch, ``[B, N]``, for L2-normalised ``query`` and ``key`` ``[B, N, C]``.

    Query ``n`` of image ``b`` must pick key ``n`` of the same image (its positive) out of
    all ``N`` keys of that image (the other ``N - 1`` are its negatives):
    ``-log softmax_m(<q_bn, k_bm> / tau)[m = n]``. ``key`` is detached (gradients reach the
    queries only), as in CUT. CUT writes the same thing as one positive logit followed by
    the ``N x N`` negatives whose diagonal is overwritten with -10 (``exp(-10 / 0.07)`` ~ 1e-62
    of mass); here the diagonal *is* the positive, so nothing is filled in. Computed in
    float32 (autocast off inside); returns float32.
    """
    if query.ndim != 3 or query.shape != key.shape:
        raise ValueError(f"patch_nce_loss: query {tuple(query.shape)} and key {tuple(key.shape)} must be equal "
                         "[B, N, C]")
    if not temperature > 0:
        raise ValueError(f"patch_nce_loss: temperature must be > 0, got {temperature}")
    b, n, _ = query.shape
    # float32 even under bf16 autocast: cosine similarities / 0.07 need more than bf16's 8 bits
    with torch.autocast(query.device.type, enabled=False):
        # 1. similarities of every query patch to every key patch of the same image: [B, N, N]
        logits = torch.bmm(query.float(), key.detach().float().transpose(1, 2)) / temperature
        # 2. the positive of query n is key n (the diagonal): cross-entropy with target n
        target = torch.arange(n, device=query.device).expand(b, n)
        return F.cross_entropy(logits.reshape(b * n, n), target.reshape(-1), reduction="none").view(b, n)


def sample_patches(feature: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``min(n, P)`` distinct random positions (LongTensor) of a feature map ``[B, C, *S]`` with ``P = prod(S)``.

    One draw for the whole batch (CUT uses the same positions for every image); ``generator``
    (or the global torch RNG) draws them.
    """
    positions = feature[0, 0].numel()
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(positions, generator=generator, device=device)[:n].to(feature.device)


def _gather(feature: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Features at flat positions ``ids`` ``[N]`` of ``feature`` ``[B, C, *S]`` -> ``[B, N, C]``."""
    return feature.flatten(2)[:, :, ids].transpose(1, 2)


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / (||x||_2 + eps)`` along the last axis."""
    return x / (x.norm(dim=-1, keepdim=True) + L2_EPS)


def _head(in_channels: int) -> nn.Sequential:
    """CUT's projection head: Linear(in, 256) -> ReLU -> Linear(256, 256); weights ~ N(0, 0.02), bias 0."""
    head = nn.Sequential(nn.Linear(in_channels, NCE_DIM), nn.ReLU(), nn.Linear(NCE_DIM, NCE_DIM))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            nn.init.zeros_(m.bias)
    return head


# --------------------------------------------------------------------------------------
# Feature taps
# --------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by the last tap hook to end a features-only pass early."""


def sa_unet_taps(generator: SAUNetGenerator) -> list[nn.Module]:
    """The SA-UNet modules whose outputs feed PatchNCE, in execution order.

    Every ``Downsample`` of the encoder (levels ``0 .. n-2``), then the ``Upsample`` of the
    deepest decoder level (the first up-convolution): ``n`` modules for ``n =
    len(model.channels) >= 2``.
    """
    unet = generator.net
    taps = [level.resample for level in unet.down if isinstance(level.resample, Downsample)]
    first_up = unet.up[0].resample
    if isinstance(first_up, Upsample):
        taps.append(first_up)
    if not taps:
        raise ConfigError("cut with options.generator='sa_unet' needs model.channels with >= 2 levels (no down or up "
                          "convolution to take NCE features from)")
    return taps


def _resnet_features(net: ResnetGenerator, x: torch.Tensor, layer_ids: Sequence[int],
                     encode_only: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(G(x) or None, [outputs of net.layers[k] for k in layer_ids])``; stops after the last tap if
    ``encode_only``."""
    if not encode_only:
        return net.features(x, layer_ids)
    last, wanted, found = max(layer_ids), set(layer_ids), {}
    for k, layer in enumerate(net.layers[:last + 1]):
        x = layer(x)
        if k in wanted:
            found[k] = x
    return None, [found[k] for k in layer_ids]


def _unet_features(net: SAUNetGenerator, x: torch.Tensor,
                   encode_only: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(G(x) or None, outputs of sa_unet_taps(net))`` via forward hooks removed afterwards."""
    taps, feats = sa_unet_taps(net), []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        feats.append(output)
        if encode_only and len(feats) == len(taps):
            raise _StopForward

    handles = [m.register_forward_hook(hook) for m in taps]
    out = None
    try:
        out = net(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return out, feats


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------
@register(METHODS, "cut")
class CUT(GeneratorTranslator):
    """Contrastive unpaired translator (see the module docstring).

    ``net``: generator; ``discriminator``: unconditional PatchGAN; ``heads``: one MLP per NCE tap.
    """

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.options = g = method_options(config, CUTOptions)
        m = config.model
        _validate(config)
        self.source_channels, self.target_channels = m.cond_image_channels, m.out_channels
        self.net = build_generator(g, in_channels=m.cond_image_channels, out_channels=m.out_channels,
                                   spatial_dims=m.spatial_dims, model=m)
        self.discriminator = build_discriminator(g, in_channels=m.out_channels, spatial_dims=m.spatial_dims)
        self.nce_layers = tuple(g.nce_layers)
        self.heads = nn.ModuleList(_head(c) for c in self.tap_channels())

    # ---- construction helpers ----------------------------------------------------------------
    def tap_channels(self) -> list[int]:
        """Channels of every NCE tap, from a dry forward of G on the smallest zero input it accepts."""
        if isinstance(self.net, ResnetGenerator):
            n = len(self.net.layers)
            bad = [k for k in self.nce_layers if not 0 <= k < n]
            if bad or not self.nce_layers:
                raise ConfigError(f"cut.nce_layers: must be indices of the ResNet generator's layers 0..{n - 1}, "
                                  f"got {self.nce_layers}")
            side = max(4, 2 ** (self.net.downs + 1))
        else:
            side = 2 ** (len(self.config.model.channels) - 1)
        dummy = torch.zeros(1, self.source_channels, *([side] * self.config.model.spatial_dims))
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                _, feats = self.nce_features(dummy, encode_only=True)
        finally:
            self.net.train(was_training)
        return [f.shape[1] for f in feats]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"generator"`` (G and the MLP heads), then ``"discriminator"`` (D)."""
        gen = [*self.net.parameters(), *self.heads.parameters()]
        return {"generator": [p for p in gen if p.requires_grad],
                "discriminator": [p for p in self.discriminator.parameters() if p.requires_grad]}

    def optim_settings(self) -> dict[str, GroupSettings]:
        """The discriminator at ``options.lr_d`` when it is > 0 (else both groups at ``train.lr``)."""
        return discriminator_settings(self.options)

    # ---- features and PatchNCE --------------------------------------------------------------
    def nce_features(self, x: torch.Tensor, encode_only: bool = False) -> tuple[torch.Tensor | None,
                                                                                 list[torch.Tensor]]:
        """``(G(x), taps)`` for ``x [B, C_s, *S]``; taps are ``[B, C_l, *S_l]`` in tap order.

        With ``encode_only`` the pass stops after the last tap and ``G(x)`` is ``None``.
        """
        if isinstance(self.net, ResnetGenerator):
            return _resnet_features(self.net, x, self.nce_layers, encode_only)
        return _unet_features(self.net, x, encode_only)

    def nce_loss(self, key_feats: Sequence[torch.Tensor], output: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """PatchNCE between the taps of the input (``key_feats``, from :meth:`nce_features`) and of
        ``output = G(input)`` ``[B, C_s, *S]``: mean over taps of the mean loss over images and patches."""
        _, query_feats = self.nce_features(output, encode_only=True)
        losses = []
        for head, f_k, f_q in zip(self.heads, key_feats, query_feats):
            ids = sample_patches(f_k, self.options.nce_patches, generator)  # the same positions for q and k
            with torch.no_grad():  # keys are detached in the loss anyway: skip their graph
                k = _l2_normalise(head(_gather(f_k, ids)).float())  # [B, N, 256]
            q = _l2_normalise(head(_gather(f_q, ids)).float())  # [B, N, 256]
            losses.append(patch_nce_loss(q, k, self.options.nce_temperature).mean())
        return torch.stack(losses).mean()

    # ---- training -------------------------------------------------------------------------
    def _check_source(self, source: torch.Tensor, what: str = "source",
                      channels: int | None = None, field: str = "model.cond_image_channels") -> None:
        dims, channels = self.config.model.spatial_dims, channels or self.source_channels
        if source.ndim != dims + 2:
            raise ValueError(f"cut: {what} {tuple(source.shape)} must have {dims} spatial dims "
                             f"(model.spatial_dims={dims})")
        if source.shape[1] != channels:
            raise ValueError(f"cut: {what} has {source.shape[1]} channels but {field}={channels}")

    def _check_batch(self, batch: Batch) -> None:
        if batch.target is None:
            raise ValueError("cut: training needs target-domain images (batch.target is None; use the 'unpaired' "
                             "dataset kind)")
        self._check_source(batch.source)
        self._check_source(batch.target, "target", self.target_channels, "model.out_channels")

    def training_step(self, batch: Batch, group: str,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses of ``group`` on ``batch`` (source ``[B, C_s, *S]``, unpaired target ``[B, C_t, *S]``).

        ``"generator"`` -> ``{"loss", "adv", "nce", "nce_idt"}`` (each term only when its weight
        is > 0, ``nce_idt`` only with ``options.nce_idt``); ``"discriminator"`` -> ``{"loss", "real",
        "fake"}``. ``generator`` draws the NCE patch positions (the global RNG if ``None``).
        """
        self._check_batch(batch)
        if group == "generator":
            return self._generator_step(batch, generator)
        if group == "discriminator":
            return self._discriminator_step(batch)
        raise ValueError(f"cut has optimiser groups 'generator' and 'discriminator', got '{group}'")

    def _generator_step(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        g = self.options
        fake, src_feats = self.nce_features(batch.source)  # G(src) [B, C_t, *S] and the key taps
        self._remember(batch.source, fake.detach())
        loss, out = fake.new_zeros(()), {}
        # 1. adversarial: the discriminator should call G(src) real
        if g.lambda_gan > 0:
            adv = gan_loss(self.discriminator(fake), True, g.gan_loss)
            loss, out["adv"] = loss + g.lambda_gan * adv, adv.detach()
        # 2. PatchNCE on (src, G(src)), and on (tgt, G(tgt)) for the identity term
        if g.lambda_nce > 0:
            nce = self.nce_loss(src_feats, fake, generator)
            out["nce"] = nce.detach()
            if g.nce_idt:
                idt, tgt_feats = self.nce_features(batch.target)
                nce_idt = self.nce_loss(tgt_feats, idt, generator)
                out["nce_idt"] = nce_idt.detach()
                nce = 0.5 * (nce + nce_idt)
            loss = loss + g.lambda_nce * nce
        return {"loss": loss, **out}

    def _discriminator_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        kind = self.options.gan_loss
        fake = self._recall(batch.source)
        real = gan_loss(self.discriminator(batch.target), True, kind)
        fake_loss = gan_loss(self.discriminator(fake), False, kind)
        return {"loss": 0.5 * (real + fake_loss), "real": real.detach(), "fake": fake_loss.detach()}


def _validate(config: RunConfig) -> None:
    """One-line :class:`ConfigError` for settings CUT cannot run (its options check themselves)."""
    m, g = config.model, method_options(config, CUTOptions)
    if m.cond_image_channels <= 0:
        raise ConfigError("cut needs model.cond_image_channels > 0 (the number of source channels)")
    if g.lambda_nce > 0 and m.cond_image_channels != m.out_channels:
        raise ConfigError(f"cut's PatchNCE feeds G(source) (and, with options.nce_idt, target images) back into G, "
                          f"so model.cond_image_channels={m.cond_image_channels} must equal model.out_channels="
                          f"{m.out_channels}")
