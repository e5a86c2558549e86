"""Presets of the spine MRI -> CT paper (mri_to_ct_spine_ddim.txt): one task per model.

Tasks are ``mri_to_ct/<model>`` (:data:`MODELS`); the contrast is ``data.source`` (``t2w``
by default, ``t1w`` via ``--set data.source=t1w`` or :func:`for_contrast`).

What the paper fixes and what the ``paper`` preset therefore uses
-----------------------------------------------------------------
* Data: CT as ``HU / 1000`` clipped to [-1, 1] (the phantom's ``ct`` modality map), MRI
  rescaled linearly to [-1, 1], colour jitter 0.2 on the MRI (``mri_jitter``), 256 x 256
  sagittal crops in 2D, 1 mm isotropic 128 x 128 x 32 patches in 3D, CT rigidly registered
  onto the MRI with two landmarks per vertebra (``registration="two"``). The 3D elastic
  deformation (x10 data) is the ``elastic3d`` recipe, used for the 3D models.
* DDIM (supplement "Denoising Diffusion"): T = 1000 training steps, cosine schedule (Nichol &
  Dhariwal), L1 loss on the network output, prediction of the noise (``noise`` mode,
  ``prediction="eps"``) or of the image (``image`` mode, ``prediction="x0"``), predicted x0
  clamped to [-1, 1], learning rate 2e-5, batch 8 (2D) / 2 (3D) ("Computational
  efficiency"); sampling DDIM with t = 20 (2D) / 25 (3D), eta = 1, w = 0.
* SA-UNet: "model parameters copied from lucidrains/denoising-diffusion-pytorch", base 64
  channels. That UNet has channel multipliers (1, 2, 4, 8), two residual blocks per level,
  linear attention at every level and full attention in the middle. medgen's UNet has one
  kind of (full) self-attention, so the ``paper`` preset puts it at the two coarsest
  levels (where full attention is affordable at 256 px) -- the closest fit, not identical.
* 3D (section "3D Image Translation with Diffusion", after Bieder et al.): no attention,
  additive skip connections, coordinate ramps concatenated to the input.

Where the paper is silent (our choices): EMA of the weights (the code base depends on
``ema-pytorch``; decay 0.995 as lucidrains' trainer), AdamW with betas (0.9, 0.99), warm-up 0,
no condition dropout -- the paper states that w can be used "on a DDPM trained network without
requiring retraining", i.e. the black-image unconditional branch was not trained separately.

Smaller presets keep every choice above and shrink size and training: ``ci`` (32 px, a few
steps, for tests), ``smoke`` (32 px, minutes on 2 CPU cores, for ``make reproduce``), ``cpu``
(64 px, the shipped demo checkpoints).
"""
from __future__ import annotations

from dataclasses import replace

from medgen.config import (DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig,
                           register_presets)
from medgen.methods.cut import CUTOptions
from medgen.methods.pix2pix import Pix2PixOptions
from medgen.methods.syndiff import SynDiffOptions

__all__ = ["MODELS", "MEASURERS", "CONTRASTS", "task", "for_contrast"]

CONTRASTS = ("t1w", "t2w")  # the paper's two MRI inputs (data.source)
TASK_PREFIX = "mri_to_ct/"

# Per preset: image size, 3D depth, data counts, UNet widths and training length (2D diffusion).
_SIZE = {"ci": 32, "smoke": 32, "cpu": 64, "paper": 256}
_DEPTH_3D = {"ci": 16, "smoke": 16, "cpu": 32, "paper": 32}
_N = {"ci": (8, 4), "smoke": (512, 16), "cpu": (2048, 32), "paper": (20000, 128)}  # (n_train, n_test) subjects
_CHANNELS = {"ci": (8, 16), "smoke": (16, 32, 64), "cpu": (32, 64, 128), "paper": (64, 128, 256, 512)}
_ATTENTION = {"ci": (False, True), "smoke": (False, False, True), "cpu": (False, False, True),
              "paper": (False, False, True, True)}
_STEPS = {"ci": 2, "smoke": 300, "cpu": 3000, "paper": 200000}
_BATCH = {"ci": 4, "smoke": 8, "cpu": 8, "paper": 8}
_LR = {"ci": 2e-5, "smoke": 5e-4, "cpu": 2e-4, "paper": 2e-5}  # paper lr 2e-5 needs days; short runs use more


def _data(preset: str, *, volume: bool = False) -> DataConfig:
    n_train, n_test = _N[preset]
    return DataConfig(
        dataset="volume" if volume else "paired", phantom="spine_sagittal", source="t2w", target="ct",
        image_size=_SIZE[preset] if not volume else min(_SIZE[preset], 128),
        depth=_DEPTH_3D[preset] if volume else 0,
        n_train=n_train // (8 if volume else 1), n_test=n_test, registration="two",
        augment="mri_jitter+elastic3d" if volume else "mri_jitter",
    )


def _ddim(preset: str, prediction: str, *, volume: bool = False) -> RunConfig:
    """DDIM noise (``eps``) or image (``x0``) mode, 2D or 3D (module docstring)."""
    ch = _CHANNELS[preset] if not volume else _CHANNELS[preset][:3]
    model = UNetConfig(spatial_dims=3 if volume else 2, channels=ch,
                       attention_levels=(False,) * len(ch) if volume else _ATTENTION[preset],
                       layers_per_block=2 if preset == "paper" else 1, norm_groups=4 if preset == "ci" else 8,
                       num_heads=2 if preset == "ci" else 4, cond_image_channels=1,
                       skip_mode="add" if volume else "concat", position_ramps=volume)
    steps = _STEPS[preset] // (2 if volume and preset != "ci" else 1)
    return RunConfig(
        method="cddpm", data=_data(preset, volume=volume), model=model,
        diffusion=DiffusionConfig(schedule="cosine", timesteps=100 if preset == "ci" else 1000,
                                  prediction=prediction, loss="l1", cond_drop_prob=0.0, null_value=-1.0,
                                  clip_x0=True),
        sample=SampleConfig(sampler="ddim", steps=(25 if volume else 20) if preset != "ci" else 4, eta=1.0,
                            guidance_scale=0.0),
        train=TrainConfig(steps=steps, batch_size=2 if volume and preset == "paper" else _BATCH[preset],
                          lr=_LR[preset], betas=(0.9, 0.99), ema_decay=0.0 if preset == "ci" else 0.995,
                          warmup_steps=0 if preset in ("ci", "paper") else 20,
                          log_every=1 if preset == "ci" else 10, amp=preset == "paper"),
    )


# GANs: generator width per preset, training length and batch (paper: batch 64 for pix2pix).
_GEN_CHANNELS = {"ci": 8, "smoke": 16, "cpu": 32, "paper": 64}
_GAN_STEPS = {"ci": 2, "smoke": 300, "cpu": 3000, "paper": 100000}
_GAN_BATCH = {"ci": 4, "smoke": 8, "cpu": 16, "paper": 64}


def _pix2pix(preset: str, generator: str, *, volume: bool = False) -> RunConfig:
    """Pix2Pix with the pix2pix UNet (``unet``) or the SA-UNet (``sa_unet``) generator, 2D or 3D.

    As the paper's reference code trains it: LSGAN, ``10 * (L1 + 1 * (1 - SSIM))`` (i.e.
    ``lambda_l1 = lambda_ssim = 10``), Adam betas (0.5, 0.999), no EMA; the UNet has 5 down/up
    blocks and 20 % dropout (supplement). Thin volumes get fewer down blocks / discriminator
    layers where 5 / 3 do not fit (every side must be divisible by 2**downs; the 3-layer
    PatchGAN needs >= 24 voxels per side).
    """
    base = _ddim(preset, "x0", volume=volume)   # same data and SA-UNet widths as the diffusion models
    depth = _DEPTH_3D[preset] if volume else 0
    downs = 5 if not volume else min(5, (min(depth, base.data.image_size)).bit_length() - 1)
    options = Pix2PixOptions(generator=generator, gen_channels=_GEN_CHANNELS[preset], gen_downs=downs,
                             res_blocks=8, dropout=0.2, disc_channels=_GEN_CHANNELS[preset],
                             disc_layers=3 if not volume or depth >= 24 else 2, gan_loss="lsgan",
                             lambda_gan=1.0, lambda_l1=10.0, lambda_ssim=10.0, lr_d=0.0)
    train = replace(base.train, steps=_GAN_STEPS[preset] // (2 if volume and preset != "ci" else 1),
                    batch_size=2 if volume and preset == "paper" else _GAN_BATCH[preset],
                    lr=2e-4 if preset != "ci" else 2e-4, betas=(0.5, 0.999), ema_decay=0.0)
    return replace(base, method="pix2pix", options=options, train=train)


def _cut(preset: str, generator: str) -> RunConfig:
    """CUT (unpaired, PatchNCE) with CUT's ResNet (one down/up conv, 8 residual blocks, no dropout,
    NCE on layers 0, 4, 8, 12, 16) or the SA-UNet generator; batch 32, LSGAN (supplement).

    Trained on the ``unpaired`` kind: MRI and CT of the train split come from disjoint patients;
    the test split stays paired (and registered) so it can be scored.
    """
    base = _pix2pix(preset, generator)
    p2p = base.options
    options = CUTOptions(generator=generator, gen_channels=p2p.gen_channels, gen_downs=1, res_blocks=8, dropout=0.0,
                         disc_channels=p2p.disc_channels, disc_layers=p2p.disc_layers, gan_loss="lsgan",
                         lambda_gan=1.0, lr_d=0.0, lambda_nce=1.0, nce_layers=(0, 4, 8, 12, 16), nce_idt=True,
                         nce_temperature=0.07, nce_patches=256)
    train = replace(base.train, batch_size=32 if preset == "paper" else base.train.batch_size)
    return replace(base, method="cut", data=replace(base.data, dataset="unpaired"), options=options, train=train)


def _syndiff(preset: str) -> RunConfig:
    """SynDiff as its reference code trains it (icon-lab/SynDiff): non-diffusive CycleGAN with the
    ``resnet_6blocks`` generator (2 down convs, 6 blocks) and 70x70 PatchGANs, non-saturating GAN
    loss with R1, 4 diffusion steps, L1 cycle weight 0.5, Adam betas (0.5, 0.9), no gradient
    clipping; unpaired train split. The diffusive generator is the SA-UNet of ``model``."""
    base = _cut(preset, "resnet")
    widths = {"ci": 8, "smoke": 16, "cpu": 16, "paper": 64}[preset]
    options = SynDiffOptions(generator="resnet", gen_channels=widths, gen_downs=2, res_blocks=6, dropout=0.0,
                             disc_channels=widths, disc_layers=3, gan_loss="vanilla", lambda_gan=1.0, lr_d=0.0,
                             lambda_cycle=0.5)
    train = replace(base.train, batch_size=4 if preset != "ci" else 2, betas=(0.5, 0.9), grad_clip=0.0,
                    lr=1.6e-4 if preset == "paper" else base.train.lr)
    return replace(base, method="syndiff", options=options, train=train)


_BUILDERS = {
    "ddim_noise": lambda p: _ddim(p, "eps"),
    "ddim_image": lambda p: _ddim(p, "x0"),
    "ddim_noise_3d": lambda p: _ddim(p, "eps", volume=True),
    "ddim_image_3d": lambda p: _ddim(p, "x0", volume=True),
    "pix2pix_unet": lambda p: _pix2pix(p, "unet"),
    "pix2pix_sa_unet": lambda p: _pix2pix(p, "sa_unet"),
    "pix2pix_3d": lambda p: _pix2pix(p, "unet", volume=True),
    "cut_resnet": lambda p: _cut(p, "resnet"),
    "cut_sa_unet": lambda p: _cut(p, "sa_unet"),
    "syndiff": _syndiff,
}
MODELS = tuple(_BUILDERS)  # model names; the task of model m is "mri_to_ct/m"


def task(model: str) -> str:
    """The preset task name of ``model`` (e.g. ``"mri_to_ct/ddim_image"``)."""
    if model not in _BUILDERS:
        raise ValueError(f"unknown mri_to_ct model '{model}' (choose from {', '.join(MODELS)})")
    return TASK_PREFIX + model


def for_contrast(cfg: RunConfig, contrast: str) -> RunConfig:
    """``cfg`` with MRI contrast ``contrast`` (``t1w`` / ``t2w``) as the source."""
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast '{contrast}' (choose from {', '.join(CONTRASTS)})")
    return replace(cfg, data=replace(cfg.data, source=contrast))


def _segmenter(preset: str, *, volume: bool = False) -> RunConfig:
    """The downstream measurer (a stand-in for the paper's CT segmentation algorithm)."""
    from medgen.methods.segmenter import segmenter_presets

    return segmenter_presets(volume)[preset]


_BUILDERS["segmenter"] = lambda p: _segmenter(p)
_BUILDERS["segmenter_3d"] = lambda p: _segmenter(p, volume=True)
MODELS = tuple(_BUILDERS)
MEASURERS = ("segmenter", "segmenter_3d")  # not translators: they segment CT (medgen.methods.segmenter)

# `cpu` training steps sized by the learning curves (reports/benchmark/learning_curves.md, one thread):
# paired 2D models level off by 250-500 steps (pix2pix_unet 19.39 dB / Dice 0.950 at 500 vs 0.950 shipped at
# 3000; ddim_image 0.947 at 500 vs 0.932), CUT ResNet gains 0.004 Dice from 100 to 150 steps at 4.9 s / step.
# Models not listed keep the preset's steps (ddim_image / pix2pix_unet / segmenter: shipped at them;
# ddim_noise: 3000 like ddim_image, so the image-vs-noise comparison gets equal budgets).
CPU_STEPS = {
    "pix2pix_sa_unet": 500,  # the pix2pix_unet curve (same objective, other generator; its own curve not measured)
    "cut_resnet": 250,       # 2 epochs; curve measured to 150 steps
    "cut_sa_unet": 250,      # as cut_resnet (not measured; 6.4-6.7 s / step)
    "syndiff": 250,          # in no finding (a table row, one PSNR test); not measured
}


def _build_preset(model: str, preset: str) -> RunConfig:
    cfg = _BUILDERS[model](preset)
    if preset == "cpu" and model in CPU_STEPS:
        cfg = replace(cfg, train=replace(cfg.train, steps=CPU_STEPS[model]))
    return cfg


for _model in _BUILDERS:
    register_presets(task(_model), {p: _build_preset(_model, p) for p in ("ci", "smoke", "cpu", "paper")})
