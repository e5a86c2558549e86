"""Tests for medgen.metrics.segmentation: MONAI agreement, hand-computed overlaps, empty labels, HD95."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from medgen.metrics import segmentation as seg

torch.set_num_threads(1)


def _squares(size: int, a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[1, size, size]`` maps with an axis-aligned square (row, col, side) labelled 1 each."""
    p = np.zeros((1, size, size), np.int64)
    t = np.zeros((1, size, size), np.int64)
    p[0, a[0]:a[0] + a[2], a[1]:a[1] + a[2]] = 1
    t[0, b[0]:b[0] + b[2], b[1]:b[1] + b[2]] = 1
    return p, t


def test_two_overlapping_squares_hand_computed():
    # 10x10 at (0,0) and 10x10 at (5,5): overlap 5x5 = 25 -> Dice = 2*25/(100+100) = 0.25
    p, t = _squares(32, (0, 0, 10), (5, 5, 10))
    assert seg.dice_foreground(p, t).tolist() == pytest.approx([0.25])
    assert seg.dice_per_label(p, t).tolist() == [[pytest.approx(0.25)]]
    # 8x8 vs 4x4 inside it: 2*16/(64+16) = 0.4
    p, t = _squares(16, (2, 2, 8), (4, 4, 4))
    assert seg.dice_foreground(torch.from_numpy(p), torch.from_numpy(t)).item() == pytest.approx(0.4)


@pytest.mark.parametrize("shape", [(3, 17, 19), (2, 6, 9, 11)])
def test_per_label_matches_monai_dicemetric(shape):
    g = torch.Generator().manual_seed(0)
    n = 5  # labels 0..4
    p = torch.randint(0, n, shape, generator=g)
    t = torch.randint(0, n, shape, generator=g)
    p[0][p[0] == 3] = 0  # label 3 missing from pred of sample 0 (target keeps it) -> Dice 0 both ways
    ours = seg.dice_per_label(p, t, labels=[1, 2, 3, 4])
    oh = lambda x: torch.nn.functional.one_hot(x, n).movedim(-1, 1).float()
    ref = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(oh(p), oh(t))
    assert ours.shape == (shape[0], 4)
    torch.testing.assert_close(ours, ref.double(), rtol=1e-6, atol=1e-6)
    assert ours[0, 2] == 0
    # label order follows `labels`
    torch.testing.assert_close(seg.dice_per_label(p, t, labels=[4, 1]), ref[:, [3, 0]].double(), rtol=1e-6, atol=1e-6)
    # dice_mean is the per-sample mean over labels
    torch.testing.assert_close(seg.dice_mean(p, t), ref.double().mean(1), rtol=1e-6, atol=1e-6)


def test_foreground_is_binary_dice_of_union():
    g = torch.Generator().manual_seed(1)
    p = torch.randint(0, 4, (2, 12, 12), generator=g)
    t = torch.randint(0, 4, (2, 12, 12), generator=g)
    pb, tb = (p > 0), (t > 0)
    expect = 2 * (pb & tb).flatten(1).sum(1) / (pb.flatten(1).sum(1) + tb.flatten(1).sum(1))
    torch.testing.assert_close(seg.dice_foreground(p, t), expect.double())
    # Dice of the union differs from the mean over labels (voxel- vs label-weighted)
    assert not torch.allclose(seg.dice_foreground(p, t), seg.dice_mean(p, t))


def test_subset_dice():
    # labels 1 (body) and 2 (posterior) in pred; target relabels the posterior as 3 partly
    p = np.zeros((1, 10, 10), np.int64)
    t = np.zeros((1, 10, 10), np.int64)
    p[0, :5, :] = 1          # 50 voxels body
    t[0, :5, :] = 1
    p[0, 5:8, :] = 2         # pred posterior: rows 5-7 (30 voxels)
    t[0, 6:9, :] = 2         # target posterior: rows 6-8 (30 voxels), overlap rows 6-7 = 20
    t[0, 9, :] = 3           # another posterior label only in target (10 voxels)
    # subset {2, 3}: pred union 30, target union 40, overlap 20 -> 40/70
    assert seg.dice_foreground(p, t, labels=[2, 3]).item() == pytest.approx(40 / 70)
    # subset {2}: 2*20/60
    assert seg.dice_foreground(p, t, labels=[2]).item() == pytest.approx(40 / 60)
    # subset {1}: identical
    assert seg.dice_foreground(p, t, labels=[1]).item() == pytest.approx(1.0)


def test_empty_label_handling():
    p = np.zeros((3, 8, 8), np.int64)
    t = np.zeros((3, 8, 8), np.int64)
    p[:, :4] = 1
    t[:, :4] = 1
    p[1, 6:, :] = 2          # sample 1: label 2 only in pred -> 0 (hallucinated structure)
    t[2, 6:, :] = 2          # sample 2: label 2 only in target -> 0 (missed structure)
    # sample 0: label 2 in neither -> NaN
    d = seg.dice_per_label(p, t, labels=[1, 2])
    assert d[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert math.isnan(d[0, 1]) and d[1, 1] == 0 and d[2, 1] == 0
    # dice_mean skips NaN: sample 0 -> 1.0; samples 1, 2 -> 0.5
    assert seg.dice_mean(p, t, labels=[1, 2]).tolist() == [1.0, 0.5, 0.5]
    # foreground empty in both -> NaN
    z = np.zeros((1, 8, 8), np.int64)
    q = z.copy()
    q[0, 0, 0] = 5
    assert seg.dice_foreground(z, q).item() == 0.0  # only pred-empty: 0, not NaN
    assert math.isnan(seg.dice_foreground(np.concatenate([z, q]), np.concatenate([z, q]))[0].item())


def test_per_vertebra_pooled_mean():
    # two volumes; volume 0 has vertebrae 1, 2; volume 1 has only vertebra 2 (1 absent in both)
    p = np.zeros((2, 12, 4), np.int64)
    t = np.zeros((2, 12, 4), np.int64)
    t[0, 0:4] = 1; p[0, 0:4] = 1                 # Dice 1
    t[0, 4:8] = 2; p[0, 5:8] = 2                 # 2*12/(16+12) = 24/28
    t[1, 4:8] = 2; p[1, 4:6] = 2                 # 2*8/(16+8) = 16/24
    d = seg.dice_per_label(p, t)
    assert math.isnan(d[1, 0])
    # per vertebra: mean over the 3 existing vertebrae, not the mean of per-volume means
    expect = (1 + 24 / 28 + 16 / 24) / 3
    assert seg.pooled_mean(d) == pytest.approx(expect)
    per_volume_means = ((1 + 24 / 28) / 2 + 16 / 24) / 2
    assert seg.pooled_mean(d) != pytest.approx(per_volume_means)


def test_hd95_shifted_squares_equals_shift():
    for shift in (1, 3):
        p, t = _squares(40, (10, 10, 12), (10 + shift, 10, 12))
        assert seg.hd95(p, t).item() == pytest.approx(shift)
    # 3D cubes shifted by 2 along one axis, with anisotropic spacing 2.5 along that axis
    p = np.zeros((1, 20, 20, 20), np.int64)
    t = np.zeros_like(p)
    p[0, 5:12, 5:12, 5:12] = 1
    t[0, 7:14, 5:12, 5:12] = 1
    assert seg.hd95(p, t).item() == pytest.approx(2.0)
    assert seg.hd95(p, t, spacing=(2.5, 1.0, 1.0)).item() == pytest.approx(5.0)
    # empty pred -> NaN
    assert math.isnan(seg.hd95(np.zeros_like(t), t).item())


@pytest.mark.parametrize("args, match", [
    ((np.zeros((1, 4, 4), np.int64), np.zeros((1, 4, 5), np.int64)), "differ in shape"),
    ((np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.int64)), "must be integer"),
    ((np.full((1, 4, 4), -1), np.zeros((1, 4, 4), np.int64)), "negative"),
    ((np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)), "expected"),
])
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        seg.dice_per_label(*args)


def test_unknown_and_background_labels_rejected():
    p = np.ones((1, 4, 4), np.int64)
    with pytest.raises(ValueError, match="occur in neither"):
        seg.dice_foreground(p, p, labels=[1, 7])
    with pytest.raises(ValueError, match="background"):
        seg.dice_per_label(p, p, labels=[0, 1])
    # bool masks are accepted as labels {0, 1}
    assert seg.dice_foreground(p.astype(bool), p.astype(bool)).item() == 1.0
