"""Presets of the lung-ultrasound paper (lung_us_diffusion.txt): the prior and the supervised baselines.

Tasks (:data:`TASKS`)
---------------------
* ``lung_us/prior`` -- method ``ddpm`` (:class:`medgen.methods.ddpm.UnconditionalDDPM`): the
  paper's unconditional DDPM on 2D lung sections. Data: the ``lung`` phantom, dataset kind
  ``paired`` with ``source="ct"`` and no target, i.e. single images (the CT-like section in
  model range, ``HU`` mapped by the ``ct`` modality); ``ddpm`` trains on the source when a
  dataset has no target. Measurements for DPS are made by ``medgen.inverse`` operators.
* ``lung_us/conditional_us_linear`` and ``lung_us/conditional_us_acoustic`` -- method ``cddpm``:
  the supervised conditional baseline of the guided reconstruction (issue 6, section 3; the
  paper never trained one). Source = the measurement modality (``us_linear`` /
  ``us_acoustic``, ``[H, ceil(W / 2)]`` on the scan-line grid, ``ultrasound.STRIDE = (1, 2)``)
  resized to the ``[H, W]`` image grid (``data.source_resize=True``, bilinear,
  :func:`medgen.data.datasets.resize_source`) and channel-concatenated to ``x_t``; target
  ``ct``. Same UNet, schedule and training as the prior at each preset, plus the condition
  channel, and without learned variances (a plain eps-MSE baseline; ``cddpm`` samples with
  DDIM, which does not use them).

The ``paper`` preset of the prior (Table 1 through improved-diffusion's ``script_util``)
------------------------------------------------------------------------------------------
The paper trained with openai/improved-diffusion and lists: diffusion steps 4000, image
size 256, number of channels 96, 2 residual blocks, attention resolutions 1, learning rate
1e-4, batch size 128. What that means in improved-diffusion's ``create_model`` and what we use:

* ``channel_mult`` for 256 px is ``(1, 1, 2, 2, 4, 4)``, so the channels are
  ``(96, 96, 192, 192, 384, 384)`` (``model.channels``); ``num_res_blocks = 2`` residual
  blocks per level on the way down and 3 on the way up (``layers_per_block=2``; medgen's UNet
  adds one on the up path as improved-diffusion does).
* "attention resolutions 1": improved-diffusion turns each entry ``r`` into the downsampling
  factor ``image_size // r`` = 256 // 1 = 256 at which blocks get attention; six levels only
  reach a factor of 32, so **no level has attention**, while improved-diffusion's middle block
  always has one. Hence ``attention_levels`` all False and ``mid_attention="on"``.
* Its defaults for everything Table 1 does not list: ``num_heads=4``, ``dropout=0.0``,
  GroupNorm with 32 groups (``norm_groups=32``), AdamW with ``weight_decay=0.0`` and default
  betas, no gradient clipping (``grad_clip=0``), a constant learning rate (``lr_anneal_steps=0``),
  EMA rate 0.9999, ``predict_xstart=False`` (``prediction="eps"``), plain MSE loss.
* Flags the paper does not list (our choice, documented as such): improved-diffusion's README
  recommends ``--noise_schedule cosine --learn_sigma True`` (with ``--diffusion_steps 4000``)
  and the paper says it used that repository's recipe, so ``schedule="cosine"``,
  ``learn_sigma=True`` (the hybrid loss ``L_simple + 0.001 L_vlb``: ``vlb_weight=0.001``) and
  ``model.out_channels = 2`` (mean and variance-interpolation channels). Training length is not
  stated: ``train.steps = 100000`` (ours); bf16 autocast on CUDA (``amp``).
* Data: ``n_train = 4500`` (the paper's 4,500 images) at 256 px; ``n_test = 1000`` held-out
  images for FID / KID and the calibrated memorization flag rate (the paper had none).
* Generation: the paper generated 1,000 images (:data:`N_GENERATE`) with improved-diffusion's
  sampler, i.e. the full 4,000-step ancestral DDPM with learned variances, so ``paper``
  samples with ``sampler="ddpm", steps=4000``. That is hours even on a GPU; improved-diffusion
  supports respaced sampling (``--timestep_respacing``), and ``--set sample.sampler=ddim
  sample.steps=50`` is the fast variant.

Scaled presets (same recipe, smaller and shorter; our choices)
---------------------------------------------------------------
=========  ======  ===========================  =====  ======  =====  ==========  ===========
preset     size    channels (improved-diff.     res    batch   steps  lr          sampling
                   mult at that size)           blocks
=========  ======  ===========================  =====  ======  =====  ==========  ===========
ci         32 px   (8, 16)                      1      4       2      1e-4        DDIM 4
smoke      32 px   (32, 64, 64, 64) = 32 x      1      8       800    5e-4, cos.  DDIM 50
                   (1, 2, 2, 2)
cpu        64 px   (32, 64, 96, 128) = 32 x     1      8       2500   2e-4, cos.  DDPM 100
                   (1, 2, 3, 4)
paper      256 px  (96, 96, 192, 192, 384, 384) 2      128     100k   1e-4 const  DDPM 4000
=========  ======  ===========================  =====  ======  =====  ==========  ===========

Every preset keeps T = 4000, the cosine schedule, eps prediction, MSE, learned variances,
middle-block-only attention and ``N_GENERATE`` images. Sampling at smoke / cpu is the paper's
ancestral DDPM with the learned variances over 100 respaced steps (ci: 4), since 4000 steps are
far too slow on a CPU. Measured with the shipped cpu prior (32 images, seed 0, against 256
held-out sections: category shares 36 / 39 / 25 %, mean aeration 0.67, mean |vertical
gradient| 0.048): DDPM-100 gives 38 / 53 / 9 %, aeration 0.63, KS p = 0.34, gradient 0.050;
DDPM-50 47 / 44 / 9 %, p = 0.14; DDIM-50 with eta 1 50 / 47 / 3 %, p = 0.016; DDIM-50 with eta 0
(the first choice here) 75 / 25 / 0 %, aeration 0.44, p = 2e-6, gradient 0.088 (residual noise:
samples too dense and grainy); DPM-Solver++ 2M-20 69 / 9 / 22 %, p = 7e-5, gradient 0.14. The
deterministic solvers stay in ``medgen.diffusion`` (and the speed benchmark) but not as defaults. Short runs use a higher
learning rate with 5 % linear warm-up and cosine decay, gradient clipping at 1 and EMA 0.999
(smoke 0.99): an EMA of 0.9999 averages over ~10^4 steps, longer than these runs. ``norm_groups``
is 8 (4 at ci) where 32 groups would leave one channel per group.

Measured on the 2-core machine (one training step with AdamW and clipping, lung batches
rendered beforehand; the machine was never idle while measuring, another job held about one
core): ``cpu`` prior, batch 8 at 64 px, 1 thread 0.72-0.77 s/step; 2 threads could not be
measured fairly (7-9 s while the other core was busy: thread contention); rendering 8 lung
sections at 64 px takes ~0.02 s. ``smoke``: 0.22-0.24 s/step at 1 thread (800 steps ~3 min).
2500 ``cpu`` steps are therefore ~31 min at 1 thread and an estimated ~20 min on 2 idle
cores. The ``cpu`` prior has 3.48 M parameters (7.0 MB in fp16; the 20 MB limit of a shipped
checkpoint would allow ~10 M, but training time, not size, is the binding constraint).
DDIM-50 generation with it: ~0.56 images/s at 1 thread under load (256 images ~8 min).
"""
from __future__ import annotations

from dataclasses import replace

from medgen.config import (DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig,
                           register_presets)

__all__ = ["TASKS", "PRIOR", "CONDITIONAL", "MEASUREMENTS", "N_GENERATE", "DPS_SCALE", "PRESETS", "task", "build"]

PRESETS = ("ci", "smoke", "cpu", "paper")
PRIOR = "lung_us/prior"
MEASUREMENTS = ("us_linear", "us_acoustic")  # the lung phantom's two ultrasound modalities / operators
CONDITIONAL = {m: f"lung_us/conditional_{m}" for m in MEASUREMENTS}  # measurement -> task
TASKS = (PRIOR, *CONDITIONAL.values())

N_GENERATE = {"ci": 8, "smoke": 64, "cpu": 256, "paper": 1000}  # images generated per preset (paper: 1000)
TIMESTEPS = 4000  # Table 1 "Diffusion steps", at every preset (sampling is respaced)
# Default DPS guidance scale (normalised step, medgen.inverse.dps_reconstruct) per preset and operator, tuned
# by sweeps over {0, 3, 10, 20, 30, 100, 300, 1000, 3000} on 6 *training* subjects (numbers 100-105; the notebook
# scores held-out ones) with the preset's prior and DPS steps: the best mean PSNR, or a value within 1 dB of it
# further from divergence. Smoke (32 px, 25 steps; unguided 14.3 dB): us_linear 300 -> 27.3 dB (1000: 28.0,
# 3000 diverges: 24.3), us_acoustic 10 -> 16.4 (the nonlinear model diverges above ~30), blur 300 -> 26.8,
# inpaint 300 -> 26.4. Cpu (the shipped 64 px prior, 50 steps; unguided 13.3 dB): us_linear 1000 -> 33.3 dB
# (3000: 34.0), us_acoustic 10 -> 15.8 (20: 14.9, 100: 14.1), blur 300 -> 30.4 (1000: 30.5), inpaint 300 -> 28.1
# (1000: 27.5). ci reuses smoke's; paper (256 px) takes cpu's x 4 -- the per-pixel pull of a normalised step
# shrinks as 1 / sqrt(#measurements) -- untuned.
DPS_SCALE = {
    "ci": {"us_linear": 300.0, "us_acoustic": 10.0, "blur": 300.0, "inpaint": 300.0},
    "smoke": {"us_linear": 300.0, "us_acoustic": 10.0, "blur": 300.0, "inpaint": 300.0},
    "cpu": {"us_linear": 1000.0, "us_acoustic": 10.0, "blur": 300.0, "inpaint": 300.0},
    "paper": {"us_linear": 4000.0, "us_acoustic": 40.0, "blur": 1200.0, "inpaint": 1200.0},
}

# Per preset: image side, (n_train, n_test), UNet widths, residual blocks, norm groups, heads.
_SIZE = {"ci": 32, "smoke": 32, "cpu": 64, "paper": 256}
_N = {"ci": (16, 8), "smoke": (1024, 64), "cpu": (4500, 256), "paper": (4500, 1000)}
_CHANNELS = {"ci": (8, 16), "smoke": (32, 64, 64, 64), "cpu": (32, 64, 96, 128),
             "paper": (96, 96, 192, 192, 384, 384)}
_BLOCKS = {"ci": 1, "smoke": 1, "cpu": 1, "paper": 2}
_GROUPS = {"ci": 4, "smoke": 8, "cpu": 8, "paper": 32}
_HEADS = {"ci": 2, "smoke": 4, "cpu": 4, "paper": 4}
# Training: steps, batch, lr, warm-up, schedule, EMA, clipping.
_TRAIN = {
    "ci": TrainConfig(steps=2, batch_size=4, lr=1e-4, ema_decay=0.0, grad_clip=1.0, log_every=1),
    "smoke": TrainConfig(steps=800, batch_size=8, lr=5e-4, warmup_steps=40, lr_schedule="cosine", ema_decay=0.99,
                         grad_clip=1.0, log_every=20),
    "cpu": TrainConfig(steps=2500, batch_size=8, lr=2e-4, warmup_steps=125, lr_schedule="cosine", ema_decay=0.999,
                       grad_clip=1.0, log_every=25, ckpt_every=500, num_threads=1),  # 1 thread: 2 thrash on a shared 2-core machine
    "paper": TrainConfig(steps=100000, batch_size=128, lr=1e-4, weight_decay=0.0, warmup_steps=0,
                         lr_schedule="constant", ema_decay=0.9999, grad_clip=0.0, amp=True, log_every=100,
                         ckpt_every=10000),
}
_SAMPLE = {"ci": SampleConfig(sampler="ddpm", steps=4, eta=0.0),
           "smoke": SampleConfig(sampler="ddpm", steps=100, eta=0.0),
           "cpu": SampleConfig(sampler="ddpm", steps=100, eta=0.0),
           "paper": SampleConfig(sampler="ddpm", steps=TIMESTEPS, eta=0.0)}


def task(measurement: str | None = None) -> str:
    """``lung_us/prior`` (``measurement=None``) or the conditional baseline task of ``us_linear`` / ``us_acoustic``."""
    if measurement is None:
        return PRIOR
    if measurement not in CONDITIONAL:
        raise ValueError(f"unknown lung_us measurement '{measurement}' (choose from {', '.join(MEASUREMENTS)})")
    return CONDITIONAL[measurement]


def _model(preset: str, *, learn_sigma: bool, cond: int) -> UNetConfig:
    ch = _CHANNELS[preset]
    return UNetConfig(spatial_dims=2, in_channels=1, out_channels=2 if learn_sigma else 1, channels=ch,
                      layers_per_block=_BLOCKS[preset], attention_levels=(False,) * len(ch), mid_attention="on",
                      num_heads=_HEADS[preset], norm_groups=_GROUPS[preset], dropout=0.0, cond_image_channels=cond)


def _prior(preset: str) -> RunConfig:
    """The unconditional DDPM (module docstring)."""
    n_train, n_test = _N[preset]
    return RunConfig(
        method="ddpm",
        data=DataConfig(dataset="paired", phantom="lung", source="ct", target="", image_size=_SIZE[preset],
                        n_train=n_train, n_test=n_test),
        model=_model(preset, learn_sigma=True, cond=0),
        diffusion=DiffusionConfig(schedule="cosine", timesteps=TIMESTEPS, prediction="eps", loss="mse",
                                  learn_sigma=True, vlb_weight=0.001, clip_x0=True),
        sample=_SAMPLE[preset],
        train=_TRAIN[preset],
    )


def _conditional(preset: str, measurement: str) -> RunConfig:
    """The supervised conditional baseline: measurement resized and concatenated (module docstring)."""
    base = _prior(preset)
    data = replace(base.data, source=measurement, target="ct", source_resize=True)
    sample = base.sample if preset != "paper" else _SAMPLE["cpu"]  # no paper value: DDIM 50
    return replace(base, method="cddpm", data=data, model=_model(preset, learn_sigma=False, cond=1),
                   diffusion=replace(base.diffusion, learn_sigma=False), sample=sample)


def build(task_name: str, preset: str) -> RunConfig:
    """The config of ``task_name`` (one of :data:`TASKS`) at ``preset`` (before registration renames it)."""
    if task_name == PRIOR:
        return _prior(preset)
    for m, t in CONDITIONAL.items():
        if t == task_name:
            return _conditional(preset, m)
    raise ValueError(f"unknown lung_us task '{task_name}' (choose from {', '.join(TASKS)})")


for _task in TASKS:
    register_presets(_task, {p: build(_task, p) for p in PRESETS})
