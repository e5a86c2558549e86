"""The spine_coronal phantom: contract, determinism, ground truth measured back from its outputs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.draw import polygon

from medgen.data.phantoms import PhantomError, Sizes
from medgen.data.phantoms import spine_coronal as sc
from medgen.measure.spine import cobb_angle, curve_angle
from medgen.registry import PHANTOMS, lookup

SPEC = sc.SPEC
CI, CPU = SPEC.sizes["ci"], SPEC.sizes["cpu"]


@pytest.fixture(scope="module")
def ci_set() -> dict[str, np.ndarray]:
    """40 default subjects at the ci size (seed 0), shared by the cheap checks."""
    return SPEC(np.arange(40), seed=0, sizes="ci")


@pytest.fixture(scope="module")
def cpu_set() -> dict[str, np.ndarray]:
    """16 default subjects at the cpu size (seed 0) for the image-based checks."""
    return SPEC(np.arange(16), seed=0, sizes="cpu")


def test_registered_with_the_requested_sizes_and_documented_keys(ci_set):
    assert lookup(PHANTOMS, "spine_coronal") is SPEC
    assert SPEC.sizes == {"ci": Sizes(64, 32), "smoke": Sizes(64, 32), "cpu": Sizes(128, 64),
                          "paper": Sizes(512, 256)}
    assert set(ci_set) == set(SPEC.modalities) | set(SPEC.labels)  # every key documented, nothing extra
    assert not set(SPEC.modalities) & set(SPEC.labels)
    assert tuple(SPEC.label_maps) == ("seg",)
    assert {"cobb", "bmi", "artifacts"} <= set(SPEC.controls)
    assert SPEC.sizes_at(128) == Sizes(256, 128)
    assert "Dataset card" in SPEC.card and len(sc.LEVELS) == 17


def test_shapes_dtypes_and_units(ci_set):
    n, (H, W) = 40, (CI.height, CI.width)
    expected = {"xray": ((n, H, W), np.float32), "us_vpi": ((n, 5, H, W), np.float32),
                "us_clean": ((n, 5, H, W), np.float32), "seg": ((n, H, W), np.int64),
                "cobb": ((n,), np.float32), "uca": ((n,), np.float32),
                "landmarks": ((n, 17, 4, 2), np.float32), "tp_landmarks": ((n, 17, 2, 2), np.float32),
                "optimal_depth": ((n,), np.int64), "artifact_free": ((n, 5), np.bool_)}
    for key, (shape, dtype) in expected.items():
        assert ci_set[key].shape == shape, key
        assert ci_set[key].dtype == dtype, key
    for key in SPEC.modalities:  # physical range of each image is its modality's range
        m = SPEC.modalities[key]
        assert m.low <= ci_set[key].min() and ci_set[key].max() <= m.high, key
        assert ci_set[key].std() > 0.05, key  # not blank
    assert set(np.unique(ci_set["seg"])) <= {0, 1, 2, 3}
    assert set(np.unique(ci_set["optimal_depth"])) <= set(range(5))
    lm = ci_set["landmarks"]
    assert (lm[..., 0] > 0).all() and (lm[..., 0] < H).all() and (lm[..., 1] > 0).all() and (lm[..., 1] < W).all()
    rows = lm[..., 0].mean(axis=2)  # vertebrae run cranial -> caudal down the image
    assert (np.diff(rows, axis=1) > 0).all()
    tops, bottoms = lm[:, :, :2, 0].mean(-1), lm[:, :, 2:, 0].mean(-1)
    assert (bottoms > tops).all()
    left, right = ci_set["tp_landmarks"][:, :, 0, 1], ci_set["tp_landmarks"][:, :, 1, 1]
    assert (left < right).all()


def test_same_seed_identical_and_subjects_independent_of_the_batch():
    a = SPEC([0, 1, 2], seed=5, sizes="ci")
    b = SPEC([0, 1, 2], seed=5, sizes="ci")
    c = SPEC([2], seed=5, sizes="ci")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a[key][2:], c[key], err_msg=key)


def test_different_seeds_give_different_patients():
    a, b = SPEC([0, 1], seed=0, sizes="ci"), SPEC([0, 1], seed=1, sizes="ci")
    assert not np.allclose(a["cobb"], b["cobb"])
    assert not np.allclose(a["landmarks"], b["landmarks"])
    assert np.abs(a["xray"] - b["xray"]).mean() > 0.01
    assert np.abs(a["us_clean"] - b["us_clean"]).mean() > 0.01
    assert a["cobb"][0] != a["cobb"][1]  # and different subjects within a seed


def test_geometry_is_the_same_at_every_size():
    """Landmarks scale with the pixel size: (p + 0.5) * s is the same point at every size."""
    small, big = SPEC([3, 4], seed=2, sizes="ci"), SPEC([3, 4], seed=2, sizes="cpu")
    np.testing.assert_allclose((small["landmarks"] + 0.5) * 2.0, big["landmarks"] + 0.5, atol=1e-3)
    for key in ("cobb", "uca", "bmi", "curve_type", "apex_level"):
        np.testing.assert_array_equal(small[key], big[key], err_msg=key)


def test_cobb_measured_from_landmarks_equals_the_label(ci_set):
    measured = cobb_angle(ci_set["landmarks"])
    np.testing.assert_allclose(measured, ci_set["cobb"], atol=0.5)
    np.testing.assert_allclose(curve_angle(ci_set["tp_landmarks"]), ci_set["uca"], atol=0.5)


@pytest.mark.parametrize("cobb", [0.0, 12.5, 37.0, 60.0])
def test_cobb_control_fixes_the_measured_angle(cobb):
    out = SPEC([0, 7, 11], seed=3, sizes="ci", cobb=cobb)
    np.testing.assert_allclose(out["cobb"], cobb)
    np.testing.assert_allclose(cobb_angle(out["landmarks"]), cobb, atol=0.5)
    free = SPEC([0, 7, 11], seed=3, sizes="ci")  # the rest of the patient stays the same
    np.testing.assert_array_equal(out["bmi"], free["bmi"])
    np.testing.assert_array_equal(out["curve_type"], free["curve_type"])


def test_non_default_aspect_keeps_square_pixels():
    out = SPEC([1, 2], seed=0, sizes=Sizes(48, 48))
    assert out["xray"].shape == (2, 48, 48)
    np.testing.assert_allclose(cobb_angle(out["landmarks"]), out["cobb"], atol=0.5)


def test_cobb_spans_0_to_60_and_uca_is_smaller():
    out = SPEC(np.arange(120), seed=0, sizes=Sizes(16, 16))  # labels do not depend on the size
    cobb, uca = out["cobb"].astype(float), out["uca"].astype(float)
    assert cobb.min() >= 0.0 and cobb.max() <= 60.0
    assert cobb.min() < 5.0 and cobb.max() > 55.0
    assert np.histogram(cobb, bins=6, range=(0, 60))[0].min() >= 8  # the whole range is populated
    assert uca.mean() < cobb.mean()
    assert (uca < cobb)[cobb > 5].all()
    # the relation quoted in the dataset card (UCA ~ 0.79 x Cobb, r ~ 0.99 over 500 subjects)
    slope = cobb @ uca / (cobb @ cobb)
    assert 0.7 < slope < 0.88
    assert np.corrcoef(cobb, uca)[0, 1] > 0.95


def test_landmarks_lie_on_the_rendered_vertebrae(cpu_set):
    """Film density inside each landmark quadrilateral beats a ring beside it; landmarks moved
    sideways by one body width lose that (the check can fail)."""
    H, W = CPU.height, CPU.width

    def contrast(img: np.ndarray, quad: np.ndarray) -> float:
        centre = quad.mean(0)
        e = (quad[1] - quad[0]) / np.linalg.norm(quad[1] - quad[0])
        off = quad - centre
        wide = centre + off + 0.8 * (off @ e)[:, None] * e  # 1.8x wider along the endplates
        inside = np.zeros((H, W), bool)
        inside[polygon(quad[:, 0], quad[:, 1], (H, W))] = True
        ring = np.zeros((H, W), bool)
        ring[polygon(wide[:, 0], wide[:, 1], (H, W))] = True
        ring &= ~inside
        return float(img[inside].mean() - img[ring].mean())

    on, off = [], []
    for i in range(8):
        for v in range(17):
            quad = cpu_set["landmarks"][i, v][[0, 1, 3, 2]]  # TL, TR, BR, BL around the outline
            width = np.linalg.norm(quad[1] - quad[0])
            on.append(contrast(cpu_set["xray"][i], quad))
            off.append(contrast(cpu_set["xray"][i], quad + [0.0, 1.2 * width]))
    on, off = np.array(on), np.array(off)
    assert (on > 0).mean() >= 0.9 and on.mean() > 0.08
    assert on.mean() > off.mean() + 0.08


def test_optimal_depth_shows_the_most_bone(cpu_set):
    """Bright (bone) area per depth measured on the clean VPIs: the largest is the labelled depth."""
    u = cpu_set["us_clean"]
    pixel_mm = sc.FOV_HEIGHT_MM / CPU.height
    smooth = gaussian_filter(u, sigma=(0, 0, 2.0 / pixel_mm, 2.0 / pixel_mm))
    threshold = 0.5 * smooth.reshape(len(u), -1).max(axis=1)
    area = (smooth > threshold[:, None, None, None]).sum(axis=(2, 3))
    best = area.argmax(axis=1)
    label = cpu_set["optimal_depth"]
    assert (best == label).mean() >= 0.9
    at_label = area[np.arange(len(u)), label]
    assert (at_label >= 0.8 * area.max(axis=1)).all()  # any miss is a near tie
    assert len(set(label.tolist())) >= 3  # the optimum is not always the same depth


def test_segmentation_where_expected(cpu_set):
    seg, lm = cpu_set["seg"], cpu_set["landmarks"]
    rows = np.arange(CPU.height)[:, None]
    for i in range(len(seg)):
        present = set(np.unique(seg[i]).tolist())
        assert {1, 2} <= present, i  # thoracic TPs and ribs in every subject
        l1_bottom, t12_centre = lm[i, 12, 2:, 0].max(), lm[i, 11, :, 0].mean()
        row_of = np.broadcast_to(rows, seg[i].shape)
        # TPs and ribs: T1-T12 only (T12's tilted TP / floating rib may reach beside L1)
        assert (row_of[seg[i] == 1] < l1_bottom).all()
        assert (row_of[seg[i] == 2] < l1_bottom).all()
        assert (row_of[seg[i] == 3] > t12_centre).all()  # lumps: lumbar only
    assert np.mean([(s == 3).any() for s in seg]) >= 0.9
    # labelled pixels are the bright ones of the optimal-depth image
    u = cpu_set["us_clean"][np.arange(len(seg)), cpu_set["optimal_depth"]]
    scanned = cpu_set["us_clean"].max(axis=1) > 0
    for i in range(len(seg)):
        assert u[i][seg[i] > 0].mean() > 3.0 * u[i][(seg[i] == 0) & scanned[i]].mean()


def test_artifact_flags_and_control(ci_set):
    flags, vpi, clean = ci_set["artifact_free"], ci_set["us_vpi"], ci_set["us_clean"]
    assert 0.1 < flags.mean() < 0.9  # some images are artifact-free, some are not
    diff = np.abs(vpi - clean).max(axis=(2, 3))
    assert (diff[flags] == 0).all()  # artifact-free images equal the clean target
    assert (diff[~flags] > 0.01).all()
    off = SPEC([0, 1, 2, 3], seed=0, sizes="ci", artifacts=0)
    assert off["artifact_free"].all()
    np.testing.assert_array_equal(off["us_vpi"], off["us_clean"])
    np.testing.assert_array_equal(off["us_clean"], ci_set["us_clean"][:4])  # clean scan unchanged
    on = SPEC([0, 1, 2, 3], seed=0, sizes="ci", artifacts=1)
    assert not on["artifact_free"].any()
    assert (np.abs(on["us_vpi"] - on["us_clean"]).max(axis=(2, 3)) > 0.01).all()


def test_bmi_control_thickens_soft_tissue():
    thin = SPEC([0, 1, 2], seed=0, sizes="cpu", bmi=16, artifacts=0)
    fat = SPEC([0, 1, 2], seed=0, sizes="cpu", bmi=34, artifacts=0)
    np.testing.assert_array_equal(thin["bmi"], 16.0)
    np.testing.assert_array_equal(thin["landmarks"], fat["landmarks"])  # same skeleton
    for out in (thin, fat):
        out["bone"] = np.array([u[d][s > 0].mean() for u, d, s in
                                zip(out["us_clean"], out["optimal_depth"], out["seg"])])
    assert (fat["bone"] < 0.8 * thin["bone"]).all()  # deeper bone echoes come back weaker
    # a wider torso: more attenuation at the image edges, so a brighter film there
    edge = (slice(None), slice(40, 100), slice(0, 4))
    assert fat["xray"][edge].mean() > thin["xray"][edge].mean()


def test_multipath_haze_follows_the_bmi_control():
    """Haze hits only the shallow depths, so it shows as flags that differ between depths."""
    def depth_specific(out: dict) -> float:
        flags = out["artifact_free"]
        return float(np.mean(flags.any(axis=1) & ~flags.all(axis=1)))

    numbers = np.arange(40)
    lean, obese = SPEC(numbers, seed=0, sizes=Sizes(16, 16), bmi=16), SPEC(numbers, seed=0, sizes=Sizes(16, 16), bmi=34)
    assert depth_specific(lean) == 0.0  # probability 0 below BMI 17
    assert depth_specific(obese) > 0.1
    assert sc.haze_probability(np.array([16.0, 20.0, 34.0])).tolist() == pytest.approx([0.0, 0.15, 0.6])


def test_controls_are_validated_and_empty_requests_work():
    with pytest.raises(PhantomError, match="unknown control 'kl_grade'"):
        SPEC([0], sizes="ci", kl_grade=2)
    with pytest.raises(PhantomError, match="cobb"):
        SPEC([0], sizes="ci", cobb=75)
    with pytest.raises(PhantomError, match="bmi"):
        SPEC([0], sizes="ci", bmi=5)
    empty = SPEC([], sizes="ci")
    assert set(empty) == set(SPEC.modalities) | set(SPEC.labels)
    assert all(v.shape[0] == 0 for v in empty.values())
    assert empty["us_vpi"].shape == (0, 5, CI.height, CI.width)


def test_windows_change_nothing(monkeypatch):
    """Parts are evaluated only inside per-subject windows (for speed); windows spanning the
    whole image give the same labels and the same images (to float32 rounding of the sums)."""
    sizes, numbers = Sizes(96, 48), np.arange(6)  # a size of its own; parts cut by the border too
    windowed = SPEC(numbers, seed=3, sizes=sizes)
    whole = staticmethod(lambda lo, hi, sp, size: (np.zeros(np.shape(lo), np.int64), size))
    monkeypatch.setattr(sc._Windows, "_place", whole)
    full = SPEC(numbers, seed=3, sizes=sizes)
    for key in windowed:
        if windowed[key].dtype.kind == "f":
            np.testing.assert_allclose(full[key], windowed[key], atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(full[key], windowed[key], err_msg=key)
