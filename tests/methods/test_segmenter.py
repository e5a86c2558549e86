"""segmenter: label <-> class mapping, config errors, the DiceCE target built from the batch meta, segment /
translate formats, 2D and 3D steps, presets consistent with the mri_to_ct translators, every paper model
stepping once on a tiny input, and a short fit at ci that beats the untrained net on Dice (through
train_or_load, reloaded from the cache)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
from medgen.config import ConfigError, get_preset
from medgen.data.batch import Batch, collate
from medgen.experiments.spine_dice import ceiling, summarize
from medgen.methods.segmenter import (CLASS_LABELS, LABEL_KEY, N_CLASSES, Segmenter, classes_to_labels,
                                      labels_to_classes, segmenter_presets)
from medgen.registry import DATASETS, METHODS, lookup
from medgen.train import train_or_load
from medgen.utils import seed_everything

CI = segmenter_presets()["ci"]
CI3 = segmenter_presets(volume=True)["ci"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _batch(cfg=CI, n=4, split="train"):
    data = dataclasses.replace(cfg.data, n_train=n, n_test=n)
    ds = lookup(DATASETS, cfg.data.dataset)(data, split)
    return collate([ds[i] for i in range(n)])


def test_classes_map_to_phantom_labels_and_back():
    assert N_CLASSES == 31 and CLASS_LABELS[:4] == (0, 11, 12, 13) and CLASS_LABELS[-1] == 103
    labels = torch.tensor(CLASS_LABELS)
    classes = labels_to_classes(labels)
    assert classes.tolist() == list(range(31))
    assert torch.equal(classes_to_labels(classes), labels)
    for bad in (14, 110, -1):
        with pytest.raises(ValueError, match=f"label value {bad} "):
            labels_to_classes(torch.tensor([0, bad]))


def test_registered_one_group_and_position_ramps():
    model = lookup(METHODS, "segmenter")(CI)
    assert isinstance(model, Segmenter) and list(model.param_groups()) == ["model"]
    first = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 + 2  # CT + (row, col) ramps
    assert model.logits(torch.zeros(2, 1, 32, 32)).shape == (2, 31, 32, 32)


@pytest.mark.parametrize("change,match", [
    (dict(model=dataclasses.replace(CI.model, out_channels=1)), "model.out_channels=31"),
    (dict(data=dataclasses.replace(CI.data, target="ct")), "data.target=''"),
    (dict(model=dataclasses.replace(CI.model, channels=(8,))), "two model.channels"),
])
def test_config_errors_are_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as err:
        Segmenter(dataclasses.replace(CI, **change))
    assert "\n" not in str(err.value)


def test_loss_target_is_the_meta_label_map():
    """Logits that put a large value on the class of each meta label give ~0 loss; the same logits
    against labels one vertebra off give a large loss (so the target really is LABEL_KEY, mapped right)."""
    batch = _batch()
    model = Segmenter(CI)
    classes = labels_to_classes(torch.stack(batch.meta[LABEL_KEY]))  # [B, H, W]
    perfect = torch.nn.functional.one_hot(classes, 31).movedim(-1, 1).float() * 30.0
    model.logits = lambda source: perfect  # the network is not under test here
    assert model.training_step(batch, "model")["loss"].item() < 0.02
    shifted = [torch.where(lab > 0, (lab + 10).clamp(max=103), lab) for lab in batch.meta[LABEL_KEY]]
    wrong = Batch(batch.source, None, batch.mask, {**batch.meta, LABEL_KEY: shifted})
    assert model.training_step(wrong, "model")["loss"].item() > 1.0
    with pytest.raises(ValueError, match="no label map 'labels_ct'"):
        model.training_step(Batch(batch.source), "model")


def test_segment_and_translate_formats():
    model = Segmenter(CI)
    ct = _batch().source
    labels = model.segment(ct)
    assert labels.dtype == torch.long and labels.shape == (4, 32, 32)
    assert set(labels.unique().tolist()) <= set(CLASS_LABELS)
    out = model.translate(ct, steps=3, eta=1.0)  # sampling options are accepted and ignored
    assert out.dtype == torch.float32 and out.shape == (4, 1, 32, 32) and torch.equal(out[:, 0].long(), labels)
    with pytest.raises(ValueError, match="unknown option 'temperature'"):
        model.translate(ct, temperature=1.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.segment(torch.zeros(1, 1, 30, 32))


def test_segment_resize_takes_any_size_and_answers_at_it():
    """resize=True: a CT of another size is resized to the segmenter's (antialiased bilinear) and the
    labels come back at the CT's size (nearest); at the segmenter's own size it changes nothing."""
    import torch.nn.functional as F

    model = Segmenter(CI)
    assert model.size == (32, 32)
    ct = _batch().source  # [4, 1, 32, 32]
    assert torch.equal(model.segment(ct, resize=True), model.segment(ct))
    big = F.interpolate(ct, size=(64, 64), mode="nearest")
    small = F.interpolate(big, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    want = F.interpolate(model.segment(small)[:, None].float(), size=(64, 64), mode="nearest")[:, 0].long()
    got = model.segment(big, resize=True)
    assert got.shape == (4, 64, 64) and torch.equal(got, want)
    assert model.segment(torch.zeros(1, 1, 30, 40), resize=True).shape == (1, 30, 40)  # no divisibility needed


def test_3d_step_reaches_every_parameter():
    batch = _batch(CI3, n=2)
    assert batch.source.shape == (2, 1, 16, 32, 32)
    model = Segmenter(CI3)
    loss = model.training_step(batch, "model")["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert model.segment(batch.source).shape == (2, 16, 32, 32)


@pytest.mark.parametrize("volume", [False, True])
def test_presets_match_the_translator_data(volume):
    """Same kind, sizes, test subjects and registration as the mri_to_ct translators, CT -> labels."""
    ours = segmenter_presets(volume)
    for preset, cfg in ours.items():
        ref = get_preset(preset, "mri_to_ct/ddim_image" + ("_3d" if volume else "")).data
        d = cfg.data
        assert (d.dataset, d.image_size, d.depth, d.registration, d.phantom) == \
               (ref.dataset, ref.image_size, ref.depth, ref.registration, ref.phantom), preset
        assert (cfg.method, d.source, d.target, cfg.model.out_channels) == ("segmenter", "ct", "", 31)
        assert cfg.model.spatial_dims == (3 if volume else 2)


@pytest.mark.parametrize("volume", [False, True])
def test_paper_model_steps_once_on_a_tiny_input(volume):
    cfg = segmenter_presets(volume)["paper"]
    model = Segmenter(cfg)
    shape = (1, 1, 8, 16, 16) if volume else (1, 1, 32, 32)
    labels = torch.zeros(shape[2:], dtype=torch.long)
    labels[..., 4:8, 4:8] = 53
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.training_step(Batch(torch.randn(shape), meta={LABEL_KEY: [labels]}), "model")["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_short_fit_beats_untrained_and_round_trips_through_train_or_load(tmp_path):
    """40 steps at 32 px, batch 8 (~2 s on one thread): bone Dice on held-out phantom CTs rises."""
    cfg = dataclasses.replace(CI, name="segmenter_unit", data=dataclasses.replace(CI.data, n_train=32, n_test=8),
                              train=dataclasses.replace(CI.train, steps=40, batch_size=8, lr=3e-3, num_threads=1,
                                                        log_every=10))
    test = lookup(DATASETS, "paired")(cfg.data, "test")
    seed_everything(cfg.seed)  # train_or_load seeds the same way before building the method
    before = summarize(ceiling(Segmenter(cfg), test))
    trained = train_or_load(cfg, root=tmp_path, progress=False, device="cpu")
    assert isinstance(trained, Segmenter) and not trained.training
    after = summarize(ceiling(trained, test))
    assert after.bone_per_volume > before.bone_per_volume + 0.3, (before.to_dict(), after.to_dict())
    assert after.bone_per_vertebra > 0.5 > before.bone_per_vertebra
    loaded = train_or_load(cfg, root=tmp_path, progress=False, device="cpu")  # from the cache
    ct = test[0]["source"][None]
    assert loaded is not trained and torch.equal(loaded.segment(ct), trained.segment(ct))
