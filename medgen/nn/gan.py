"""GAN building blocks shared by the GAN translators (pix2pix, CUT, SynDiff).

Every network works on 2D ``[B, C, H, W]`` or 3D ``[B, C, D, H, W]`` tensors (``spatial_dims``
picks the conv, transposed conv, InstanceNorm and reflection padding). Normalisation is
InstanceNorm without affine parameters or running statistics everywhere, as in the spine
paper's reference code and CUT (pix2pix's BatchNorm would make ``translate()`` depend on the
batch), so only dropout differs between train and eval mode.

Networks
--------
``UNetGenerator``
    The pix2pix UNet (Isola et al. 2017): ``downs`` Conv(k4, s2) blocks of ``ngf * min(2**i, 8)``
    channels, a mirrored ConvTranspose decoder on ``Concat([skip_i, h])`` with dropout (the
    paper's 20 %) in every block but the outermost, Tanh. The outermost and innermost down convs
    have no norm (a 1-pixel bottleneck works). Sides divisible by ``2**downs``.
``ResnetGenerator``
    CUT's / CycleGAN's ResNet generator as one flat ``nn.Sequential`` (:attr:`layers`), so CUT
    takes features by layer index (:meth:`ResnetGenerator.features`): with one down conv and 8
    blocks, 0 = the padded input, 4 = the down conv, 8 and 12 = residual blocks 2 and 6, 16 =
    the up conv's InstanceNorm (the paper's ``nce_layers``). Sides divisible by ``2**downs``, >= 4.
``SAUNetGenerator``
    The medgen diffusion UNet (:class:`medgen.nn.unet.UNet`, the paper's "SA-UNet") as a plain
    generator: ``in_channels`` = source channels, no condition inputs, always ``t = 0``;
    zero-initialised output, no Tanh.
``PatchDiscriminator``
    The pix2pix PatchGAN, one logit per patch; ``layers = 3`` is the 70x70 PatchGAN
    (:func:`patch_receptive_field`), 30x30 patches at 256 px (:meth:`PatchDiscriminator.output_shape`).

Losses
------
:func:`gan_loss` (``"vanilla"``: BCE with logits; ``"lsgan"``: least squares, the paper's code)
and :func:`ssim_loss`: the spine paper's "weighted SSIM loss" as its public code trains it,
``1 - SSIM(fake + 1, real + 1, data_range=2)`` (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03)
with its own weight next to L1, computed with a separable Gaussian filter over the valid
positions (the same map as MONAI's ``compute_ssim_and_cs``). Ours: an optional per-pixel weight
map (the loss mask) makes the map mean a weighted mean; small inputs shrink the window per axis.

:func:`init_weights` is pix2pix's ``normal`` init (conv weights ~ N(0, 0.02), biases 0), applied
to the UNet / ResNet generators and the discriminator (not to the SA-UNet).
Paper-faithfulness notes (layer lists, the source of the SSIM term): docs/paper_notes.md#gan
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medgen.config import ConfigError, GANConfig, UNetConfig
from medgen.nn.unet import UNet

__all__ = ["GANShapeError", "UNetGenerator", "ResnetGenerator", "SAUNetGenerator", "PatchDiscriminator",
           "build_generator", "build_discriminator", "gan_loss", "ssim_loss", "init_weights",
           "patch_receptive_field", "GENERATORS", "GAN_LOSSES"]

GENERATORS = ("unet", "resnet", "sa_unet")  # generator choices (AdversarialOptions.generator)
GAN_LOSSES = ("vanilla", "lsgan")  # adversarial loss choices (AdversarialOptions.gan_loss)
LEAK = 0.2  # LeakyReLU slope of the pix2pix encoder and discriminator
INIT_STD = 0.02  # std of pix2pix's normal weight init
SSIM_WINDOW = 11  # Gaussian SSIM window (torchmetrics / skimage / Wang et al. 2004 default)
SSIM_SIGMA = 1.5  # its standard deviation in pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03  # SSIM stabilising constants (times data range, squared)
SSIM_SHIFT = 1.0  # model range [-1, 1] -> [0, 2] before SSIM, as the reference code does
SSIM_DATA_RANGE = 2.0  # data range of the shifted images


class GANShapeError(ValueError):
    """An input tensor the network cannot process (wrong rank, channels or spatial size)."""


# --------------------------------------------------------------------------------------
# Dimension-generic layers
# --------------------------------------------------------------------------------------
def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv(spatial_dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    """``Conv2d`` / ``Conv3d``."""
    cls = (nn.Conv2d, nn.Conv3d)[_check_dims(spatial_dims) - 2]
    return cls(c_in, c_out, kernel, stride=stride, padding=padding)


def conv_transpose(spatial_dims: int, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                   output_padding: int = 0) -> nn.Module:
    """``ConvTranspose2d`` / ``ConvTranspose3d``."""
    cls = (nn.ConvTranspose2d, nn.ConvTranspose3d)[_check_dims(spatial_dims) - 2]
    return cls(c_in, c_out, kernel, stride=stride, padding=padding, output_padding=output_padding)


def instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    """InstanceNorm without affine parameters or running statistics (the reference's default)."""
    return (nn.InstanceNorm2d, nn.InstanceNorm3d)[_check_dims(spatial_dims) - 2](channels)


def reflection_pad(spatial_dims: int, pad: int) -> nn.Module:
    """``ReflectionPad2d`` / ``ReflectionPad3d``."""
    return (nn.ReflectionPad2d, nn.ReflectionPad3d)[_check_dims(spatial_dims) - 2](pad)


def init_weights(module: nn.Module, std: float = INIT_STD) -> nn.Module:
    """pix2pix ``normal`` init in place: every (transposed) conv weight ~ N(0, std), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _check_input(x: torch.Tensor, spatial_dims: int, channels: int, multiple: int, min_size: int, who: str) -> None:
    """One-line :class:`GANShapeError` unless ``x`` is ``[B, channels, *S]`` with every side a
    multiple of ``multiple`` and at least ``min_size``."""
    layout = "[B, C, H, W]" if spatial_dims == 2 else "[B, C, D, H, W]"
    if x.ndim != spatial_dims + 2:
        raise GANShapeError(f"{who}: expected {layout} ({spatial_dims}D), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise GANShapeError(f"{who}: expected {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    spatial = tuple(x.shape[2:])
    if any(s % multiple or s < min_size for s in spatial):
        raise GANShapeError(f"{who}: every spatial side must be a multiple of {multiple} and >= {min_size}, "
                            f"got {spatial}")


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------
class UNetGenerator(nn.Module):
    """The pix2pix UNet generator ``[B, in, *S] -> [B, out, *S]`` in (-1, 1) (see module docstring).

    ``channels`` is ngf, ``downs`` the number of down/up blocks (``S`` must be divisible by
    ``2**downs``), ``dropout`` the decoder dropout probability. Layer list: docs/paper_notes.md#gan.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, downs: int = 5,
                 dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        if downs < 1:
            raise ValueError(f"UNetGenerator needs downs >= 1, got {downs}")
        self.in_channels, self.spatial_dims, self.downs = in_channels, _check_dims(spatial_dims), downs
        widths = [channels * min(2 ** i, 8) for i in range(downs)]  # output channels of down block i
        self.down = nn.ModuleList(self._down_block(i, in_channels if i == 0 else widths[i - 1], widths[i])
                                  for i in range(downs))
        # up[i] mirrors down[i]: it reads Concat([skip_i, h]) (only h at the bottleneck) and
        # returns what down[i] read (widths[i - 1], or out_channels for the outermost block).
        self.up = nn.ModuleList(self._up_block(i, widths[i] * (1 if i == downs - 1 else 2),
                                               out_channels if i == 0 else widths[i - 1], dropout)
                                for i in range(downs))

    def _down_block(self, i: int, c_in: int, c_out: int) -> nn.Sequential:
        layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(LEAK)]
        layers.append(conv(self.spatial_dims, c_in, c_out, 4, stride=2, padding=1))
        if 0 < i < self.downs - 1:  # no norm on the outermost and the bottleneck conv
            layers.append(instance_norm(self.spatial_dims, c_out))
        return nn.Sequential(*layers)

    def _up_block(self, i: int, c_in: int, c_out: int, dropout: float) -> nn.Sequential:
        layers: list[nn.Module] = [nn.ReLU(), conv_transpose(self.spatial_dims, c_in, c_out, 4, 2, 1)]
        if i == 0:
            layers.append(nn.Tanh())
        else:
            layers.append(instance_norm(self.spatial_dims, c_out))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]`` -> ``[B, out, *S]``."""
        _check_input(x, self.spatial_dims, self.in_channels, 2 ** self.downs, 2 ** self.downs, "UNetGenerator")
        skips = []
        for block in self.down:  # skips[i]: output of down block i, at S / 2**(i+1)
            x = block(x)
            skips.append(x)
        h = self.up[-1](skips[-1])
        for i in range(self.downs - 2, -1, -1):
            h = self.up[i](torch.cat([skips[i], h], dim=1))
        return h


class _ResidualBlock(nn.Module):
    """``x + [pad, conv3, IN, ReLU, (Dropout), pad, conv3, IN](x)``."""

    def __init__(self, spatial_dims: int, channels: int, dropout: float) -> None:
        super().__init__()
        layers = [reflection_pad(spatial_dims, 1), conv(spatial_dims, channels, channels, 3),
                  instance_norm(spatial_dims, channels), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [reflection_pad(spatial_dims, 1), conv(spatial_dims, channels, channels, 3),
                   instance_norm(spatial_dims, channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CUT's ResNet generator ``[B, in, *S] -> [B, out, *S]`` in (-1, 1) (see module docstring).

    :attr:`layers` is the flat ``nn.Sequential`` whose indices CUT's ``nce_layers`` refer to
    (layer list: docs/paper_notes.md#gan).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, downs: int = 2,
                 blocks: int = 9, dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        if downs < 0 or blocks < 0:
            raise ValueError(f"ResnetGenerator needs downs >= 0 and blocks >= 0, got {downs}, {blocks}")
        d = _check_dims(spatial_dims)
        self.in_channels, self.spatial_dims, self.downs = in_channels, d, downs
        layers: list[nn.Module] = [reflection_pad(d, 3), conv(d, in_channels, channels, 7),
                                   instance_norm(d, channels), nn.ReLU()]
        c = channels
        for _ in range(downs):
            layers += [conv(d, c, 2 * c, 3, stride=2, padding=1), instance_norm(d, 2 * c), nn.ReLU()]
            c *= 2
        layers += [_ResidualBlock(d, c, dropout) for _ in range(blocks)]
        for _ in range(downs):
            layers += [conv_transpose(d, c, c // 2, 3, 2, 1, output_padding=1), instance_norm(d, c // 2), nn.ReLU()]
            c //= 2
        layers += [reflection_pad(d, 3), conv(d, c, out_channels, 7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def _check(self, x: torch.Tensor) -> None:
        _check_input(x, self.spatial_dims, self.in_channels, 2 ** self.downs, max(4, 2 ** (self.downs + 1)),
                     "ResnetGenerator")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]`` -> ``[B, out, *S]``."""
        self._check(x)
        return self.layers(x)

    def features(self, x: torch.Tensor, layer_ids: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the network and return ``(output, [output of layers[k] for k in layer_ids])``.

        Features come back in the order of ``layer_ids``; each is ``[B, C_k, *S_k]``.
        """
        n = len(self.layers)
        bad = [k for k in layer_ids if not 0 <= k < n]
        if bad:
            raise ValueError(f"ResnetGenerator has layers 0..{n - 1}, asked for layer {bad[0]}")
        self._check(x)
        wanted, found = set(layer_ids), {}
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k in wanted:
                found[k] = x
        return x, [found[k] for k in layer_ids]


class SAUNetGenerator(nn.Module):
    """The medgen UNet as a generator: ``net(x, t=0)`` with no condition, ``[B, in, *S] -> [B, out, *S]``.

    ``model`` is the UNet config to start from; ``in_channels`` replaces its ``in_channels``
    (the source channels) and every condition input is switched off.
    """

    def __init__(self, model: UNetConfig, in_channels: int) -> None:
        super().__init__()
        cfg = dataclasses.replace(model, in_channels=in_channels, cond_image_channels=0, cond_vector_dim=0,
                                  cond_tokens_dim=0, skip_residuals=False, stage_embedding_dim=0)
        self.net = UNet(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]`` -> ``[B, out, *S]`` (the UNet at timestep 0)."""
        return self.net(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))


# --------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------
def patch_receptive_field(layers: int) -> int:
    """Side in pixels of the input patch one :class:`PatchDiscriminator` output sees (70 at 3)."""
    r = 1
    for _ in range(2):  # the two stride-1 k4 convs, walked back from the output
        r = r + 3
    for _ in range(layers):  # the stride-2 k4 convs
        r = 2 * (r - 1) + 4
    return r


class PatchDiscriminator(nn.Module):
    """PatchGAN ``[B, in, *S] -> [B, 1, *S']`` of per-patch logits (see module docstring).

    ``channels`` is ndf, ``layers`` the number of stride-2 blocks (3: the 70x70 PatchGAN);
    layer list: docs/paper_notes.md#gan.
    """

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3, spatial_dims: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"PatchDiscriminator needs layers >= 1, got {layers}")
        d = _check_dims(spatial_dims)
        self.in_channels, self.spatial_dims, self.n_layers = in_channels, d, layers
        width = [channels * min(2 ** i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [conv(d, in_channels, width[0], 4, stride=2, padding=1), nn.LeakyReLU(LEAK)]
        for i in range(1, layers):
            blocks += [conv(d, width[i - 1], width[i], 4, stride=2, padding=1), instance_norm(d, width[i]),
                       nn.LeakyReLU(LEAK)]
        blocks += [conv(d, width[layers - 1], width[layers], 4, stride=1, padding=1), instance_norm(d, width[layers]),
                   nn.LeakyReLU(LEAK), conv(d, width[layers], 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*blocks)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the logit map for an input of spatial shape ``spatial``."""
        out = []
        for s in spatial:
            for _ in range(self.n_layers):
                s = (s + 2 - 4) // 2 + 1  # k4 s2 p1
            out.append(s - 2)  # two k4 s1 p1 convs, -1 each
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]`` -> logits ``[B, 1, *output_shape(S)]``."""
        _check_input(x, self.spatial_dims, self.in_channels, 1, 1, "PatchDiscriminator")
        if min(self.output_shape(x.shape[2:])) < 1:
            raise GANShapeError(f"PatchDiscriminator with {self.n_layers} layers needs larger inputs than "
                                f"{tuple(x.shape[2:])} (output would be {self.output_shape(x.shape[2:])})")
        return self.model(x)


# --------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------
class NetworkOptions(Protocol):
    """What the factories read: a method's options (``medgen.methods.adversarial.AdversarialOptions``)
    or the legacy :class:`~medgen.config.GANConfig`."""

    generator: str
    gen_channels: int
    gen_downs: int
    res_blocks: int
    dropout: float
    disc_channels: int
    disc_layers: int


def build_generator(gan: NetworkOptions | GANConfig, *, in_channels: int, out_channels: int, spatial_dims: int,
                    model: UNetConfig | None = None) -> nn.Module:
    """The generator ``gan.generator`` names; ``model`` (with ``out_channels`` applied) for ``"sa_unet"``.

    UNet and ResNet generators get :func:`init_weights`.
    """
    if gan.generator == "unet":
        return init_weights(UNetGenerator(in_channels, out_channels, gan.gen_channels, gan.gen_downs, gan.dropout,
                                          spatial_dims))
    if gan.generator == "resnet":
        return init_weights(ResnetGenerator(in_channels, out_channels, gan.gen_channels, gan.gen_downs,
                                            gan.res_blocks, gan.dropout, spatial_dims))
    if gan.generator == "sa_unet":
        base = model if model is not None else UNetConfig()
        return SAUNetGenerator(dataclasses.replace(base, out_channels=out_channels, spatial_dims=spatial_dims),
                               in_channels)
    raise ConfigError(f"unknown gan.generator '{gan.generator}' (choose from {', '.join(GENERATORS)})")


def build_discriminator(gan: NetworkOptions | GANConfig, *, in_channels: int, spatial_dims: int) -> PatchDiscriminator:
    """The PatchGAN of ``gan`` (``disc_channels``, ``disc_layers``), pix2pix-initialised."""
    return init_weights(PatchDiscriminator(in_channels, gan.disc_channels, gan.disc_layers, spatial_dims))


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------
def gan_loss(logits: torch.Tensor, real: bool, kind: str = "vanilla") -> torch.Tensor:
    """Mean adversarial loss of discriminator outputs ``logits`` (any shape) against label 1 (real) or 0.

    ``"vanilla"``: binary cross-entropy with logits, ``mean(softplus(-l))`` for real,
    ``mean(softplus(l))`` for fake. ``"lsgan"``: ``mean((l - label)**2)``.
    """
    label = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, label)
    if kind == "lsgan":
        return F.mse_loss(logits, label)
    raise ValueError(f"unknown GAN loss '{kind}' (choose from {', '.join(GAN_LOSSES)})")


def _ssim_window(spatial: Sequence[int]) -> list[int]:
    """Per-axis Gaussian window: SSIM_WINDOW, shrunk to the largest odd size <= the side."""
    sizes = [min(SSIM_WINDOW, s if s % 2 else s - 1) for s in spatial]
    if min(sizes) < 1:
        raise GANShapeError(f"ssim_loss: spatial shape {tuple(spatial)} is too small")
    return sizes


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """Sampled, normalised Gaussian ``[size]`` centred on the middle tap (MONAI's / skimage's SSIM window)."""
    d = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def _valid_gaussian_filter(x: torch.Tensor, win: Sequence[int]) -> torch.Tensor:
    """Separable Gaussian filter of ``x`` ``[B, C, *S]`` without padding -> ``[B, C, *(S - win + 1)]``."""
    dims, c = x.ndim - 2, x.shape[1]
    conv_fn = (F.conv2d, F.conv3d)[dims - 2]
    for axis, size in enumerate(win):  # one 1D depthwise conv per axis
        shape = [1, 1] + [size if a == axis else 1 for a in range(dims)]
        kernel = _gaussian_1d(size, SSIM_SIGMA, x.device).reshape(shape).expand(c, *shape[1:])
        x = conv_fn(x, kernel, groups=c)
    return x


def _ssim_map(x: torch.Tensor, y: torch.Tensor, win: Sequence[int]) -> torch.Tensor:
    """Per-position SSIM ``[B, C, *(S - win + 1)]`` of images ``[B, C, *S]`` (Wang et al. 2004)."""
    c = x.shape[1]
    # 1. local means of x, y, x^2, y^2, xy: one separable filter pass over 5C channels
    moments = _valid_gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), win)
    mu_x, mu_y, m_xx, m_yy, m_xy = moments.split(c, dim=1)
    # 2. local (co)variances
    var_x, var_y, cov = m_xx - mu_x ** 2, m_yy - mu_y ** 2, m_xy - mu_x * mu_y
    # 3. luminance x contrast-structure, with the stabilising constants of the data range
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    return (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - SSIM(pred, target)``, images ``[B, C, *S]`` in model range [-1, 1] (see module docstring).

    Gaussian window 11 (sigma 1.5, shrunk on small inputs), k1 0.01, k2 0.03, computed on
    ``x + 1`` with data range 2 over the valid (unpadded) window positions. ``weight``
    ``[B, 1, *S]`` (>= 0) makes the SSIM-map mean a weighted mean (cropped to the valid
    positions); all-zero weights give SSIM 0. Differentiable in ``pred``. Always computed in
    float32 (autocast is switched off inside), returning a float32 scalar.
    """
    if pred.shape != target.shape or pred.ndim not in (4, 5):
        raise GANShapeError(f"ssim_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal "
                            "[B, C, H, W] or [B, C, D, H, W]")
    spatial = pred.shape[2:]
    win = _ssim_window(spatial)
    # float32 even under bf16 autocast: the local variances E[x^2] - E[x]^2 cancel badly in bf16
    with torch.autocast(pred.device.type, enabled=False):
        ssim_map = _ssim_map(pred.float() + SSIM_SHIFT, target.float() + SSIM_SHIFT, win)  # [B, C, *(S-win+1)]
    if weight is None:
        return 1.0 - ssim_map.mean()
    if weight.shape[0] != pred.shape[0] or weight.shape[1] != 1 or weight.shape[2:] != spatial:
        raise GANShapeError(f"ssim_loss: weight {tuple(weight.shape)} must be [B, 1, *S] for images "
                            f"{tuple(pred.shape)}")
    crop = tuple(slice(k // 2, s - k // 2) for k, s in zip(win, spatial))
    w = weight[(slice(None), slice(None)) + crop].to(ssim_map.dtype).expand_as(ssim_map)
    return 1.0 - (ssim_map * w).sum() / w.sum().clamp_min(1e-12)
