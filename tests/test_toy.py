"""The toy_shapes dataset: determinism, disjoint splits, ranges, shapes, errors and speed."""
import time

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio

from medgen.config import DataConfig
from medgen.data import toy
from medgen.data.batch import collate
from medgen.data.splits import split_hash
from medgen.registry import DATASETS, lookup

CFG = DataConfig(image_size=16, n_train=24, n_test=6)


def test_registered_and_items_have_the_contract_shape():
    ds = lookup(DATASETS, "toy_shapes")(CFG, "train")
    item = ds[3]
    assert set(item) == {"source", "target", "mask", "patient_id"}
    for key in ("source", "target", "mask"):
        assert item[key].shape == (1, 16, 16) and item[key].dtype == torch.float32
    assert torch.equal(item["mask"], torch.ones(1, 16, 16))
    assert item["patient_id"] == "toy-000003" == ds.patient_ids[3]
    assert len(ds) == 24 and len(ds.patient_ids) == 24


def test_values_in_model_range_and_source_is_degraded():
    ds = toy.ToyShapes(CFG, "train")
    batch = collate([ds[i] for i in range(len(ds))])
    for t in (batch.source, batch.target):
        assert t.min() >= -1.0 and t.max() <= 1.0 and torch.isfinite(t).all()
    assert batch.target.min() < -0.9  # dark background
    assert (batch.source - batch.target).abs().mean() > 0.05  # degraded
    assert len(batch.target.flatten(1).unique(dim=0)) == len(ds)  # all phantoms differ


def test_deterministic_per_seed_and_index():
    a, b = toy.ToyShapes(CFG, "train"), toy.ToyShapes(CFG, "train")
    assert torch.equal(a[5]["source"], b[5]["source"]) and torch.equal(a[5]["target"], b[5]["target"])
    other = toy.ToyShapes(CFG, "train", seed=1)
    assert not torch.equal(a[5]["target"], other[5]["target"])
    # a sample does not depend on how many others were generated with it
    bigger = toy.ToyShapes(DataConfig(image_size=16, n_train=40, n_test=6), "train")
    assert torch.equal(a[5]["source"], bigger[5]["source"])


def test_lazy_generation_matches_precomputed(monkeypatch):
    eager = toy.ToyShapes(CFG, "test")
    monkeypatch.setattr(toy, "PRECOMPUTE_PIXELS", 0)
    lazy = toy.ToyShapes(CFG, "test")
    assert lazy._cache is None and eager._cache is not None
    for i in (0, 5, -1):
        assert torch.equal(lazy[i]["source"], eager[i]["source"])
        assert torch.equal(lazy[i]["target"], eager[i]["target"])


def test_train_and_test_are_disjoint_and_hashed():
    train, test = toy.ToyShapes(CFG, "train"), toy.ToyShapes(CFG, "test")
    assert not set(train.patient_ids) & set(test.patient_ids)
    assert test.patient_ids[0] == f"toy-{toy.TEST_OFFSET:06d}"
    assert train.split_hash == split_hash(train.patient_ids) != test.split_hash
    # the test set does not change when the training set grows
    grown = toy.ToyShapes(DataConfig(image_size=16, n_train=100, n_test=6), "test")
    assert grown.split_hash == test.split_hash and torch.equal(grown[0]["source"], test[0]["source"])


def test_geometry_is_resolution_independent():
    small = toy.make_pairs([7], 32)[1][0, 0]
    large = toy.make_pairs([7], 64)[1][0, 0]
    down = large.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    other = toy.make_pairs([8], 32)[1][0, 0]
    assert np.abs(down - small).mean() < 0.05 < 0.1 < np.abs(other - small).mean()


def test_difficulty_matches_dataset_card():
    """Source ~17.6 dB and Gaussian filter (sigma 1 px) ~21 dB PSNR at 32 px (data_range 2)."""
    source, target = toy.make_pairs(np.arange(64), 32)
    smooth = gaussian_filter(source, sigma=(0, 0, 1.0, 1.0))
    psnr_src = np.mean([peak_signal_noise_ratio(t, s, data_range=2) for t, s in zip(target, source)])
    psnr_smooth = np.mean([peak_signal_noise_ratio(t, s, data_range=2) for t, s in zip(target, smooth)])
    assert 16.0 < psnr_src < 19.0 and 19.5 < psnr_smooth < 22.5 and psnr_smooth > psnr_src + 2


def test_unknown_split_and_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown split 'val'") as err:
        toy.ToyShapes(CFG, "val")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="image_size"):
        toy.ToyShapes(DataConfig(image_size=4), "train")
    with pytest.raises(IndexError, match="out of range"):
        toy.ToyShapes(CFG, "test")[6]


def test_empty_split():
    ds = toy.ToyShapes(DataConfig(image_size=16, n_train=0, n_test=2), "train")
    assert len(ds) == 0 and ds.patient_ids == []


def test_generation_is_fast():
    start = time.perf_counter()
    ds = toy.ToyShapes(DataConfig(image_size=32, n_train=512, n_test=8), "train")
    assert time.perf_counter() - start < 3.0  # ~0.3 s measured on 2 cores; margin for load
    assert ds._cache is not None and ds._cache[0].shape == (512, 1, 32, 32)
