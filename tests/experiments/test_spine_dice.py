"""spine_dice: Dice tables against hand-computed overlaps on small label maps (per volume, per vertebra,
posterior elements without the body, slices of one patient pooled into a volume, excluded vertebrae),
input checks, and ceiling() assembling predictions, references and the `complete` flags."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
from medgen.config import DataConfig
from medgen.experiments.spine_dice import (COLUMNS, MEASURER_NOTE, ceiling, dice_tables, posterior_map, summarize,
                                           vertebra_map)
from medgen.registry import DATASETS, lookup


def _maps():
    """Volume A (one 8x8 slice) and volume B (two slices), hand-drawn; see the numbers in each test."""
    ref = torch.zeros(3, 8, 8, dtype=torch.long)
    pred = torch.zeros_like(ref)
    # A: vertebra 0 body (8 px) + spinous (4 px), vertebra 1 body (8 px)
    ref[0, 0:2, 0:4], ref[0, 0:2, 6:8], ref[0, 4:6, 0:4] = 11, 13, 21
    # pred: body of v0 half (4 px, inside), spinous exact, v1 body exact but one pixel called arch (23)
    pred[0, 0:2, 0:2], pred[0, 0:2, 6:8], pred[0, 4:6, 0:4] = 11, 13, 21
    pred[0, 4, 3] = 23
    # B: vertebra 2 body, 4 px on each of two slices; pred finds it on the first slice only
    ref[1, 2:4, 2:4] = 31
    ref[2, 2:4, 2:4] = 31
    pred[1, 2:4, 2:4] = 31
    return pred, ref, ["A", "B", "B"]


def _row(table, pid, vertebra=-1):
    sel = table[(table.patient_id == pid) & (table.vertebra == vertebra)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_maps_split_vertebrae_and_drop_the_body():
    labels = torch.tensor([0, 11, 12, 13, 21, 103])
    assert vertebra_map(labels).tolist() == [0, 1, 1, 1, 2, 10]
    assert posterior_map(labels).tolist() == [0, 0, 1, 1, 0, 10]


def test_hand_computed_volume_and_vertebra_dice():
    pred, ref, ids = _maps()
    table = dice_tables(pred, ref, ids)
    assert list(table.columns) == list(COLUMNS) and table.attrs["measurer"] == MEASURER_NOTE
    a = _row(table, "A")
    # bone: |P| = 4 + 4 + 8 = 16, |T| = 8 + 4 + 8 = 20, |P n T| = 16 -> 32 / 36
    assert a.bone == pytest.approx(32 / 36)
    # v0: P 8 px, T 12 px, overlap 8 -> 16 / 20; v1: 8 vs 8, all overlapping (23 is still vertebra 1) -> 1
    assert _row(table, "A", 0).bone == pytest.approx(0.8) and _row(table, "A", 1).bone == pytest.approx(1.0)
    assert a.bone_vertebra_mean == pytest.approx(0.9)
    # posterior: P = spinous 4 + the stray arch pixel of v1, T = spinous 4 -> 8 / 9; v0 1, v1 0 (pred only)
    assert a.posterior == pytest.approx(8 / 9)
    assert _row(table, "A", 0).posterior == pytest.approx(1.0) and _row(table, "A", 1).posterior == 0.0
    assert a.posterior_vertebra_mean == pytest.approx(0.5)
    # B: the two slices are one volume: P 4 px, T 8 px, overlap 4 -> 8 / 12 (a per-slice mean would be 0.5)
    b = _row(table, "B")
    assert b.bone == pytest.approx(2 / 3) and _row(table, "B", 2).bone == pytest.approx(2 / 3)
    assert math.isnan(b.posterior) and math.isnan(_row(table, "B", 2).posterior)  # no posterior anywhere
    assert len(table) == 2 + 3  # two volume rows, vertebrae 0, 1 of A and 2 of B
    s = summarize(table)
    assert s.bone_per_volume == pytest.approx((32 / 36 + 2 / 3) / 2)
    assert s.bone_per_vertebra == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)  # pooled over (volume, vertebra)
    assert s.posterior_per_volume == pytest.approx(8 / 9) and s.posterior_per_vertebra == pytest.approx(0.5)
    assert (s.n_volumes, s.n_vertebrae) == (2, 3) and s.attrs["measurer"] == MEASURER_NOTE


def test_posterior_dice_ignores_the_body():
    pred, ref, ids = _maps()
    worse = pred.clone()
    worse[worse % 10 == 1] = 0  # delete every predicted body
    worse[0, 6:8, 0:8] = 21  # and hallucinate a body elsewhere
    before, after = dice_tables(pred, ref, ids), dice_tables(worse, ref, ids)
    assert _row(after, "A").bone < _row(before, "A").bone - 0.3
    assert _row(after, "A").posterior == _row(before, "A").posterior
    assert _row(after, "A", 0).posterior == _row(before, "A", 0).posterior


def test_include_drops_vertebrae_from_both_maps():
    pred, ref, ids = _maps()
    include = torch.ones(3, 10, dtype=torch.bool)
    include[0, 1] = False  # vertebra 1 of A not scored
    table = dice_tables(pred, ref, ids, include=include)
    assert sorted(table[table.patient_id == "A"].vertebra) == [-1, 0]
    assert _row(table, "A").bone == pytest.approx(0.8)  # only v0 left: 16 / 20
    assert _row(table, "A").posterior == pytest.approx(1.0)  # the stray arch pixel of v1 is gone too


def test_3d_items_and_translate_format_against_numpy():
    g = torch.Generator().manual_seed(0)
    choices = torch.tensor([0, 11, 13, 22, 41])
    pred = choices[torch.randint(0, 5, (3, 4, 6, 6), generator=g)]
    ref = choices[torch.randint(0, 5, (3, 4, 6, 6), generator=g)]
    ids = ["p", "q", "p"]
    table = dice_tables(pred[:, None].float(), ref, ids)  # [n, 1, *S] float, as Segmenter.translate returns
    p = np.concatenate([pred[0].numpy(), pred[2].numpy()])  # patient p: items 0 and 2 stacked in depth
    t = np.concatenate([ref[0].numpy(), ref[2].numpy()])
    fg = 2 * ((p > 0) & (t > 0)).sum() / ((p > 0).sum() + (t > 0).sum())
    v3 = 2 * ((p // 10 == 4) & (t // 10 == 4)).sum() / ((p // 10 == 4).sum() + (t // 10 == 4).sum())
    post = lambda x: (x > 0) & (x % 10 != 1)  # noqa: E731
    pd_ = 2 * (post(p) & post(t)).sum() / (post(p).sum() + post(t).sum())
    assert _row(table, "p").bone == pytest.approx(fg) and _row(table, "p", 3).bone == pytest.approx(v3)
    assert _row(table, "p").posterior == pytest.approx(pd_)


def test_input_errors_are_one_line():
    pred, ref, ids = _maps()
    for call, match in [(lambda: dice_tables(pred, ref[:2], ids), "must be the same"),
                        (lambda: dice_tables(pred, ref, ids[:2]), "2 patient ids for 3"),
                        (lambda: dice_tables(pred.float() + 0.5, ref, ids), "non-integer"),
                        (lambda: dice_tables(pred, ref, ids, include=torch.ones(3, 9, dtype=torch.bool)), "include")]:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


class _Replay:
    """A fake segmenter returning given label maps batch by batch (records the CT batches it saw)."""

    def __init__(self, labels):
        self.labels, self.pos, self.seen = labels, 0, []

    def segment(self, ct):
        self.seen.append(ct.shape)
        out = self.labels[self.pos:self.pos + len(ct)]
        self.pos += len(ct)
        return out


def test_ceiling_collects_reference_and_complete_flags():
    cfg = DataConfig(dataset="paired", phantom="spine_sagittal", source="ct", target="", image_size=32,
                     n_train=1, n_test=5, registration="two")
    ds = lookup(DATASETS, "paired")(cfg, "test")
    ref = torch.stack([ds[i]["labels_ct"] for i in range(len(ds))])
    complete = torch.stack([ds[i]["complete"] for i in range(len(ds))])
    oracle = _Replay(ref)
    table = ceiling(oracle, ds, batch_size=2)
    assert [tuple(s) for s in oracle.seen] == [(2, 1, 32, 32), (2, 1, 32, 32), (1, 1, 32, 32)]
    vert = table[table.level == "vertebra"]
    assert (table.bone == 1).all() and len(vert) == int(complete.sum())  # only complete vertebrae scored
    assert list(table[table.level == "volume"].patient_id) == list(ds.patient_ids)
    everything = ceiling(_Replay(ref), ds, complete_only=False)
    assert len(everything[everything.level == "vertebra"]) > len(vert)
    shifted = torch.roll(ref, 1, dims=1)  # one row off: must score below 1
    assert summarize(ceiling(_Replay(shifted), ds)).bone_per_volume < 0.95
