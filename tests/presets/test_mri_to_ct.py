"""mri_to_ct presets: the paper's stated settings at `paper`, same choices at every preset."""
import pytest

from medgen.config import ConfigError, get_preset, tasks
from medgen.presets import mri_to_ct as p


def test_every_model_has_four_presets_and_is_listed():
    assert {p.task(m) for m in p.MODELS} <= set(tasks())
    for m in p.MODELS:
        for preset in ("ci", "smoke", "cpu", "paper"):
            cfg = get_preset(preset, task=p.task(m))
            assert cfg.preset == preset and cfg.name == p.task(m)
            assert cfg.data.phantom == "spine_sagittal" and cfg.data.registration == "two"
            if m in p.MEASURERS:   # CT -> labels
                assert cfg.method == "segmenter" and (cfg.data.source, cfg.data.target) == ("ct", "")
            else:
                assert (cfg.data.source, cfg.data.target) == ("t2w", "ct")


@pytest.mark.parametrize("model, prediction, dims, steps", [
    ("ddim_noise", "eps", 2, 20), ("ddim_image", "x0", 2, 20),
    ("ddim_noise_3d", "eps", 3, 25), ("ddim_image_3d", "x0", 3, 25)])
def test_paper_preset_matches_the_paper(model, prediction, dims, steps):
    cfg = get_preset("paper", task=p.task(model))
    d, s, t = cfg.diffusion, cfg.sample, cfg.train
    assert (d.timesteps, d.schedule, d.loss, d.prediction, d.clip_x0) == (1000, "cosine", "l1", prediction, True)
    assert (s.sampler, s.steps, s.eta, s.guidance_scale) == ("ddim", steps, 1.0, 0.0)
    assert t.lr == 2e-5 and t.batch_size == (8 if dims == 2 else 2)
    assert cfg.model.spatial_dims == dims and cfg.model.channels[0] == 64
    assert cfg.data.registration == "two"
    if dims == 2:
        assert cfg.data.image_size == 256 and cfg.data.dataset == "paired"
    else:  # Bieder et al. changes: no attention, additive skips, position ramps; 128x128x32 patches
        assert not any(cfg.model.attention_levels) and cfg.model.skip_mode == "add" and cfg.model.position_ramps
        assert (cfg.data.image_size, cfg.data.depth, cfg.data.dataset) == (128, 32, "volume")


def test_contrast_switch_and_errors():
    cfg = p.for_contrast(get_preset("ci", task=p.task("ddim_image")), "t1w")
    assert cfg.data.source == "t1w"
    with pytest.raises(ValueError, match="unknown contrast 'pd'"):
        p.for_contrast(cfg, "pd")
    with pytest.raises(ValueError, match="unknown mri_to_ct model 'ddim'"):
        p.task("ddim")
    with pytest.raises(ConfigError, match="task"):
        get_preset("ci", task="mri_to_ct/nothing")


@pytest.mark.parametrize("model, generator, dims", [("pix2pix_unet", "unet", 2), ("pix2pix_sa_unet", "sa_unet", 2),
                                                    ("pix2pix_3d", "unet", 3)])
def test_pix2pix_paper_preset_follows_the_reference_code(model, generator, dims):
    cfg = get_preset("paper", task=p.task(model))
    g = cfg.options
    assert cfg.method == "pix2pix" and g.generator == generator and cfg.model.spatial_dims == dims
    assert (g.gen_channels, g.gen_downs, g.dropout, g.disc_layers) == (64, 5, 0.2, 3)
    assert (g.gan_loss, g.lambda_l1, g.lambda_ssim) == ("lsgan", 10.0, 10.0)
    assert cfg.train.betas == (0.5, 0.999) and cfg.train.ema_decay == 0.0
    assert cfg.train.batch_size == (64 if dims == 2 else 2)


def test_thin_ci_volumes_get_fewer_downs_and_discriminator_layers():
    cfg = get_preset("ci", task=p.task("pix2pix_3d"))
    assert cfg.data.depth % 2 ** cfg.options.gen_downs == 0 and cfg.data.image_size % 2 ** cfg.options.gen_downs == 0
    assert cfg.options.disc_layers == 2  # a 3-layer PatchGAN needs >= 24 voxels per side; ci depth is 16


@pytest.mark.parametrize("model, generator", [("cut_resnet", "resnet"), ("cut_sa_unet", "sa_unet")])
def test_cut_paper_preset_follows_the_supplement(model, generator):
    cfg = get_preset("paper", task=p.task(model))
    g = cfg.options
    assert cfg.method == "cut" and cfg.data.dataset == "unpaired" and g.generator == generator
    assert (g.gen_downs, g.res_blocks, g.dropout, g.nce_layers) == (1, 8, 0.0, (0, 4, 8, 12, 16))
    assert cfg.train.batch_size == 32 and g.gan_loss == "lsgan"


def test_syndiff_paper_preset_follows_the_reference_code():
    cfg = get_preset("paper", task=p.task("syndiff"))
    g = cfg.options
    assert cfg.method == "syndiff" and cfg.data.dataset == "unpaired"
    assert (g.generator, g.gen_channels, g.gen_downs, g.res_blocks, g.disc_layers) == ("resnet", 64, 2, 6, 3)
    assert (g.gan_loss, g.lambda_cycle) == ("vanilla", 0.5) and cfg.train.betas == (0.5, 0.9)


def test_cpu_budgets_come_from_the_learning_curves_and_touch_only_cpu():
    from medgen.config import get_preset
    from medgen.presets.mri_to_ct import CPU_STEPS, task

    for model, steps in CPU_STEPS.items():
        assert get_preset("cpu", task(model)).train.steps == steps
        assert get_preset("smoke", task(model)).train.steps == 300  # the other presets keep their steps
    for shipped in ("ddim_image", "pix2pix_unet", "ddim_noise"):
        assert shipped not in CPU_STEPS and get_preset("cpu", task(shipped)).train.steps == 3000
