"""The ``medgen`` command line: dry runs, one-line errors (exit 2), phantoms, reproduce, and an
end-to-end ``train`` + ``sample`` + ``evaluate`` at the ``ci`` preset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medgen import __version__
from medgen.config import from_json, get_preset
from assertions import assert_one_line_error, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


run = run_cli  # the shared CLI runner (tests/assertions.py)


# --------------------------------------------------------------------------------------
# --dry-run and errors
# --------------------------------------------------------------------------------------
def test_dry_run_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "train", "--preset", "ci", "--method", "identity",
                         "--set", "train.steps=3", "--set", "sample.sampler=ddpm", "--dry-run")
    assert code == 0, err
    cfg = from_json(out)
    assert cfg.method == "identity" and cfg.train.steps == 3 and cfg.sample.sampler == "ddpm"
    assert cfg.model == get_preset("ci").model and cfg.preset == "ci"


def test_default_preset_comes_from_environment(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEN_PRESET", "smoke")
    code, out, _ = run(capsys, "phantoms", "--dry-run")
    assert code == 0 and json.loads(out)["preset"] == "smoke"


def test_misspelled_key_exits_2_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "train", "--preset", "ci", "--set", "train.stesp=3", "--dry-run")
    assert out == ""
    assert_one_line_error(code, err, "unknown config key 'train.stesp'", "did you mean 'train.steps'?")


def test_bad_value_type_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--preset", "ci", "--set", "train.steps=many", "--dry-run")
    assert_one_line_error(code, err, "train.steps: expected an integer")


def test_unknown_preset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--preset", "smokey", "--dry-run")
    assert_one_line_error(code, err, "unknown preset 'smokey'", "did you mean 'smoke'?")


def test_unknown_method_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--preset", "ci", "--method", "identiti", "--dry-run")
    assert_one_line_error(code, err, "unknown method 'identiti'", "did you mean 'identity'?")


def test_unknown_dataset_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "phantoms", "--dataset", "toy_shape", "--out", str(tmp_path))
    assert_one_line_error(code, err, "unknown dataset 'toy_shape'", "did you mean 'toy_shapes'?")


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "trian")
    assert_one_line_error(code, err, "invalid choice: 'trian'", "did you mean 'train'?")


def test_missing_checkpoint_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "nope"),
                       "--input", "in.png", "--output", str(tmp_path / "out.png"))
    assert_one_line_error(code, err, "nope")
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(tmp_path))
    assert_one_line_error(code, err, "not a checkpoint folder")


def test_python_dash_m_medgen(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ok = subprocess.run([sys.executable, "-m", "medgen", "--version"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == f"medgen {__version__}"
    bad = subprocess.run([sys.executable, "-m", "medgen", "train", "--preset", "nope", "--dry-run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line_error(bad.returncode, bad.stderr, "unknown preset 'nope'")


def test_demo_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--preset", "ci", "--port", "7861", "--dry-run")
    assert code == 0 and json.loads(out) == {"preset": "ci", "url": "http://127.0.0.1:7861"}


def test_demo_launches_local_only(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    launched: dict[str, object] = {}

    class FakeApp:
        def launch(self, **kwargs: object) -> None:
            launched.update(kwargs)

    built: list[tuple[str, str | None]] = []
    monkeypatch.setattr("medgen.cli.load_demo_app", lambda preset, runs=None: built.append((preset, runs)) or FakeApp())
    code, out, _ = run(capsys, "demo", "--preset", "ci", "--port", "7999", "--runs", "myruns")
    assert code == 0 and built == [("ci", "myruns")]
    from demos.app import MAX_FILE_SIZE

    assert launched == {"server_name": "127.0.0.1", "server_port": 7999, "share": False,
                        "max_file_size": MAX_FILE_SIZE}
    assert "http://127.0.0.1:7999" in out


def test_demo_without_app_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    code, _, err = run(capsys, "demo", "--preset", "ci")
    assert_one_line_error(code, err, "demos/app.py", "not found")
    code, _, err = run(capsys, "demo", "--preset", "cii")
    assert_one_line_error(code, err, "unknown preset 'cii'")


# --------------------------------------------------------------------------------------
# phantoms
# --------------------------------------------------------------------------------------
def test_phantoms_writes_pairs_and_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "ph"
    code, out, err = run(capsys, "phantoms", "--preset", "ci", "--dataset", "toy_shapes", "--n", "3",
                         "--out", str(out_dir))
    assert code == 0, err
    manifest = pd.read_csv(out_dir / "manifest.csv")
    assert len(manifest) == 3 and {"patient_id", "source", "target"} <= set(manifest.columns)
    size = get_preset("ci").data.image_size
    for name in manifest["source"].tolist() + manifest["target"].tolist():
        with Image.open(out_dir / name) as im:
            assert im.size == (size, size) and im.mode == "L"
    src = np.asarray(Image.open(out_dir / manifest["source"][0]))
    tgt = np.asarray(Image.open(out_dir / manifest["target"][0]))
    assert not np.array_equal(src, tgt)  # a degraded source, not a copy of the target
    assert "wrote 3 toy_shapes pairs" in out


def test_phantoms_anatomy_writes_the_real_data_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import medgen.data  # noqa: F401 -- fills DATASETS and PHANTOMS
    from medgen.config import DataConfig
    from medgen.data.manifest import read_manifest
    from medgen.registry import DATASETS, PHANTOMS

    out_dir = tmp_path / "knee"
    code, out, err = run(capsys, "phantoms", "knee", "--n", "3", "--out", str(out_dir), "--control", "kl_grade=3")
    assert code == 0, err
    assert "wrote 3 knee subjects (test split, seed 0, 32x32x8)" in out
    manifest = read_manifest(out_dir / "manifest.csv")
    assert len(manifest) == 3 and manifest.labels(0)["kl_grade"] == 3
    # the files hold the phantom itself: the MRI volume (NIfTI) equals a fresh render of subject 500000
    direct = PHANTOMS["knee"]([500_000], seed=0, sizes="ci", kl_grade=3)
    np.testing.assert_allclose(manifest.load(0, "mri"), direct["mri"][0], atol=1e-6)
    # and the same loader a real data set goes through reads it (train = test here: one split)
    cfg = DataConfig(dataset="volume_slices", manifest=str(out_dir / "manifest.csv"), source="xray", target="mri",
                     image_size=32, test_fraction=0.34)
    test = DATASETS["volume_slices"](cfg, "test")
    assert test[0]["source"].shape == (1, 32, 32) and test[0]["target"].shape == (1, 32, 32)
    # refusing to overwrite, and bad options, are one-line errors
    code, _, err = run(capsys, "phantoms", "knee", "--n", "1", "--out", str(out_dir))
    assert code == 2 and err.count("\n") == 1 and "knee" in err
    code, _, err = run(capsys, "phantoms", "knee", "--control", "kl_grade=9", "--out", str(tmp_path / "x"))
    assert code == 2 and "control 'kl_grade' of phantom 'knee' must be in [0, 4], got 9" in err
    code, _, err = run(capsys, "phantoms", "knee", "--size", "big", "--out", str(tmp_path / "y"))
    assert code == 2 and "--size must look like HxW or HxWxD" in err
    code, out, _ = run(capsys, "phantoms", "lung", "--card")
    assert code == 0 and "aeration" in out.lower()
    code, _, err = run(capsys, "phantoms", "lungs", "--out", str(tmp_path / "z"))
    assert code == 2 and "did you mean 'lung'?" in err


# --------------------------------------------------------------------------------------
# reproduce
# --------------------------------------------------------------------------------------
def _notebook(path: Path, body: str) -> None:
    """A two-cell notebook: a tagged parameters cell, then ``body``."""
    params = nbformat.v4.new_code_cell('preset = "ci"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_reproduce_runs_notebooks_and_reports_failures(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_good.ipynb",
              "import os\nfrom medgen.reports import Report\n"
              "assert os.getcwd().endswith('notebooks')\n"
              "r = Report('01_good', preset)\nr.finding('ran', True, f'ran at {preset}')\n_ = r.save()\n"
              "from medgen import progress\nprogress.report('training nothing: step 3 / 3', force=True)")
    _notebook(tmp_path / "notebooks" / "02_bad.ipynb", "raise RuntimeError('boom')")
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code, out, err = run(capsys, "reproduce", "--preset", "smoke")
    assert code == 1
    assert "02_bad" in err and "RuntimeError: boom" in err
    assert "    training nothing: step 3 / 3\n" in err  # the kernel's status line reached the terminal
    reports = tmp_path / "reports"
    results = json.loads((reports / "01_good" / "smoke" / "results.json").read_text())
    assert results["preset"] == "smoke" and results["findings"]["ran"]["evidence"] == "ran at smoke"
    assert (reports / "01_good" / "smoke" / "01_good.ipynb").is_file()
    assert (reports / "02_bad" / "smoke" / "02_bad.ipynb").is_file()  # papermill keeps the failed copy
    index = (reports / "index.md").read_text()
    assert "01_good/smoke/results.json" in index and "## 02_bad" in index and "No results.json" in index
    code, _, err = run(capsys, "reproduce", "--papers", "heart")
    assert_one_line_error(code, err, "no notebook")


def test_reproduce_retrain_reaches_the_kernels_and_is_restored(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import medgen.reproduce

    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_spine.ipynb", "pass")
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    monkeypatch.delenv("RETRAIN", raising=False)
    seen = []
    monkeypatch.setattr(medgen.reproduce, "run_notebook", lambda *a, **k: seen.append(os.environ.get("RETRAIN")))
    assert run(capsys, "reproduce", "--retrain")[0] == 0
    assert run(capsys, "reproduce")[0] == 0
    assert seen == ["1", None] and "RETRAIN" not in os.environ


def test_reproduce_dry_run_lists_selected_notebooks(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notebooks").mkdir()
    for stem in ("00_quickstart", "01_spine", "02_lung"):
        _notebook(tmp_path / "notebooks" / f"{stem}.ipynb", "pass")
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    code, out, _ = run(capsys, "reproduce", "--papers", "spine lung", "--dry-run")
    assert code == 0 and json.loads(out)["notebooks"] == ["01_spine.ipynb", "02_lung.ipynb"]
    code, out, _ = run(capsys, "reproduce", "--papers", "spine", "--retrain", "--dry-run")
    assert code == 0 and json.loads(out)["retrain"] is True
    code, _, err = run(capsys, "reproduce", "--preset", "smok")
    assert_one_line_error(code, err, "unknown preset 'smok'", "did you mean 'smoke'?")
    assert not (tmp_path / "reports").exists()  # nothing ran


# --------------------------------------------------------------------------------------
# train + sample + evaluate
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "medgen" / "methods" / "cddpm.py").is_file(), reason="cddpm not written yet")
def test_train_sample_evaluate_end_to_end(capsys: pytest.CaptureFixture[str], tmp_runs: Path,
                                          tmp_path: Path) -> None:
    code, out, err = run(capsys, "train", "--preset", "ci", "--runs", str(tmp_runs))
    assert code == 0, err
    ckpt = Path(out.strip().splitlines()[-1])
    assert (ckpt / "config.json").is_file() and tmp_runs in ckpt.parents
    assert from_json((ckpt / "config.json").read_text()) == get_preset("ci")
    code, out, _ = run(capsys, "train", "--preset", "ci", "--runs", str(tmp_runs))  # cached
    assert code == 0 and Path(out.strip().splitlines()[-1]) == ckpt

    size = get_preset("ci").data.image_size
    src = tmp_path / "in.png"
    Image.fromarray((np.linspace(0, 255, size * (size + 4)).reshape(size + 4, size)).astype(np.uint8)).save(src)
    for name in ("out.png", "out.npy"):
        code, out, err = run(capsys, "sample", "--checkpoint", str(ckpt), "--input", str(src),
                             "--output", str(tmp_path / name), "--sampler", "ddim", "--steps", "2", "--seed", "1")
        assert code == 0, err
        assert "resized" in err  # the input is not the model's size: said, not silent
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (size, size + 4)
    arr = np.load(tmp_path / "out.npy")
    assert arr.shape == (size + 4, size) and arr.dtype == np.float32 and 0 <= arr.min() <= arr.max() <= 1

    code, _, err = run(capsys, "sample", "--checkpoint", str(ckpt), "--input", str(tmp_path / "missing.png"),
                       "--output", str(tmp_path / "o.png"))
    assert_one_line_error(code, err, "missing.png")

    csv = tmp_path / "eval.csv"
    code, out, err = run(capsys, "evaluate", "--checkpoint", str(ckpt), "--out", str(csv), "--steps", "2")
    assert code == 0, err
    rows = pd.read_csv(csv)
    n_test = get_preset("ci").data.n_test
    assert set(rows["method"]) == {"cddpm", "identity"} and set(rows["metric"]) == {"psnr", "ssim"}
    assert len(rows) == 2 * 2 * n_test and (rows["data_range"] == 2.0).all()
    assert rows["value"].notna().all()
    assert "cddpm" in out and "identity" in out and "psnr" in out

    code, out, err = run(capsys, "export", str(ckpt), "--out", str(tmp_path / "ship"), "--verify", "2")
    assert code == 0, err
    assert "float16" in out and (tmp_path / "ship" / "config.json").is_file()
    code, _, err = run(capsys, "export", str(ckpt), "--out", str(tmp_path / "ship2"), "--dtype", "int4")
    assert_one_line_error(code, err, "unknown dtype 'int4'")

    code, out, _ = run(capsys, "sample", "--checkpoint", str(ckpt), "--input", str(src), "--output",
                       str(tmp_path / "x.png"), "--set", "sample.steps=3", "--dry-run")
    assert code == 0 and from_json(out).sample.steps == 3
    code, _, err = run(capsys, "sample", "--checkpoint", str(ckpt), "--input", str(src), "--output",
                       str(tmp_path / "x.png"), "--set", "train.steps=3", "--dry-run")
    assert_one_line_error(code, err, "only accepts overrides of sample.*")


# --------------------------------------------------------------------------------------
# sample on real MR DICOM and NIfTI volumes (read_sample_input)
# --------------------------------------------------------------------------------------
SHIPPED_DDIM_T1W = REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w"


def _sagittal_nifti(path: Path, image: np.ndarray, n_lr: int = 5) -> np.ndarray:
    """Write ``image`` (rows superior -> inferior, columns anterior -> posterior, the phantom view)
    as every sagittal slice of a canonical RAS NIfTI (array ``[k, j, i]`` = ``[S, A, R]``, identity
    affine). Returns the stored volume."""
    from medgen.data.io import write_volume

    vol = np.repeat(image[::-1, ::-1, None], n_lr, axis=2).astype(np.float32)  # k up = superior, j up = anterior
    write_volume(path, vol, unit="a.u.")
    return vol


def test_read_sample_input_takes_the_middle_sagittal_slice_in_the_phantom_view(tmp_path: Path) -> None:
    from medgen.data.io import read_sample_input

    image = np.random.default_rng(0).uniform(0.0, 500.0, (20, 24)).astype(np.float32)
    image[0, 0] = 1000.0  # the volume maximum, at the superior-anterior corner of the view
    _sagittal_nifti(tmp_path / "v.nii.gz", image)
    notes: list[str] = []
    out = read_sample_input(tmp_path / "v.nii.gz", notes=notes)
    np.testing.assert_allclose(out, image / 1000.0, atol=1e-6)  # reoriented back and rescaled [0, max] -> [0, 1]
    assert any("middle sagittal slice 2 of 5" in n for n in notes), notes
    assert any("rescaled linearly [0, 1000] -> [0, 1]" in n for n in notes), notes


def test_read_sample_input_mr_dicom_is_axial_and_rescaled_by_its_maximum() -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    from medgen.data.io import read_sample_input
    from medgen.data.io import read_volume

    path = pydicom_data.get_testdata_file("MR_small.dcm")
    notes: list[str] = []
    out = read_sample_input(path, notes=notes)
    raw = read_volume(path, notes=[]).array
    assert out.shape == (64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, raw / raw.max(), atol=1e-6)  # axial: kept as stored, only rescaled
    assert any("axial slice, not sagittal" in n for n in notes), notes


def test_read_sample_input_errors_are_one_line(tmp_path: Path) -> None:
    from medgen.data.io import read_sample_input
    from medgen.data.io import ImageReadError, write_volume

    import nibabel as nib

    bad = np.ones((8, 8, 4), np.float32)
    bad[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "nan.nii"))  # write_volume refuses NaN itself
    write_volume(tmp_path / "zero.nii", np.zeros((4, 8, 8), np.float32))
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all" * 10)
    for name, fragment in [("nan.nii", "NaN"), ("zero.nii", "no positive values"), ("junk.dcm", "junk.dcm")]:
        with pytest.raises(ImageReadError) as info:
            read_sample_input(tmp_path / name, notes=[])
        assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match="file too large"):
        read_sample_input(tmp_path / "nan.nii", notes=[], max_bytes=100)


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_DDIM_T1W.is_dir(), reason="shipped mri_to_ct checkpoint missing")
def test_sample_real_mr_dicom_and_nifti_with_the_shipped_checkpoint(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    dcm = pydicom_data.get_testdata_file("MR_small.dcm")
    code, out, err = run(capsys, "sample", "--checkpoint", str(SHIPPED_DDIM_T1W), "--input", dcm,
                         "--output", str(tmp_path / "ct.npy"), "--steps", "2", "--seed", "1")
    assert code == 0, err
    assert "axial slice, not sagittal" in err and "rescaled linearly" in err and "Traceback" not in err
    ct = np.load(tmp_path / "ct.npy")
    assert ct.shape == (64, 64) and np.isfinite(ct).all() and 0 <= ct.min() <= ct.max() <= 1

    image = np.random.default_rng(1).uniform(0.0, 1.0, (40, 48)).astype(np.float32)
    _sagittal_nifti(tmp_path / "mri.nii.gz", image)
    code, out, err = run(capsys, "sample", "--checkpoint", str(SHIPPED_DDIM_T1W), "--input",
                         str(tmp_path / "mri.nii.gz"), "--output", str(tmp_path / "ct.png"), "--steps", "2")
    assert code == 0, err
    assert "middle sagittal slice" in err and "resized" in err
    with Image.open(tmp_path / "ct.png") as im:
        assert im.size == (48, 40)  # written back at the slice's own size


def test_sample_and_evaluate_find_a_task_model_through_the_zoo(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``--task`` + ``--preset`` instead of ``--checkpoint``: medgen.zoo.resolve finds (here: trains once, then
    loads) the preset's model; ``--set data.*`` / sampling flags change the run, not the model."""
    monkeypatch.setenv("MEDGEN_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("RETRAIN", raising=False)
    csv = tmp_path / "eval.csv"
    args = ("--task", "quickstart", "--preset", "ci", "--set", "train.steps=2")
    code, out, err = run(capsys, "evaluate", *args, "--set", "data.n_test=3", "--out", str(csv), "--steps", "2")
    assert code == 0, err
    assert "training quickstart at `ci`" in err
    assert len(pd.read_csv(csv)) == 2 * 2 * 3
    size = get_preset("ci").data.image_size
    src = tmp_path / "in.png"
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(src)
    code, out, err = run(capsys, "sample", *args, "--input", str(src), "--output", str(tmp_path / "o.png"))
    assert code == 0, err
    assert "loading quickstart at `ci`" in err and (tmp_path / "o.png").is_file()
    code, _, err = run(capsys, "sample", "--input", str(src), "--output", str(tmp_path / "o.png"))
    assert_one_line_error(code, err, "needs exactly one of --checkpoint FOLDER or --task TASK (got neither)")
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(tmp_path), *args)
    assert_one_line_error(code, err, "(got both)")


# --------------------------------------------------------------------------------------
# issue 14: verified weights, validated configs, conflicting flags, output folders
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.steps=-1", "train.steps: must be >= 0, got -1"),
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("sample.sampler=ddmp", "sample.sampler: must be one of 'ddpm', 'ddim', 'dpmpp' (did you mean 'ddpm'?)"),
])
def test_dry_run_validates_every_field(capsys: pytest.CaptureFixture[str], override: str, message: str) -> None:
    code, out, err = run(capsys, "train", "--preset", "ci", "--set", override, "--dry-run")
    assert out == ""
    assert_one_line_error(code, err, message)


def test_train_with_an_invalid_config_leaves_no_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "train", "--preset", "ci", "--set", "train.batch_size=0", "--runs", str(tmp_path / "r"))
    assert_one_line_error(code, err, "train.batch_size: must be >= 1, got 0")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, override", [
    (("--sampler", "ddim"), "sample.sampler=ddpm"),
    (("--steps", "5"), "sample.steps=7"),
    (("--eta", "0.5"), "sample.eta=1"),
    (("--guidance", "2"), "sample.guidance_scale=1.5"),
])
@pytest.mark.skipif(not (REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w").is_dir(), reason="no shipped model")
def test_a_flag_and_a_set_that_disagree_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    flag: tuple[str, str], override: str) -> None:
    ckpt = str(REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w")
    for command in ("sample", "evaluate"):
        io = ("--input", "in.png", "--output", str(tmp_path / "o.png")) if command == "sample" else ()
        code, _, err = run(capsys, command, "--checkpoint", ckpt, *io, *flag, "--set", override, "--dry-run")
        assert_one_line_error(code, err, f"{flag[0]} {flag[1]}", f"--set {override}", "disagree")
        agree = f"{override.partition('=')[0]}={flag[1]}"  # the same value twice is no conflict
        code, out, err = run(capsys, command, "--checkpoint", ckpt, *io, *flag, "--set", agree, "--dry-run")
        assert code == 0, err


def test_method_flag_and_set_method_that_disagree_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--preset", "ci", "--method", "pix2pix", "--set", "method=cddpm", "--dry-run")
    assert_one_line_error(code, err, "--method pix2pix", "--set method=cddpm")
    code, out, err = run(capsys, "train", "--preset", "ci", "--method", "identity", "--set", "method=identity",
                         "--dry-run")
    assert code == 0 and from_json(out).method == "identity", err


@pytest.mark.skipif(not (REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w").is_dir(), reason="no shipped model")
def test_sample_refuses_a_missing_output_folder_before_any_work(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    ckpt = str(REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w")
    target = tmp_path / "missing_dir" / "out.png"
    code, _, err = run(capsys, "sample", "--checkpoint", ckpt, "--input", str(tmp_path / "not_read.png"),
                       "--output", str(target))
    assert_one_line_error(code, err, str(target), "does not exist")  # the input was not even read
    assert not target.parent.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w").is_dir(), reason="no shipped model")
def test_sample_evaluate_export_refuse_damaged_weights_unless_told(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from medgen.checkpoint import NO_VERIFY_ENV, read_manifest

    monkeypatch.delenv(NO_VERIFY_ENV, raising=False)
    folder = tmp_path / "ddim"
    import shutil

    shutil.copytree(REPO / "checkpoints" / "mri_to_ct" / "ddim_image-t1w", folder)
    weights = folder / "ema.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)  # zeroed, same length: used to give exit 0 and a wrong image
    weights.write_bytes(bytes(data))
    src = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(src)
    out = tmp_path / "ct.png"
    code, _, err = run(capsys, "sample", "--checkpoint", str(folder), "--input", str(src), "--output", str(out),
                       "--steps", "1")
    assert_one_line_error(code, err, str(weights), "does not match the manifest", "--no-verify-weights")
    assert not out.exists()
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(folder), "--out", str(tmp_path / "e.csv"))
    assert_one_line_error(code, err, str(weights), "does not match the manifest")
    code, _, err = run(capsys, "export", str(folder), "--out", str(tmp_path / "ship"), "--verify", "0")
    assert_one_line_error(code, err, str(weights), "does not match the manifest")

    code, _, err = run(capsys, "sample", "--checkpoint", str(folder), "--input", str(src), "--output", str(out),
                       "--steps", "1", "--no-verify-weights")
    assert code == 0 and out.is_file(), err
    assert NO_VERIFY_ENV not in os.environ  # the opt-out lasted one command
    code, _, err = run(capsys, "export", str(folder), "--out", str(tmp_path / "ship"), "--verify", "0",
                       "--no-verify-weights")
    assert code == 0, err
    assert set(read_manifest(tmp_path / "ship")["weights_sha256"]) == {"ema.safetensors"}  # sealed anew
