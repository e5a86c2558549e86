"""medgen.measure.spine on hand-built landmark sets with known tilts (independent of any phantom)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from medgen.measure.spine import cobb_angle, curve_angle, endplate_tilts, line_tilt, tilt_range


def endplate(centre: tuple[float, float], tilt_deg: float, half: float) -> np.ndarray:
    """Left and right end ``[2, 2]`` (row, col) of a line through ``centre`` tilted by ``tilt_deg``
    (counter-clockwise as displayed: rows grow downwards, so the right end has the smaller row)."""
    t = np.radians(tilt_deg)
    d = np.array([-np.sin(t), np.cos(t)]) * half
    c = np.asarray(centre, dtype=float)
    return np.stack([c - d, c + d])


def vertebra(centre: tuple[float, float], upper: float, lower: float, half: float = 20.0,
             height: float = 16.0) -> np.ndarray:
    """Corners ``[4, 2]`` TL, TR, BL, BR of a (possibly wedged) vertebra with given endplate tilts."""
    r, c = centre
    top = endplate((r - height / 2, c), upper, half)
    bottom = endplate((r + height / 2, c), lower, half)
    return np.concatenate([top, bottom])


def spine(uppers, lowers) -> np.ndarray:
    """A column of vertebrae ``[V, 4, 2]``, 30 px apart, with the given endplate tilts."""
    return np.stack([vertebra((50.0 + 30.0 * k, 100.0), u, l) for k, (u, l) in enumerate(zip(uppers, lowers))])


def brute_force_cobb(uppers, lowers) -> float:
    """Independent reference: loop over every (upper endplate i, lower endplate j >= i)."""
    return max(abs(uppers[i] - lowers[j]) for i in range(len(uppers)) for j in range(i, len(lowers)))


def test_line_tilt_conventions():
    assert line_tilt([10, 0], [10, 5]) == pytest.approx(0.0)
    assert line_tilt([10, 0], [5, 5]) == pytest.approx(45.0)  # right end higher (smaller row): positive
    assert line_tilt([10, 0], [15, 5]) == pytest.approx(-45.0)
    assert line_tilt([10, 5], [5, 0]) == pytest.approx(-45.0)  # the other diagonal
    assert line_tilt([5, 5], [10, 0]) == pytest.approx(line_tilt([10, 0], [5, 5]))  # undirected
    assert line_tilt([0, 3], [9, 3]) == pytest.approx(-90.0)  # vertical folds to -90


@pytest.mark.parametrize("angle", [-70.0, -33.3, -5.0, 0.0, 12.5, 45.0, 80.0])
def test_rotated_rectangle_tilts(angle):
    """A rectangle rotated by ``angle`` about its centre has both endplates tilted by ``angle``."""
    corners = np.array([[-8.0, -20.0], [-8.0, 20.0], [8.0, -20.0], [8.0, 20.0]])  # (row, col) offsets
    t = np.radians(angle)
    # counter-clockwise on screen in (row, col) with rows down: col' = c cos + r sin, row' = r cos - c sin
    rot = np.stack([corners[:, 0] * np.cos(t) - corners[:, 1] * np.sin(t),
                    corners[:, 1] * np.cos(t) + corners[:, 0] * np.sin(t)], axis=1)
    upper, lower = endplate_tilts(rot[None] + [200.0, 150.0])
    assert upper[0] == pytest.approx(angle, abs=1e-9)
    assert lower[0] == pytest.approx(angle, abs=1e-9)


def test_cobb_of_rectangles_with_known_tilts():
    tilts = [0.0, 8.0, 20.0, 12.0, -3.0, -15.0, -6.0, 2.0]
    lm = spine(tilts, tilts)
    angle, i, j = cobb_angle(lm, return_ends=True)
    assert angle == pytest.approx(35.0)  # 20 - (-15)
    assert (int(i), int(j)) == (2, 5)  # end vertebrae: the most tilted above and below the apex


def test_cobb_matches_brute_force_on_wedged_vertebrae():
    rng = np.random.default_rng(3)
    for _ in range(20):
        uppers, lowers = rng.uniform(-40, 40, 17), rng.uniform(-40, 40, 17)
        assert cobb_angle(spine(uppers, lowers)) == pytest.approx(brute_force_cobb(uppers, lowers), abs=1e-9)


def test_cobb_uses_upper_endplate_above_lower_endplate():
    """The unordered maximum would pair vertebra 1's upper endplate with vertebra 0's lower one (50)."""
    lm = spine([0.0, 20.0], [-30.0, 0.0])
    assert cobb_angle(lm) == pytest.approx(30.0)


def test_cobb_invariant_to_rigid_motion_scale_and_mirror():
    rng = np.random.default_rng(7)
    uppers, lowers = rng.uniform(-25, 25, 17), rng.uniform(-25, 25, 17)
    lm = spine(uppers, lowers)
    ref = cobb_angle(lm)
    t = np.radians(17.0)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    moved = (lm - 100.0) @ rot.T * 0.37 + [12.0, -40.0]  # rotate, scale (px -> mm), translate
    assert cobb_angle(moved) == pytest.approx(ref, abs=1e-9)
    mirrored = lm * [1.0, -1.0]  # left-right flip (corner order flips too: still lines)
    assert cobb_angle(mirrored) == pytest.approx(ref, abs=1e-9)


def test_straight_spine_has_zero_cobb_and_batches_broadcast():
    lm = np.stack([spine(np.zeros(17), np.zeros(17)), spine(np.full(17, 10.0), np.full(17, 10.0))])
    np.testing.assert_allclose(cobb_angle(lm), [0.0, 0.0], atol=1e-9)
    assert cobb_angle(lm).shape == (2,)
    assert cobb_angle(np.zeros((3, 4, 17, 4, 2))).shape == (3, 4)


def test_missing_vertebrae_are_skipped():
    tilts = [0.0, 25.0, 0.0, -5.0, 0.0]
    lm = spine(tilts, tilts)
    lm[1] = np.nan  # the most tilted vertebra is missing
    assert cobb_angle(lm) == pytest.approx(5.0)
    angle, i, j = cobb_angle(np.full((5, 4, 2), np.nan), return_ends=True)
    assert np.isnan(angle) and i == -1 and j == -1


def test_curve_angle_from_lines():
    tilts = [3.0, 11.0, 18.0, 4.0, -9.0, -2.0]
    lines = np.stack([endplate((40.0 + 25 * k, 80.0), t, 30.0) for k, t in enumerate(tilts)])
    angle, i, j = curve_angle(lines, return_ends=True)
    assert angle == pytest.approx(27.0)
    assert (int(i), int(j)) == (2, 4)
    ref = max(abs(a - b) for a, b in itertools.combinations(tilts, 2))
    assert angle == pytest.approx(ref)
    assert curve_angle(lines[:1]) != curve_angle(lines[:1])  # one line: no pair -> NaN


def test_tilt_range_and_shape_errors():
    angle, i, j = tilt_range(np.array([[1.0, 5.0, -2.0]]))
    assert angle[0] == pytest.approx(7.0) and (i[0], j[0]) == (1, 2)
    with pytest.raises(ValueError, match="landmarks"):
        cobb_angle(np.zeros((17, 2, 2)))
    with pytest.raises(ValueError, match="tp_lines"):
        curve_angle(np.zeros((17, 4, 2)))
    with pytest.raises(ValueError, match="shapes"):
        tilt_range(np.zeros(3), np.zeros(4))
