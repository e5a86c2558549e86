"""Presets of the lung-ultrasound paper (lung_us_diffusion.txt): the prior and the supervised baselines.

Tasks (:data:`TASKS`)
---------------------
* ``lung_us/prior`` -- method ``ddpm`` (:class:`medgen.methods.ddpm.UnconditionalDDPM`): the
  paper's unconditional DDPM on 2D lung sections ``[B, 1, H, W]``. Data: the ``lung`` phantom,
  dataset kind ``paired`` with ``source="ct"`` and no target, i.e. single images (``ddpm``
  trains on the source when a dataset has no target). Measurements for DPS are made by
  ``medgen.inverse`` operators.
* ``lung_us/conditional_us_linear`` and ``lung_us/conditional_us_acoustic`` -- method ``cddpm``:
  the supervised conditional baseline of the guided reconstruction (issue 6, section 3; the
  paper never trained one). Source = the measurement ``[H, ceil(W / 2)]`` resized to the
  ``[H, W]`` image grid (``data.source_resize=True``) and channel-concatenated to ``x_t``;
  target ``ct``. Same UNet, schedule and training as the prior at each preset, plus the
  condition channel, without learned variances (a plain eps-MSE baseline).

The ``paper`` preset (Table 1, read through improved-diffusion's ``script_util``)
--------------------------------------------------------------------------------
Paper: 4000 diffusion steps, 256 px, 96 channels, 2 residual blocks, attention resolutions 1,
lr 1e-4, batch 128, 4,500 training and 1,000 generated images. Ours from that: channels
``(96, 96, 192, 192, 384, 384)`` (improved-diffusion's channel_mult at 256 px), attention only
in the middle block, improved-diffusion's defaults for what Table 1 does not list, and the
recipe of its README (not stated in the paper): cosine schedule, learned variances (hybrid
loss, ``vlb_weight=0.001``, ``model.out_channels = 2``); 100k steps (ours); sampling with the
full 4000-step ancestral DDPM (``--set sample.sampler=ddim sample.steps=50`` is the fast variant).

Scaled presets (ours): ``ci`` 32 px (8, 16); ``smoke`` 32 px (32, 64, 64, 64); ``cpu`` 64 px
(32, 64, 96, 128). All keep T = 4000, cosine, eps, MSE, learned variances and middle-block
attention; they sample with the ancestral DDPM over 100 respaced steps (ci: 4) and train with a
higher lr, warm-up and cosine decay, clipping at 1 and a shorter EMA.

Paper-faithfulness notes, the sampler comparison, timings and the DPS scale sweeps:
docs/paper_notes.md#lung_us-presets
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
# Default DPS guidance scale (normalised step, medgen.inverse.dps_reconstruct) per preset and operator: the
# best mean PSNR (or within 1 dB of it, further from divergence) of a sweep on 6 training subjects; ci reuses
# smoke's, paper takes cpu's x 4 (untuned). Sweep results: docs/paper_notes.md#lung_us-presets
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
    sample = base.sample if preset != "paper" else _SAMPLE["cpu"]  # no paper value: the cpu sampling
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
