"""lung_us presets: Table 1 of the paper through improved-diffusion at `paper`, the same recipe scaled down."""
import pytest
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import ConfigError, get_preset, tasks
from medgen.nn.unet import UNet
from medgen.presets import lung_us as p
from medgen.registry import DATASETS, METHODS, lookup

PRESETS = ("ci", "smoke", "cpu", "paper")


def test_every_task_has_four_presets_that_build():
    assert set(p.TASKS) <= set(tasks())
    assert p.TASKS == ("lung_us/prior", "lung_us/conditional_us_linear", "lung_us/conditional_us_acoustic")
    for task in p.TASKS:
        for preset in PRESETS:
            cfg = get_preset(preset, task=task)
            assert (cfg.preset, cfg.name) == (preset, task)
            assert cfg.data.phantom == "lung" and cfg.data.dataset == "paired"
            if preset != "paper":  # the 61 M-parameter paper nets are built in test_lung_us_paper_step
                lookup(METHODS, cfg.method)(cfg)


def test_prior_and_conditional_data_and_methods():
    prior = get_preset("ci", task=p.task())
    assert prior.method == "ddpm" and (prior.data.source, prior.data.target) == ("ct", "")
    assert prior.model.cond_image_channels == 0 and not prior.data.source_resize
    for m in p.MEASUREMENTS:
        cfg = get_preset("ci", task=p.task(m))
        assert cfg.method == "cddpm" and (cfg.data.source, cfg.data.target) == (m, "ct") and cfg.data.source_resize
        assert cfg.model.cond_image_channels == 1 and cfg.model.out_channels == 1 and not cfg.diffusion.learn_sigma
        # apart from the condition, the same network and schedule as the prior
        assert cfg.model.channels == prior.model.channels and cfg.diffusion.timesteps == prior.diffusion.timesteps
        item = lookup(DATASETS, "paired")(cfg.data, "test")[0]  # the [32, 16] measurement on the image grid
        assert item["source"].shape == item["target"].shape == (1, 32, 32)
    prior_item = lookup(DATASETS, "paired")(prior.data, "test")[0]
    assert prior_item["source"].shape == (1, 32, 32) and "target" not in prior_item
    with pytest.raises(ValueError, match="unknown lung_us measurement 'rf'"):
        p.task("rf")
    with pytest.raises(ConfigError, match="task"):
        get_preset("ci", task="lung_us/nothing")


def test_paper_preset_is_table_1_through_improved_diffusion():
    cfg = get_preset("paper", task=p.task())
    m, d, t, s = cfg.model, cfg.diffusion, cfg.train, cfg.sample
    assert (d.timesteps, cfg.data.image_size) == (4000, 256)  # diffusion steps, image size
    assert m.channels == (96, 96, 192, 192, 384, 384)  # 96 x channel_mult (1, 1, 2, 2, 4, 4) for 256 px
    assert m.layers_per_block == 2  # residual blocks
    assert not any(m.attention_levels) and m.mid_attention == "on"  # attention resolutions 1: middle block only
    assert (t.lr, t.batch_size) == (1e-4, 128)
    assert (d.schedule, d.learn_sigma, d.vlb_weight, d.prediction, d.loss) == ("cosine", True, 0.001, "eps", "mse")
    assert (m.in_channels, m.out_channels, m.num_heads, m.dropout, m.norm_groups) == (1, 2, 4, 0.0, 32)
    assert (t.ema_decay, t.weight_decay, t.grad_clip, t.lr_schedule) == (0.9999, 0.0, 0.0, "constant")
    assert (cfg.data.n_train, p.N_GENERATE["paper"]) == (4500, 1000)
    assert (s.sampler, s.steps) == ("ddpm", 4000)  # the paper's full-length ancestral sampling
    net = UNet(m)  # middle-block attention only, as configured
    assert len(net.mid.attns) == 1 and all(len(level.attns) == 0 for level in [*net.down, *net.up])


def test_scaled_presets_keep_the_recipe_and_shrink():
    sizes = {pr: get_preset(pr, task=p.task()).data.image_size for pr in PRESETS}
    assert sizes == {"ci": 32, "smoke": 32, "cpu": 64, "paper": 256}
    for preset in PRESETS:
        cfg = get_preset(preset, task=p.task())
        d, m = cfg.diffusion, cfg.model
        assert (d.timesteps, d.schedule, d.prediction, d.learn_sigma, m.out_channels) == (4000, "cosine", "eps", True, 2)
        assert not any(m.attention_levels) and m.mid_attention == "on"
        assert all(c % m.norm_groups == 0 for c in m.channels) and m.channels[-1] % m.num_heads == 0
        assert cfg.data.image_size % 2 ** (len(m.channels) - 1) == 0
        assert set(p.N_GENERATE) == set(PRESETS) and p.N_GENERATE[preset] >= 1
    ci = get_preset("ci", task=p.task())
    assert ci.train.steps <= 4 and ci.sample.steps <= 4 and ci.data.n_train <= 16 and max(ci.model.channels) <= 16
    for preset in ("smoke", "cpu"):
        s = get_preset(preset, task=p.task()).sample
        assert (s.sampler, s.steps, s.eta) == ("ddpm", 100, 0.0)  # ancestral with the learned variances


def test_cpu_prior_fits_the_shipped_checkpoint_limit():
    cfg = get_preset("cpu", task=p.task())
    n = sum(q.numel() for q in lookup(METHODS, cfg.method)(cfg).parameters())
    assert 2 * n <= 20e6, f"cpu prior: {n} parameters = {2 * n / 1e6:.1f} MB in fp16 (limit 20 MB)"
    assert torch.tensor(n) > 1e6  # not a toy


def test_dps_scale_table_covers_every_preset_and_operator():
    from medgen.experiments.lung_us import dps_scale
    from medgen.inverse import OPERATORS
    from medgen.presets.lung_us import DPS_SCALE, PRESETS

    assert set(DPS_SCALE) == set(PRESETS)
    for preset in PRESETS:
        assert set(DPS_SCALE[preset]) == set(OPERATORS)
        assert all(dps_scale(op, preset) > 0 for op in OPERATORS)
    # the nonlinear acoustic model takes a far smaller step than the linear operators (it diverges above ~30)
    assert dps_scale("us_acoustic", "smoke") < dps_scale("us_linear", "smoke") / 10
    with pytest.raises(ValueError, match="no DPS scale for operator 'fourier'"):
        dps_scale("fourier", "smoke")
