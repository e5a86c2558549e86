"""The lung phantom (medgen/data/phantoms/lung.py): determinism, labels, controls, measurements."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.data.phantoms import PhantomError, Sizes
from medgen.data.phantoms.lung import (ACOUSTIC, CT, LINEAR, SPEC, aeration_category, aeration_from_ct,
                                       aeration_from_model)
from medgen.data.phantoms.ultrasound import NOISE_STD
from medgen.registry import PHANTOMS

IMAGES = ("ct", "air_fraction", "lung_mask")
MEASUREMENTS = ("us_linear", "us_acoustic")
SCALARS = ("aeration", "aeration_category", "pathology")


@pytest.fixture(scope="module")
def default_set() -> dict[str, np.ndarray]:
    """60 subjects at seed 0, ci size."""
    return SPEC(60, seed=0, sizes="ci")


def lung_pixels(out: dict[str, np.ndarray]) -> np.ndarray:
    return np.isin(out["lung_mask"], (1, 2))


def test_registered_with_every_preset_and_documented():
    assert PHANTOMS["lung"] is SPEC  # (registry.lookup would import every module: slow)
    assert SPEC.sizes_for("paper") == Sizes(256, 256)
    assert SPEC.sizes_for("cpu") == Sizes(64, 64) and SPEC.sizes_for("ci") == Sizes(32, 32)
    out = SPEC([0], seed=0, sizes="ci")
    assert set(out) == set(SPEC.modalities) | set(SPEC.labels)
    assert "lung_mask" in SPEC.label_maps and "aeration" in SPEC.card


@pytest.mark.parametrize("sizes", [Sizes(32, 32), Sizes(20, 28)])
def test_shapes_and_dtypes(sizes):
    out = SPEC([3, 1, 4], seed=0, sizes=sizes)
    h, w = sizes.height, sizes.width
    for key in IMAGES:
        assert out[key].shape == (3, h, w)
    for key in MEASUREMENTS:
        assert out[key].shape == (3, *LINEAR.output_shape(h, w)) and out[key].dtype == np.float32
    for key in SCALARS:
        assert out[key].shape == (3,)
    assert out["pleura_row"].shape == (3, w)
    assert out["ct"].dtype == np.float32 and out["lung_mask"].dtype == np.uint8
    assert out["aeration_category"].dtype == np.int64 and out["pathology"].dtype == np.int64
    assert set(np.unique(out["lung_mask"])) <= {0, 1, 2, 3, 4}


def test_same_seed_identical_and_different_seeds_differ():
    a = SPEC([0, 1, 2], seed=3, sizes="ci")
    b = SPEC([0, 1, 2], seed=3, sizes="ci")
    c = SPEC([0, 1, 2], seed=4, sizes="ci")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["ct"], c["ct"])
    assert not np.allclose(a["ct"][0], a["ct"][1])  # different subjects, different patients


def test_subject_independent_of_batch():
    batch = SPEC([5, 7, 9], seed=0, sizes="ci")
    alone = SPEC([7], seed=0, sizes="ci")
    for key in batch:
        np.testing.assert_allclose(batch[key][1], alone[key][0], rtol=1e-5, atol=1e-5)


def test_all_three_aeration_categories_in_a_default_set(default_set):
    shares = np.bincount(default_set["aeration_category"], minlength=3) / 60
    assert shares.min() >= 0.1, shares
    assert set(np.unique(default_set["pathology"])) == {0, 1, 2, 3}


def test_aeration_label_matches_the_images(default_set):
    out = default_set
    lung = lung_pixels(out)
    recomputed = (out["air_fraction"] * lung).sum((1, 2)) / lung.sum((1, 2))
    np.testing.assert_allclose(out["aeration"], recomputed, atol=1e-5)
    expected_cat = np.where(recomputed < 0.6, 0, np.where(recomputed < 0.85, 1, 2))
    np.testing.assert_array_equal(out["aeration_category"], expected_cat)
    assert out["air_fraction"].min() >= 0.0 and out["air_fraction"].max() <= 1.0


def test_aeration_from_ct_recovers_the_label(default_set):
    out = default_set
    with_mask = aeration_from_ct(out["ct"], out["lung_mask"])
    np.testing.assert_allclose(with_mask, out["aeration"], atol=1e-3)
    estimated = aeration_from_ct(out["ct"])  # no mask: the lung region is estimated from the image
    assert np.median(np.abs(estimated - out["aeration"])) < 0.01
    assert (aeration_category(estimated) == out["aeration_category"]).mean() >= 0.9


def test_aeration_from_model_is_the_ct_readout_in_model_range(default_set):
    """Model-range sections (array or tensor, [n, H, W] or [n, 1, H, W]) read through the ct modality:
    the HU readout up to the model range's clipping (the phantom's CT lies inside its window)."""
    out = default_set
    x = CT.to_model(out["ct"])
    hu = aeration_from_ct(CT.from_model(x), out["lung_mask"])
    np.testing.assert_allclose(aeration_from_model(x, out["lung_mask"]), hu)
    np.testing.assert_allclose(aeration_from_model(torch.from_numpy(x)[:, None]), aeration_from_ct(CT.from_model(x)))
    np.testing.assert_allclose(hu, out["aeration"], atol=2e-3)
    with pytest.raises(PhantomError, match=r"\[n, 1, H, W\]"):
        aeration_from_model(np.zeros((2, 3, 8, 8)))


@pytest.mark.parametrize("pathology", [0, 1, 2, 3])
def test_aeration_control_is_hit(pathology):
    for target in (0.25, 0.7, 0.95):
        out = SPEC([0, 1, 2], seed=1, sizes="ci", aeration=target, pathology=pathology)
        assert np.abs(out["aeration"] - target).max() < 0.005, (target, out["aeration"])
        assert (out["pathology"] == pathology).all()
    top = SPEC([0, 1, 2], seed=1, sizes="ci", aeration=0.98, pathology=pathology)["aeration"]
    assert np.abs(top - 0.98).max() < 0.01  # partial volume on the pleura caps it slightly


def test_pathology_control_shows_in_the_label_map():
    none = SPEC([0, 1], seed=0, sizes="ci", pathology=0, aeration=0.8)["lung_mask"]
    cons = SPEC([0, 1], seed=0, sizes="ci", pathology=1, aeration=0.5)["lung_mask"]
    eff = SPEC([0, 1], seed=0, sizes="ci", pathology=3, aeration=0.8)["lung_mask"]
    assert not np.isin(none, (2, 3)).any()
    assert all((m == 2).any() for m in cons) and all((m == 3).any() for m in eff)
    assert all((m == 4).any() for m in none)  # ribs


def test_ct_follows_from_the_air_fraction():
    out = SPEC([0, 1, 2, 3], seed=2, sizes="cpu")
    rows = np.arange(64)[None, :, None]
    deep = lung_pixels(out) & (rows > out["pleura_row"][:, None, :] + 14)  # interior lung (no effusion)
    a = out["air_fraction"][deep]
    np.testing.assert_allclose(out["ct"][deep], -1000.0 * a + 50.0 * (1.0 - a), atol=0.05)
    wall = rows < out["pleura_row"][:, None, :] - 1
    assert (out["air_fraction"][wall] == 0).all() and (out["ct"][wall] > -150).all()


def test_geometry_is_the_same_at_every_size():
    small = SPEC([4], seed=0, sizes=Sizes(32, 32))
    large = SPEC([4], seed=0, sizes=Sizes(64, 64))
    np.testing.assert_allclose(small["aeration"], large["aeration"], atol=0.005)
    assert small["pathology"][0] == large["pathology"][0]
    pleura_small = (small["pleura_row"][0] + 0.5) / 32
    pleura_large = ((large["pleura_row"][0] + 0.5) / 64).reshape(32, 2).mean(1)
    np.testing.assert_allclose(pleura_small, pleura_large, atol=1 / 32)
    frac = lambda o: lung_pixels(o).mean()  # noqa: E731
    assert abs(frac(small) - frac(large)) < 0.03


def test_measurements_are_the_operators_plus_noise():
    out = SPEC([0, 1, 2, 3], seed=0, sizes="ci")
    x = torch.from_numpy(CT.to_model(out["ct"]))[:, None]
    with torch.no_grad():
        for key, op in (("us_linear", LINEAR), ("us_acoustic", ACOUSTIC)):
            residual = out[key] - op(x)[:, 0].numpy()
            assert abs(residual.std() - NOISE_STD) < 0.15 * NOISE_STD
            assert abs(residual.mean()) < 0.2 * NOISE_STD


def test_acoustic_measurement_hides_aerated_lung():
    """Mean B-mode signal deep below the pleura: aerated lung (A-lines only) is darker than
    consolidated lung, which transmits (the physics the paper's inverse problem is about)."""
    def deep_mean(out):
        rows = np.arange(64)[None, :, None]
        deep = rows > out["pleura_row"][:, None, ::2] + 4
        return out["us_acoustic"][deep].mean()
    aerated = SPEC([0, 1, 2], seed=0, sizes="cpu", aeration=0.95, pathology=0)
    consolidated = SPEC([0, 1, 2], seed=0, sizes="cpu", aeration=0.2, pathology=1)
    assert deep_mean(aerated) < 0.5 * deep_mean(consolidated)


def test_bad_requests_raise():
    with pytest.raises(PhantomError):
        SPEC([0], seed=0, sizes="ci", aeration=0.1)
    with pytest.raises(PhantomError):
        SPEC([0], seed=0, sizes="ci", cobb=20)
    with pytest.raises(PhantomError):
        SPEC([0], seed=0, sizes=Sizes(12, 32))


def test_zero_subjects():
    out = SPEC([], seed=0, sizes="ci")
    assert set(out) == set(SPEC.modalities) | set(SPEC.labels)
    assert out["ct"].shape == (0, 32, 32) and out["us_acoustic"].shape == (0, 32, 16)
