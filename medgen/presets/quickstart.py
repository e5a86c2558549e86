"""Presets of the quickstart task: a conditional DDPM restoring blurred, speckled toy shapes (notebook 00).

Sizes follow TOOLCHAIN.md: the 2.7 M UNet at 32 px trains ~0.4 s / step (batch 16) on 2 cores.
"""
from __future__ import annotations

from medgen.config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig, register_presets

register_presets(
    "quickstart",
    {
        "ci": RunConfig(
            data=DataConfig(image_size=16, n_train=32, n_test=8),
            model=UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4,
                             num_heads=2, cond_image_channels=1),
            diffusion=DiffusionConfig(timesteps=100),
            sample=SampleConfig(steps=4),
            train=TrainConfig(steps=4, batch_size=8, log_every=1),
        ),
        "smoke": RunConfig(
            data=DataConfig(image_size=32, n_train=1024, n_test=32),
            model=UNetConfig(channels=(32, 64, 128), cond_image_channels=1),
            diffusion=DiffusionConfig(timesteps=1000),
            sample=SampleConfig(steps=20),
            # ~0.4 s/step on 2 idle cores: 400 steps (~3 min) is the smallest run that beat the
            # Gaussian-filter baseline when sized (21.3-21.6 vs 21.05 dB); (16, 32, 64) x 300 did not.
            train=TrainConfig(steps=400, batch_size=16, lr=1e-3, warmup_steps=20, ema_decay=0.99),
        ),
        "cpu": RunConfig(
            data=DataConfig(image_size=32, n_train=4096, n_test=64),
            model=UNetConfig(channels=(32, 64, 128), cond_image_channels=1),
            diffusion=DiffusionConfig(timesteps=1000),
            sample=SampleConfig(steps=20),
            train=TrainConfig(steps=3000, batch_size=16, lr=5e-4, warmup_steps=100, ema_decay=0.999,
                              lr_schedule="cosine"),
        ),
        "paper": RunConfig(
            data=DataConfig(image_size=64, n_train=20000, n_test=256),
            model=UNetConfig(channels=(64, 128, 256, 256), attention_levels=(False, False, True, True),
                             layers_per_block=2, cond_image_channels=1),
            diffusion=DiffusionConfig(timesteps=1000),
            sample=SampleConfig(steps=50),
            train=TrainConfig(steps=50000, batch_size=64, lr=2e-4, warmup_steps=1000, ema_decay=0.9999,
                              lr_schedule="cosine", amp=True),
        ),
    },
)
