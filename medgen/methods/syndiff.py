"""``syndiff``: unpaired adversarial diffusion translation (Özbey et al. 2023, IEEE TMI 42(12)).

The spine MRI -> CT paper's unpaired diffusion baseline (supplement: "SynDiff includes a
CycleGAN that generates image pairs for a DDPM. The DDPM operates in image mode with a fixed
step size of 4"), structured as the authors' code (icon-lab/SynDiff, ``train.py``). Domain *s*
is the source (MRI, ``batch.source`` ``[B, model.cond_image_channels, H, W]``), domain *c* the
target (CT, ``batch.target`` ``[B, model.out_channels, H, W]``); both directions are trained.

Networks (eight, 2D): a non-diffusive CycleGAN -- generators ``nd_s2t`` / ``nd_t2s``
(:func:`medgen.nn.gan.build_generator`, options :class:`SynDiffOptions`) and PatchGANs ``dnd_target`` /
``dnd_source`` -- and a diffusive DDGAN per direction: ``g_target`` (:class:`DiffusiveGenerator`)
predicts the clean target ``c0_hat = G(c_t, t, cond=s~, z)`` from the noisy target ``c_t``, the
step ``t`` in 1..T, a source image ``s~`` (training: the non-diffusive estimate ``nd_t2s(c)``;
test: the real source) and ``z ~ N(0, I_100)``; ``g_source`` likewise for s. ``d_target`` /
``d_source`` (:class:`DiffusionDiscriminator`): ``D(x_{t-1}, x_t, t) -> [B]`` logits. Diffusion:
T = :data:`NUM_STEPS` = 4 steps of DDGAN's ``vp`` schedule (:func:`vp_alpha_bars`,
:func:`vp_betas`, :class:`SynDiffSchedule`).

Losses (two optimiser groups, stepped by ``fit()`` in this order; draws from ``generator``):

* ``"discriminator"`` (all four): per domain ``softplus(-D(x_{t-1}, x_t, t))`` + R1
  (:data:`R1_GAMMA`) on real pairs and ``softplus(D(x'_{t-1}, x_t, t))`` on posterior samples
  around the frozen generators' ``x0_hat``, plus the PatchGANs' ``softplus(-Dnd(real)) +
  softplus(Dnd(fake))``. Returns ``loss, real, fake, r1, nd_real, nd_fake``.
* ``"generator"`` (all four): ``lambda_gan * (adv_diff + adv_nd) + lambda_cycle * (cycle +
  diff_l1)``; ``cycle`` is the CycleGAN L1, ``diff_l1 = |g_target(c_t, t, nd_t2s(c), z) - c| +
  |g_source(s_t, t, nd_s2t(s), z) - s|`` the diffusive cycle that makes the generators use their
  condition. Returns ``loss, adv_diff, adv_nd, cycle, diff_l1``. ``batch.mask`` is not used.

``translate(source)`` (MRI -> CT) runs ``g_target``'s reverse chain: ``x_4 ~ N(0, I)``, then for
t = 4..1 ``x0_hat = g_target(x_t, t, source, z)``, ``x_{t-1} ~ q(x_{t-1} | x_t, x0_hat)``.
:meth:`SynDiff.translate_reverse` is the CT -> MRI chain of ``g_source``. The sampling options
of ``cfg.sample`` are accepted and ignored.

Ours vs the reference: the medgen UNet of ``cfg.model`` instead of NCSN++ (``z`` through the
condition-vector MLP), R1 at gamma 0.1 every step instead of 1 every 10th, one AdamW per group
(the discriminators at ``options.lr_d`` when it is > 0, else ``train.lr``; the reference's
lr_d = 1e-4 with lr_g = 1.6e-4), the EMA over every network, the non-saturating loss only.
Paper-faithfulness notes: docs/paper_notes.md#syndiff
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from medgen.config import ConfigError, RunConfig, UNetConfig, method_options, register_options
from medgen.data.batch import Batch
from medgen.diffusion.schedules import noise_like
from medgen.methods.adversarial import AdversarialOptions, discriminator_settings
from medgen.methods.base import GroupSettings, Method, reject_unknown_options
from medgen.nn.gan import build_discriminator, build_generator, gan_loss
from medgen.nn.layers import TimeEmbedding
from medgen.nn.unet import Condition, UNet
from medgen.registry import METHODS, register

__all__ = ["SynDiff", "SynDiffOptions", "SynDiffSchedule", "DiffusiveGenerator", "DiffusionDiscriminator", "vp_alpha_bars",
           "vp_betas", "r1_penalty", "minibatch_stddev", "blur_downsample", "disc_downs", "NUM_STEPS",
           "BETA_MIN", "BETA_MAX", "T_EPS", "LATENT_DIM", "R1_GAMMA"]

NUM_STEPS = 4  # T: SynDiff's number of (large) diffusion steps (reference --num_timesteps 4)
BETA_MIN, BETA_MAX = 0.1, 20.0  # DDGAN's vp schedule (reference --beta_min / --beta_max)
T_EPS = 1e-3  # continuous time of step 0 (the reference's eps_small)
LATENT_DIM = 100  # dimension of the generator's latent z (reference --nz)
R1_GAMMA = 0.1  # R1 weight per step: the README's r1_gamma 1 applied every 10th step, on average
LEAK = 0.2  # LeakyReLU slope of the diffusive discriminator
MBSTD_GROUP = 4  # minibatch-stddev group size (at most)
FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)  # blur taps before every 2x downsampling of the discriminator


# --------------------------------------------------------------------------------------
# The 4-step schedule
# --------------------------------------------------------------------------------------
def vp_alpha_bars(steps: int = NUM_STEPS, beta_min: float = BETA_MIN, beta_max: float = BETA_MAX,
                  eps: float = T_EPS) -> torch.Tensor:
    """``alpha_bar_k`` for ``k = 0..steps`` (float64 ``[steps + 1]``, ``alpha_bar_0 = 1``).

    The VP SDE's signal variance ``exp(-u**2 (beta_max - beta_min) / 2 - u beta_min)`` at
    ``u_k = eps + (1 - eps) k / steps``, divided by its value at ``u_0`` (x_0 is the data).
    """
    u = eps + (1.0 - eps) * torch.arange(steps + 1, dtype=torch.float64) / steps
    log_abar = -0.5 * u ** 2 * (beta_max - beta_min) - u * beta_min
    return torch.exp(log_abar - log_abar[0])


def vp_betas(steps: int = NUM_STEPS, beta_min: float = BETA_MIN, beta_max: float = BETA_MAX,
             eps: float = T_EPS) -> torch.Tensor:
    """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` for ``t = 1..steps`` (float64 ``[steps]``)."""
    abar = vp_alpha_bars(steps, beta_min, beta_max, eps)
    return 1.0 - abar[1:] / abar[:-1]


class SynDiffSchedule:
    """Forward process and posterior of SynDiff's ``steps``-step schedule (docs/paper_notes.md#syndiff).

    Timesteps ``t`` are ``LongTensor [B]`` in ``1..steps``; images ``[B, C, *S]``.
    """

    def __init__(self, steps: int = NUM_STEPS, beta_min: float = BETA_MIN, beta_max: float = BETA_MAX,
                 eps: float = T_EPS) -> None:
        self.steps = steps
        abar = vp_alpha_bars(steps, beta_min, beta_max, eps)  # [T+1], index k = step k
        self.alpha_bars = abar[1:]  # [T]: alpha_bar_t, t = 1..T
        self.alpha_bars_prev = abar[:-1]  # [T]: alpha_bar_{t-1}
        self.betas = 1.0 - self.alpha_bars / self.alpha_bars_prev
        one_minus = 1.0 - self.alpha_bars
        self.post_coef_x0 = self.betas * self.alpha_bars_prev.sqrt() / one_minus
        self.post_coef_xt = (1.0 - self.alpha_bars_prev) * (1.0 - self.betas).sqrt() / one_minus
        self.post_var = self.betas * (1.0 - self.alpha_bars_prev) / one_minus

    def _at(self, table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[t - 1]`` as ``[B, 1, ..., 1]`` broadcastable to ``x``, in x's dtype and device."""
        if t.min() < 1 or t.max() > self.steps:
            raise ValueError(f"timesteps must lie in 1..{self.steps}, got {t.min().item()}..{t.max().item()}")
        vals = table.to(device=x.device)[t.to(x.device) - 1].to(x.dtype)
        return vals.view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``; ``t = 0`` entries return x0."""
        t0 = t.clamp_min(1)
        a = self._at(self.alpha_bars, t0, x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        keep = (t == 0).to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
        return torch.where(keep, x0, x_t)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise``."""
        b = self._at(self.betas, t, x_prev)
        return (1 - b).sqrt() * x_prev + b.sqrt() * noise

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, C, *S]`` and variance ``[B, 1, ..]`` of ``q(x_{t-1} | x_t, x0)``."""
        mean = self._at(self.post_coef_x0, t, x_t) * x0 + self._at(self.post_coef_xt, t, x_t) * x_t
        return mean, self._at(self.post_var, t, x_t)

    def posterior_sample(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
        """``x_{t-1} = mean + sqrt(var) noise`` (no noise where ``t = 1``: the sample is ``x0``)."""
        mean, var = self.posterior(x0, x_t, t)
        return mean + var.sqrt() * noise  # var is exactly 0 at t = 1


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------
class DiffusiveGenerator(nn.Module):
    """``G(x_t [B, C, *S], t [B], cond [B, C_cond, *S], z [B, LATENT_DIM]) -> x0_hat [B, C, *S]`` in (-1, 1).

    The medgen UNet of ``model`` with ``in_channels = out_channels = channels``, the condition
    image concatenated to ``x_t`` and ``z`` as its condition vector, followed by Tanh.
    """

    def __init__(self, model: UNetConfig, channels: int, cond_channels: int, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        cfg = dataclasses.replace(model, in_channels=channels, out_channels=channels, cond_image_channels=cond_channels,
                                  cond_vector_dim=latent_dim, cond_tokens_dim=0, skip_residuals=False,
                                  stage_embedding_dim=0)
        self.latent_dim = latent_dim
        self.unet = UNet(cfg)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predict the clean image ``[B, C, *S]``."""
        return torch.tanh(self.unet(x_t, t, Condition(image=cond, vector=z)))


def blur_downsample(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, H // 2, W // 2]``: FIR ``[1,3,3,1] / 8`` blur per axis, stride 2.

    Zero padding of 1 on every side (StyleGAN2's ``downsample_2d`` with this kernel). Written
    as strided slices and adds, separably per axis: a depthwise conv would do the same, but
    its double backward (needed by R1) is several times slower on the CPU.
    """
    w = [v / sum(FIR_KERNEL) for v in FIR_KERNEL]  # 1D taps, sum 1
    for axis in (2, 3):  # H, then W
        xp = F.pad(x, (0, 0, 1, 1) if axis == 2 else (1, 1))  # F.pad lists the last axis first
        n_out = x.shape[axis] // 2  # as a k4 s2 conv with padding 1: floor(n / 2)
        every_other = (slice(None),) * axis + (slice(None, None, 2),)
        # output j = sum_k w_k * padded[2j + k]: the k-th tap is padded[k], padded[k + 2], ...
        x = sum(wk * xp.narrow(axis, k, 2 * n_out - 1)[every_other] for k, wk in enumerate(w))
    return x


def minibatch_stddev(h: torch.Tensor, group: int = MBSTD_GROUP) -> torch.Tensor:
    """Append the minibatch-stddev feature: ``[B, C, H, W] -> [B, C + 1, H, W]``.

    Samples are split into groups of ``g`` = the largest divisor of B that is <= ``group``
    (sample ``i`` is in group ``i mod (B / g)``, as StyleGAN2's view); the feature of a sample
    is the mean over channels and pixels of the per-element std within its group.
    """
    b, c, hh, ww = h.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = h.view(g, b // g, c, hh, ww)
    std = torch.sqrt(y.var(0, unbiased=False) + 1e-8)  # [B/g, C, H, W]
    feat = std.mean(dim=(1, 2, 3)).view(b // g, 1, 1, 1)  # [B/g, 1, 1, 1]
    return torch.cat([h, feat.repeat(g, 1, hh, ww)], dim=1)


class _DownBlock(nn.Module):
    """``(x, temb) -> (conv2(down(act(conv1(act(x)) + W temb))) + skip(down(x))) / sqrt 2``."""

    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.dense_t = nn.Linear(t_dim, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as its (downsampled) skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, LEAK)) + self.dense_t(temb)[:, :, None, None]
        h = self.conv2(blur_downsample(F.leaky_relu(h, LEAK)))
        return (h + self.skip(blur_downsample(x))) / math.sqrt(2.0)


def disc_downs(image_size: int) -> int:
    """Down blocks of the diffusive discriminator: ``clamp(floor(log2(image_size / 4)), 1, 6)`` (6 at 256 px)."""
    return int(min(6, max(1, math.floor(math.log2(max(image_size, 1) / 4)))))


class DiffusionDiscriminator(nn.Module):
    """Time-conditioned DDGAN discriminator ``D(x_prev, x_t, t) -> logits [B]`` (docs/paper_notes.md#syndiff).

    ``x_prev``, ``x_t``: ``[B, channels, H, W]``; ``t``: ``[B]`` step indices. ``ndf`` is the
    base width, ``downs`` the number of 2x down blocks.
    """

    def __init__(self, channels: int, ndf: int = 64, downs: int = 6) -> None:
        super().__init__()
        if downs < 1 or ndf < 1:
            raise ValueError(f"DiffusionDiscriminator needs downs >= 1 and ndf >= 1, got {downs}, {ndf}")
        self.channels, self.t_dim = channels, 4 * ndf
        self.t_embed = TimeEmbedding(self.t_dim, self.t_dim)
        widths = [2 * ndf] + [ndf * min(2 ** (i + 2), 8) for i in range(downs)]
        self.stem = nn.Conv2d(2 * channels, widths[0], 1)
        self.blocks = nn.ModuleList(_DownBlock(widths[i], widths[i + 1], self.t_dim) for i in range(downs))
        self.final_conv = nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1)
        self.end_linear = nn.Linear(widths[-1], 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of ``(x_prev, x_t)`` being a real denoising pair at step ``t``."""
        if x_prev.shape != x_t.shape or x_prev.ndim != 4 or x_prev.shape[1] != self.channels:
            raise ValueError(f"DiffusionDiscriminator: x_prev {tuple(x_prev.shape)} and x_t {tuple(x_t.shape)} "
                             f"must both be [B, {self.channels}, H, W]")
        temb = F.leaky_relu(self.t_embed(t), LEAK)  # [B, 4 ndf]
        h = self.stem(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        h = F.leaky_relu(self.final_conv(minibatch_stddev(h)), LEAK)
        return self.end_linear(h.sum(dim=(2, 3))).squeeze(1)  # global sum pooling, then linear


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``mean_b ||d sum(logits) / d inputs_b||^2`` (differentiable, for the R1 regulariser).

    ``inputs`` ``[B, ...]`` must require grad and ``logits`` depend on it.
    """
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------
@register_options("syndiff")
@dataclasses.dataclass(frozen=True)
class SynDiffOptions(AdversarialOptions):
    """SynDiff's options: the non-diffusive CycleGAN's generators / PatchGANs (:class:`AdversarialOptions`;
    ``disc_channels`` also widens the diffusive discriminators) and the loss weights.

    Defaults: the reference code (``resnet_6blocks``: 2 down convs, 6 blocks, no dropout;
    70x70 PatchGANs; non-saturating loss; cycle weight 0.5).
    """

    generator: str = "resnet"  # the non-diffusive generators: "resnet" (the reference's), "unet" or "sa_unet"
    gen_downs: int = 2  # strided down convs of the ResNet generator (the reference's resnet_6blocks: 2)
    res_blocks: int = 6  # residual blocks of the ResNet generator
    dropout: float = 0.0  # generator dropout
    lambda_cycle: float = 0.5  # weight of the cycle L1 and of the diffusive generators' L1 (reference lambda_l1_loss)

    # what the presets wrote in the old `gan` section for fields SynDiff never read
    legacy_gan = {"lambda_l1": 0.0, "lambda_ssim": 0.0, "lambda_nce": 0.0}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check("gan_loss", self.gan_loss == "vanilla", "must be 'vanilla' (the non-saturating loss with R1)")
        self.check("lambda_cycle", self.lambda_cycle >= 0, "must be >= 0")


@register(METHODS, "syndiff")
class SynDiff(Method):
    """Unpaired adversarial diffusion translator (see the module docstring).

    Attributes: ``nd_s2t``, ``nd_t2s`` (non-diffusive generators), ``dnd_target``,
    ``dnd_source`` (their PatchGANs), ``g_target``, ``g_source`` (diffusive generators),
    ``d_target``, ``d_source`` (diffusive discriminators), ``schedule`` (:class:`SynDiffSchedule`).
    """

    GENERATORS = ("nd_s2t", "nd_t2s", "g_target", "g_source")  # attribute names, "generator" group
    DISCRIMINATORS = ("d_target", "d_source", "dnd_target", "dnd_source")  # "discriminator" group

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.options = g = method_options(config, SynDiffOptions)
        _validate(config)
        m = config.model
        cs, ct = m.cond_image_channels, m.out_channels
        self.source_channels, self.target_channels = cs, ct
        self.schedule = SynDiffSchedule()
        self.nd_s2t = build_generator(g, in_channels=cs, out_channels=ct, spatial_dims=2, model=m)
        self.nd_t2s = build_generator(g, in_channels=ct, out_channels=cs, spatial_dims=2, model=m)
        self.dnd_target = build_discriminator(g, in_channels=ct, spatial_dims=2)
        self.dnd_source = build_discriminator(g, in_channels=cs, spatial_dims=2)
        self.g_target = DiffusiveGenerator(m, ct, cs)
        self.g_source = DiffusiveGenerator(m, cs, ct)
        from medgen.data.datasets import spatial_shape  # lazy: the datasets need the phantoms

        downs = disc_downs(min(spatial_shape(config.data)))  # the shorter side (H != W allowed)
        self.d_target = DiffusionDiscriminator(ct, g.disc_channels, downs)
        self.d_source = DiffusionDiscriminator(cs, g.disc_channels, downs)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"discriminator"`` (the four discriminators), then ``"generator"`` (the four generators)."""
        def params(names: tuple[str, ...]) -> list[nn.Parameter]:
            return [p for n in names for p in getattr(self, n).parameters() if p.requires_grad]
        return {"discriminator": params(self.DISCRIMINATORS), "generator": params(self.GENERATORS)}

    def optim_settings(self) -> dict[str, GroupSettings]:
        """The discriminators at ``options.lr_d`` when it is > 0 (else both groups at ``train.lr``)."""
        return discriminator_settings(self.options)

    # ---- checks -------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4:
            raise ValueError(f"syndiff: {what} {tuple(x.shape)} must be [B, C, H, W] (2D only)")
        if x.shape[1] != channels:
            raise ValueError(f"syndiff: {what} has {x.shape[1]} channels, expected {channels}")

    def _check_batch(self, batch: Batch) -> None:
        if batch.target is None:
            raise ValueError("syndiff: training needs batches with a target (the unpaired target image)")
        self._check_image(batch.source, self.source_channels, "source (model.cond_image_channels)")
        self._check_image(batch.target, self.target_channels, "target (model.out_channels)")
        if batch.target.shape[0] != batch.source.shape[0] or batch.target.shape[2:] != batch.source.shape[2:]:
            raise ValueError(f"syndiff: source {tuple(batch.source.shape)} and target {tuple(batch.target.shape)} "
                             "must have the same batch size and image size")

    # ---- random draws -------------------------------------------------------------------
    def _draw_t(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform steps ``[B]`` in 1..T on x's device."""
        device = generator.device if generator is not None else x.device
        return torch.randint(1, self.schedule.steps + 1, (x.shape[0],), generator=generator, device=device).to(x.device)

    def _draw_z(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return noise_like(x.new_empty(x.shape[0], LATENT_DIM), generator)

    def _denoise_pair(self, net: DiffusiveGenerator, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, x'_{t-1})``: the generator's clean estimate and a posterior sample around it."""
        x0_hat = net(x_t, t, cond, self._draw_z(x_t, generator))
        return x0_hat, self.schedule.posterior_sample(x0_hat, x_t, t, noise_like(x_t, generator))

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: Batch, group: str,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses of ``group`` on an unpaired ``batch`` (source ``[B, C_s, H, W]``, target ``[B, C_t, H, W]``).

        ``"discriminator"`` -> ``{"loss", "real", "fake", "r1", "nd_real", "nd_fake"}``;
        ``"generator"`` -> ``{"loss", "adv_diff", "adv_nd", "cycle", "diff_l1"}``. Steps, noise
        and latents come from ``generator`` (the global RNG when None).
        """
        self._check_batch(batch)
        if group == "discriminator":
            return self._discriminator_step(batch.source, batch.target, generator)
        if group == "generator":
            return self._generator_step(batch.source, batch.target, generator)
        raise ValueError(f"syndiff has optimiser groups 'discriminator' and 'generator', got '{group}'")

    def _discriminator_step(self, s: torch.Tensor, c: torch.Tensor,
                            generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # the non-diffusive estimates: fakes for Dnd and conditions for G
            s_est, c_est = self.nd_t2s(c), self.nd_s2t(s)
        real = fake = r1 = 0.0
        for x0, cond, net, disc in ((c, s_est, self.g_target, self.d_target), (s, c_est, self.g_source, self.d_source)):
            # 1. a real denoising pair (x_{t-1}, x_t) and its R1 penalty
            t = self._draw_t(x0, generator)
            x_prev = self.schedule.q_sample(x0, t - 1, noise_like(x0, generator)).requires_grad_(True)
            x_t = self.schedule.q_step(x_prev.detach(), t, noise_like(x0, generator))
            logits = disc(x_prev, x_t, t)
            real = real + F.softplus(-logits).mean()
            r1 = r1 + r1_penalty(logits, x_prev)
            # 2. a fake pair: x'_{t-1} from the posterior around the frozen generator's x0_hat
            with torch.no_grad():
                _, fake_prev = self._denoise_pair(net, x_t, t, cond, generator)
            fake = fake + F.softplus(disc(fake_prev, x_t, t)).mean()
        # 3. the non-diffusive PatchGANs
        nd_real = gan_loss(self.dnd_target(c), True) + gan_loss(self.dnd_source(s), True)
        nd_fake = gan_loss(self.dnd_target(c_est), False) + gan_loss(self.dnd_source(s_est), False)
        loss = real + fake + 0.5 * R1_GAMMA * r1 + nd_real + nd_fake
        return {"loss": loss, "real": real.detach(), "fake": fake.detach(), "r1": r1.detach(),
                "nd_real": nd_real.detach(), "nd_fake": nd_fake.detach()}

    def _generator_step(self, s: torch.Tensor, c: torch.Tensor,
                        generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        g = self.options
        # 1. non-diffusive estimates and their cycles
        s_est, c_est = self.nd_t2s(c), self.nd_s2t(s)  # fake MRI of the real CT, fake CT of the real MRI
        cycle = (self.nd_s2t(s_est) - c).abs().mean() + (self.nd_t2s(c_est) - s).abs().mean()
        adv_nd = gan_loss(self.dnd_target(c_est), True) + gan_loss(self.dnd_source(s_est), True)
        # 2. diffusive generators conditioned on the estimate of the other domain
        adv_diff = diff_l1 = 0.0
        for x0, cond, net, disc in ((c, s_est, self.g_target, self.d_target), (s, c_est, self.g_source, self.d_source)):
            t = self._draw_t(x0, generator)
            x_t = self.schedule.q_sample(x0, t, noise_like(x0, generator))
            x0_hat, fake_prev = self._denoise_pair(net, x_t, t, cond, generator)
            adv_diff = adv_diff + F.softplus(-disc(fake_prev, x_t, t)).mean()
            diff_l1 = diff_l1 + (x0_hat - x0).abs().mean()
        loss = g.lambda_gan * (adv_diff + adv_nd) + g.lambda_cycle * (cycle + diff_l1)
        return {"loss": loss, "adv_diff": adv_diff.detach(), "adv_nd": adv_nd.detach(), "cycle": cycle.detach(),
                "diff_l1": diff_l1.detach()}

    # ---- inference ----------------------------------------------------------------------
    def _reverse_chain(self, net: DiffusiveGenerator, cond: torch.Tensor, channels: int,
                       generator: torch.Generator | None, callback: Callable[[dict], None] | None) -> torch.Tensor:
        """``x_T ~ N(0, I)`` -> ``x_0`` through the T posterior steps around ``net``'s estimates."""
        x = noise_like(cond.new_empty(cond.shape[0], channels, *cond.shape[2:]), generator)
        was_training = net.training
        net.eval()
        try:
            for i, step in enumerate(range(self.schedule.steps, 0, -1)):
                t = torch.full((cond.shape[0],), step, dtype=torch.long, device=cond.device)
                x0_hat, x = self._denoise_pair(net, x, t, cond, generator)
                if callback is not None:
                    callback({"i": i, "n": self.schedule.steps, "t": step, "x": x, "x0": x0_hat})
        finally:
            net.train(was_training)
        return x

    def _check_options(self, options: dict[str, Any]) -> None:
        reject_unknown_options("syndiff", options)

    @torch.no_grad()
    def translate(self, source: torch.Tensor, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, **options: Any) -> torch.Tensor:
        """Source (MRI) ``[B, C_s, H, W]`` -> target (CT) ``[B, model.out_channels, H, W]`` by ``g_target``'s chain.

        Noise and latents come from ``generator``; ``callback`` gets ``{i, n, t, x, x0}`` per step.
        """
        self._check_options(options)
        self._check_image(source, self.source_channels, "source (model.cond_image_channels)")
        return self._reverse_chain(self.g_target, source, self.target_channels, generator, callback)

    @torch.no_grad()
    def translate_reverse(self, target: torch.Tensor, *, generator: torch.Generator | None = None,
                          callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Target (CT) ``[B, C_t, H, W]`` -> source (MRI) ``[B, C_s, H, W]`` by ``g_source``'s chain."""
        self._check_image(target, self.target_channels, "target (model.out_channels)")
        return self._reverse_chain(self.g_source, target, self.source_channels, generator, callback)


def _validate(config: RunConfig) -> None:
    """One-line :class:`ConfigError` for settings syndiff cannot run (its options check themselves)."""
    m = config.model
    if m.cond_image_channels <= 0:
        raise ConfigError("syndiff needs model.cond_image_channels > 0 (the number of source channels)")
    if m.spatial_dims != 2:
        raise ConfigError(f"syndiff is 2D only, got model.spatial_dims={m.spatial_dims}")
