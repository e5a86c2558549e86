"""Dataset kinds of medgen.data.datasets on a tiny fake phantom (and on a tiny manifest).

The fake phantom below is built here (never registered outside the ``fake`` fixture) so the
expected values are derived independently of the real anatomies: every image is a function of
one ramp ``u`` per subject, so ``target = f(source)`` is known in closed form.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import medgen.data.datasets as ds
from medgen.config import DataConfig
from medgen.data.batch import Batch, collate
from medgen.data.phantoms.base import Modality, PhantomSpec, Sizes, subject_rng
from medgen.data.splits import check_disjoint
from medgen.registry import DATASETS, PHANTOMS

torch.set_num_threads(1)

NAME = "_fake_datasets_test"
K = 3  # images in the fake "us" stack
MODALITIES = {
    "t1w": Modality("t1w", "a.u. (MRI)", 0.0, 1000.0),
    "ct": Modality("ct", "HU", -1000.0, 2000.0),
    "xray": Modality("xray", "film density", 0.0, 1.0),
    "us": Modality("us", "a.u. (ultrasound)", 0.0, 1.0),
}


def _ramp(rng: np.random.Generator, sizes: Sizes) -> np.ndarray:
    """``u [H, W]`` (or ``[D, H, W]``) in [0, 1]: a left-to-right ramp of random slope (not symmetric)."""
    a = rng.uniform(0.3, 0.9)
    ys = (np.arange(sizes.height) + 0.5) / sizes.height
    xs = (np.arange(sizes.width) + 0.5) / sizes.width
    u = a * xs[None, :] * (0.8 + 0.2 * ys[:, None])
    if sizes.depth:
        u = u[None] * (0.5 + 0.5 * np.arange(sizes.depth)[:, None, None] / (sizes.depth - 1))
    return u


def _generate(numbers: np.ndarray, *, seed: int, sizes: Sizes) -> dict[str, np.ndarray]:
    rngs = [subject_rng(NAME, seed, int(k)) for k in numbers]
    u = np.stack([_ramp(r, sizes) for r in rngs])
    out = {
        "t1w": (1000.0 * u).astype(np.float32),  # MRI: u on a 0..1000 a.u. scale
        "ct": (-1000.0 + 3000.0 * u**2).astype(np.float32),  # HU: model range 2 u^2 - 1
        "xray": (u.mean(axis=1) if sizes.depth else u).astype(np.float32),  # 2D projection
        "us": np.stack([u if not sizes.depth else u[:, 0]] * K, axis=1).astype(np.float32) * [[[[1.0]], [[0.5]],
                                                                                              [[0.25]]]],
        "seg": (u > 0.3).astype(np.int64) + (u > 0.6),  # label map 0/1/2
        "mask": (u > 0.05).astype(np.uint8),
        "grade": np.array([r.integers(0, 5) for r in rngs]),
        "angle": np.array([r.uniform(0, 60) for r in rngs]),
        "best": np.array([r.integers(0, K) for r in rngs]),  # a per-subject index into the "us" stack
        "affine": np.stack([np.stack([np.eye(3)] * 2)] * len(numbers)),  # [n, 2, 3, 3] floats, not points
        "corners": np.stack([[[2.0, 3.0], [4.0, 5.0]]] * len(numbers)).astype(np.float32),
    }
    out["us"] = out["us"].astype(np.float32)
    return out


SPEC = PhantomSpec(
    name=NAME, card="fake phantom for dataset tests", generate=_generate, modalities=MODALITIES,
    labels={"seg": "label map", "mask": "body mask", "grade": "int 0-4", "angle": "deg", "best": "us index",
            "affine": "per-part homogeneous matrix of pixel coordinates",
            "corners": "landmarks [2, 2] (row, col)"},
    sizes={"ci": Sizes(16, 16, 4), "smoke": Sizes(16, 16, 4), "cpu": Sizes(32, 16, 4), "paper": Sizes(32, 16, 8)},
    label_maps=("seg",))


@pytest.fixture()
def fake():
    assert NAME not in PHANTOMS
    PHANTOMS[NAME] = SPEC
    yield SPEC
    PHANTOMS.pop(NAME, None)


def cfg(**kw) -> DataConfig:
    base = dict(phantom=NAME, image_size=16, n_train=6, n_test=3, source="t1w", target="ct")
    base.update(kw)
    return DataConfig(**base)


def build(kind: str, split: str = "train", **kw):
    return DATASETS[kind](cfg(**kw), split)


def f_ct(source: torch.Tensor) -> torch.Tensor:
    """The fake's CT in model range from its T1w in model range: u = (s + 1) / 2, ct = 2 u^2 - 1."""
    return 2.0 * ((source + 1.0) / 2.0) ** 2 - 1.0


# --------------------------------------------------------------------------------------
def test_paired_items_shapes_range_meta(fake):
    d = build("paired")
    h, w = fake.sizes_at(16).height, fake.sizes_at(16).width
    assert (h, w) == (32, 16)  # paper aspect 2:1 kept
    assert len(d) == 6 and d.patient_ids == [f"{NAME}-{k:06d}" for k in range(6)]
    item = d[1]
    assert item["source"].shape == (1, h, w) and item["target"].shape == (1, h, w) and item["mask"].shape == (1, h, w)
    assert item["source"].dtype == torch.float32 and item["target"].dtype == torch.float32
    for key in ("source", "target"):
        assert -1.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    torch.testing.assert_close(item["target"], f_ct(item["source"]), atol=1e-5, rtol=0)
    u = (item["source"][0] + 1) / 2
    torch.testing.assert_close(item["mask"][0], (u > 0.05).float())
    assert item["mask"].min() == 0  # the phantom's mask is used, not ones
    assert isinstance(item["grade"], int) and isinstance(item["angle"], float)
    assert item["seg"].dtype == torch.int64 and item["seg"].shape == (h, w)
    torch.testing.assert_close(item["seg"], (u > 0.3).long() + (u > 0.6).long())
    assert item["corners"].shape == (2, 2)
    assert item["patient_id"] == f"{NAME}-000001"
    assert "t1w" not in item and "xray" not in item  # other images are not meta
    assert "paired" in repr(d) and d.split_hash in repr(d)


def test_items_equal_direct_render_across_chunks(fake):
    """Subject 70 (second render chunk of 64) equals a lone render of subject 70: chunking does not matter."""
    d = build("paired", n_train=71)
    lone = fake([70], seed=0, sizes=Sizes(32, 16, 0))
    torch.testing.assert_close(d[70]["source"][0], torch.from_numpy(MODALITIES["t1w"].to_model(lone["t1w"][0])))
    assert d[70]["grade"] == int(lone["grade"][0])
    again = build("paired", n_train=71)
    for i in (0, 5, 70):
        torch.testing.assert_close(again[i]["source"], d[i]["source"])
    other_seed = DATASETS["paired"](cfg(n_train=71), "train", seed=1)
    assert not torch.equal(other_seed[0]["source"], d[0]["source"])


def test_train_test_disjoint_and_test_fixed(fake):
    train, test = build("paired"), build("paired", "test")
    assert test.patient_ids[0] == f"{NAME}-{ds.TEST_OFFSET:06d}"
    check_disjoint(train.patient_ids, test.patient_ids)
    from medgen.train import check_patient_overlap

    check_patient_overlap(train, test)
    bigger = build("paired", n_train=12)
    assert build("paired", "test").split_hash == test.split_hash  # test set independent of n_train
    assert bigger.split_hash != train.split_hash


def test_overlapping_pair_is_refused_naming_the_patient(fake):
    from medgen.train import SplitOverlapError, check_patient_overlap

    small = build("paired", n_train=2)
    with pytest.raises(SplitOverlapError, match=f"{NAME}-000000"):
        check_patient_overlap(build("paired"), small)


def test_collate_and_dataloader_batches(fake):
    d = build("paired", source="t1w,xray")
    batch = collate([d[i] for i in range(4)])
    assert isinstance(batch, Batch)
    assert batch.source.shape == (4, 2, 32, 16) and batch.target.shape == (4, 1, 32, 16)
    assert batch.mask.shape == (4, 1, 32, 16) and len(batch.meta["patient_id"]) == 4
    assert batch.meta["grade"] == [d[i]["grade"] for i in range(4)]
    # the DataLoader batch path (__getitems__) gives the same tensors as single items
    loader = DataLoader(d, batch_size=3, shuffle=False, collate_fn=collate)
    first = next(iter(loader))
    torch.testing.assert_close(first.source, torch.stack([d[i]["source"] for i in range(3)]))
    got = d.__getitems__([5, 0, 5])
    torch.testing.assert_close(got[0]["source"], d[5]["source"])


def test_no_target_and_multichannel_source(fake):
    d = build("paired", source="t1w, xray", target="")
    item = d[0]
    assert "target" not in item and item["source"].shape == (2, 32, 16)
    # 2D xray of the fake is u itself on [0, 1]: model range 2u - 1 = the t1w channel
    torch.testing.assert_close(item["source"][1], item["source"][0], atol=1e-5, rtol=0)
    assert collate([d[0], d[1]]).target is None


def test_unpaired_train_uses_disjoint_halves_test_is_paired(fake):
    d = build("unpaired", n_train=8)
    src = {d[i]["patient_id"] for i in range(len(d))}
    tgt = {d[i]["target_patient_id"] for i in range(len(d))}
    assert src and tgt and not src & tgt
    assert set(d.patient_ids) == src | tgt == {f"{NAME}-{k:06d}" for k in range(8)}
    item = d[0]
    assert not torch.allclose(item["target"], f_ct(item["source"]), atol=1e-4)  # another subject
    test = build("unpaired", "test")
    torch.testing.assert_close(test[0]["target"], f_ct(test[0]["source"]), atol=1e-5, rtol=0)
    collate([d[0], d[1]])


def test_multi_depth_stacks_k_channels(fake):
    d = build("multi_depth", source="us")
    item = d[2]
    assert item["source"].shape == (K, 32, 16) and item["target"].shape == (1, 32, 16)
    u = (item["source"][0] + 1) / 2  # depth 0 is u, depth 1 is u / 2, depth 2 is u / 4
    torch.testing.assert_close((item["source"][1] + 1) / 2, u / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(item["target"][0], 2 * u**2 - 1, atol=1e-5, rtol=0)
    with pytest.raises(ds.DatasetError, match="'t1w'.*multi_depth"):
        build("multi_depth", source="t1w")


def test_key_selector_picks_one_image_of_a_stack(fake):
    stack = build("multi_depth", source="us")
    fixed, by_label = build("paired", source="us[2]"), build("paired", source="us[best], t1w")
    for i in range(4):
        ref = stack[i]
        torch.testing.assert_close(fixed[i]["source"][0], ref["source"][2])
        torch.testing.assert_close(by_label[i]["source"][0], ref["source"][ref["best"]])
        assert by_label[i]["source"].shape == (2, 32, 16)
    assert len({stack[i]["best"] for i in range(6)}) > 1  # the label really varies
    with pytest.raises(ds.DatasetError, match=r"'us\[grade_x\]'.*neither an index nor a scalar label"):
        build("paired", source="us[grade_x]")
    with pytest.raises(ds.DatasetError, match=r"'us\[7\]'.*\(3, 32, 16\)"):
        build("paired", source="us[7]")
    with pytest.raises(ds.DatasetError, match=r"unknown data.source key 'vpi\[1\]'"):
        build("paired", source="vpi[1]")


def test_volume_slices_shared_and_sliced_sources(fake):
    d = build("volume_slices", source="xray,t1w", depth=4, n_train=2)
    assert len(d) == 2 * 4 and d.patient_ids == [f"{NAME}-000000"] * 4 + [f"{NAME}-000001"] * 4
    first, last = d[4], d[7]
    assert first["slice_index"] == 0 and last["slice_index"] == 3
    assert first["depth"] == 0.0 and last["depth"] == 1.0 and d[5]["depth"] == pytest.approx(1 / 3)
    assert first["source"].shape == (2, 32, 16) and first["target"].shape == (1, 32, 16)
    torch.testing.assert_close(first["source"][0], last["source"][0])  # the 2D xray is shared
    assert not torch.equal(first["source"][1], last["source"][1])  # the t1w volume is sliced
    torch.testing.assert_close(last["target"], f_ct(last["source"][1:]), atol=1e-5, rtol=0)
    u = (last["source"][1] + 1) / 2
    torch.testing.assert_close(last["seg"], (u > 0.3).long() + (u > 0.6).long())
    assert collate([d[i] for i in range(8)]).meta["depth"][:4] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]


def test_volume_items(fake):
    d = build("volume", depth=4)
    item = d[0]
    assert item["source"].shape == (1, 4, 32, 16) and item["target"].shape == (1, 4, 32, 16)
    assert item["mask"].shape == (1, 4, 32, 16) and item["seg"].shape == (4, 32, 16)
    torch.testing.assert_close(item["target"], f_ct(item["source"]), atol=1e-5, rtol=0)
    assert collate([d[0], d[1]]).source.shape == (2, 1, 4, 32, 16)
    default_depth = build("volume")  # depth 0: the paper depth scaled with the width (8 * 16 / 16)
    assert default_depth[0]["source"].shape[1] == fake.sizes_at(16).depth == 8


def test_error_messages(fake):
    with pytest.raises(ds.DatasetError, match=r"unknown data.source key 'flair'.*t1w, ct, xray, us"):
        build("paired", source="t1w,flair")
    with pytest.raises(ds.DatasetError, match=r"unknown data.target key 'pet'"):
        build("paired", target="pet")
    with pytest.raises(ds.DatasetError, match=r"data.phantom.*data.manifest"):
        build("paired", manifest="x.csv")
    with pytest.raises(ds.DatasetError, match=r"data.phantom.*data.manifest"):
        build("volume", phantom="")
    with pytest.raises(ds.DatasetError, match=r"'xray'.*\(32, 16\).*'volume'"):
        build("volume", source="xray", depth=4)
    with pytest.raises(ds.DatasetError, match=r"'us'.*\(3, 32, 16\).*'paired'.*multi_depth"):
        build("paired", source="us")
    with pytest.raises(ds.DatasetError, match="unknown phantom"):
        build("paired", phantom="no_such_anatomy")
    with pytest.raises(ds.DatasetError, match="split"):
        build("paired", "valid")
    for err in (ds.DatasetError("x"),):
        assert isinstance(err, ValueError)
    msg = ""
    try:
        build("paired", source="nope")
    except ds.DatasetError as err:
        msg = str(err)
    assert "\n" not in msg


def test_augment_applies_to_train_only(fake):
    plain, aug = build("paired", n_train=8), build("paired", n_train=8, augment="flip")
    items = [aug[i] for i in range(8)]  # each access draws anew: read every item once
    changed = [not torch.equal(plain[i]["source"], it["source"]) for i, it in enumerate(items)]
    assert any(changed) and not all(changed)
    for i, it in enumerate(items):  # flipped or not, the pair stays aligned
        torch.testing.assert_close(it["target"], f_ct(it["source"]), atol=1e-5, rtol=0)
        ref = {k: plain[i][k].flip(-1) if changed[i] else plain[i][k] for k in ("source", "seg", "mask")}
        for k, v in ref.items():
            torch.testing.assert_close(it[k], v)
        if changed[i]:  # landmark columns follow: col -> W - 1 - col
            torch.testing.assert_close(it["corners"][:, 1], 15 - plain[i]["corners"][:, 1])
        torch.testing.assert_close(it["affine"], plain[i]["affine"])  # a matrix is not a landmark
    again = build("paired", n_train=8, augment="flip")
    for i in range(8):  # deterministic for the seed
        torch.testing.assert_close(again[i]["source"], items[i]["source"])
    test_plain, test_aug = build("paired", "test"), build("paired", "test", augment="flip")
    for i in range(3):
        torch.testing.assert_close(test_plain[i]["source"], test_aug[i]["source"])
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        build("paired", augment="flip+rotate")


def test_mri_jitter_picks_the_mri_channels(fake):
    d = build("paired", source="xray,t1w", augment="mri_jitter")
    assert d.augment.mri_channels == (1,)
    plain = build("paired", source="xray,t1w")
    item, ref = d[0], plain[0]
    torch.testing.assert_close(item["source"][0], ref["source"][0])  # the radiograph is not jittered
    torch.testing.assert_close(item["target"], ref["target"])  # nor the CT target
    assert not torch.equal(item["source"][1], ref["source"][1])


def test_window_maps_hu_through_the_named_window(fake):
    io = pytest.importorskip("medgen.data.io")
    if not hasattr(io, "window"):
        pytest.skip("medgen.data.io.window not landed yet")
    d = build("paired", window="bone")
    width, level = io.WINDOWS["bone"]
    item = d[0]
    u = (item["source"][0].double() + 1) / 2
    hu = -1000.0 + 3000.0 * u**2
    expected = ((hu - (level - width / 2)) / width).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(item["target"][0].double(), expected, atol=2e-4, rtol=0)
    with pytest.raises(ds.DatasetError, match="HU"):
        build("paired", source="t1w", target="xray", window="bone")
    with pytest.raises(ds.DatasetError, match="unknown data.window"):
        build("paired", window="brain_ish")


# --------------------------------------------------------------------------------------
# Manifest-backed datasets
# --------------------------------------------------------------------------------------
def _by_patient(d) -> dict:
    return {d[i]["patient_id"]: d[i] for i in range(len(d))}


@pytest.mark.parametrize("kind, sizes, extra", [
    ("paired", Sizes(32, 16, 0), dict(source="t1w,xray")),
    ("multi_depth", Sizes(32, 16, 0), dict(source="us")),
    ("volume_slices", Sizes(32, 16, 4), dict(source="xray,t1w", depth=4)),
])
def test_manifest_items_match_the_phantom_they_were_written_from(fake, tmp_path, kind, sizes, extra):
    """write_phantom_dataset -> read back as a manifest dataset == the phantom dataset, patient by patient."""
    import medgen.data.manifest as manifest

    csv = manifest.write_phantom_dataset(fake, 5, tmp_path / "fake", seed=0, sizes=sizes)
    phantom_ds = build(kind, n_train=5, **extra)
    from_phantom = _by_patient(phantom_ds)
    train = DATASETS[kind](cfg(phantom="", manifest=str(csv), test_fraction=0.4, **extra), "train")
    test = DATASETS[kind](cfg(phantom="", manifest=str(csv), test_fraction=0.4, **extra), "test")
    assert len(set(train.patient_ids)) == 3 and len(set(test.patient_ids)) == 2
    check_disjoint(train.patient_ids, test.patient_ids)
    assert set(train.patient_ids) | set(test.patient_ids) == {f"{NAME}-{k:06d}" for k in range(5)}
    for d in (train, test):
        for i in range(len(d)):
            item, ref = d[i], from_phantom[d[i]["patient_id"]] if kind != "volume_slices" else None
            if ref is None:  # volume_slices: the phantom dataset's item of the same patient and slice
                k = int(item["patient_id"].rsplit("-", 1)[1])
                ref = phantom_ds[k * 4 + item["slice_index"]]
            assert item["source"].shape == ref["source"].shape and item["source"].dtype == torch.float32
            torch.testing.assert_close(item["source"], ref["source"], atol=2e-4, rtol=0)  # 16-bit PNG / NIfTI
            torch.testing.assert_close(item["target"], ref["target"], atol=2e-4, rtol=0)
            torch.testing.assert_close(item["mask"], ref["mask"])
            torch.testing.assert_close(item["seg"], ref["seg"])
            assert item["grade"] == ref["grade"] and item["angle"] == pytest.approx(ref["angle"], abs=1e-6)
    batch = collate([train[i] for i in range(len(train))])
    assert batch.source.shape[0] == len(train) and "manifest" in repr(train)


def _png(path, arr: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path.name


def test_manifest_resizes_to_image_size_keeping_aspect(tmp_path):
    """A hand-written CSV of 24x12 PNGs, read at image_size 8: bilinear images, nearest label maps,
    landmarks scaled with the image, the first row's aspect ratio (2:1) kept."""
    rows = ["patient_id,src,tgt,seg,pts,grade"]
    for p in range(5):
        left_right = np.zeros((24, 12))
        left_right[:, 6:] = 200 + p  # dark left half, bright right half
        _png(tmp_path / f"s{p}.png", left_right)
        _png(tmp_path / f"t{p}.png", 255 - left_right)
        _png(tmp_path / f"l{p}.png", (left_right > 0) * 2)
        np.save(tmp_path / f"p{p}.npy", np.array([[11.5, 5.5], [0.0, 0.0]], dtype=np.float32))
        rows.append(f"P{p},s{p}.png,t{p}.png,l{p}.png,p{p}.npy,{p % 3}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"label_maps": ["seg"], "labels": {"pts": {"type": "array"}}}))
    c = DataConfig(manifest=str(tmp_path / "m.csv"), image_size=8, n_train=10, n_test=10, source="src",
                   target="tgt", test_fraction=0.2)
    train, test = DATASETS["paired"](c, "train"), DATASETS["paired"](c, "test")
    assert len(train) == 4 and len(test) == 1
    item = train[0]
    assert item["source"].shape == (1, 16, 8) and item["target"].shape == (1, 16, 8)
    src = item["source"][0]
    assert torch.all(src[:, :3] == -1.0)  # far from the edge the halves keep their values
    p = int(item["patient_id"][1:])
    torch.testing.assert_close(src[:, 5:], torch.full((16, 3), (200 + p) / 255 * 2 - 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(item["target"], -item["source"], atol=1e-5, rtol=0)  # 255 - x maps to -x
    assert item["seg"].dtype == torch.int64 and set(item["seg"].unique().tolist()) == {0, 2}  # nearest: no 1s
    assert torch.all(item["seg"][:, :4] == 0) and torch.all(item["seg"][:, 4:] == 2)
    # pixel-centre scaling by 2/3: (p + 0.5) * 2/3 - 0.5
    torch.testing.assert_close(torch.as_tensor(item["pts"]), torch.tensor([[7.5, 3.5], [-1 / 6, -1 / 6]]))
    assert isinstance(item["grade"], int)
    with pytest.raises(ds.DatasetError, match=r"unknown data.source key 'mri'.*src, tgt"):
        DATASETS["paired"](replace(c, source="mri"), "train")
    capped = DATASETS["paired"](replace(c, n_train=2), "train")
    assert capped.patient_ids == train.patient_ids[:2]


def test_manifest_split_disjoint_and_overlap_refused(tmp_path):
    """Train/test of one manifest pass check_disjoint; a test set drawn with another split seed
    that shares patients with the train set is refused, naming a shared patient."""
    from medgen.train import SplitOverlapError, check_patient_overlap

    rows = ["patient_id,src,tgt"]
    for p in range(6):
        for visit in range(2):  # two rows per patient: a split must keep them together
            name = _png(tmp_path / f"i{p}_{visit}.png", np.full((8, 8), 10 * p + visit))
            rows.append(f"P{p},{name},{name}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    c = DataConfig(manifest=str(tmp_path / "m.csv"), image_size=8, n_train=20, n_test=20, source="src",
                   target="tgt", test_fraction=0.34)
    train, test = DATASETS["paired"](c, "train"), DATASETS["paired"](c, "test")
    assert len(train) == 8 and len(test) == 4 and len(set(test.patient_ids)) == 2
    check_disjoint(train.patient_ids, test.patient_ids)
    check_patient_overlap(train, test)
    for seed in range(1, 20):
        other = DATASETS["paired"](replace(c, split_seed=seed), "test")
        shared = sorted(set(train.patient_ids) & set(other.patient_ids))
        if shared:
            break
    assert shared
    with pytest.raises(SplitOverlapError, match=shared[0]):
        check_patient_overlap(train, other)
    with pytest.raises(ValueError, match=shared[0]):
        check_disjoint(train.patient_ids, other.patient_ids)
    # unpaired on the same manifest: the halves split patients, never a patient's rows
    unpaired = DATASETS["unpaired"](replace(c, dataset="unpaired"), "train")
    src = {unpaired[i]["patient_id"] for i in range(len(unpaired))}
    tgt = {unpaired[i]["target_patient_id"] for i in range(len(unpaired))}
    assert not src & tgt and src | tgt == set(train.patient_ids) and len(unpaired) == 2 * len(src)


def test_volume_kinds_on_a_2d_sized_phantom_need_data_depth(fake):
    """A phantom whose sizes are 2D but which renders volumes when asked (the sagittal spine)."""
    flat = replace(fake, name=NAME + "_2d", sizes={k: replace(v, depth=0) for k, v in fake.sizes.items()})
    PHANTOMS[flat.name] = flat
    try:
        with pytest.raises(ds.DatasetError, match="set data.depth"):
            build("volume", phantom=flat.name)
        assert build("volume", phantom=flat.name, depth=5)[0]["source"].shape == (1, 5, 32, 16)
        assert build("paired", phantom=flat.name, depth=5)[0]["source"].shape == (1, 32, 16)
    finally:
        PHANTOMS.pop(flat.name, None)


# -- data.source_resize (measurements on a coarser grid than the target) -----------------------
def test_resize_source_is_bilinear_on_pixel_centres():
    """Width 2 -> 4: output centres fall at source coordinates -0.25, 0.25, 0.75, 1.25 (clamped at the
    border), so the ramp [0, 1] becomes [0, 0.25, 0.75, 1]; equal sizes are returned unchanged."""
    x = torch.tensor([[0.0, 1.0]]).expand(3, 2)[None, None]  # [1, 1, 3, 2]
    out = ds.resize_source(x, (3, 4))
    assert out.shape == (1, 1, 3, 4)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(3, 4), atol=1e-6)
    assert ds.resize_source(out, (3, 4)) is out
    assert ds.resize_source(torch.zeros(2, 5, 3, 2), (3, 4)).shape == (2, 5, 3, 4)  # leading axes kept
    with pytest.raises(ValueError, match="size must be"):
        ds.resize_source(x, (3,))


def test_source_resize_puts_the_lung_measurement_on_the_ct_grid():
    """The lung phantom's us_linear [H, W/2] becomes [H, W] and pairs with the CT; its values are the
    bilinear upsampling (torch interpolate, computed here directly) of the phantom's own measurement."""
    from medgen.data.phantoms import lung

    c = DataConfig(dataset="paired", phantom="lung", source="us_linear", target="ct", image_size=32,
                   n_train=2, n_test=1, source_resize=True)
    data = DATASETS["paired"](c, "train")
    item = data[1]
    assert item["source"].shape == item["target"].shape == (1, 32, 32)
    raw = lung.SPEC(np.array([1]), seed=0, sizes=lung.SPEC.sizes["ci"])
    assert raw["us_linear"].shape == (1, 32, 16)
    y = torch.from_numpy(lung.SPEC.modalities["us_linear"].to_model(raw["us_linear"]))[None]  # [1, 1, 32, 16]
    expected = torch.nn.functional.interpolate(y, size=(32, 32), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(item["source"], expected, atol=1e-6)
    assert torch.allclose(item["target"][0], torch.from_numpy(lung.CT.to_model(raw["ct"][0])))
    with pytest.raises(ds.DatasetError, match="same size as"):  # without the flag the grids must match
        DATASETS["paired"](replace(c, source_resize=False), "train")
    with pytest.raises(ds.DatasetError, match="source_resize=True needs a data.target"):
        DATASETS["paired"](replace(c, target=""), "train")
