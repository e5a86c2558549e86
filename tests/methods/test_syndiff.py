"""syndiff: the 4-step schedule and posterior against hand computation, the networks' shapes and
helpers against independent references, parameter groups, both losses against recomputation,
the reverse chain's determinism, and a short fit() on unpaired phantom data that lowers the
cycle losses on a fixed batch, saved and reloaded through train_or_load."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import medgen.data  # noqa: F401 -- fills DATASETS
from medgen.config import ConfigError, TrainConfig, get_preset
from medgen.data.batch import Batch, collate
from medgen.methods.syndiff import (LATENT_DIM, R1_GAMMA, DiffusionDiscriminator, DiffusiveGenerator, SynDiff,
                                    SynDiffOptions, SynDiffSchedule, blur_downsample, disc_downs, minibatch_stddev,
                                    r1_penalty, vp_alpha_bars, vp_betas)
from medgen.nn.gan import PatchDiscriminator, ResnetGenerator
from medgen.registry import DATASETS, METHODS, lookup
from medgen.train import train_or_load
from medgen.utils import seed_everything

BASE = get_preset("ci", task="mri_to_ct/ddim_image")  # 32 px spine phantom, UNet (8, 16)
CFG = dataclasses.replace(
    BASE, name="syndiff_unit", method="syndiff",
    data=dataclasses.replace(BASE.data, dataset="unpaired", registration="", augment=""),
    options=SynDiffOptions(generator="resnet", gen_channels=8, gen_downs=2, res_blocks=2, dropout=0.0, disc_channels=8,
                           disc_layers=3, lambda_gan=1.0, lambda_cycle=0.5),
    train=TrainConfig(steps=12, batch_size=4, lr=3e-3, betas=(0.5, 0.9), ema_decay=0.0, grad_clip=0.0,
                      log_every=4, num_threads=1))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return SynDiff(cfg)


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 1, size, size, generator=g) * 2 - 1, torch.rand(n, 1, size, size, generator=g) * 2 - 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- schedule ---------------------------------------------------------------------------
def test_vp_schedule_matches_hand_computation():
    def abar(u):  # the VP SDE's signal variance exp(-int_0^u beta(s) ds), beta(s) = 0.1 + 19.9 s
        return math.exp(-(0.1 * u + 0.5 * 19.9 * u * u))
    u = [1e-3 + (1 - 1e-3) * k / 4 for k in range(5)]
    expected = [abar(x) / abar(u[0]) for x in u]
    got = vp_alpha_bars()
    assert got.shape == (5,) and got[0].item() == 1.0
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert vp_betas().tolist() == pytest.approx([1 - expected[k] / expected[k - 1] for k in range(1, 5)], rel=1e-12)
    assert expected[4] == pytest.approx(4.3e-5, rel=0.02)  # x_4 is nearly pure noise


@pytest.mark.parametrize("t", [2, 3, 4])
def test_posterior_matches_the_gaussian_product(t):
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x0, 1 - abar_{t-1})."""
    sched = SynDiffSchedule()
    abar = vp_alpha_bars()
    a_prev, a_t = abar[t - 1].item(), abar[t].item()
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    precision = alpha / beta + 1 / (1 - a_prev)
    x0 = torch.tensor([[[[0.7, -0.3]]]], dtype=torch.float64)
    x_t = torch.tensor([[[[-1.2, 0.4]]]], dtype=torch.float64)
    mean_hand = (math.sqrt(alpha) / beta * x_t + math.sqrt(a_prev) / (1 - a_prev) * x0) / precision
    mean, var = sched.posterior(x0, x_t, torch.tensor([t]))
    assert torch.allclose(mean, mean_hand, rtol=1e-10, atol=1e-12)
    assert var.item() == pytest.approx(1 / precision, rel=1e-10)
    noise = torch.tensor([[[[1.0, -2.0]]]], dtype=torch.float64)
    sample = sched.posterior_sample(x0, x_t, torch.tensor([t]), noise)
    assert torch.allclose(sample, mean_hand + noise / math.sqrt(precision), rtol=1e-10)


def test_posterior_at_t1_is_x0_without_noise():
    sched = SynDiffSchedule()
    x0, x_t = torch.randn(3, 1, 4, 4, generator=_gen(0)), torch.randn(3, 1, 4, 4, generator=_gen(1))
    out = sched.posterior_sample(x0, x_t, torch.ones(3, dtype=torch.long), torch.randn(3, 1, 4, 4, generator=_gen(2)))
    assert torch.allclose(out, x0, atol=1e-6)
    with pytest.raises(ValueError, match="1..4"):
        sched.posterior(x0, x_t, torch.zeros(3, dtype=torch.long))


def test_forward_noising_at_t4_is_close_to_standard_normal_and_steps_compose():
    sched = SynDiffSchedule()
    x0 = torch.full((4000, 1, 4, 4), 0.8)
    t4 = torch.full((4000,), 4)
    x4 = sched.q_sample(x0, t4, torch.randn(x0.shape, generator=_gen(0)))
    # mean sqrt(abar_4) * 0.8 = 0.0053, std sqrt(1 - abar_4) ~ 1
    assert abs(x4.mean().item() - math.sqrt(vp_alpha_bars()[4].item()) * 0.8) < 0.01
    assert x4.std().item() == pytest.approx(1.0, abs=0.01)
    # x_3 ~ q(x_3 | x0) then one forward step has the marginal of q(x_4 | x0) (and t = 0 keeps x0)
    x3 = sched.q_sample(x0, t4 - 1, torch.randn(x0.shape, generator=_gen(1)))
    x4b = sched.q_step(x3, t4, torch.randn(x0.shape, generator=_gen(2)))
    assert x4b.mean().item() == pytest.approx(x4.mean().item(), abs=0.01)
    assert x4b.std().item() == pytest.approx(x4.std().item(), abs=0.01)
    assert torch.equal(sched.q_sample(x0[:2], torch.zeros(2, dtype=torch.long), torch.ones(2, 1, 4, 4)), x0[:2])


# ---- networks and helpers ---------------------------------------------------------------
def test_blur_downsample_equals_the_fir_conv():
    x = torch.randn(2, 3, 7, 10, generator=_gen(0), dtype=torch.float64)
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    k = (torch.outer(k1, k1) / 64).expand(3, 1, 4, 4)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1)), k, stride=2, groups=3)  # depthwise FIR conv
    out = blur_downsample(x)
    assert out.shape == (2, 3, 3, 5) and torch.allclose(out, ref, atol=1e-12)


def test_minibatch_stddev_hand_computation():
    h = torch.randn(6, 2, 3, 3, generator=_gen(0), dtype=torch.float64)
    out = minibatch_stddev(h)  # group 3 (largest divisor of 6 <= 4): samples i, i+2, i+4
    assert out.shape == (6, 3, 3, 3) and torch.equal(out[:, :2], h)
    for i in range(2):
        members = h[i::2]
        feat = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean().item()
        assert out[i, 2].flatten().tolist() == pytest.approx([feat] * 9, rel=1e-10)
        assert out[i + 4, 2, 0, 0].item() == pytest.approx(feat, rel=1e-10)


def test_diffusion_discriminator_and_generator_shapes():
    d = DiffusionDiscriminator(1, ndf=8, downs=disc_downs(32))
    assert disc_downs(32) == 3 and disc_downs(64) == 4 and disc_downs(256) == 6 and disc_downs(8) == 1
    x = torch.randn(4, 1, 32, 32, generator=_gen(0))
    t = torch.tensor([1, 2, 3, 4])
    logits = d(x, x.flip(0), t)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    # every block's second conv starts at zero (the block is its skip path), so t enters only after training
    assert torch.allclose(d(x, x.flip(0), t.flip(0)), logits)
    with torch.no_grad():
        for block in d.blocks:
            torch.nn.init.normal_(block.conv2.weight, std=0.1, generator=_gen(3))
    assert not torch.allclose(d(x, x.flip(0), t.flip(0)), d(x, x.flip(0), t), atol=1e-4)  # t matters
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        d(x, x[:, :, :16], t)
    g = DiffusiveGenerator(CFG.model, channels=1, cond_channels=2)
    out = g(x, t, x.repeat(1, 2, 1, 1), torch.randn(4, LATENT_DIM))
    assert out.shape == (4, 1, 32, 32) and torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv


def test_r1_penalty_of_a_linear_critic():
    w = torch.randn(1, 2, 3, 3, generator=_gen(0))
    x = torch.randn(4, 2, 3, 3, generator=_gen(1), requires_grad=True)
    logits = (w * x).flatten(1).sum(1) + (x ** 2).flatten(1).sum(1)  # grad = w + 2x per sample
    expected = (w + 2 * x.detach()).pow(2).flatten(1).sum(1).mean()
    pen = r1_penalty(logits, x)
    assert pen.item() == pytest.approx(expected.item(), rel=1e-6) and pen.requires_grad


# ---- the method -------------------------------------------------------------------------
def test_registered_with_disjoint_complete_groups():
    model = lookup(METHODS, "syndiff")(CFG)
    groups = model.param_groups()
    assert list(groups) == ["discriminator", "generator"]
    ids = [{id(p) for p in ps} for ps in groups.values()]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    assert ids[1] == {id(p) for n in SynDiff.GENERATORS for p in getattr(model, n).parameters()}
    assert isinstance(model.nd_s2t, ResnetGenerator) and isinstance(model.dnd_target, PatchDiscriminator)
    assert model.dnd_target.in_channels == 1 and model.d_target.channels == 1  # unconditional / pair discriminators


@pytest.mark.parametrize("model,options,match", [
    (dict(cond_image_channels=0), {}, "cond_image_channels"),
    (dict(spatial_dims=3), {}, "2D only"),
    ({}, dict(gan_loss="lsgan"), "syndiff.gan_loss: must be 'vanilla' .*, got 'lsgan'"),
    ({}, dict(lambda_cycle=-1.0), "syndiff.lambda_cycle: must be >= 0, got -1.0"),
])
def test_config_errors_are_one_line(model, options, match):
    with pytest.raises(ConfigError, match=match) as err:
        SynDiff(dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, **model),
                                    options=dataclasses.replace(CFG.options, **options)))
    assert "\n" not in str(err.value)


def test_lr_d_sets_the_discriminators_rate():
    assert lookup(METHODS, "syndiff")(CFG).optim_settings() == {}
    cfg = dataclasses.replace(CFG, options=dataclasses.replace(CFG.options, lr_d=1e-4))
    assert SynDiff(cfg).optim_settings()["discriminator"].lr == 1e-4


def test_generator_loss_matches_recomputation_and_reaches_every_generator():
    model, batch = _model(), _batch()
    out = model.training_step(batch, "generator", _gen(5))
    s, c = batch.source, batch.target
    with torch.no_grad():
        cycle = (model.nd_s2t(model.nd_t2s(c)) - c).abs().mean() + (model.nd_t2s(model.nd_s2t(s)) - s).abs().mean()
        adv_nd = F.softplus(-model.dnd_target(model.nd_s2t(s))).mean() + \
            F.softplus(-model.dnd_source(model.nd_t2s(c))).mean()
    assert out["cycle"].item() == pytest.approx(cycle.item(), rel=1e-5)
    assert out["adv_nd"].item() == pytest.approx(adv_nd.item(), rel=1e-5)
    # untrained diffusive generators predict x0_hat = 0, so their L1 is mean|c| + mean|s|
    assert out["diff_l1"].item() == pytest.approx((c.abs().mean() + s.abs().mean()).item(), rel=1e-5)
    expected = out["adv_diff"] + out["adv_nd"] + 0.5 * (out["cycle"] + out["diff_l1"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    again = model.training_step(batch, "generator", _gen(5))
    assert again["adv_diff"].item() == out["adv_diff"].item()  # the draws come from the generator
    out["loss"].backward()
    for name in SynDiff.GENERATORS:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


def test_discriminator_loss_sums_its_terms_and_does_not_reach_generators():
    model, batch = _model(), _batch()
    out = model.training_step(batch, "discriminator", _gen(1))
    expected = out["real"] + out["fake"] + 0.5 * R1_GAMMA * out["r1"] + out["nd_real"] + out["nd_fake"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    s, c = batch.source, batch.target
    with torch.no_grad():
        nd_fake = (F.softplus(model.dnd_target(model.nd_s2t(s))).mean()
                   + F.softplus(model.dnd_source(model.nd_t2s(c))).mean())
    assert out["nd_fake"].item() == pytest.approx(nd_fake.item(), rel=1e-5)
    assert out["r1"].item() > 0
    out["loss"].backward()
    assert all(p.grad is None for n in SynDiff.GENERATORS for p in getattr(model, n).parameters())
    for name in SynDiff.DISCRIMINATORS:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


def test_training_step_checks_group_and_batch():
    model, batch = _model(), _batch(2)
    with pytest.raises(ValueError, match="got 'model'"):
        model.training_step(batch, "model")
    with pytest.raises(ValueError, match="needs batches with a target"):
        model.training_step(Batch(batch.source), "generator")
    with pytest.raises(ValueError, match=r"source \(model.cond_image_channels\) has 2 channels, expected 1"):
        model.training_step(Batch(batch.source.repeat(1, 2, 1, 1), batch.target), "generator")


def test_translate_chain_is_deterministic_per_generator():
    model, batch = _model(), _batch(2)
    with torch.no_grad():  # leave the zero init, under which every chain ends at x0_hat = 0
        torch.nn.init.normal_(model.g_target.unet.conv_out.weight, std=0.2, generator=_gen(9))
    model.train()
    calls = []
    a = model.translate(batch.source, generator=_gen(1), callback=calls.append, steps=50, sampler="ddim")
    b = model.translate(batch.source, generator=_gen(1))
    c = model.translate(batch.source, generator=_gen(2))
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)
    assert [d["t"] for d in calls] == [4, 3, 2, 1] and torch.equal(calls[-1]["x0"], a)  # x_0 = last x0_hat
    assert model.g_target.training  # mode restored
    assert model.translate_reverse(batch.target, generator=_gen(1)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown option 'temperature' for method 'syndiff'"):
        model.translate(batch.source, temperature=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """12 steps at 32 px, batch 4, on the unpaired spine phantom (a few seconds on one thread)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    ds = lookup(DATASETS, "unpaired")(CFG.data, "train")
    fixed = collate([ds[i] for i in range(len(ds))])
    assert fixed.meta["patient_id"] != fixed.meta["target_patient_id"]  # unpaired
    seed_everything(CFG.seed)  # train_or_load seeds the same way before building the method
    untrained = SynDiff(CFG)
    model = train_or_load(CFG, root=root, progress=False, device="cpu")
    return root, fixed, untrained, model


def _cycle_losses(model, batch):
    with torch.no_grad():
        out = model.training_step(batch, "generator", _gen(3))
    return out["cycle"].item(), out["diff_l1"].item()


def test_short_fit_lowers_the_cycle_losses_on_a_fixed_batch(trained):
    _, fixed, untrained, model = trained
    assert isinstance(model, SynDiff) and not model.training
    cycle0, diff0 = _cycle_losses(untrained, fixed)
    cycle1, diff1 = _cycle_losses(model, fixed)
    assert cycle1 < 0.8 * cycle0, (cycle0, cycle1)
    assert diff1 < 0.8 * diff0, (diff0, diff1)


def test_checkpoint_round_trip_through_train_or_load(trained):
    root, fixed, _, model = trained
    pred = model.translate(fixed.source, generator=_gen(4))
    loaded = train_or_load(CFG, root=root, progress=False, device="cpu")  # from the cache
    assert loaded is not model and isinstance(loaded, SynDiff)
    assert torch.equal(loaded.translate(fixed.source, generator=_gen(4)), pred)
    assert not torch.equal(pred, torch.zeros_like(pred))
