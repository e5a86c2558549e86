"""medgen.data.augment: recipes keep source / target / mask / labels aligned; jitter only on MRI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.data.augment import (ELASTIC_DISPLACEMENT, JITTER, AugmentError, build_augment)

torch.set_num_threads(1)


def ramp_item(spatial: tuple[int, ...], seed: int = 0) -> dict:
    """An item whose target is a known pixelwise function of its source (t = s^3) and whose
    label map and mask are thresholds of it; a landmark marks the brightest source pixel."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(spatial, generator=g) * 0.2 - 0.9  # small noise ...
    s = s + torch.linspace(0, 1.5, spatial[-1])  # ... on a left-to-right ramp: not mirror-symmetric
    s = s.clamp(-1, 1)[None].float()
    return {"source": s, "target": s**3, "mask": (s > -0.5).float(), "seg": (s[0] > 0).long(),
            "corners": torch.tensor([[1.0, 2.0], [3.0, float(spatial[-1] - 2)]]), "grade": 2, "patient_id": "p"}


def test_recipe_parsing_and_identity():
    item = ramp_item((8, 8))
    assert build_augment("", 2)(item) is item
    with pytest.raises(AugmentError, match=r"unknown augmentation 'blur'.*flip, mri_jitter, elastic3d"):
        build_augment("flip+blur", 2)
    with pytest.raises(AugmentError, match="spatial_dims"):
        build_augment("flip", 4)
    assert build_augment(" flip + mri_jitter ", 2).recipes == ("flip", "mri_jitter")


@pytest.mark.parametrize("spatial", [(16, 12), (4, 8, 6)])
def test_flip_keeps_pairs_labels_and_landmarks_aligned(spatial):
    aug = build_augment("flip", len(spatial), seed=3, label_keys=("seg",), point_keys=("corners",))
    flips = 0
    for i in range(40):
        item = ramp_item(spatial, seed=i)
        out = aug(item)
        flipped = not torch.equal(out["source"], item["source"])
        flips += flipped
        ref = item["source"].flip(-1) if flipped else item["source"]
        torch.testing.assert_close(out["source"], ref)
        torch.testing.assert_close(out["target"], out["source"] ** 3)  # t = f(s) still holds pixelwise
        torch.testing.assert_close(out["mask"], (out["source"] > -0.5).float())
        assert out["seg"].dtype == torch.int64
        torch.testing.assert_close(out["seg"], (out["source"][0] > 0).long())
        cols = item["corners"][:, 1]
        torch.testing.assert_close(out["corners"][:, 1], spatial[-1] - 1 - cols if flipped else cols)
        torch.testing.assert_close(out["corners"][:, 0], item["corners"][:, 0])
        assert out["grade"] == 2 and out["patient_id"] == "p"
        assert torch.equal(item["source"], ramp_item(spatial, seed=i)["source"])  # input untouched
    assert 10 <= flips <= 30  # probability 0.5 over 40 draws


def test_determinism_for_a_seed():
    items = [ramp_item((16, 16), seed=i) for i in range(6)]
    runs = []
    for seed in (7, 7, 8):
        aug = build_augment("flip+mri_jitter+elastic3d", 2, seed=seed)
        runs.append(torch.stack([aug(it)["source"] for it in items]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("spatial", [(32, 32), (12, 24, 24)])
def test_elastic_uses_one_field_for_every_key(spatial):
    aug = build_augment("elastic3d", len(spatial), seed=0, label_keys=("seg",), point_keys=("corners",))
    deformed = 0
    for i in range(5):
        item = ramp_item(spatial, seed=i)
        item["target"] = item["source"].clone()  # identical images must stay identical
        out = aug(item)
        assert torch.equal(out["source"], out["target"])
        deformed += not torch.allclose(out["source"], item["source"])
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        assert out["seg"].dtype == torch.int64 and set(out["seg"].unique().tolist()) <= {0, 1}
        # nearest-interpolated labels follow the bilinear image: where the deformed image is
        # clearly positive / negative, the deformed label agrees
        img = out["source"][0]
        agree = (out["seg"] == (img > 0).long())[(img.abs() > 0.3)]
        assert agree.float().mean() > 0.97
        assert "corners" not in out and out["grade"] == 2  # landmarks cannot follow a free-form field
    assert deformed >= 3  # ELASTIC_PROB = 0.9


@pytest.mark.parametrize("spatial", [(48, 48), (16, 32, 32)])
def test_elastic_displacement_is_weak_and_scales_with_width(spatial):
    """Deform an image of its own coordinates: the per-pixel change is the displacement field."""
    aug = build_augment("elastic3d", len(spatial), seed=1)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij"))
    stds = []
    for _ in range(4):
        out = aug({"source": coords.clone()})
        disp = out["source"] - coords
        inner = (slice(None),) + tuple(slice(3, n - 3) for n in spatial)
        stds.append(float(disp[inner].std()))
    expected = ELASTIC_DISPLACEMENT * spatial[-1]
    moved = [s for s in stds if s > 0]
    assert moved and all(0.3 * expected < s < 3.0 * expected for s in moved), (stds, expected)


def test_mri_jitter_touches_mri_source_channels_only():
    aug = build_augment("mri_jitter", 2, seed=0, mri_channels=[1])
    g = torch.Generator().manual_seed(0)
    src = torch.rand((2, 16, 16), generator=g) * 1.2 - 0.8  # inside [-1, 1] with room: few clipped pixels
    item = {"source": src, "target": torch.rand((1, 16, 16), generator=g) * 2 - 1, "mask": torch.ones(1, 16, 16)}
    slopes = []
    for _ in range(20):
        out = aug(item)
        torch.testing.assert_close(out["source"][0], item["source"][0])  # not an MRI channel
        torch.testing.assert_close(out["target"], item["target"])  # the target is never jittered
        torch.testing.assert_close(out["mask"], item["mask"])
        # brightness then contrast is an affine map of u = (x + 1) / 2 before clipping:
        # u' = (1 + c) (1 + b) u + const, so the slope lies in [(1 - J)^2, (1 + J)^2]
        u, v = (item["source"][1] + 1) / 2, (out["source"][1] + 1) / 2
        inside = (v > 1e-4) & (v < 1 - 1e-4)
        a = np.polyfit(u[inside].numpy(), v[inside].numpy(), 1)
        residual = v[inside].numpy() - np.polyval(a, u[inside].numpy())
        assert np.abs(residual).max() < 1e-4
        slopes.append(a[0])
    assert (1 - JITTER) ** 2 - 1e-4 <= min(slopes) and max(slopes) <= (1 + JITTER) ** 2 + 1e-4
    assert max(slopes) - min(slopes) > 0.1  # the factors really vary
    assert float(out["source"].min()) >= -1 and float(out["source"].max()) <= 1
    none = build_augment("mri_jitter", 2, mri_channels=[])
    torch.testing.assert_close(none(item)["source"], item["source"])


def test_mri_jitter_mean_is_brightness_only():
    """Contrast keeps the mean (RandScaleIntensityFixedMean): mean(u') = (1 + b) mean(u) when unclipped."""
    aug = build_augment("mri_jitter", 2, seed=4)
    src = torch.full((1, 8, 8), -0.2) + torch.linspace(-0.1, 0.1, 8)
    ratios = []
    for _ in range(10):
        out = aug({"source": src})
        ratios.append(float(((out["source"] + 1) / 2).mean() / ((src + 1) / 2).mean()))
    assert all(1 - JITTER - 1e-4 <= r <= 1 + JITTER + 1e-4 for r in ratios)


def test_dataloader_workers_get_their_own_stream(monkeypatch):
    """A forked worker holds a copy of the parent's state; it is re-seeded from worker_info.seed."""
    import types

    items = [ramp_item((16, 16), seed=i) for i in range(12)]
    parent = build_augment("flip", 2, seed=0)
    main = [torch.equal(parent(it)["source"], it["source"]) for it in items]
    worker = build_augment("flip", 2, seed=0)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(id=1, seed=987654321))
    in_worker = [torch.equal(worker(it)["source"], it["source"]) for it in items]
    worker_again = build_augment("flip", 2, seed=0)
    assert in_worker != main  # not the parent's draws ...
    assert in_worker == [torch.equal(worker_again(it)["source"], it["source"]) for it in items]  # ... but seeded


def test_augmented_batches_depend_only_on_the_step_so_resume_repeats_them() -> None:
    """fit's sampler keys each batch's augmentation on (step, rank): starting at step 3 (a resume)
    yields exactly the augmented batch 3 of an uninterrupted pass; without the key the stream drifts."""
    from torch.utils.data import DataLoader

    from medgen.config import DataConfig
    from medgen.data.batch import collate
    from medgen.data.datasets import PairedDataset
    from medgen.train import StepBatchSampler

    cfg = DataConfig(dataset="paired", phantom="lung", source="ct", target="air_fraction", image_size=16,
                     n_train=12, n_test=2, augment="flip+elastic3d")

    def batches(start: int, stop: int) -> list:
        ds = PairedDataset(cfg, "train")
        loader = DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), 4, 0, start, stop), collate_fn=collate)
        return [b.source for b in loader]

    full, resumed = batches(0, 5), batches(3, 5)
    torch.testing.assert_close(resumed[0], full[3], rtol=0, atol=0)
    torch.testing.assert_close(resumed[1], full[4], rtol=0, atol=0)
    assert not torch.equal(full[3], full[2])  # different steps, different batches
    plain = PairedDataset(cfg, "train")  # no key: a sequential stream, as before
    first = torch.stack([plain[i]["source"] for i in range(4)])
    again = torch.stack([plain[i]["source"] for i in range(4)])
    assert not torch.equal(first, again)  # the unkeyed stream moves on, so the key is what makes resume exact
