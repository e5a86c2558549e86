"""cddpm: loss and gradients, sampler shapes (2D/3D), determinism, CFG, option errors, learning."""
import dataclasses

import pytest
import torch

from medgen.config import ConfigError, DiffusionConfig, get_preset
from medgen.data.batch import Batch, collate
from medgen.data.toy import ToyShapes
from medgen.diffusion.schedules import respace
from medgen.methods.cddpm import ConditionalDDPM
from medgen.nn.unet import Condition, UNet
from medgen.registry import METHODS, lookup

CFG = get_preset("ci")  # 16 px, UNet (8, 16), T = 100, v-prediction
CFG3D = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, spatial_dims=3, attention_levels=(False, False)))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _model(cfg=CFG, seed=0, perturb=True):
    """A model whose zero-initialised output conv is perturbed, so the output depends on the input."""
    torch.manual_seed(seed)
    model = ConditionalDDPM(cfg)
    if perturb:
        with torch.no_grad():
            for p in model.net.conv_out.parameters():
                p.normal_(0, 0.05)
    return model


def _batch(n=4, size=16):
    ds = ToyShapes(dataclasses.replace(CFG.data, image_size=size, n_train=n), "train")
    return collate([ds[i] for i in range(n)])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered_and_uses_the_configured_unet():
    model = lookup(METHODS, "cddpm")(CFG)
    assert isinstance(model, ConditionalDDPM) and isinstance(model.net, UNet)
    assert model.denoiser.prediction == CFG.diffusion.prediction and model.denoiser.schedule.T == 100
    assert list(model.param_groups()) == ["model"]
    assert len(model.param_groups()["model"]) == len(list(model.net.parameters()))
    # the UNet is stored once (safetensors refuses shared tensors under two names)
    assert all(k.startswith("denoiser.net.") for k in model.state_dict())


def test_needs_an_image_condition():
    cfg = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, cond_image_channels=0))
    with pytest.raises(ConfigError, match="cond_image_channels"):
        ConditionalDDPM(cfg)


def test_training_step_finite_loss_and_gradients_reach_the_unet():
    model = _model(perturb=False)
    batch = _batch()
    opt = torch.optim.SGD(model.param_groups()["model"], lr=1e-2)
    for _ in range(2):  # the zero-init conv_out blocks gradients on the very first step only
        out = model.training_step(batch, "model", _gen())
        assert set(out) >= {"loss", "diffusion", "x0"} and out["loss"].ndim == 0
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    named = dict(model.net.named_parameters())
    assert named["conv_in.weight"].grad.abs().sum() > 0
    without_grad = [n for n, p in named.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without_grad


def test_training_step_is_seeded_and_checks_its_inputs():
    model, batch = _model(), _batch()
    a = model.training_step(batch, "model", _gen(3))["loss"]
    b = model.training_step(batch, "model", _gen(3))["loss"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one optimiser group 'model'"):
        model.training_step(batch, "discriminator")
    with pytest.raises(ValueError, match="batch.target is None"):
        model.training_step(Batch(batch.source), "model")
    with pytest.raises(ValueError, match="source has 2 channels but model.cond_image_channels=1"):
        model.training_step(Batch(batch.source.repeat(1, 2, 1, 1), batch.target), "model")


def test_condition_dropout_replaces_the_source():
    cfg = dataclasses.replace(CFG, diffusion=dataclasses.replace(CFG.diffusion, cond_drop_prob=1.0))
    always, never = _model(cfg), _model(CFG)
    batch = _batch()
    other = Batch(torch.rand_like(batch.source) * 2 - 1, batch.target, batch.mask)
    loss = lambda m, b: m.training_step(b, "model", _gen(5))["loss"]  # noqa: E731
    assert torch.equal(loss(always, batch), loss(always, other))  # source never seen
    assert not torch.equal(loss(never, batch), loss(never, other))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_translate_shapes_determinism_and_callback(sampler):
    model, batch = _model(), _batch(3)
    calls = []
    out = model.translate(batch.source, generator=_gen(1), callback=calls.append, sampler=sampler, steps=3)
    assert out.shape == (3, 1, 16, 16) and torch.isfinite(out).all()
    assert [c["i"] for c in calls] == [0, 1, 2] and calls[0]["t"] == respace(100, 3)[0].item()
    assert torch.equal(out, model.translate(batch.source, generator=_gen(1), sampler=sampler, steps=3))
    assert not torch.equal(out, model.translate(batch.source, generator=_gen(2), sampler=sampler, steps=3))


def test_translate_uses_config_defaults_and_ddim_eta():
    model, batch = _model(), _batch(2)
    calls = []
    model.translate(batch.source, generator=_gen(), callback=calls.append)
    assert len(calls) == CFG.sample.steps  # ddim with cfg.sample.steps
    det = model.translate(batch.source, generator=_gen(), steps=3, eta=0.0)
    noisy = model.translate(batch.source, generator=_gen(), steps=3, eta=1.0)
    assert not torch.equal(det, noisy)
    with pytest.raises(ValueError, match="eta"):
        model.translate(batch.source, generator=_gen(), sampler="dpmpp", steps=3, eta=0.5)


def test_guidance_scale_combines_conditional_and_black_null_predictions():
    model, batch = _model(), _batch(2)
    w = 1.5
    out = model.translate(batch.source, generator=_gen(4), sampler="dpmpp", steps=1, guidance_scale=w)
    plain = model.translate(batch.source, generator=_gen(4), sampler="dpmpp", steps=1)
    # one DPM-Solver++ step to sigma = 0 returns the (guided, clipped) x0 estimate at t = T-1
    x_T = torch.randn(2, 1, 16, 16, generator=_gen(4))
    t = torch.full((2,), 99)
    model.denoiser.clip_x0 = False  # reference predictions unclipped; translate clipped the combination
    cond, null = (model.denoiser(x_T, t, Condition(image=s)).x0 for s in (batch.source, torch.full_like(batch.source, -1.0)))
    # CFG runs both passes as one batch of 2B: float32 kernels may differ slightly from two B passes
    assert torch.allclose(out, ((1 + w) * cond - w * null).clamp(-1, 1), atol=2e-3)
    assert torch.allclose(plain, cond.clamp(-1, 1), atol=1e-5)
    assert (out - plain).abs().max() > 0.05


def test_unknown_option_names_it_and_lists_valid_ones():
    model, batch = _model(), _batch(1)
    with pytest.raises(ValueError, match="unknown option 'step' for method 'cddpm'") as err:
        model.translate(batch.source, step=3)
    msg = str(err.value)
    assert "\n" not in msg and all(k in msg for k in ("sampler", "steps", "eta", "guidance_scale"))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        model.translate(batch.source, sampler="euler", steps=2)


def test_3d_training_and_translation():
    model = _model(CFG3D)
    g = _gen()
    source, target = torch.rand(2, 1, 8, 8, 8, generator=g) * 2 - 1, torch.rand(2, 1, 8, 8, 8, generator=g) * 2 - 1
    loss = model.training_step(Batch(source, target), "model", _gen())["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    for sampler in ("ddim", "dpmpp"):
        out = model.translate(source, generator=_gen(), sampler=sampler, steps=2)
        assert out.shape == (2, 1, 8, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="spatial dims"):
        model.translate(source[:, :, 0], steps=2)


@pytest.mark.slow
def test_short_training_on_toy_data_lowers_the_loss():
    """80 Adam steps at batch 8 (about 3 s on 2 idle cores) halve the held-out loss."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, diffusion=DiffusionConfig(timesteps=100, prediction="v"))
    model = ConditionalDDPM(cfg)
    data = _batch(32)

    def held_loss():
        with torch.no_grad():
            return sum(model.training_step(data, "model", _gen(s))["loss"].item() for s in range(3)) / 3

    before = held_loss()
    opt = torch.optim.Adam(model.param_groups()["model"], lr=2e-3)
    g = _gen(1)
    for _ in range(80):
        idx = torch.randint(0, 32, (8,), generator=g)
        loss = model.training_step(Batch(data.source[idx], data.target[idx], data.mask[idx]), "model", g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    assert after < 0.5 * before, (before, after)
