"""medgen.data.manifest: CSV + dataset.json reading, checks, patient splits, phantom datasets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from assertions import raises_one_line  # noqa: E402  (tests/ is on sys.path)
from PIL import Image
from pydicom.data import get_testdata_file

from medgen.data import manifest as mf
from medgen.data.io import write_volume
from medgen.data.manifest import ManifestError, read_manifest
from medgen.data.phantoms.base import Control, Modality, PhantomSpec, Sizes, subject_rng
from medgen.data.splits import patient_split, split_hash
from medgen.data.writers import write_phantom_dataset, write_split_manifests


def _raises(match: str, fn, *args, **kw) -> str:
    """Call ``fn``; assert a one-line ManifestError containing ``match``."""
    return raises_one_line(ManifestError, match, fn, *args, **kw)


def _png8(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path.name


def _dataset(root: Path, n: int = 6, size: int = 16) -> tuple[Path, dict[str, np.ndarray]]:
    """A small paired PNG dataset: 2 rows per patient for P0/P1, one row for the others."""
    rng = np.random.default_rng(0)
    images, lines = {}, ["patient_id,source,target,depths,cobb,grade,side"]
    for k in range(n):
        pid = f"P{k // 2 if k < 4 else k}"
        src, tgt = rng.integers(0, 256, (2, size, size))
        d0, d1 = rng.integers(0, 256, (2, size, size))
        for name, arr in (("s", src), ("t", tgt), ("d0", d0), ("d1", d1)):
            _png8(root / "img" / f"{name}{k}.png", arr)
            images[f"{name}{k}"] = arr
        lines.append(f"{pid},img/s{k}.png,img/t{k}.png,img/d0{k}.png|img/d1{k}.png,{10.5 + k},{k % 5},"
                     f"{'left' if k % 2 else 'right'}")
    csv = root / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, images


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def test_read_infers_columns_and_loads_physical_values(tmp_path: Path) -> None:
    csv, images = _dataset(tmp_path)
    m = read_manifest(csv)
    assert len(m) == 6 and m.patient_ids == ["P0", "P0", "P1", "P1", "P4", "P5"]
    assert m.columns == ("patient_id", "source", "target", "depths", "cobb", "grade", "side")
    assert m.image_columns == ("source", "target", "depths") and m.label_columns == ("cobb", "grade", "side")
    assert m.label_types == {"cobb": "float", "grade": "int", "side": "str"}
    assert m.modalities["target"] == Modality("target", "[0,1]", 0.0, 1.0, m.modalities["target"].description)
    np.testing.assert_allclose(m.load(3, "target"), images["t3"] / 255.0, atol=1e-7)
    stacked = m.load(2, "depths")  # "a.png|b.png" stacks along a new first axis
    assert stacked.shape == (2, 16, 16)
    np.testing.assert_allclose(stacked, np.stack([images["d02"], images["d12"]]) / 255.0, atol=1e-7)
    assert m.labels(4) == {"cobb": 14.5, "grade": 4, "side": "right"}
    assert read_manifest(tmp_path).path == csv  # a folder means its manifest.csv
    m.validate()


def test_missing_manifest_and_missing_patient_column(tmp_path: Path) -> None:
    _raises("nope.csv: manifest file not found", read_manifest, tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("subject,target\n1,x.png\n")
    _raises("a.csv: no 'patient_id' column (columns: subject, target)", read_manifest, tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("patient_id,cobb\nP1,3\n,4\n")
    _raises("b.csv row 1 (line 3): empty patient_id", read_manifest, tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("patient_id,cobb\nP1,3,4\n")
    _raises("c.csv row 0 (line 2): 3 cells, the header has 2", read_manifest, tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("patient_id,cobb,cobb\nP1,3,4\n")
    _raises("d.csv: duplicated column(s) cobb", read_manifest, tmp_path / "d.csv")


def test_missing_referenced_file_names_row_and_path(tmp_path: Path) -> None:
    csv, _ = _dataset(tmp_path)
    (tmp_path / "img" / "t4.png").unlink()
    _raises("manifest.csv row 4 (line 6) column target: file not found: img/t4.png", read_manifest, csv)


def test_mixed_sizes_checked_lazily_and_by_validate(tmp_path: Path) -> None:
    csv, _ = _dataset(tmp_path)
    _png8(tmp_path / "img" / "t5.png", np.zeros((8, 12)))
    m = read_manifest(csv)  # nothing decoded beyond what inference needs: no error yet
    assert m.load(1, "target").shape == (16, 16)
    _raises("manifest.csv row 5 (line 7) column target: 8x12, expected 16x16 like row 0", m.load, 5, "target")
    fresh = read_manifest(csv)  # reference taken from row 0 even when row 5 is loaded first
    _raises("row 5 (line 7) column target: 8x12, expected 16x16 like row 0", fresh.load, 5, "target")
    _raises("row 5 (line 7) column target: 8x12, expected 16x16 like row 0", read_manifest(csv).validate)


def test_unreadable_image_names_row_and_path(tmp_path: Path) -> None:
    csv, _ = _dataset(tmp_path)
    (tmp_path / "img" / "s3.png").write_text("not a png" * 20)
    m = read_manifest(csv)
    _raises("manifest.csv row 3 (line 5) column source: img/s3.png: s3.png: not an image", m.load, 3, "source")


def test_sidecar_types_labels_and_rejects_non_numbers(tmp_path: Path) -> None:
    csv, _ = _dataset(tmp_path)
    sidecar = {"phantom": None, "labels": {"cobb": {"meaning": "Cobb angle [deg]", "type": "float"},
                                           "grade": "KL grade"},
               "modalities": {"target": {"unit": "film density", "low": 0, "high": 1, "description": "xr"}}}
    (tmp_path / "dataset.json").write_text(json.dumps(sidecar))
    m = read_manifest(csv)
    assert m.label_meanings["cobb"] == "Cobb angle [deg]" and m.label_meanings["grade"] == "KL grade"
    assert m.modalities["target"].unit == "film density" and m.modalities["source"].unit == "[0,1]"
    text = csv.read_text().replace(",12.5,", ",about 12,")  # row 2
    csv.write_text(text)
    _raises("manifest.csv row 2 (line 4) column cobb: 'about 12' is not a float", read_manifest, csv)
    sidecar["modalities"]["nope"] = {"unit": "HU", "low": 0, "high": 1}
    (tmp_path / "dataset.json").write_text(json.dumps(sidecar))
    _raises("dataset.json: column 'nope' is not in manifest.csv", read_manifest, csv)
    (tmp_path / "dataset.json").write_text("{not json")
    _raises("dataset.json: unreadable JSON", read_manifest, csv)


def test_nifti_au_scale_is_per_dataset_from_first_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vols = [rng.gamma(2.0, 100.0, (3, 8, 8)).astype(np.float32) for _ in range(10)]
    lines = ["patient_id,t1"]
    for k, v in enumerate(vols):
        write_volume(tmp_path / f"v{k}.nii.gz", v)
        lines.append(f"S{k},v{k}.nii.gz")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    m = read_manifest(tmp_path / "m.csv")
    expected = np.percentile(np.concatenate([v.ravel() for v in vols[: mf.SCALE_ROWS]]), 99.5)
    mod = m.modalities["t1"]
    assert mod.unit == "a.u." and mod.low == 0.0 and mod.high == pytest.approx(expected)
    np.testing.assert_array_equal(m.load(9, "t1"), vols[9])  # load stays in physical units
    train, test = m.split(0.3, seed=0)
    assert train.modalities == test.modalities == m.modalities  # one fixed map for both sides


def test_dicom_ct_column_is_hu_full_range(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    shutil.copy(path, tmp_path / "ct.dcm")
    (tmp_path / "m.csv").write_text("patient_id,ct\nA,ct.dcm\n")
    m = read_manifest(tmp_path / "m.csv")
    assert (m.modalities["ct"].unit, m.modalities["ct"].low, m.modalities["ct"].high) == ("HU", -1024.0, 3071.0)
    assert m.load(0, "ct").min() < -500  # HU, not [0, 1]


def test_dicom_folder_cell_loads_a_sorted_series(tmp_path: Path) -> None:
    import pydicom

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    raw = src.pixel_array
    series = tmp_path / "series"
    series.mkdir()
    for i, z in enumerate([2.0, -3.0]):  # file order is not slice order
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z]
        ds.PixelData = (raw + i).astype(raw.dtype).tobytes()  # slice i holds raw + i
        ds.save_as(series / f"slice{i}")
    (tmp_path / "m.csv").write_text("patient_id,ct\nA,series\n")
    m = read_manifest(tmp_path / "m.csv")
    vol = m.load(0, "ct")
    assert m.modalities["ct"].unit == "HU" and vol.shape == (2, 128, 128)
    np.testing.assert_array_equal(vol[0], raw + 1 - 1024.0)  # z = -3 first
    np.testing.assert_array_equal(vol[1], raw - 1024.0)


# ------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------
def test_split_is_by_patient_and_order_independent(tmp_path: Path) -> None:
    csv, _ = _dataset(tmp_path)
    m = read_manifest(csv)
    train, test = m.split(0.4, seed=3)
    assert not set(train.patient_ids) & set(test.patient_ids)
    assert sorted(train.patient_ids + test.patient_ids) == sorted(m.patient_ids)  # every row once
    exp_train, exp_test = patient_split(m.patient_ids, 0.4, 3)
    assert sorted(set(test.patient_ids)) == exp_test and sorted(set(train.patient_ids)) == exp_train
    # a re-sorted CSV gives the same split and hashes
    lines = csv.read_text().splitlines()
    (tmp_path / "resorted.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    train2, test2 = read_manifest(tmp_path / "resorted.csv").split(0.4, seed=3)
    assert (train2.split_hash, test2.split_hash) == (train.split_hash, test.split_hash)
    assert train.split_hash == split_hash(exp_train)


def test_write_split_manifests_rewrites_paths_and_records_hashes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv, images = _dataset(data)
    m = read_manifest(csv)
    out = tmp_path / "elsewhere" / "splits"
    train_csv, test_csv = write_split_manifests(m, out, 0.4, seed=3)
    record = json.loads((out / "split.json").read_text())
    train, test = read_manifest(train_csv), read_manifest(test_csv)
    assert record["seed"] == 3 and record["test_fraction"] == 0.4
    assert record["train"]["split_hash"] == split_hash(train.patient_ids) == m.split(0.4, 3)[0].split_hash
    assert record["test"]["split_hash"] == split_hash(test.patient_ids)
    assert not set(train.patient_ids) & set(test.patient_ids)
    assert train.cell(0, "source").startswith("../../data/img/")  # relative to the new folder
    k = int(Path(test.cell(0, "target")).stem[1:])
    np.testing.assert_allclose(test.load(0, "target"), images[f"t{k}"] / 255.0, atol=1e-7)
    assert json.loads((out / "dataset.json").read_text())["split"] == {"test_fraction": 0.4, "seed": 3}
    # re-sorted input -> identical split record
    lines = csv.read_text().splitlines()
    (data / "resorted.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    write_split_manifests(read_manifest(data / "resorted.csv"), tmp_path / "again", 0.4, seed=3)
    again = json.loads((tmp_path / "again" / "split.json").read_text())
    assert again["train"] == record["train"] and again["test"] == record["test"]


def test_write_split_refuses_overlap_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv, _ = _dataset(tmp_path / "data")
    m = read_manifest(csv)
    monkeypatch.setattr(mf, "patient_split", lambda ids, f, s: (["P0", "P1"], ["P1"]))  # a broken splitter
    with pytest.raises(ValueError, match="train and test share 1 patient"):
        write_split_manifests(m, tmp_path / "out", 0.3, seed=0)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------------
# phantom datasets (a fake phantom built here)
# ------------------------------------------------------------------------------------------
US_RANGE = (0.0, 2.0)


def _fake_generate(numbers: np.ndarray, *, seed: int, sizes: Sizes, tilt: float = 0.0) -> dict[str, np.ndarray]:
    """Every kind of output a phantom can return; subject k depends only on subject_rng(k)."""
    h, w, d = sizes.height, sizes.width, sizes.depth
    out: dict[str, list] = {k: [] for k in ("xray", "us", "ct", "t1", "seg", "seg3d", "cobb", "grade",
                                            "flag", "side", "landmarks")}
    for k in numbers:
        rng = subject_rng("fake_io", seed, int(k))
        out["xray"].append(rng.random((h, w)))
        out["us"].append(rng.uniform(-0.3, 2.3, (3, h, w)))  # some values outside [0, 2]
        out["ct"].append(rng.normal(0.0, 400.0, (d, h, w)))
        out["t1"].append(rng.gamma(2.0, 150.0, (h, w)))
        out["seg"].append(rng.integers(0, 4, (h, w)))
        out["seg3d"].append(rng.integers(0, 300, (d, h, w)))
        out["cobb"].append(rng.uniform(0, 60) + tilt)
        out["grade"].append(rng.integers(0, 5))
        out["flag"].append(rng.random() < 0.5)
        out["side"].append("left" if rng.random() < 0.5 else "right, upper")
        out["landmarks"].append(rng.uniform(0, h, (4, 2)))
    dtypes = {"xray": np.float32, "us": np.float32, "ct": np.float32, "t1": np.float32, "seg": np.uint8,
              "seg3d": np.int64, "cobb": np.float32, "grade": np.int64, "flag": bool, "side": str,
              "landmarks": np.float32}
    return {k: np.asarray(v, dtype=dtypes[k]) for k, v in out.items()}


FAKE = PhantomSpec(
    name="fake_io", card="fake phantom for I/O tests", generate=_fake_generate,
    modalities={"xray": Modality("xray", "film density", 0.0, 1.0, "radiograph"),
                "us": Modality("us", "a.u. (ultrasound)", *US_RANGE, "3 depths"),
                "ct": Modality("ct", "HU", -1024.0, 3071.0, "CT volume"),
                "t1": Modality("t1", "a.u. (MRI)", 0.0, 1000.0, "T1w slice")},
    labels={"cobb": "Cobb angle [deg]", "grade": "grade 0-4 (int)", "flag": "artifact free (bool)",
            "side": "side (str)", "landmarks": "corner landmarks [4, 2] (row, col)"},
    label_maps=("seg", "seg3d"),
    controls={"tilt": Control(0.0, 10.0, default=0.0)},
    sizes={p: Sizes(16, 20, 4) for p in ("ci", "smoke", "cpu", "paper")},
)


def _check_roundtrip(spec: PhantomSpec, arrays: dict[str, np.ndarray], m: mf.Manifest) -> None:
    """Every output of the phantom comes back from the manifest (PNG: to 16-bit quantisation)."""
    sidecar = m.sidecar
    for key, arr in arrays.items():
        for row in range(len(m)):
            if key in spec.modalities:
                got, want = m.load(row, key), arr[row].astype(np.float64)
                entry = sidecar["modalities"][key]
                if "png_range" in entry:
                    lo, hi = entry["png_range"]
                    np.testing.assert_allclose(got, np.clip(want, lo, hi), atol=(hi - lo) / 131070 + 1e-5 * hi)
                else:
                    np.testing.assert_array_equal(got, want.astype(np.float32))
            elif key in spec.label_maps:
                np.testing.assert_array_equal(m.load(row, key), arr[row])
            elif arr.ndim == 1:
                value = m.labels(row)[key]
                assert arr.dtype.type(value) == arr[row], (key, value, arr[row])
            else:
                np.testing.assert_array_equal(m.labels(row)[key], arr[row])


def test_phantom_dataset_roundtrip(tmp_path: Path) -> None:
    numbers = [0, 1, 2, 7, 9]
    csv = write_phantom_dataset(FAKE, numbers, tmp_path / "ds", seed=4, sizes="ci", controls={"tilt": 5.0},
                                chunk=2)
    assert csv == tmp_path / "ds" / "manifest.csv"
    arrays = FAKE(numbers, seed=4, sizes="ci", tilt=5.0)
    m = read_manifest(csv)
    assert m.patient_ids == [f"fake_io-{k:06d}" for k in numbers]
    assert set(m.image_columns) == {"xray", "us", "ct", "t1", "seg", "seg3d"} and m.label_maps == ("seg", "seg3d")
    _check_roundtrip(FAKE, arrays, m)
    sidecar = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert sidecar["phantom"] == "fake_io" and sidecar["seed"] == 4 and sidecar["controls"] == {"tilt": 5.0}
    assert m.modalities["us"] == FAKE.modalities["us"] and m.modalities["ct"] == FAKE.modalities["ct"]
    us = arrays["us"]
    assert sidecar["modalities"]["us"]["clipped_fraction"] == pytest.approx(((us < 0) | (us > 2)).mean())
    assert sidecar["modalities"]["xray"]["clipped_fraction"] == 0.0
    # storage: 2D [0,1] and scaled a.u. -> 16-bit PNG, HU / MRI / 3D -> NIfTI, 3 depths -> 3 files
    row = {c: m.cell(0, c) for c in m.columns}
    assert row["xray"].endswith(".png") and row["t1"].endswith(".nii.gz") and row["ct"].endswith(".nii.gz")
    assert len(row["us"].split("|")) == 3 and row["seg"].endswith(".png") and row["seg3d"].endswith(".nii.gz")
    assert np.asarray(Image.open(tmp_path / "ds" / row["xray"])).dtype == np.uint16
    assert m.label_types == {"cobb": "float", "grade": "int", "flag": "bool", "side": "str", "landmarks": "array"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # the chunk size changes nothing
    write_phantom_dataset(FAKE, numbers, tmp_path / "one", seed=4, controls={"tilt": 5.0}, chunk=32)
    assert (tmp_path / "one" / "manifest.csv").read_text() == csv.read_text()


def test_phantom_dataset_refuses_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_phantom_dataset(FAKE, 2, out)
    _raises("ds: folder exists and is not empty; pass overwrite=True", write_phantom_dataset, FAKE, 3, out)
    assert len(read_manifest(out)) == 2
    write_phantom_dataset(FAKE, 3, out, overwrite=True)
    assert len(read_manifest(out)) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_phantom_dataset_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def flaky(numbers, **kw):  # the second chunk fails (after the first was written)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("renderer crashed")
        return _fake_generate(numbers, **kw)

    broken = PhantomSpec(**{**FAKE.__dict__, "generate": flaky})
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_phantom_dataset(broken, 5, tmp_path / "ds", chunk=2)
    assert calls["n"] == 2 and list(tmp_path.iterdir()) == []  # neither ds nor a temporary folder
    # an existing dataset survives a failed overwrite
    write_phantom_dataset(FAKE, 2, tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.csv").read_text()
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        write_phantom_dataset(broken, 5, tmp_path / "ds", chunk=2, overwrite=True)
    assert (tmp_path / "ds" / "manifest.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _registered() -> list[str]:
    import medgen.data.phantoms  # noqa: F401  (registers the phantoms that exist)
    from medgen.registry import PHANTOMS

    return sorted(PHANTOMS)


@pytest.mark.parametrize("name", _registered() or ["(none registered)"])
def test_registered_phantom_roundtrip_at_ci_size(name: str, tmp_path: Path) -> None:
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS

    if name not in PHANTOMS:
        pytest.skip("no phantom registered yet")
    spec = PHANTOMS[name]
    csv = write_phantom_dataset(spec, [0, 3], tmp_path / name, seed=1, sizes="ci")
    _check_roundtrip(spec, spec([0, 3], seed=1, sizes="ci"), read_manifest(csv))


def test_patient_ids_differing_only_by_case_or_whitespace_are_warned_about(tmp_path: Path) -> None:
    import warnings

    from medgen.data.splits import near_duplicate_ids

    assert near_duplicate_ids(["P01", "p01", "P 01", "P02", "P02", "q1", "Q 1"]) == [["P 01", "P01", "p01"],
                                                                                       ["Q 1", "q1"]]
    assert near_duplicate_ids(["A", "B", "A"]) == []
    csv, _ = _dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_manifest(csv)  # distinct ids: silent
    text = csv.read_text().replace("\nP1,", "\np1,", 1).replace("\nP4,", "\nP 4,", 1)
    csv.write_text(text.replace("\nP5,", "\nP4,", 1))
    with pytest.warns(UserWarning) as record:
        m = read_manifest(csv)
    messages = [str(w.message) for w in record if "case or whitespace" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "manifest.csv" in messages[0] and "'P1' / 'p1'" in messages[0] and "'P 4' / 'P4'" in messages[0]
    assert set(m.patient_ids) == {"P0", "P1", "p1", "P 4", "P4"}  # still different patients: a warning only
