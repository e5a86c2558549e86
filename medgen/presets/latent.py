"""Presets of the latent-diffusion quickstart: a KL autoencoder, then a cDDPM in its latent space.

Tasks (:data:`TASKS`), both on ``toy_shapes`` (the quickstart's blurred, speckled shapes):

* ``quickstart_latent/autoencoder`` -- method ``autoencoder_kl``
  (:mod:`medgen.methods.autoencoder`): learns the clean images (``data.source = "target"``, so
  ``evaluate`` scores its reconstruction: the ceiling row of a latent table). L1 + a tiny KL
  (LDM's 1e-6), no adversarial term; the latent scale is estimated at the end of training.
* ``quickstart_latent/cddpm`` -- method ``cddpm`` with ``parents={"autoencoder": <the
  autoencoder preset of the same budget>}``: the quickstart's conditional DDPM in that latent
  space (``diffusion.latent_condition = "encode"``: the degraded source is encoded by the same
  autoencoder and concatenated to ``z_t``). Its UNet's in / out / condition channels are the
  latent channels; the data are the quickstart's.

Sizes (ours; the ``paper`` preset follows the Xray2MRI paper's AutoencoderKL: 128 base
channels, multipliers 1, 2, 4, 4, two residual blocks per level, 256 px, f = 8, 4 latent channels):

======  ======  ==================  ========  ====================  ==================
preset  image   autoencoder         latent    latent UNet           steps (ae / cddpm)
======  ======  ==================  ========  ====================  ==================
ci      16 px   (8, 16), f 2        2 x 8^2   (8, 16)               4 / 4
smoke   32 px   (16, 32, 32), f 4   4 x 8^2   (32, 64, 128)         400 / 800
cpu     64 px   (32, 64, 64), f 4   4 x 16^2  (32, 64, 128)         3000 / 3000
paper   256 px  (128, 256, 512,     4 x 32^2  (64, 128, 256, 256)   50000 / 50000
                512), f 8
======  ======  ==================  ========  ====================  ==================

Measured at ``smoke`` (one thread, shared 2-core machine, 32 test subjects, data_range 2): the
autoencoder (400 steps, about 90 s) reconstructs the clean test images at 24.1 dB PSNR / 0.79
SSIM (the ceiling); the latent cDDPM (800 steps at about 15 steps/s, under a minute) reaches
21.4 dB / 0.64 against the degraded source's 17.5 dB / 0.47 -- about the pixel quickstart's
smoke result (21.3-21.6 dB after ~3 minutes of training).
"""
from __future__ import annotations

from medgen.config import (DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig,
                           register_presets)
from medgen.methods.autoencoder import AutoencoderOptions

__all__ = ["TASKS", "AUTOENCODER", "CDDPM", "PRESETS", "autoencoder", "cddpm"]

PRESETS = ("ci", "smoke", "cpu", "paper")
AUTOENCODER = "quickstart_latent/autoencoder"
CDDPM = "quickstart_latent/cddpm"
TASKS = (AUTOENCODER, CDDPM)

_SIZE = {"ci": 16, "smoke": 32, "cpu": 64, "paper": 256}
_N = {"ci": (32, 8), "smoke": (1024, 32), "cpu": (4096, 64), "paper": (20000, 256)}
_AE_CHANNELS = {"ci": (8, 16), "smoke": (16, 32, 32), "cpu": (32, 64, 64), "paper": (128, 256, 512, 512)}
_AE_BLOCKS = {"ci": 1, "smoke": 1, "cpu": 1, "paper": 2}
_LATENT = {"ci": 2, "smoke": 4, "cpu": 4, "paper": 4}  # latent channels
_UNET = {"ci": (8, 16), "smoke": (32, 64, 128), "cpu": (32, 64, 128), "paper": (64, 128, 256, 256)}
_GROUPS = {"ci": 4, "smoke": 8, "cpu": 8, "paper": 32}
_AE_TRAIN = {
    "ci": TrainConfig(steps=4, batch_size=8, log_every=1),
    "smoke": TrainConfig(steps=400, batch_size=16, lr=1e-3, warmup_steps=20, ema_decay=0.99, log_every=20),
    "cpu": TrainConfig(steps=3000, batch_size=16, lr=5e-4, warmup_steps=100, lr_schedule="cosine", ema_decay=0.999,
                       log_every=25, ckpt_every=500, num_threads=1),
    "paper": TrainConfig(steps=50000, batch_size=64, lr=2e-4, warmup_steps=1000, lr_schedule="cosine",
                         ema_decay=0.9999, amp=True, log_every=100, ckpt_every=5000),
}
_DM_TRAIN = {
    "ci": TrainConfig(steps=4, batch_size=8, log_every=1),
    "smoke": TrainConfig(steps=800, batch_size=16, lr=1e-3, warmup_steps=20, ema_decay=0.99, log_every=20),
    "cpu": TrainConfig(steps=3000, batch_size=16, lr=5e-4, warmup_steps=100, lr_schedule="cosine", ema_decay=0.999,
                       log_every=25, ckpt_every=500, num_threads=1),
    "paper": TrainConfig(steps=50000, batch_size=64, lr=2e-4, warmup_steps=1000, lr_schedule="cosine",
                         ema_decay=0.9999, amp=True, log_every=100, ckpt_every=5000),
}


def _data(preset: str, **keys: str) -> DataConfig:
    n_train, n_test = _N[preset]
    return DataConfig(image_size=_SIZE[preset], n_train=n_train, n_test=n_test, **keys)


def autoencoder(preset: str) -> RunConfig:
    """The ``autoencoder_kl`` config at ``preset``, named as registered (a parent config must be the registered one)."""
    ch = _AE_CHANNELS[preset]
    return RunConfig(
        name=AUTOENCODER, preset=preset, method="autoencoder_kl",
        data=_data(preset, source="target", target="target"),
        model=UNetConfig(channels=ch, layers_per_block=_AE_BLOCKS[preset],
                         attention_levels=(False,) * (len(ch) - 1) + (True,), norm_groups=_GROUPS[preset]),
        train=_AE_TRAIN[preset],
        options=AutoencoderOptions(latent_channels=_LATENT[preset], kl_weight=1e-6,
                                   scale_batches=2 if preset == "ci" else 8),
    )


def cddpm(preset: str) -> RunConfig:
    """The latent ``cddpm`` config at ``preset`` with :func:`autoencoder` as its ``"autoencoder"`` parent."""
    ch, z = _UNET[preset], _LATENT[preset]
    return RunConfig(
        name=CDDPM, preset=preset, method="cddpm",
        data=_data(preset),
        model=UNetConfig(in_channels=z, out_channels=z, cond_image_channels=z, channels=ch,
                         attention_levels=(False,) * (len(ch) - 1) + (True,), norm_groups=_GROUPS[preset],
                         num_heads=2 if preset == "ci" else 4, layers_per_block=2 if preset == "paper" else 1),
        diffusion=DiffusionConfig(timesteps=100 if preset == "ci" else 1000, latent_condition="encode"),
        sample=SampleConfig(steps={"ci": 4, "smoke": 20, "cpu": 20, "paper": 50}[preset]),
        train=_DM_TRAIN[preset],
        parents={"autoencoder": autoencoder(preset)},
    )


register_presets(AUTOENCODER, {p: autoencoder(p) for p in PRESETS})
register_presets(CDDPM, {p: cddpm(p) for p in PRESETS})
