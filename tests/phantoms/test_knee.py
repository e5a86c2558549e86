"""Tests of the knee phantom (medgen/data/phantoms/knee.py) and the JSW measurer (medgen/measure/knee.py)."""
from __future__ import annotations

import numpy as np
import pytest

import medgen.data.phantoms.knee as knee
from medgen.data.phantoms.base import PhantomError, Sizes
from medgen.measure.knee import JSWError, compartment_widths, joint_space_width
from medgen.registry import PHANTOMS, lookup

SPEC = knee.SPEC
JSW_SIZE = Sizes(64, 64, 4)  # JSW needs ~64 px (KL4 gaps are ~1-2 px); depth does not matter for the xray
IMAGE_KEYS = ("mri", "xray")


@pytest.fixture(scope="module")
def ci():
    """Six subjects at the ci size (random grades)."""
    return SPEC(np.arange(6), seed=0, sizes="ci")


@pytest.fixture(scope="module")
def by_grade():
    """The same six subjects at every KL grade 0..4, at JSW_SIZE."""
    return [SPEC(np.arange(6), seed=0, sizes=JSW_SIZE, kl_grade=g) for g in range(5)]


def test_registered_and_documented(ci):
    assert lookup(PHANTOMS, "knee") is SPEC
    for key, arr in ci.items():
        assert key in SPEC.modalities or key in SPEC.labels, key
        assert arr.shape[0] == 6, key
    for key in SPEC.label_maps:
        assert ci[key].dtype == np.uint8
    s = SPEC.sizes["ci"]
    assert ci["mri"].shape == (6, s.depth, s.height, s.width) and ci["mri"].dtype == np.float32
    assert ci["xray"].shape == (6, s.height, s.width) and ci["xray"].dtype == np.float32
    assert ci["bone_mask"].shape == ci["tissue"].shape == ci["mri"].shape
    assert ci["rssim_mask"].shape == ci["xray"].shape
    assert ci["koa_prob"].shape == (6, 5) and ci["jsw_compartments"].shape == (6, 2)
    assert set(np.unique(ci["bone_mask"])) <= set(range(len(knee.BONES)))
    assert set(np.unique(ci["tissue"])) <= set(range(len(knee.TISSUES)))
    # Physical ranges: film density in [0, 1]; MRI a.u. near [0, 1] (bias field and noise).
    assert 0.0 <= ci["xray"].min() and ci["xray"].max() <= 1.0
    assert 0.0 <= ci["mri"].min() and ci["mri"].max() < 1.5
    assert SPEC.sizes["paper"] == Sizes(256, 256, 50)


def test_same_seed_same_arrays_and_batch_independent(ci):
    again = SPEC(np.arange(6), seed=0, sizes="ci")
    for key in ci:
        np.testing.assert_array_equal(ci[key], again[key], err_msg=key)
    alone = SPEC([4], seed=0, sizes="ci")  # subject 4 rendered on its own (other chunks/boxes)
    for key in ci:
        if ci[key].dtype.kind == "f":
            np.testing.assert_allclose(alone[key][0], ci[key][4], atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(alone[key][0], ci[key][4], err_msg=key)


def test_boxes_change_nothing(ci, monkeypatch):
    """Shapes are evaluated only inside their boxes (for speed); evaluating every shape over
    the whole volume must give the same images and labels."""
    boxed4 = SPEC(np.arange(3), seed=0, sizes="ci", kl_grade=4)  # osteophytes and sclerosis

    def whole(self, *_: float, **__: float) -> tuple[slice, slice]:
        return slice(0, self.z_img.size), slice(0, self.lay.y.size)

    monkeypatch.setattr(knee._Frame, "box", whole)
    for boxed, out in ((ci, SPEC(np.arange(6), seed=0, sizes="ci")),
                       (boxed4, SPEC(np.arange(3), seed=0, sizes="ci", kl_grade=4))):
        for key in ("xray", "mri", "tissue", "bone_mask"):
            np.testing.assert_allclose(out[key], boxed[key], atol=1e-6, err_msg=key)


def test_different_seeds_different_patients(ci):
    other = SPEC(np.arange(6), seed=1, sizes="ci")
    assert not np.allclose(ci["xray"], other["xray"])
    assert (ci["bone_mask"] != other["bone_mask"]).mean() > 0.01  # different anatomy, not just noise
    assert not np.allclose(ci["jsw_true"], other["jsw_true"])
    # Subjects differ from each other within a seed too.
    assert len({round(float(v), 4) for v in ci["jsw_true"]}) == 6


def test_slice_depth_and_position(ci):
    s = SPEC.sizes["ci"].depth
    for key in ("slice_depth", "slice_position"):
        d = ci[key]
        assert d.shape == (6, s)
        assert np.all((d >= 0) & (d <= 1)) and np.all(np.diff(d, axis=1) > 0)
    np.testing.assert_allclose(ci["slice_depth"][:, [0, -1]], [[0.0, 1.0]] * 6)
    # The paper keeps slices 13..62 of 80: proportional positions 0.16..0.78.
    paper = knee._Layout(SPEC.sizes["paper"])
    assert (paper.full, paper.first) == (80, 13)
    assert 0.15 < ci["slice_position"][0, 0] < 0.3 and 0.65 < ci["slice_position"][0, -1] < 0.8


def test_controls_validated():
    with pytest.raises(PhantomError, match="unknown control"):
        SPEC([0], sizes="ci", cobb=30)
    with pytest.raises(PhantomError, match="kl_grade"):
        SPEC([0], sizes="ci", kl_grade=5)
    with pytest.raises(PhantomError, match="integer"):
        SPEC([0], sizes="ci", kl_grade=2.5)
    with pytest.raises(PhantomError, match="knee_scale"):
        SPEC([0], sizes="ci", knee_scale=2.0)
    with pytest.raises(PhantomError, match=">= 16"):
        SPEC([0], sizes=Sizes(12, 12, 8))
    with pytest.raises(PhantomError, match="depth >= 4"):
        SPEC([0], sizes=Sizes(32, 32, 3))
    out = SPEC([0, 1], sizes="ci", kl_grade=3, knee_scale=0.9, mri_noise=0.0)
    assert list(out["kl_grade"]) == [3, 3]
    np.testing.assert_allclose(out["knee_scale"], 0.9)


def test_fixed_grade_keeps_the_patient():
    """A demo slider on kl_grade shows the same knee: bones away from the joint do not move."""
    a = SPEC([2], seed=0, sizes="ci", kl_grade=0)
    b = SPEC([2], seed=0, sizes="ci", kl_grade=4)
    for label in (3, 4):  # fibula, patella
        np.testing.assert_array_equal(a["bone_mask"] == label, b["bone_mask"] == label)
    assert a["medial_right"][0] == b["medial_right"][0] and a["knee_scale"][0] == b["knee_scale"][0]
    assert b["jsw_true"][0] < a["jsw_true"][0]


def test_any_size_and_same_subject_at_every_size():
    small = SPEC([0, 1], seed=0, sizes=Sizes(16, 24, 4))
    assert small["mri"].shape == (2, 4, 16, 24) and small["xray"].shape == (2, 16, 24)
    a = SPEC([0, 1], seed=0, sizes=Sizes(32, 32, 6))
    b = SPEC([0, 1], seed=0, sizes=Sizes(64, 64, 6))
    np.testing.assert_allclose(b["jsw_true"], 2.0 * a["jsw_true"], rtol=1e-6)  # pixels scale with H
    for label in (1, 2):  # femur and tibia occupy the same share of each slice at both sizes
        fa, fb = (a["bone_mask"] == label).mean(axis=(2, 3)), (b["bone_mask"] == label).mean(axis=(2, 3))
        np.testing.assert_allclose(fa, fb, atol=0.02)
    assert len(SPEC([], sizes="ci")["xray"]) == 0


def test_xray_is_the_projection_of_the_same_volume(ci):
    """Where the femoral and tibial shafts (wholly inside the kept slices) project, the
    radiograph is bright: its bright column span matches the bone mask's span to a pixel."""
    proj = (ci["bone_mask"] > 0).any(axis=1)  # [n, H, W] bone in any slice
    for i in range(6):
        for row, label in ((1, 1), (-2, 2)):  # femoral shaft at the top, tibial shaft at the bottom
            profile = ci["xray"][i, row]
            bone_cols = np.nonzero((ci["bone_mask"][i, :, row] == label).any(axis=0))[0]
            soft = profile[~proj[i, row] & (profile > 0.05)]  # leg beside the bones
            # Film density is higher over the bone than over the soft tissue beside it...
            assert profile[bone_cols[1:-1]].min() > np.median(soft), (i, row)
            # ...and the bright run around the shaft starts and ends where the bone mask does.
            bright = profile > 0.5 * (profile[bone_cols].max() + np.median(soft))
            c = int(bone_cols.mean())
            lo, hi = c, c
            while lo > 0 and bright[lo - 1]:
                lo -= 1
            while hi < len(bright) - 1 and bright[hi + 1]:
                hi += 1
            assert abs(lo - bone_cols[0]) <= 1 and abs(hi - bone_cols[-1]) <= 1, (i, row, lo, hi, bone_cols)
        # Left or right knee: the fibula (label 3) is on the side the radiograph shows it.
        fib_cols = np.nonzero((ci["bone_mask"][i] == 3).any(axis=(0, 1)))[0]
        centre = np.nonzero(proj[i, -2])[0].mean()
        assert (fib_cols.mean() > centre) == (ci["medial_right"][i] == 0)


def test_xray_hides_cartilage_and_menisci(monkeypatch):
    """Give cartilage and menisci the properties of muscle and see how much each image changes
    (same seed, so the noise cancels): the MRI changes, the radiograph hardly does -- though
    it shows bone with high contrast."""
    base = SPEC(np.arange(4), seed=0, sizes="ci", kl_grade=0)
    tissues = [knee.CARTILAGE, knee.MENISCUS]
    att, t1 = knee.ATTENUATION.copy(), knee.T1_SIGNAL.copy()
    att[tissues], t1[tissues] = att[knee.MUSCLE], t1[knee.MUSCLE]
    monkeypatch.setattr(knee, "ATTENUATION", att)
    monkeypatch.setattr(knee, "T1_SIGNAL", t1)
    gone = SPEC(np.arange(4), seed=0, sizes="ci", kl_grade=0)
    inside = np.isin(base["tissue"], tissues)  # MRI voxels of cartilage / menisci
    rays = inside.any(axis=1)  # radiograph pixels whose ray crosses them
    mri_cart = np.abs(gone["mri"] - base["mri"])[inside].mean()
    xray_cart = np.abs(gone["xray"] - base["xray"])[rays].mean()
    assert mri_cart > 0.05  # the MRI shows cartilage and menisci (measured ~0.08)
    assert xray_cart < 0.2 * mri_cart  # the radiograph barely does (measured ~0.12x)
    # Bone contrast on the same radiographs: rays through bone in most slices vs rays
    # through soft tissue only (inside the leg).
    bone_share = np.isin(base["tissue"], [knee.CORTEX_T, knee.MARROW]).mean(axis=1)
    leg = (base["tissue"] != knee.AIR).all(axis=1)
    x = base["xray"]
    bone_contrast = x[bone_share >= 0.5].mean() - x[(bone_share == 0) & leg].mean()
    assert bone_contrast > 10 * xray_cart, (bone_contrast, xray_cart)


def test_jsw_decreases_with_kl_grade(by_grade):
    measured = np.array([joint_space_width(o["xray"]) for o in by_grade])  # [grade, subject]
    assert np.all(np.isfinite(measured))
    means = measured.mean(axis=1)
    assert np.all(np.diff(means) < 0), means
    true = np.array([o["jsw_true"] for o in by_grade])
    assert np.all(np.diff(true, axis=0) < 0)  # the ground truth narrows in every subject
    # Medial narrows more than lateral (medial-predominant OA).
    comp = by_grade[4]["jsw_compartments"] / by_grade[0]["jsw_compartments"]
    assert np.all(comp[:, 0] < comp[:, 1])


def test_jsw_measurement_tracks_ground_truth():
    out = SPEC(np.arange(30), seed=3, sizes=JSW_SIZE)
    measured = joint_space_width(out["xray"])
    assert np.isfinite(measured).all()
    assert np.corrcoef(measured, out["jsw_true"])[0, 1] > 0.6  # measured 0.79 here (0.84-0.96 for 40 subjects)
    assert abs(np.mean(measured / out["jsw_true"]) - 1.0) < 0.25
    # Each compartment: map image left/right to medial/lateral with the laterality label.
    cw = compartment_widths(out["xray"])
    medial = np.where(out["medial_right"] == 1, cw[:, 1], cw[:, 0])
    assert np.corrcoef(medial, out["jsw_compartments"][:, 0])[0, 1] > 0.6
    np.testing.assert_allclose(joint_space_width(out["xray"], reduce="min"), cw.min(axis=1))


def test_jsw_measurer_inputs():
    assert np.isnan(joint_space_width(np.zeros((2, 32, 32)))).all()  # no knee, no joint
    with pytest.raises(JSWError, match="reduce"):
        joint_space_width(np.zeros((1, 32, 32)), reduce="median")
    with pytest.raises(JSWError, match="shape"):
        joint_space_width(np.zeros((32,)))
    with pytest.raises(JSWError, match="NaN"):
        joint_space_width(np.full((1, 32, 32), np.nan))


def test_osteophytes_only_from_grade_2(by_grade):
    tibia = np.array([(o["bone_mask"] == 2).sum(axis=(1, 2, 3)) for o in by_grade])  # [grade, subject]
    np.testing.assert_array_equal(tibia[0], tibia[1])  # no osteophytes at grades 0-1: same tibia
    assert np.all(tibia[2] > tibia[1]) and np.all(tibia[4] > tibia[2])
    # On the radiograph: brighter beside the grade-1 tibial plateau (where osteophytes grow).
    for i in range(6):
        g1 = (by_grade[1]["bone_mask"][i] == 2).any(axis=0)  # [H, W] tibia projection at grade 1
        top = np.nonzero(g1.any(axis=1))[0][0]  # plateau row
        rows = slice(max(top - 2, 0), top + 3)
        cols = np.nonzero(g1[rows].any(axis=0))[0]
        margin = np.zeros_like(g1)
        margin[rows, max(cols[0] - 3, 0):cols[0]] = True
        margin[rows, cols[-1] + 1:cols[-1] + 4] = True
        bright = [by_grade[g]["xray"][i][margin].mean() for g in range(5)]
        assert bright[2] > 1.1 * bright[1] and bright[4] > bright[3] > bright[2], (i, bright)
        assert abs(bright[1] - bright[0]) < 0.1 * (bright[4] - bright[1]), (i, bright)  # only JSN at grade 1


def test_sclerosis_only_from_grade_3(by_grade):
    scl = [(o["tissue"] == knee.SCLEROSIS_T).sum(axis=(1, 2, 3)) for o in by_grade]
    assert all(np.all(s == 0) for s in scl[:3])
    assert np.all(scl[3] > 0) and np.all(scl[4] > scl[3])


def test_rssim_mask_spans_lower_femur_to_upper_tibia(ci):
    h = SPEC.sizes["ci"].height
    for i in range(6):
        rows = np.nonzero(ci["rssim_mask"][i].any(axis=1))[0]
        assert np.all(np.diff(rows) == 1) and 0 < rows[0] and rows[-1] < h - 1  # one band, not the whole image
        fem = (ci["bone_mask"][i] == 1).any(axis=(0, 2))
        tib = (ci["bone_mask"][i] == 2).any(axis=(0, 2))
        femur_low, tibia_top = np.nonzero(fem)[0][-1], np.nonzero(tib)[0][0]
        assert rows[0] < femur_low and rows[-1] > tibia_top  # holds the joint
        assert rows[0] > (femur_low + 1) / 3 - 1  # not the upper two thirds of the femur
        assert rows[-1] < tibia_top + (h - tibia_top) / 3 + 1  # nor the lower two thirds of the tibia


def test_koa_prob_is_a_soft_grade(ci):
    p = ci["koa_prob"]
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(p > 0) and np.all(p.max(axis=1) < 0.999)  # soft, not one-hot
    many = SPEC(np.arange(40), seed=2, sizes=Sizes(16, 16, 4))
    guess = many["koa_prob"].argmax(axis=1)
    assert (guess == many["kl_grade"]).mean() > 0.5  # a classifier, mostly right (~75 %)...
    assert np.all(np.abs(guess - many["kl_grade"]) <= 1)  # ...and wrong by one grade at most
    assert set(np.unique(many["kl_grade"])) == set(range(5))  # the prior draws every grade
