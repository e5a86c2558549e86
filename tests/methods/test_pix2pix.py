"""pix2pix: groups, config errors, generator / discriminator losses against hand computation,
the cached fake, deterministic translate and its options, 3D and SA-UNet variants, and a short
fit() that lowers L1 on a fixed batch, saved and reloaded through train_or_load."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from medgen.config import ConfigError, TrainConfig, apply_overrides, get_preset
from medgen.data.batch import Batch, collate
from medgen.data.toy import ToyShapes
from medgen.methods.pix2pix import Pix2Pix, Pix2PixOptions
from medgen.nn.gan import PatchDiscriminator, SAUNetGenerator, UNetGenerator
from medgen.registry import METHODS, lookup
from medgen.train import train_or_load
from medgen.utils import seed_everything

BASE = get_preset("ci")
CFG = dataclasses.replace(
    BASE, name="pix2pix_unit", method="pix2pix",
    data=dataclasses.replace(BASE.data, image_size=32, n_train=32, n_test=8),
    options=Pix2PixOptions(gen_channels=8, gen_downs=3, dropout=0.0, disc_channels=8, disc_layers=3, lambda_gan=1.0,
                           lambda_l1=10.0, lambda_ssim=2.0),
    train=TrainConfig(steps=20, batch_size=8, lr=2e-3, betas=(0.5, 0.999), ema_decay=0.0, log_every=5,
                      num_threads=1))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _cfg(**options):
    return dataclasses.replace(CFG, options=dataclasses.replace(CFG.options, **options))


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return Pix2Pix(cfg)


def _batch(n=4, size=32, mask=False):
    ds = ToyShapes(dataclasses.replace(CFG.data, image_size=size, n_train=n), "train")
    b = collate([ds[i] for i in range(n)])
    return b if mask else Batch(b.source, b.target)


def _softplus_mean(x):
    return F.softplus(x).mean().item()


def test_registered_with_generator_then_discriminator_groups():
    model = lookup(METHODS, "pix2pix")(CFG)
    assert isinstance(model.net, UNetGenerator) and isinstance(model.discriminator, PatchDiscriminator)
    groups = model.param_groups()
    assert list(groups) == ["generator", "discriminator"]
    ids = [{id(p) for p in ps} for ps in groups.values()]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    assert model.discriminator.in_channels == 2  # Concat([source, image])


@pytest.mark.parametrize("model,options,match", [
    (dict(cond_image_channels=0), {}, "cond_image_channels"),
    ({}, dict(gan_loss="hinge"), r"pix2pix.gan_loss: must be one of vanilla, lsgan, got 'hinge'"),
    ({}, dict(lambda_l1=-1.0), "pix2pix.lambda_l1: must be >= 0, got -1.0"),
    ({}, dict(dropout=1.0), r"pix2pix.dropout: must be in \[0, 1\)"),
    ({}, dict(generator="unte"), "pix2pix.generator: must be one of unet, resnet, sa_unet"),
    ({}, dict(lr_d=-1e-4), "pix2pix.lr_d: must be >= 0"),
])
def test_config_errors_are_one_line(model, options, match):
    with pytest.raises(ConfigError, match=match) as err:
        Pix2Pix(dataclasses.replace(_cfg(**options), model=dataclasses.replace(CFG.model, **model)))
    assert "\n" not in str(err.value)
    if options:  # --set reports the same line
        key, value = next(iter(options.items()))
        with pytest.raises(ConfigError, match=match):
            apply_overrides(CFG, {f"options.{key}": value})


def test_lr_d_sets_the_discriminator_rate(tmp_path):
    assert _model().optim_settings() == {}  # lr_d = 0: both groups at train.lr, as before
    cfg = dataclasses.replace(_cfg(lr_d=1e-4), train=dataclasses.replace(CFG.train, steps=1, log_every=1))
    assert _model(cfg).optim_settings()["discriminator"].lr == 1e-4
    train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    from medgen.checkpoint import load_training_state
    from medgen.train import run_dir_for

    state = load_training_state(run_dir_for(cfg, tmp_path))["optimizers"]
    assert state["discriminator"]["param_groups"][0]["lr"] == 1e-4
    assert state["generator"]["param_groups"][0]["lr"] == CFG.train.lr


@pytest.mark.parametrize("kind", ["vanilla", "lsgan"])
def test_generator_loss_matches_hand_computation(kind):
    model, batch = _model(_cfg(gan_loss=kind)), _batch()
    out = model.training_step(batch, "generator")
    with torch.no_grad():
        fake = model.net(batch.source)  # dropout 0: the same fake
        logits = model.discriminator(torch.cat([batch.source, fake], 1))
        adv = _softplus_mean(-logits) if kind == "vanilla" else ((logits - 1) ** 2).mean().item()
        l1 = (fake - batch.target).abs().mean().item()
    ssim = np.mean([structural_similarity(fake[i, 0].numpy() + 1, batch.target[i, 0].numpy() + 1,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=2.0) for i in range(4)])
    assert out["adv"].item() == pytest.approx(adv, rel=1e-5)
    assert out["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert out["ssim"].item() == pytest.approx(1 - ssim, abs=1e-5)
    assert out["loss"].item() == pytest.approx(1.0 * adv + 10.0 * l1 + 2.0 * (1 - ssim), rel=1e-4)
    assert out["loss"].requires_grad and out["loss"].ndim == 0
    assert "ssim" not in _model(_cfg(lambda_ssim=0.0)).training_step(batch, "generator")


def test_loss_mask_weights_l1_and_ssim():
    model, batch = _model(), _batch()
    mask = torch.zeros_like(batch.target)
    mask[..., :, 16:] = 1
    out = model.training_step(Batch(batch.source, batch.target, mask), "generator")
    with torch.no_grad():
        fake = model.net(batch.source)
    l1_right = (fake - batch.target).abs()[..., 16:].mean().item()
    assert out["l1"].item() == pytest.approx(l1_right, rel=1e-5)
    plain = model.training_step(batch, "generator")
    assert out["ssim"].item() != pytest.approx(plain["ssim"].item(), abs=1e-4)


@pytest.mark.parametrize("kind", ["vanilla", "lsgan"])
def test_discriminator_loss_matches_hand_computation_and_does_not_reach_g(kind):
    model, batch = _model(_cfg(gan_loss=kind)), _batch()
    out = model.training_step(batch, "discriminator")
    with torch.no_grad():
        fake = model.net(batch.source)
        real_l = model.discriminator(torch.cat([batch.source, batch.target], 1))
        fake_l = model.discriminator(torch.cat([batch.source, fake], 1))
    if kind == "vanilla":
        real, fake_loss = _softplus_mean(-real_l), _softplus_mean(fake_l)
    else:
        real, fake_loss = ((real_l - 1) ** 2).mean().item(), (fake_l ** 2).mean().item()
    assert out["real"].item() == pytest.approx(real, rel=1e-5)
    assert out["fake"].item() == pytest.approx(fake_loss, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * (real + fake_loss), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.net.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_discriminator_step_reuses_the_fake_of_the_generator_step():
    model, batch = _model(), _batch()
    with torch.no_grad():
        fake_before = model.net(batch.source)
    model.training_step(batch, "generator")
    with torch.no_grad():  # an optimiser step on G between the two group steps
        for p in model.net.parameters():
            p.add_(0.05)
    sliced = batch.slice(0, 4)  # fit() passes a fresh slice (a view of the same storage)
    cached = model.training_step(sliced, "discriminator")["fake"]
    with torch.no_grad():
        expected = _softplus_mean(model.discriminator(torch.cat([batch.source, fake_before], 1)))
    assert cached.item() == pytest.approx(expected, rel=1e-5)
    # without a preceding generator step on this source, the fake is recomputed from the current G
    recomputed = model.training_step(sliced, "discriminator")["fake"]
    with torch.no_grad():
        now = _softplus_mean(model.discriminator(torch.cat([batch.source, model.net(batch.source)], 1)))
    assert recomputed.item() == pytest.approx(now, rel=1e-5)
    assert recomputed.item() != pytest.approx(cached.item(), rel=1e-3)


def test_training_step_checks_group_and_batch():
    model, batch = _model(), _batch()
    with pytest.raises(ValueError, match="got 'model'"):
        model.training_step(batch, "model")
    with pytest.raises(ValueError, match="batch.target is None"):
        model.training_step(Batch(batch.source), "generator")
    with pytest.raises(ValueError, match="source has 2 channels but model.cond_image_channels=1"):
        model.training_step(Batch(batch.source.repeat(1, 2, 1, 1), batch.target), "generator")


def test_translate_is_deterministic_with_dropout_and_restores_the_mode():
    model, batch = _model(_cfg(dropout=0.5)), _batch()
    model.train()
    calls = []
    a = model.translate(batch.source, callback=calls.append)
    b = model.translate(batch.source, generator=torch.Generator().manual_seed(5), steps=50, sampler="ddim", eta=1.0)
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b) and len(calls) == 1
    assert model.net.training  # mode restored
    model.net.eval()
    assert torch.equal(a, model.net(batch.source))
    model.net.train()
    torch.manual_seed(0)
    assert not torch.equal(model.net(batch.source), a)  # dropout is on in training mode


def test_translate_rejects_unknown_options_and_bad_sources():
    model, batch = _model(), _batch(1)
    with pytest.raises(ValueError, match="unknown option 'temperature' for method 'pix2pix'") as err:
        model.translate(batch.source, temperature=0.5)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="2 spatial dims"):
        model.translate(batch.source[:, :, None])


def test_3d_pix2pix_trains_and_translates():
    model3 = dataclasses.replace(CFG.model, spatial_dims=3)
    cfg = dataclasses.replace(CFG, model=model3, options=dataclasses.replace(CFG.options, gen_downs=2, disc_layers=2))
    model = _model(cfg)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(2, 1, 16, 16, 16, generator=g) * 2 - 1,
                  torch.rand(2, 1, 16, 16, 16, generator=g) * 2 - 1)
    for group in ("generator", "discriminator"):
        out = model.training_step(batch, group)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
    assert model.translate(batch.source).shape == (2, 1, 16, 16, 16)
    assert model.discriminator.spatial_dims == 3


def test_sa_unet_generator_variant():
    cfg = _cfg(generator="sa_unet")
    model = _model(cfg)
    assert isinstance(model.net, SAUNetGenerator)
    batch = _batch(2)
    assert model.translate(batch.source).shape == (2, 1, 32, 32)
    out = model.training_step(batch, "generator")
    out["loss"].backward()
    assert model.net.net.conv_out.weight.grad.abs().sum() > 0


def test_short_fit_lowers_l1_and_round_trips_through_train_or_load(tmp_path):
    """20 steps at 32 px, batch 8 (about 1-2 s on one thread)."""
    fixed = _batch(8)
    seed_everything(CFG.seed)  # train_or_load seeds the same way before building the method
    untrained = Pix2Pix(CFG)
    l1_before = (untrained.translate(fixed.source) - fixed.target).abs().mean().item()
    trained = train_or_load(CFG, root=tmp_path, progress=False, device="cpu")
    assert isinstance(trained, Pix2Pix) and not trained.training
    pred = trained.translate(fixed.source)
    l1_after = (pred - fixed.target).abs().mean().item()
    assert l1_after < 0.5 * l1_before, (l1_before, l1_after)
    loaded = train_or_load(CFG, root=tmp_path, progress=False, device="cpu")  # from the cache
    assert loaded is not trained and torch.equal(loaded.translate(fixed.source), pred)
