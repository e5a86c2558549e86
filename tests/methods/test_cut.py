"""cut: PatchNCE against hand-written references, feature taps (ResNet layers 0,4,8,12,16 and
SA-UNet down/up convs), parameter groups with the MLP heads, config errors, generator and
discriminator losses, single-channel input, deterministic translate, and a short fit() on
unpaired phantom data that lowers PatchNCE on a fixed batch, reloaded through train_or_load."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from medgen.config import ConfigError, DataConfig, TrainConfig, get_preset
from medgen.data.batch import Batch, collate
from medgen.data.datasets import UnpairedDataset
from medgen.methods.cut import CUT, CUTOptions, patch_nce_loss, sa_unet_taps, sample_patches
from medgen.nn.gan import PatchDiscriminator, ResnetGenerator, SAUNetGenerator
from medgen.nn.layers import Downsample, Upsample
from medgen.registry import METHODS, lookup
from medgen.train import train_or_load
from medgen.utils import seed_everything

BASE = get_preset("ci")
CFG = dataclasses.replace(
    BASE, name="cut_unit", method="cut",
    data=DataConfig(dataset="unpaired", phantom="spine_sagittal", source="t2w", target="ct", image_size=32,
                    n_train=16, n_test=4),
    model=dataclasses.replace(BASE.model, channels=(8, 16), attention_levels=(False, True), cond_image_channels=1),
    options=CUTOptions(generator="resnet", gen_channels=8, gen_downs=1, res_blocks=8, dropout=0.0, disc_channels=8,
                       disc_layers=2, gan_loss="lsgan", lambda_gan=1.0, lambda_nce=1.0, nce_idt=True, nce_patches=64),
    train=TrainConfig(steps=12, batch_size=8, lr=2e-3, betas=(0.5, 0.999), ema_decay=0.0, log_every=5,
                      grad_clip=0.0, num_threads=1))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _cfg(**options):
    return dataclasses.replace(CFG, options=dataclasses.replace(CFG.options, **options))


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return CUT(cfg)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _batch(n=4, size=32, seed=0):
    return Batch(_rand(n, 1, size, size, seed=seed), _rand(n, 1, size, size, seed=seed + 100))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# PatchNCE
# --------------------------------------------------------------------------------------
def _unit(*shape, seed=0):
    x = torch.randn(*shape, generator=_gen(seed))
    return x / x.norm(dim=-1, keepdim=True)


def test_patch_nce_loss_matches_a_loop_and_cuts_masked_diagonal_form():
    q, k, tau = _unit(2, 5, 4, seed=1), _unit(2, 5, 4, seed=2), 0.07
    got = patch_nce_loss(q, k, tau)
    assert got.shape == (2, 5)
    # 1. the definition, one patch at a time: -log(exp(s_nn / tau) / sum_m exp(s_nm / tau))
    for b in range(2):
        for n in range(5):
            sims = [float(q[b, n] @ k[b, m]) / tau for m in range(5)]
            expected = -sims[n] + math.log(sum(math.exp(s) for s in sims))
            assert got[b, n].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)  # float32 logits ~ 14
    # 2. CUT's form: [positive, N x N negatives with the diagonal set to -10] / tau, target 0
    pos = (q * k).sum(-1, keepdim=True)  # [B, N, 1]
    neg = torch.bmm(q, k.transpose(1, 2)).masked_fill(torch.eye(5, dtype=torch.bool), -10.0)
    logits = torch.cat([pos, neg], dim=2).reshape(10, 6) / tau
    cut = F.cross_entropy(logits, torch.zeros(10, dtype=torch.long), reduction="none").view(2, 5)
    torch.testing.assert_close(got, cut, rtol=1e-5, atol=1e-6)


def test_identical_features_give_the_minimum_loss():
    n, tau = 6, 0.5
    basis = torch.eye(n)[None]  # orthonormal patch features [1, N, N]
    same = patch_nce_loss(basis, basis, tau)
    # positive similarity 1, every negative 0: loss = log(1 + (N - 1) * exp(-1 / tau)) per patch
    assert torch.allclose(same, torch.full((1, n), math.log(1 + (n - 1) * math.exp(-1 / tau))))
    shuffled = patch_nce_loss(basis[:, torch.roll(torch.arange(n), 1)], basis, tau)
    assert (shuffled > same + 1).all()  # positive 0, one negative 1
    for seed in range(5):  # any other unit queries do worse on average
        assert patch_nce_loss(_unit(1, n, n, seed=seed), basis, tau).mean() > same.mean()
    # through the method: queries from the input itself (output = input) beat those of another image
    model, x = _model(), _rand(2, 1, 32, 32, seed=3)
    with torch.no_grad():
        _, feats = model.nce_features(x)
        self_loss = model.nce_loss(feats, x, _gen(0))
        other_loss = model.nce_loss(feats, _rand(2, 1, 32, 32, seed=4), _gen(0))
    assert self_loss < other_loss - 0.5, (self_loss, other_loss)


def test_patch_nce_loss_only_reaches_the_queries():
    q, k = _unit(1, 4, 3, seed=5).requires_grad_(), _unit(1, 4, 3, seed=6).requires_grad_()
    patch_nce_loss(q, k, 0.07).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None
    with pytest.raises(ValueError, match="must be equal"):
        patch_nce_loss(q, k[:, :3], 0.07)


def test_sample_patches_draws_distinct_positions_shared_over_the_batch():
    feat = torch.zeros(3, 2, 4, 5)
    ids = sample_patches(feat, 8, _gen(1))
    assert ids.shape == (8,) and len(set(ids.tolist())) == 8 and 0 <= ids.min() and ids.max() < 20
    assert torch.equal(ids, sample_patches(feat, 8, _gen(1)))
    assert sorted(sample_patches(feat, 100, _gen(2)).tolist()) == list(range(20))  # capped at H * W


# --------------------------------------------------------------------------------------
# Networks, taps, groups
# --------------------------------------------------------------------------------------
def test_resnet_taps_are_the_papers_layers():
    """ngf 4, one down conv, 8 blocks at 16 px: layers 0 (padded input), 4 (down conv),
    8 / 12 (residual blocks 2 and 6), 16 (the up conv's InstanceNorm)."""
    model = _model(_cfg(gen_channels=4))
    net = model.net
    assert isinstance(net, ResnetGenerator) and len(net.layers) == 21
    x = _rand(2, 1, 16, 16)
    with torch.no_grad():
        out, feats = model.nce_features(x)
        _, early = model.nce_features(x, encode_only=True)
        assert torch.equal(out, net(x))
        for k, f, e in zip((0, 4, 8, 12, 16), feats, early):
            assert torch.equal(f, net.layers[:k + 1](x)) and torch.equal(e, f)
    assert [tuple(f.shape) for f in feats] == [(2, 1, 22, 22), (2, 8, 8, 8), (2, 8, 8, 8), (2, 8, 8, 8),
                                               (2, 4, 16, 16)]
    assert [h[0].in_features for h in model.heads] == [1, 8, 8, 8, 4]
    assert all(h[-1].out_features == 256 for h in model.heads)


def test_sa_unet_taps_after_every_down_conv_and_the_first_up_conv():
    model3 = dataclasses.replace(CFG.model, channels=(8, 16, 32), attention_levels=(False, False, True))
    model = _model(dataclasses.replace(CFG, model=model3, options=dataclasses.replace(CFG.options, generator="sa_unet")))
    assert isinstance(model.net, SAUNetGenerator)
    taps = sa_unet_taps(model.net)
    assert [type(t) for t in taps] == [Downsample, Downsample, Upsample]
    assert taps[0] is model.net.net.down[0].resample and taps[2] is model.net.net.up[0].resample
    x = _rand(2, 1, 32, 32)
    with torch.no_grad():
        out, feats = model.nce_features(x)
        _, early = model.nce_features(x, encode_only=True)
        assert torch.equal(out, model.net(x))
    # down convs at 1/2 and 1/4 size; the deepest level's up conv (32 channels) back to 1/2
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 16, 16)]
    assert all(torch.equal(a, b) for a, b in zip(feats, early))
    assert [h[0].in_features for h in model.heads] == [8, 16, 32]
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed after each call


def test_sa_unet_variant_trains_both_groups():
    model = _model(_cfg(generator="sa_unet"))
    batch = _batch(2)
    out = model.training_step(batch, "generator", _gen(0))
    assert set(out) == {"loss", "adv", "nce", "nce_idt"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    # the UNet's conv_out is zero-initialised: on the first backward only it (and the heads) get gradient
    assert model.net.net.conv_out.weight.grad.abs().sum() > 0
    assert all(h[-1].weight.grad.abs().sum() > 0 for h in model.heads)
    d = model.training_step(batch, "discriminator")
    assert torch.isfinite(d["loss"]) and model.translate(batch.source).shape == (2, 1, 32, 32)


def test_registered_with_generator_group_holding_the_heads():
    model = lookup(METHODS, "cut")(CFG)
    assert isinstance(model, CUT) and isinstance(model.discriminator, PatchDiscriminator)
    assert model.discriminator.in_channels == 1  # unconditional: target images only
    groups = model.param_groups()
    assert list(groups) == ["generator", "discriminator"]
    ids = {name: {id(p) for p in ps} for name, ps in groups.items()}
    assert {id(p) for p in model.heads.parameters()} <= ids["generator"]
    assert {id(p) for p in model.net.parameters()} <= ids["generator"]
    assert not ids["generator"] & ids["discriminator"]
    assert ids["generator"] | ids["discriminator"] == {id(p) for p in model.parameters()}
    assert any(k.startswith("heads.0.") for k in model.state_dict())  # checkpoints carry the heads


@pytest.mark.parametrize("model,options,match", [
    ({}, dict(generator="unet"), "cut.generator: must be resnet or sa_unet, got 'unet'"),
    (dict(cond_image_channels=0), {}, "cond_image_channels > 0"),
    (dict(cond_image_channels=2), {}, "model.cond_image_channels=2 must equal model.out_channels=1"),
    ({}, dict(nce_layers=(0, 21)), r"cut.nce_layers: must be indices of the ResNet generator's layers 0..\d+, got \(0, 21\)"),
    ({}, dict(nce_layers=()), "cut.nce_layers: must be non-empty"),
    ({}, dict(nce_patches=0), "cut.nce_patches: must be >= 1, got 0"),
    ({}, dict(nce_temperature=0.0), "cut.nce_temperature: must be > 0"),
    ({}, dict(gan_loss="hinge"), "cut.gan_loss: must be one of vanilla, lsgan, got 'hinge'"),
    ({}, dict(lambda_nce=-1.0), "cut.lambda_nce: must be >= 0"),
    (dict(channels=(8,), attention_levels=(False,)), dict(generator="sa_unet"), ">= 2 levels"),
])
def test_config_errors_are_one_line(model, options, match):
    with pytest.raises(ConfigError, match=match) as err:
        CUT(dataclasses.replace(_cfg(**options), model=dataclasses.replace(CFG.model, **model)))
    assert "\n" not in str(err.value)


def test_lr_d_sets_the_discriminator_rate():
    assert _model().optim_settings() == {}
    assert _model(_cfg(lr_d=1e-4)).optim_settings()["discriminator"].lr == 1e-4


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------
def test_generator_loss_is_gan_plus_mean_of_both_nce_terms():
    model, batch = _model(), _batch()
    out = model.training_step(batch, "generator", _gen(7))
    gen = _gen(7)  # the same patch draws, in the same order: (src, G(src)), then (tgt, G(tgt))
    with torch.no_grad():
        fake, src_feats = model.nce_features(batch.source)
        adv = ((model.discriminator(fake) - 1) ** 2).mean().item()  # lsgan, label real
        nce = model.nce_loss(src_feats, fake, gen).item()
        idt, tgt_feats = model.nce_features(batch.target)
        nce_idt = model.nce_loss(tgt_feats, idt, gen).item()
    assert out["adv"].item() == pytest.approx(adv, rel=1e-5)
    assert out["nce"].item() == pytest.approx(nce, rel=1e-5)
    assert out["nce_idt"].item() == pytest.approx(nce_idt, rel=1e-5)
    assert out["loss"].item() == pytest.approx(adv + 0.5 * (nce + nce_idt), rel=1e-5)
    out["loss"].backward()
    assert all(h[0].weight.grad is not None and h[0].weight.grad.abs().sum() > 0 for h in model.heads)
    plain = _model(_cfg(nce_idt=False, lambda_gan=0.0)).training_step(batch, "generator", _gen(7))
    assert set(plain) == {"loss", "nce"} and plain["loss"].item() == pytest.approx(plain["nce"].item())


def test_nce_loss_matches_a_hand_computation_on_one_tap():
    model = _model(_cfg(nce_layers=(4,), nce_patches=5))
    x = _rand(2, 1, 16, 16, seed=1)
    with torch.no_grad():
        fake, (f_k,) = model.nce_features(x)
        got = model.nce_loss([f_k], fake, _gen(3)).item()
        f_q = model.net.layers[:5](fake)  # [2, 16, 8, 8]
        ids = torch.randperm(64, generator=_gen(3))[:5]
        head = model.heads[0]
        total = 0.0
        for b in range(2):
            q = F.normalize(head(f_q[b].flatten(1)[:, ids].T), dim=1, eps=0)  # [5, 256]
            k = F.normalize(head(f_k[b].flatten(1)[:, ids].T), dim=1, eps=0)
            total += F.cross_entropy(q @ k.T / 0.07, torch.arange(5)).item() / 2
    assert got == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("kind", ["vanilla", "lsgan"])
def test_discriminator_loss_on_unpaired_target_and_cached_fake(kind):
    model, batch = _model(_cfg(gan_loss=kind)), _batch()
    with torch.no_grad():
        fake_before = model.net(batch.source)
    model.training_step(batch, "generator", _gen(0))
    with torch.no_grad():  # an optimiser step on G between the two group steps
        for p in model.net.parameters():
            p.add_(0.05)
    out = model.training_step(batch.slice(0, 4), "discriminator")
    with torch.no_grad():
        real_l, fake_l = model.discriminator(batch.target), model.discriminator(fake_before)
    if kind == "vanilla":
        real, fake = F.softplus(-real_l).mean().item(), F.softplus(fake_l).mean().item()
    else:
        real, fake = ((real_l - 1) ** 2).mean().item(), (fake_l ** 2).mean().item()
    assert out["real"].item() == pytest.approx(real, rel=1e-5)
    assert out["fake"].item() == pytest.approx(fake, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * (real + fake), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.net.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_training_step_checks_group_and_batch():
    model, batch = _model(), _batch()
    with pytest.raises(ValueError, match="got 'model'"):
        model.training_step(batch, "model")
    with pytest.raises(ValueError, match="batch.target is None"):
        model.training_step(Batch(batch.source), "generator")
    with pytest.raises(ValueError, match="source has 2 channels but model.cond_image_channels=1"):
        model.training_step(Batch(batch.source.repeat(1, 2, 1, 1), batch.target), "generator")


def test_single_channel_and_multi_channel_images():
    model, batch = _model(), _batch(2)  # grayscale -> grayscale, the reference CUT's failure case
    assert model.heads[0][0].in_features == 1 and model.net.in_channels == 1
    for group in ("generator", "discriminator"):
        out = model.training_step(batch, group, _gen(0))
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
    assert model.heads[0][0].weight.grad.abs().sum() > 0
    assert model.translate(batch.source).shape == (2, 1, 32, 32)
    three = dataclasses.replace(CFG.model, cond_image_channels=3, out_channels=3)  # RGB works the same way
    rgb = _model(dataclasses.replace(CFG, model=three))
    assert rgb.heads[0][0].in_features == 3 and rgb.discriminator.in_channels == 3
    src, tgt = batch.source.repeat(1, 3, 1, 1), batch.target.repeat(1, 3, 1, 1)
    assert torch.isfinite(rgb.training_step(Batch(src, tgt), "generator", _gen(0))["loss"])


def test_translate_is_deterministic_and_takes_the_pix2pix_option_policy():
    model, batch = _model(_cfg(dropout=0.5)), _batch(2)
    model.train()
    calls = []
    a = model.translate(batch.source, callback=calls.append)
    b = model.translate(batch.source, generator=_gen(5), steps=50, sampler="ddim", eta=1.0)
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b) and len(calls) == 1
    assert model.net.training
    with pytest.raises(ValueError, match="unknown option 'temperature' for method 'cut'") as err:
        model.translate(batch.source, temperature=0.5)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="2 spatial dims"):
        model.translate(batch.source[:, :, None])


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def _fixed_nce(model, batch):
    """PatchNCE (src, G(src)) on ``batch`` with fixed patch draws, eval mode, no gradient."""
    with torch.no_grad():
        fake, feats = model.nce_features(batch.source)
        return model.nce_loss(feats, fake, _gen(11)).item()


def test_short_fit_on_unpaired_phantoms_lowers_nce_and_round_trips(tmp_path):
    """12 steps at 32 px, batch 8, on disjoint-patient (unpaired) spine phantoms."""
    ds = UnpairedDataset(CFG.data, "train")
    fixed = collate([ds[i] for i in range(len(ds))])
    assert not set(fixed.meta["patient_id"]) & set(fixed.meta["target_patient_id"])  # really unpaired
    seed_everything(CFG.seed)  # train_or_load seeds the same way before building the method
    untrained = CUT(CFG)
    before = _fixed_nce(untrained, fixed)
    trained = train_or_load(CFG, root=tmp_path, progress=False, device="cpu")
    assert isinstance(trained, CUT) and not trained.training
    after = _fixed_nce(trained, fixed)
    assert after < 0.7 * before, (before, after)
    pred = trained.translate(fixed.source)
    loaded = train_or_load(CFG, root=tmp_path, progress=False, device="cpu")  # from the cache
    assert loaded is not trained and torch.equal(loaded.translate(fixed.source), pred)
    for a, b in zip(loaded.heads.parameters(), trained.heads.parameters()):
        assert torch.equal(a, b)
