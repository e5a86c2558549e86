"""ddpm (unconditional prior): registration, config check, learning, generation, DPS delegation."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
from medgen.config import ConfigError, get_preset
from medgen.data.batch import Batch, collate
from medgen.methods.ddpm import DPS_DEFAULTS, DPS_SAMPLER, UnconditionalDDPM
from medgen.nn.unet import UNet
from medgen.registry import DATASETS, METHODS, lookup

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR = get_preset("ci", task="lung_us/prior")  # 32 px lung CT, UNet (8, 16), T = 4000, learned variances
# A plain-eps variant (one output channel, fixed variances) for the generic tests.
PLAIN = dataclasses.replace(PRIOR, model=dataclasses.replace(PRIOR.model, out_channels=1),
                            diffusion=dataclasses.replace(PRIOR.diffusion, learn_sigma=False))


def _model(cfg=PLAIN, seed=0, perturb=True) -> UnconditionalDDPM:
    """A model whose zero-initialised output conv is perturbed, so the output depends on the input."""
    torch.manual_seed(seed)
    model = UnconditionalDDPM(cfg)
    if perturb:
        with torch.no_grad():
            for p in model.net.conv_out.parameters():
                p.normal_(0, 0.05)
    return model.eval()


def _batch(n=4) -> Batch:
    """``n`` lung sections of the prior's own data config (source = ct, no target)."""
    ds = lookup(DATASETS, PRIOR.data.dataset)(dataclasses.replace(PRIOR.data, n_train=n), "train")
    return collate([ds[i] for i in range(n)])


def _gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered_unconditional_and_conditioned_models_are_refused():
    model = lookup(METHODS, "ddpm")(PLAIN)
    assert isinstance(model, UnconditionalDDPM) and isinstance(model.net, UNet)
    assert model.net.conv_in.in_channels == PLAIN.model.in_channels  # nothing concatenated to x_t
    assert list(model.param_groups()) == ["model"] and model.image_shape == (1, 32, 32)
    assert all(k.startswith("denoiser.net.") for k in model.state_dict())
    with pytest.raises(ConfigError, match="model.cond_image_channels must be 0"):
        UnconditionalDDPM(dataclasses.replace(PLAIN, model=dataclasses.replace(PLAIN.model, cond_image_channels=1)))


def test_trains_on_the_source_when_there_is_no_target_and_on_the_target_otherwise():
    model, batch = _model(), _batch()
    assert batch.target is None and batch.source.shape == (4, 1, 32, 32)
    a = model.training_step(batch, "model", _gen(3))["loss"]
    assert torch.equal(a, model.training_step(batch, "model", _gen(3))["loss"])  # seeded
    paired = Batch(torch.zeros(4, 1, 32, 16), batch.source)  # e.g. a measurement -> ct pair: the ct is the image
    assert torch.equal(model.training_step(paired, "model", _gen(3))["loss"], a)
    with pytest.raises(ValueError, match="one optimiser group 'model'"):
        model.training_step(batch, "generator")
    with pytest.raises(ValueError, match="in_channels"):
        model.training_step(Batch(torch.zeros(2, 2, 32, 32)), "model")


def test_loss_decreases_when_training_on_lung_sections():
    """Loss at a fixed (t, noise) draw before and after 25 Adam steps on a fixed batch of 4 sections."""
    model, batch = _model(perturb=False).train(), _batch()
    probe = lambda: float(model.training_step(batch, "model", _gen(123))["loss"].detach())  # noqa: E731
    before = probe()
    opt = torch.optim.Adam(model.param_groups()["model"], lr=3e-3)
    for step in range(25):
        loss = model.training_step(batch, "model", _gen(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = probe()
    assert after < 0.7 * before, (before, after)


def test_generate_shape_range_and_reproducibility():
    model = _model()
    a = model.generate(3, generator=_gen(1), steps=3)
    assert a.shape == (3, 1, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1.0 and a.max() <= 1.0 and torch.isfinite(a).all()
    assert torch.equal(a, model.generate(3, generator=_gen(1), steps=3))
    assert not torch.allclose(a, model.generate(3, generator=_gen(2), steps=3))
    # x_T is drawn for all n first: the deterministic DDIM (eta 0) gives the same images in any chunking
    ddim = dict(sampler="ddim", eta=0.0, steps=3)
    assert torch.allclose(model.generate(3, generator=_gen(1), **ddim),
                          model.generate(3, generator=_gen(1), batch_size=2, **ddim), atol=1e-5)
    assert model.generate(2, generator=_gen(1), sampler="ddpm", steps=2).shape == (2, 1, 32, 32)
    calls = []
    model.generate(2, generator=_gen(1), steps=3, batch_size=1, callback=calls.append)
    assert len(calls) == 6 and calls[0]["x0"].shape == (1, 1, 32, 32)  # 2 chunks x 3 steps


def test_generate_option_errors():
    model = _model()
    with pytest.raises(ValueError, match="unknown option 'scale' for method 'ddpm'"):
        model.generate(1, scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale must be 0"):
        model.generate(1, guidance_scale=1.0)
    assert model.generate(1, guidance_scale=0.0, steps=1).shape == (1, 1, 32, 32)  # cfg.sample's field, accepted
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(2, batch_size=0)


def test_the_presets_learned_variances_are_trained_and_sampled():
    model = _model(PRIOR)
    assert model.denoiser.learn_sigma and PRIOR.model.out_channels == 2
    out = model.training_step(_batch(2), "model", _gen(0))
    assert "vlb" in out and torch.isfinite(out["loss"]) and float(out["loss"].detach()) > float(out["diffusion"])
    x = model.generate(2, generator=_gen(0), sampler="ddpm", steps=3)
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()


def test_translate_is_dps_through_medgen_inverse():
    """reconstruct == inverse.dps_reconstruct on the model's denoiser with make_operator(...) at its size
    (clamped), translate == the mean over samples; the guidance is active (scale 0 differs)."""
    inv = pytest.importorskip("medgen.inverse")
    model = _model(dataclasses.replace(PLAIN, sample=dataclasses.replace(PLAIN.sample, sampler="ddim")))
    op = inv.make_operator("us_linear", size=32)
    y = inv.measure(op, _batch(2).source, generator=_gen(5))
    assert y.shape == (2, 1, 32, 16)
    opts = dict(steps=3, scale=5.0, n_samples=2)
    samples = model.reconstruct(y, generator=_gen(7), **opts)
    # the DPS default sampler is ancestral DDPM (DPS_SAMPLER) whatever the preset's generation sampler
    assert DPS_SAMPLER == "ddpm"
    assert model.sampling_options({"sampler": "ddim"})["sampler"] == "ddim"
    direct = inv.dps_reconstruct(model.denoiser, op, y, scale=5.0, steps=3, n_samples=2, sampler=DPS_SAMPLER,
                                 eta=0.0, normalize=True, generator=_gen(7), spacing=PLAIN.sample.spacing)
    assert samples.shape == (2, 2, 1, 32, 32)
    assert torch.allclose(samples, direct.clamp(-1, 1), atol=1e-5)
    assert torch.allclose(model.translate(y, generator=_gen(7), **opts), samples.mean(0), atol=1e-6)
    assert DPS_DEFAULTS["operator"] == "us_linear"  # the default operator, by name
    assert torch.allclose(model.reconstruct(y, generator=_gen(7), operator=op, **opts), samples, atol=1e-6)
    assert not torch.allclose(model.reconstruct(y, generator=_gen(7), **{**opts, "scale": 0.0}), samples, atol=1e-4)
    blur = model.reconstruct(torch.zeros(1, 1, 32, 32), generator=_gen(7), operator="blur",
                             operator_options={"sigma": 1.0}, steps=2)
    assert blur.shape == (1, 1, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown option 'guidance'"):
        model.translate(y, guidance=1.0)


def test_prior_sample_grids_and_fp16_export_use_generation(tmp_path):
    """The training loop's sample grids and the export check ask the method for outputs_for(source):
    the prior generates (its source is an image, not a measurement DPS could invert)."""
    from medgen import checkpoint as ck
    from medgen.train import SAMPLES_DIR, run_dir_for, train_or_load

    cfg = dataclasses.replace(PRIOR, train=dataclasses.replace(PRIOR.train, steps=2, sample_every=2, num_threads=1))
    root = tmp_path / "runs"
    train_or_load(cfg, root=root, progress=False)
    run = run_dir_for(cfg, root)
    assert sorted(p.name for p in (run / SAMPLES_DIR).iterdir()) == ["step_00000002.png"]
    model = ck.load_translator(run, config=cfg)
    src = _batch(2).source
    out = model.outputs_for(src, generator=_gen(5))
    assert out.shape == (2, *model.image_shape)
    assert torch.equal(out, model.generate(2, generator=_gen(5)))
    shipped = ck.export_checkpoint(run, tmp_path / "ship", verify_source=src)
    psnr = json.loads((shipped / "manifest.json").read_text())["export"]["output_psnr_db"]
    assert psnr >= 40.0
