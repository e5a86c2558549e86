"""Tests of the spine_sagittal phantom (T1w / T2w MRI and CT of one spine, 2D and 3D)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medgen.data.phantoms import spine_sagittal as ss
from medgen.data.phantoms.base import PhantomError, Sizes
from medgen.registry import PHANTOMS

SPEC = ss.SPEC
IMAGES = ("t1w", "t2w", "ct")


def _scipy_coms(labels: np.ndarray, sub: int) -> np.ndarray:
    """Centres of mass ``[n, V, nd]`` of subregion ``sub`` of every vertebra, by scipy (NaN if absent)."""
    out = np.full((len(labels), ss.N_VERT, labels.ndim - 1), np.nan)
    for i, lab in enumerate(labels):
        for v in range(ss.N_VERT):
            mask = lab == ss.label_value(v, sub)
            if mask.any():
                out[i, v] = ndimage.center_of_mass(mask)
    return out


def _apply(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Homogeneous ``[n, V, d+1, d+1]`` maps applied to points ``[n, V, d]``."""
    ones = np.ones(points.shape[:-1] + (1,))
    return np.einsum("nvij,nvj->nvi", transforms, np.concatenate([points, ones], -1))[..., :-1]


def _registration_errors(out: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per landmark kind: (distance MRI-CT before, after mapping the MRI ones by ``transforms``) in
    pixels, over the complete vertebrae; centres of mass measured here with scipy."""
    res = {}
    for name, sub in (("body", 1), ("spinous", 3)):
        mri, ct = _scipy_coms(out["labels_mri"], sub), _scipy_coms(out["labels_ct"], sub)
        np.testing.assert_allclose(out[f"{name}_com_mri"], mri, atol=1e-3)  # the generator's own COMs
        np.testing.assert_allclose(out[f"{name}_com_ct"], ct, atol=1e-3)
        ok = out["complete"]
        after = np.linalg.norm(_apply(out["transforms"], mri) - ct, axis=-1)
        res[name] = (np.linalg.norm(mri - ct, axis=-1)[ok], after[ok])
    return res


def test_registered_keys_shapes_and_units() -> None:
    assert PHANTOMS["spine_sagittal"] is SPEC
    out = SPEC([0, 1, 2], seed=0, sizes="ci")
    h, w = SPEC.sizes["ci"].height, SPEC.sizes["ci"].width
    assert set(out) == set(SPEC.modalities) | set(SPEC.labels)
    assert set(SPEC.label_maps) <= set(SPEC.labels)
    for key in IMAGES:
        assert out[key].shape == (3, h, w) and out[key].dtype == np.float32
    for key in SPEC.label_maps:
        assert out[key].shape == (3, h, w) and out[key].dtype == np.uint8
    assert out["transforms"].shape == (3, ss.N_VERT, 3, 3)
    assert out["body_com_ct"].shape == (3, ss.N_VERT, 2)
    vol = SPEC([0], seed=0, sizes=Sizes(32, 32, 16))
    assert vol["ct"].shape == (1, 16, 32, 32) and vol["labels_ct"].shape == (1, 16, 32, 32)
    assert vol["transforms"].shape == (1, ss.N_VERT, 4, 4) and vol["spinous_com_mri"].shape == (1, ss.N_VERT, 3)
    # Physical units: HU spans air to cortical bone; MRI in fixed a.u. near [0, 1].
    assert out["ct"].min() < -900 and out["ct"].max() > 300  # air .. bone (cortex partial-volumed at 32 px)
    assert 0 <= out["t1w"].min() and out["t1w"].max() < 1.6
    assert SPEC.modalities["ct"].to_model(np.array([-1000.0, 1000.0])).tolist() == [-1.0, 1.0]


def test_same_seed_same_arrays_and_subjects_independent_of_batch() -> None:
    a = SPEC([3, 4, 5], seed=1, sizes="ci")
    b = SPEC([3, 4, 5], seed=1, sizes="ci")
    c = SPEC([5], seed=1, sizes="ci")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a[key][2:], c[key], err_msg=key)


def test_different_seeds_different_patients() -> None:
    a = SPEC([0, 1, 2, 3], seed=0, sizes="ci")
    b = SPEC([0, 1, 2, 3], seed=1, sizes="ci")
    assert not np.array_equal(a["labels_mri"], b["labels_mri"])
    assert not np.allclose(a["curvature_deg"], b["curvature_deg"])
    assert not np.allclose(a["transforms"], b["transforms"])
    # ... and different subjects of one seed differ too.
    assert len({round(float(c), 3) for c in a["curvature_deg"]}) == 4


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_2d_landmarks_disagree_before_and_agree_after_registration(segment: int) -> None:
    out = SPEC([0, 1], seed=0, sizes=Sizes(256, 256, 0), segment=segment)
    assert out["complete"].sum(axis=1).min() >= 5  # the central vertebrae are fully in view
    for name, (before, after) in _registration_errors(out).items():
        assert before.mean() > 3.0, (name, before.mean())
        assert after.max() < 0.5, (name, after.max())


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_3d_landmarks_agree_after_registration_and_ct_rotates_axially(segment: int) -> None:
    out = SPEC([segment], seed=0, sizes=Sizes(96, 96, 32), segment=segment)
    for name, (before, after) in _registration_errors(out).items():
        assert before.mean() > 2.0, (name, before.mean())
        assert after.max() < 0.5, (name, after.max())
    # In 3D the CT pose includes rotation about the cranio-caudal axis (slice <-> column coupling);
    # the 2D pose never leaves the sagittal plane (its 2x2 block is a rotation, square pixels).
    assert np.abs(out["transforms"][..., 0, 2]).max() > 0.02
    flat = SPEC([0, 1, 2], seed=0, sizes="ci")["transforms"][..., :2, :2]
    np.testing.assert_allclose(flat @ np.swapaxes(flat, -1, -2), np.broadcast_to(np.eye(2), flat.shape), atol=1e-9)


def test_transforms_map_whole_label_regions() -> None:
    """Every MRI pixel of a complete vertebra, moved by its transform, lands on the same label in CT."""
    out = SPEC([0, 1, 2], seed=2, sizes=Sizes(128, 128, 0))
    hits = []
    for i in range(3):
        for v in np.flatnonzero(out["complete"][i]):
            lab = ss.label_value(v, np.arange(1, 4))
            pts = np.argwhere(np.isin(out["labels_mri"][i], lab)).astype(float)
            moved = np.rint(_apply(out["transforms"][i, v][None, None], pts[None])[0]).astype(int)
            moved = np.clip(moved, 0, 127)
            hits.append((np.isin(out["labels_ct"][i][moved[:, 0], moved[:, 1]], lab)).mean())
    assert min(hits) > 0.85, min(hits)


def test_misalignment_zero_means_aligned() -> None:
    for sizes in (Sizes(32, 32, 0), Sizes(32, 32, 8)):
        out = SPEC([0, 1], seed=0, sizes=sizes, misalignment=0)
        np.testing.assert_array_equal(out["labels_ct"], out["labels_mri"])
        eye = np.eye(out["transforms"].shape[-1])
        np.testing.assert_allclose(out["transforms"], np.broadcast_to(eye, out["transforms"].shape), atol=1e-9)


def test_ct_hounsfield_units_per_tissue() -> None:
    out = SPEC(np.arange(6), seed=0, sizes=Sizes(128, 128, 0), degeneration=0.5)
    tissue, ct = out["tissue_ct"], out["ct"]
    t = {name: i for i, name in enumerate(ss.TISSUES)}
    ranges = {"air": (-1050, -950), "fat": (-150, -50), "muscle": (20, 80), "annulus": (50, 120),
              "nucleus": (50, 120), "cancellous_bone": (150, 400), "cortical_bone": (700, 1500)}
    for i in range(6):
        for name, (lo, hi) in ranges.items():
            median = np.median(ct[i][tissue[i] == t[name]])
            assert lo <= median <= hi, (i, name, median)


def test_mri_contrasts() -> None:
    healthy = SPEC(np.arange(4), seed=0, sizes=Sizes(128, 128, 0), degeneration=0.0)
    degen = SPEC(np.arange(4), seed=0, sizes=Sizes(128, 128, 0), degeneration=1.0)
    t = {name: i for i, name in enumerate(ss.TISSUES)}
    for i in range(4):
        tis = healthy["tissue_mri"][i]
        med = {(seq, name): np.median(healthy[seq][i][tis == t[name]]) for seq in ("t1w", "t2w")
               for name in ("csf", "cord", "fat", "muscle", "cortical_bone", "cancellous_bone")}
        assert med["t1w", "csf"] < med["t1w", "cord"] and med["t2w", "csf"] > med["t2w", "cord"]
        assert med["t1w", "fat"] > med["t1w", "muscle"] and med["t1w", "cancellous_bone"] > med["t1w", "muscle"]
        assert med["t2w", "fat"] > med["t2w", "muscle"]
        for seq in ("t1w", "t2w"):
            assert med[seq, "cortical_bone"] < 0.5 * min(med[seq, "muscle"], med[seq, "cancellous_bone"])
        # The same discs, degenerated: the nucleus turns dark on T2w (it stays bright when healthy).
        nuc_h = np.median(healthy["t2w"][i][tis == t["nucleus"]])
        nuc_d = np.median(degen["t2w"][i][degen["tissue_mri"][i] == t["nucleus"]])
        assert nuc_d < 0.6 * nuc_h and nuc_h > med["t2w", "muscle"]
    assert degen["degenerated"][:, :-1].all() and not healthy["degenerated"].any()


def test_2d_is_the_central_slice_of_the_3d_volume() -> None:
    """Without noise, the 2D MRI and its labels equal slice D // 2 of an odd-D volume whose slice
    spacing is below the slice thickness (here about 0.8-2.3 mm for 2.5-3.5 mm slices)."""
    flat = SPEC([0, 1, 2, 3], seed=3, sizes=Sizes(32, 32, 0), noise=0)
    vol = SPEC([0, 1, 2, 3], seed=3, sizes=Sizes(32, 32, 45), noise=0)
    assert (vol["spacing_mm"][:, 0] < vol["slice_thickness_mm"]).all()
    for key in ("labels_mri", "tissue_mri"):
        np.testing.assert_array_equal(flat[key], vol[key][:, 22])
    for key in ("t1w", "t2w"):
        np.testing.assert_allclose(flat[key], vol[key][:, 22], atol=1e-5)
    for key in ("segment", "curvature_deg", "degenerated", "fracture", "slice_thickness_mm"):
        np.testing.assert_array_equal(flat[key], vol[key])
    # The CT differs only by the out-of-plane motion that 2D leaves out: same vertebrae in view.
    for i in range(4):
        assert set(np.unique(flat["labels_ct"][i]) // 10) == set(np.unique(vol["labels_ct"][i, 22]) // 10)


def test_thick_slices_average_across_the_slab() -> None:
    """Off the midline the MRI is a slab average (partial volume), the CT a thin slice."""
    out = SPEC([0, 1], seed=0, sizes=Sizes(64, 64, 0), noise=0, slice=0.3)
    assert not np.isin(out["labels_mri"] % 10, [3]).any()  # no spinous process 0.3 half-widths off-centre
    assert (out["labels_mri"] % 10 == 1).any()  # bodies still cut
    t = {name: i for i, name in enumerate(ss.TISSUES)}
    values = {float(v) for v in np.unique(out["t1w"][0][out["tissue_mri"][0] == t["muscle"]])}
    assert len(values) > 1  # bias field: smooth, so muscle is not one value
    bare = SPEC([0, 1], seed=0, sizes=Sizes(64, 64, 0), noise=0)
    assert not np.array_equal(out["t1w"], bare["t1w"])


def test_controls_fix_parameters() -> None:
    out = SPEC(np.arange(4), seed=0, sizes="ci", segment=1, curvature=12, fracture=1.0)
    assert (out["segment"] == 1).all() and np.allclose(out["curvature_deg"], 12)
    assert out["fracture"].all()
    none = SPEC(np.arange(4), seed=0, sizes="ci", segment=1, curvature=12, fracture=0.0)
    assert not none["fracture"].any()
    # Fixing one control leaves the other draws alone.
    np.testing.assert_array_equal(out["degenerated"], none["degenerated"])
    free = SPEC(np.arange(4), seed=0, sizes="ci")
    assert set(free["segment"].tolist()) <= {0, 1, 2}
    # More misalignment moves the CT further.
    small = _registration_errors(SPEC([0, 1], seed=0, sizes=Sizes(64, 64, 0), misalignment=0.5))["body"][0]
    large = _registration_errors(SPEC([0, 1], seed=0, sizes=Sizes(64, 64, 0), misalignment=2.0))["body"][0]
    assert large.mean() > 2 * small.mean()


@pytest.mark.parametrize("controls", [{"segment": 3}, {"segment": 1.5}, {"curvature": -1}, {"misalignment": 2.5},
                                      {"noise": -0.1}, {"slice": 1.5}, {"fracture": 2}, {"colour": 1}])
def test_bad_controls_raise(controls: dict) -> None:
    with pytest.raises(PhantomError):
        SPEC([0], seed=0, sizes="ci", **controls)


def test_bad_sizes_raise_and_empty_batch() -> None:
    with pytest.raises(PhantomError, match="depth"):
        SPEC([0], seed=0, sizes=Sizes(32, 32, 2))
    with pytest.raises(PhantomError, match=">= 16"):
        SPEC([0], seed=0, sizes=Sizes(12, 12, 0))
    with pytest.raises(PhantomError, match="slice"):
        SPEC([0], seed=0, sizes=Sizes(32, 32, 8), slice=0.5)
    for sizes in (Sizes(32, 32, 0), Sizes(32, 32, 8)):
        empty, one = SPEC([], seed=0, sizes=sizes), SPEC([0], seed=0, sizes=sizes)
        assert set(empty) == set(one)
        for key in one:
            assert empty[key].shape == (0,) + one[key].shape[1:] and empty[key].dtype == one[key].dtype, key
