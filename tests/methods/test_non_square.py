"""Non-square images (H != W) through every method: train 2 steps with fit(), translate at 32x16 / 16x32.

The coronal spine phantom renders at its paper aspect ratio 2:1 (``image_size=16`` -> 32x16);
``data.image_height`` sets any other height (16x32 here; the sagittal phantom at 32x16 for the
segmenter). Square configs are untouched by the non-square code: their pinned results
(tests/test_pinned.py) and shipped checkpoints do not change.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import (DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig, from_dict,
                           to_dict)
from medgen.data.batch import collate
from medgen.data.datasets import spatial_shape
from medgen.registry import DATASETS, METHODS
from medgen.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread

CORONAL = DataConfig(dataset="paired", phantom="spine_coronal", source="us_vpi[2]", target="xray", image_size=16,
                     n_train=4, n_test=2)  # 32 x 16 (the phantom's 2:1)
WIDE = dataclasses.replace(CORONAL, image_size=32, image_height=16)  # 16 x 32
TOY_WIDE = DataConfig(image_size=32, image_height=16, n_train=4, n_test=2)  # toy_shapes at 16 x 32
UNET = UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4, num_heads=2, cond_image_channels=1)
TRAIN = TrainConfig(steps=2, batch_size=2, lr=1e-3, ema_decay=0.0, log_every=1, num_threads=1)
OPTIONS = {"pix2pix": dict(gen_channels=8, gen_downs=3, dropout=0.0, disc_channels=8, disc_layers=2),
           "cut": dict(generator="resnet", gen_channels=8, gen_downs=1, res_blocks=8, dropout=0.0, disc_channels=8,
                       disc_layers=2, gan_loss="lsgan", nce_patches=16),
           "syndiff": dict(generator="resnet", gen_channels=8, gen_downs=2, res_blocks=2, dropout=0.0,
                           disc_channels=8, disc_layers=2)}


def _config(method: str, data: DataConfig) -> RunConfig:
    model = UNET
    if method == "ddpm":
        data, model = dataclasses.replace(data, source="xray", target=""), dataclasses.replace(UNET, cond_image_channels=0)
    if method == "segmenter":  # CT -> labels of the sagittal phantom, rendered at data.image_height x image_size
        data = dataclasses.replace(data, phantom="spine_sagittal", source="ct", target="")
        model = dataclasses.replace(UNET, out_channels=31, channels=(8, 16, 32), attention_levels=(False,) * 3,
                                    cond_image_channels=0, position_ramps=True)
    parts = dict(data=data, model=model, train=TRAIN, diffusion=DiffusionConfig(timesteps=20), sample=SampleConfig(steps=2))
    # the GAN settings as a config.json "gan" section: read into the method's own options
    return from_dict({"name": f"nonsquare_{method}", "method": method, **{k: to_dict(v) for k, v in parts.items()},
                      **({"gan": OPTIONS[method]} if method in OPTIONS else {})}, RunConfig)


CASES = [(m, CORONAL) for m in ("cddpm", "ddpm", "pix2pix", "cut", "syndiff", "identity", "gaussian_filter")]
CASES += [("segmenter", dataclasses.replace(CORONAL, image_height=32)), ("cddpm", TOY_WIDE), ("ddpm", WIDE)]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # spine_sagittal at 16 px wide
@pytest.mark.parametrize("method, data", CASES, ids=[f"{m}-{d.image_height or 2 * d.image_size}x{d.image_size}"
                                                     for m, d in CASES])
def test_method_trains_and_translates_non_square(method, data, tmp_path):
    cfg = _config(method, data)
    hw = spatial_shape(cfg.data)
    assert hw[0] != hw[1] and hw in ((32, 16), (16, 32))
    train = DATASETS[cfg.data.dataset](cfg.data, "train")
    assert tuple(train[0]["source"].shape[1:]) == hw
    torch.manual_seed(0)
    model = METHODS[method](cfg)
    if model.param_groups():
        assert fit(model, train, cfg.train, out_dir=tmp_path, progress=False, device="cpu").step == 2
    batch = collate([DATASETS[cfg.data.dataset](cfg.data, "test")[i] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    if method == "ddpm":  # the prior generates at the data's (H, W); translate reconstructs a measurement
        assert model.image_shape == (1, *hw)
        assert model.generate(3, generator=g).shape == (3, 1, *hw)
        op = model.operator("inpaint")
        out = model.translate(op(batch.source), operator="inpaint", generator=g)
    else:
        out = model.translate(batch.source, generator=g)
    assert out.shape == (2, cfg.model.out_channels if method != "segmenter" else 1, *hw)
    assert torch.isfinite(out).all()
    if method == "segmenter":  # segment(resize=True) resizes to the training size (32, 16) and back
        assert model.size == hw
        assert model.segment(torch.zeros(1, 1, 64, 32), resize=True).shape == (1, 64, 32)


def test_spatial_shape_rules():
    assert spatial_shape(DataConfig(image_size=24)) == (24, 24)  # toy_shapes: square
    assert spatial_shape(DataConfig(image_size=24, image_height=40)) == (40, 24)
    toy = DATASETS["toy_shapes"](DataConfig(image_size=24, image_height=40, n_train=2), "train")
    assert toy[1]["source"].shape == toy[1]["target"].shape == (1, 40, 24)
    assert spatial_shape(CORONAL) == (32, 16) and spatial_shape(WIDE) == (16, 32)
    knee = DataConfig(dataset="volume", phantom="knee", source="mri", target="mri", image_size=16)
    assert spatial_shape(knee, 3) == (4, 16, 16)
    assert spatial_shape(dataclasses.replace(knee, depth=6, image_height=24), 3) == (6, 24, 16)
    assert DATASETS["volume"](dataclasses.replace(knee, depth=6, image_height=24, n_test=1), "test").spatial_shape \
        == (6, 24, 16)


def test_sample_command_resizes_to_the_models_non_square_size():
    """``medgen sample`` (commands.translate_image) feeds the model at its (H, W) = (32, 16), not a square."""
    import numpy as np

    from medgen.commands import translate_image

    cfg = _config("identity", CORONAL)
    model = METHODS["identity"](cfg)
    notes: list[str] = []
    assert translate_image(model, np.full((32, 16), 0.5, np.float32), cfg, notes=notes).shape == (32, 16)
    assert notes == []
    out = translate_image(model, np.full((64, 40), 0.5, np.float32), cfg, notes=notes)
    assert out.shape == (64, 40) and np.allclose(out, 0.5, atol=1e-6)
    assert notes and "the model works at 32x16" in notes[0]
