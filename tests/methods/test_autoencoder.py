"""autoencoder_kl: losses and groups, the latent scale estimated at the end of fit and saved with the
weights, translate = reconstruction (the ceiling row), options."""
import dataclasses

import pytest
import torch

from medgen.checkpoint import load_translator
from medgen.config import ConfigError, apply_overrides, get_preset
from medgen.data.batch import collate
from medgen.data.toy import ToyShapes
from medgen.evaluate import evaluate
from medgen.methods.autoencoder import AutoencoderKLMethod, AutoencoderOptions
from medgen.presets import latent as presets
from medgen.registry import METHODS, lookup
from medgen.train import fit, training_batches

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = get_preset("ci", task=presets.AUTOENCODER)  # 16 px toy_shapes, clean -> clean; (8, 16), f = 2, 2 latent ch


def _batch(cfg=CFG, n=4):
    ds = ToyShapes(cfg.data, "train")
    return collate([ds[i] for i in range(n)])


def test_registered_with_its_options_and_one_group():
    model = lookup(METHODS, "autoencoder_kl")(CFG)
    assert isinstance(model, AutoencoderKLMethod) and isinstance(model.options, AutoencoderOptions)
    assert model.latent_channels == 2 and model.factor == 2 and model.discriminator is None
    assert list(model.param_groups()) == ["autoencoder"]
    assert model.scale == 0.0  # not estimated before training
    batch = _batch()
    assert torch.equal(batch.source, batch.target)  # data.source = "target": it learns (and scores) clean images


def test_training_step_reconstruction_plus_kl_and_gradients():
    torch.manual_seed(0)
    model = AutoencoderKLMethod(CFG)
    out = model.training_step(_batch(), "autoencoder", torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "l1", "kl"} and torch.isfinite(out["loss"])
    assert float(out["loss"].detach()) == pytest.approx(float(out["l1"]) + 1e-6 * float(out["kl"]), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.autoencoder.net.encoder.parameters())


def test_adversarial_term_is_optional_and_adds_a_discriminator_group():
    cfg = apply_overrides(CFG, ["options.adversarial_weight=0.1", "options.disc_channels=8", "options.disc_layers=1",
                                "options.gan_loss=lsgan"])
    torch.manual_seed(0)
    model = AutoencoderKLMethod(cfg)
    assert list(model.param_groups()) == ["autoencoder", "discriminator"]
    batch = _batch()
    out = model.training_step(batch, "autoencoder", torch.Generator().manual_seed(0))
    assert "adversarial" in out and torch.isfinite(out["loss"])
    d = model.training_step(batch, "discriminator", torch.Generator().manual_seed(0))
    assert torch.isfinite(d["loss"])
    with pytest.raises(ConfigError, match="autoencoder_kl.gan_loss"):
        apply_overrides(CFG, ["options.gan_loss=wgan"])
    with pytest.raises(ConfigError, match="autoencoder_kl.latent_channels"):
        AutoencoderOptions(latent_channels=0)


def test_fit_estimates_the_scale_saves_it_and_translate_is_the_reconstruction(tmp_path):
    cfg = CFG
    torch.manual_seed(cfg.seed)
    model = AutoencoderKLMethod(cfg)
    ds = ToyShapes(cfg.data, "train")
    result = fit(model, ds, cfg.train, out_dir=tmp_path, run_config=cfg, seed=cfg.seed, progress=False)
    assert model.scale > 0
    # the scale makes the latents of the training batches it was estimated on unit-variance
    used = [b.target for _, b in zip(range(model.options.scale_batches), training_batches(ds, cfg.train, cfg.seed))]
    z = torch.cat([model.encode(x) for x in used])
    assert float(z.double().var()) == pytest.approx(1.0, rel=1e-3)
    # saved with the weights (a buffer), reloaded with the checkpoint
    loaded = load_translator(result.checkpoint)
    assert loaded.scale == pytest.approx(model.scale)
    x = used[0]
    torch.testing.assert_close(loaded.encode(x), model.encode(x))
    # translate = decode(encode(x)): the reconstruction, deterministic
    rec = loaded.translate(x, steps=3)  # sampling options are accepted and ignored
    torch.testing.assert_close(rec, loaded.decode(loaded.encode(x)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec, loaded.translate(x))
    # evaluate scores the reconstruction of the clean test images: the latent table's ceiling row
    rows = evaluate(loaded, ToyShapes(cfg.data, "test"), ("psnr",), batch_size=4)
    assert len(rows) == cfg.data.n_test and rows["value"].notna().all()
    # resuming a finished run keeps the scale (nothing is re-estimated)
    again = AutoencoderKLMethod(cfg)
    fit(again, ds, cfg.train, out_dir=tmp_path, run_config=cfg, seed=cfg.seed, progress=False)
    assert again.scale == pytest.approx(model.scale)


def test_3d_autoencoder_trains_a_step():
    model_cfg = dataclasses.replace(CFG.model, spatial_dims=3)
    torch.manual_seed(0)
    model = AutoencoderKLMethod(dataclasses.replace(CFG, model=model_cfg))
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    from medgen.data.batch import Batch

    out = model.training_step(Batch(source=x, target=x, mask=None, meta={}), "autoencoder",
                              torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    model.after_fit(iter([Batch(source=x, target=x, mask=None, meta={})]))
    assert model.encode(x).shape == (2, 2, 4, 4, 4) and model.translate(x).shape == x.shape
