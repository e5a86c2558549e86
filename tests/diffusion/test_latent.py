"""Latent diffusion: LatentSpace over an autoencoder parent; a latent cDDPM on toy_shapes trains and samples at
the latent shape, decodes to the image shape, never clips x0 in latent space; a latent ddpm generates."""
import dataclasses

import pytest
import torch

from medgen.config import ConfigError, get_preset
from medgen.data.batch import collate
from medgen.data.toy import ToyShapes
from medgen.diffusion.latent import LatentSpace, PixelSpace, diffusion_config, is_latent, space_of
from medgen.methods.autoencoder import AutoencoderKLMethod
from medgen.methods.cddpm import ConditionalDDPM
from medgen.methods.ddpm import UnconditionalDDPM
from medgen.nn.unet import Condition
from medgen.presets import latent as presets
from medgen.train import train_or_load
from medgen.zoo import resolve

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = get_preset("ci", task=presets.CDDPM)  # 16 px toy_shapes -> latent 2 x 8 x 8 (f = 2), source encoded
AE_CFG = CFG.parents["autoencoder"]


@pytest.fixture(scope="module")
def autoencoder() -> AutoencoderKLMethod:
    """An untrained ci autoencoder whose scale is estimated on a few training images (eval mode)."""
    torch.manual_seed(0)
    ae = AutoencoderKLMethod(AE_CFG).eval()
    ds = ToyShapes(AE_CFG.data, "train")
    ae.after_fit(iter([collate([ds[i] for i in range(8)])]))
    return ae


def _batch(cfg=CFG, n=4):
    ds = ToyShapes(cfg.data, "train")
    return collate([ds[i] for i in range(n)])


def _latent_cddpm(autoencoder, cfg=CFG):
    torch.manual_seed(0)
    model = ConditionalDDPM(cfg)
    with torch.no_grad():  # the zero-initialised output conv, perturbed: outputs depend on the input
        for p in model.net.conv_out.parameters():
            p.normal_(0, 0.5)
    model.attach_parents({"autoencoder": autoencoder})
    return model


def test_pixel_space_is_the_identity_and_pixel_configs_are_unchanged():
    pixel = get_preset("ci")
    assert not is_latent(pixel) and diffusion_config(pixel) is pixel.diffusion
    space = space_of(ConditionalDDPM(pixel))
    assert isinstance(space, PixelSpace) and not space.latent
    x = torch.rand(2, 1, 16, 16)
    assert space.encode(x) is x and space.decode(x) is x and space.mask(x) is x and space.spatial((16, 16)) == (16, 16)
    assert is_latent(CFG) and diffusion_config(CFG).clip_x0 is False and CFG.diffusion.clip_x0 is True


def test_latent_space_shapes_condition_and_mask(autoencoder):
    space = LatentSpace(autoencoder, "encode")
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    z = space.encode(x)
    assert z.shape == (3, 2, 8, 8) and space.spatial((16, 16)) == (8, 8)
    assert space.decode(z).shape == x.shape
    assert float(space.decode(z * 50, clip=True).abs().max()) <= 1.0
    cond = space.condition(Condition(image=x, vector=torch.ones(3, 4)))
    assert cond.image.shape == (3, 2, 8, 8) and torch.equal(cond.vector, torch.ones(3, 4))
    resized = LatentSpace(autoencoder, "resize").condition(Condition(image=x)).image
    torch.testing.assert_close(resized, torch.nn.functional.avg_pool2d(x, 2))
    mask = torch.zeros(3, 1, 16, 16)
    mask[..., :8, :] = 1
    m = space.mask(mask)
    assert m.shape == (3, 1, 8, 8) and float(m.sum()) == pytest.approx(float(mask.sum()) / 4)
    # the CFG null condition in latent space is the latent of the black image
    null = space.cfg_null(lambda c: Condition(image=torch.full_like(c.image, -1.0)), Condition(image=x))(None)
    torch.testing.assert_close(null.image, space.encode(torch.full_like(x, -1.0)))


def test_latent_cddpm_trains_and_samples_at_the_latent_shape_without_clipping(autoencoder):
    model = _latent_cddpm(autoencoder)
    assert model.denoiser.clip_x0 is False  # never clipped in latent space
    batch = _batch()
    out = model.training_step(batch, "model", torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None for p in autoencoder.parameters())  # the parent is frozen
    model.zero_grad()
    steps = []
    model.eval()
    y = model.translate(batch.source, generator=torch.Generator().manual_seed(1),
                        callback=lambda d: steps.append((tuple(d["x"].shape), tuple(d["x0"].shape),
                                                         float(d["x0"].abs().max()))))
    assert y.shape == batch.target.shape == (4, 1, 16, 16)  # decoded to the image shape
    assert float(y.abs().max()) <= 1.0  # clamped in image space (diffusion.clip_x0)
    assert len(steps) == CFG.sample.steps
    assert all(s[0] == s[1] == (4, 2, 8, 8) for s in steps)  # x_t and x0 live on the latent grid
    assert max(s[2] for s in steps) > 1.0  # x0 is not clipped to [-1, 1] there
    y2 = model.translate(batch.source, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, y2)
    assert model.translate(batch.source, generator=torch.Generator().manual_seed(1), guidance_scale=1.0).shape == y.shape


def test_latent_channels_are_checked_and_an_unattached_parent_is_a_one_line_error(autoencoder):
    model = ConditionalDDPM(CFG)
    with pytest.raises(ConfigError, match="none is attached"):
        model.translate(torch.zeros(1, 1, 16, 16))
    bad = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, in_channels=1, out_channels=1))
    model = ConditionalDDPM(bad)
    model.parents = type(model.parents)({"autoencoder": autoencoder})
    with pytest.raises(ConfigError, match="latent channels"):
        model.translate(torch.zeros(1, 1, 16, 16))


def test_latent_ddpm_generates_images_and_refuses_dps(autoencoder):
    model_cfg = dataclasses.replace(CFG.model, cond_image_channels=0)
    cfg = dataclasses.replace(CFG, method="ddpm", model=model_cfg)
    torch.manual_seed(0)
    model = UnconditionalDDPM(cfg)
    model.attach_parents({"autoencoder": autoencoder})
    out = model.training_step(_batch(), "model", torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    shapes = []
    images = model.eval().generate(3, generator=torch.Generator().manual_seed(0),
                                   callback=lambda d: shapes.append(tuple(d["x"].shape)))
    assert images.shape == (3, 1, 16, 16) and model.image_shape == (1, 16, 16) and shapes[0] == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="pixel-space prior"):
        model.translate(torch.zeros(1, 1, 16, 8))


def test_latent_cddpm_through_train_or_load_and_the_model_finder(tmp_runs):
    """The staged path: the autoencoder parent is trained first (its scale estimated and saved), the latent
    cDDPM trains on it, and a reload attaches the same parent."""
    model = resolve(CFG, runs=tmp_runs, progress=False)
    ae = model.parents["autoencoder"]
    assert ae.scale > 0 and not ae.training and not any(p.requires_grad for p in ae.parameters())
    assert all(not k.startswith("autoencoder") for k in model.state_dict())  # the parent is not in the child's weights
    source = _batch(n=2).source
    y = model.translate(source, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 16, 16)
    again = train_or_load(CFG, root=tmp_runs, progress=False)  # cached: loaded, parent re-attached
    assert again.parents["autoencoder"].scale == pytest.approx(ae.scale)
    torch.testing.assert_close(again.translate(source, generator=torch.Generator().manual_seed(0)), y)


def test_autoencoder_is_an_optional_parent_of_cddpm_and_ddpm_only():
    from medgen.methods.base import ParentError, check_parent_names

    assert ConditionalDDPM.optional_parent_names == UnconditionalDDPM.optional_parent_names == ("autoencoder",)
    check_parent_names("cddpm", (), [], ("autoencoder",))
    check_parent_names("cddpm", (), ["autoencoder"], ("autoencoder",))
    with pytest.raises(ParentError, match=r"unknown parent 'tuner'.*autoencoder \(optional\)"):
        check_parent_names("cddpm", (), ["tuner"], ("autoencoder",))
    with pytest.raises(ParentError, match="unknown parent 'autoencoder'"):
        check_parent_names("pix2pix", (), ["autoencoder"])


def test_pixel_config_is_the_image_space_twin_for_baselines_and_the_cli():
    from medgen.commands import identity_baseline, source_channels
    from medgen.diffusion.latent import pixel_config

    twin = pixel_config(CFG)
    assert twin.parents == {} and not is_latent(twin) and twin.diffusion.latent_condition == "resize"
    assert (twin.model.in_channels, twin.model.out_channels, twin.model.cond_image_channels) == (1, 1, 1)
    assert twin.model.channels == CFG.model.channels and pixel_config(twin) is twin
    assert source_channels(CFG) == 1  # medgen sample takes one image, the autoencoder's input
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(identity_baseline(CFG).translate(x), x)  # the table's trivial row, at the image's channels
