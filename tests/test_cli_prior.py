"""``medgen generate`` / ``medgen reconstruct`` on the lung prior, and ``sample`` refusing it (issue 14.4).

The shipped ``cpu`` prior (``checkpoints/lung_us/prior``, 64 px) runs with a few steps; one test
trains the ``ci`` prior through :mod:`medgen.zoo` (``--task lung_us/prior --preset ci``) in a
temporary runs folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from assertions import assert_one_line_error, run_cli

PRIOR = str(Path(__file__).resolve().parent.parent / "checkpoints" / "lung_us" / "prior")
FAST = ("--steps", "3", "--seed", "1")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def lung_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lung phantom test section (64 px ``ct``) as a PNG in the lung window (gray 0..1 = -1000..600 HU)."""
    from medgen.data.io import write_image
    from medgen.data.phantoms.base import TEST_OFFSET, Sizes
    from medgen.data.phantoms.lung import CT, SPEC

    ct = SPEC([TEST_OFFSET], seed=0, sizes=Sizes(64, 64, 0))["ct"][0]
    return write_image(tmp_path_factory.mktemp("lung") / "lung.png", (CT.to_model(ct) + 1.0) / 2.0)


def test_generate_writes_n_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medgen.data.io import read_image

    code, out, err = run_cli(capsys, "generate", "--checkpoint", PRIOR, "--n", "3", "--sampler", "ddim",
                             *FAST, "--out", str(tmp_path / "gen"))
    assert code == 0, err
    folder = Path(out.strip())
    assert folder == tmp_path / "gen" and "-1000..600 HU (ct)" in err
    assert sorted(p.name for p in folder.glob("*.png")) == ["image_000.png", "image_001.png", "image_002.png"]
    stack = np.load(folder / "images.npy")
    assert stack.shape == (3, 64, 64) and stack.min() >= -1.0 and stack.max() <= 1.0
    png = read_image(folder / "image_001.png")
    assert png.shape == (64, 64)
    assert np.abs(png - (stack[1] + 1.0) / 2.0).max() < 1.0 / 255 + 1e-6  # the PNG is the .npy in [0, 1]


def test_reconstruct_input_writes_maps_and_prints_psnr(tmp_path: Path, lung_png: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "reconstruct", "--checkpoint", PRIOR, "--operator", "us_linear",
                             "--input", str(lung_png), "--samples", "2", *FAST, "--out", str(tmp_path / "r"))
    assert code == 0, err
    lines = out.strip().splitlines()
    folder = Path(lines[0])
    assert lines[1].startswith("PSNR ") and "dB, SSIM " in lines[1]
    assert "DPS scale 1000 (tuned for this prior)" in err  # DPS_SCALE["cpu"]["us_linear"]
    assert {p.name for p in folder.iterdir()} == {"mean.png", "sd.png", "truth.png", "mean.npy", "sd.npy",
                                                 "samples.npy", "measurement.npy"}
    mean, sd, samples = (np.load(folder / f"{n}.npy") for n in ("mean", "sd", "samples"))
    assert mean.shape == sd.shape == (64, 64) and samples.shape == (2, 64, 64)
    assert "medgen: within the training distribution (score" in err  # a lung phantom test section
    np.testing.assert_allclose(mean, samples.mean(0), atol=1e-6)
    np.testing.assert_allclose(sd, samples.std(0), atol=1e-6)
    assert np.load(folder / "measurement.npy").shape == (64, 32)


def test_reconstruct_input_of_another_modality_is_refused_unless_allowed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The guard on ``reconstruct --input`` (issue 14): the prior was trained on lung CT sections; a real MR
    DICOM is refused in one line before any work, and with the override it runs and is flagged outside."""
    import pydicom.data

    mr = pydicom.data.get_testdata_file("MR_small.dcm")
    common = ("reconstruct", "--checkpoint", PRIOR, "--operator", "us_linear", "--samples", "1", *FAST,
              "--input", mr)
    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"input is MR (DICOM Modality) but {PRIOR} was trained on CT (ct)",
                          "--allow-modality-mismatch")
    assert not (tmp_path / "r").exists()
    code, out, err = run_cli(capsys, *common, "--allow-modality-mismatch", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "medgen: note: modality mismatch allowed: input is MR" in err
    assert "medgen: warning: input outside the training distribution (score" in err
    assert (tmp_path / "r" / "mean.npy").is_file()


def test_reconstruct_measurement_right_and_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "y.npy", np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((64, 64), np.float32))
    common = ("reconstruct", "--checkpoint", PRIOR, "--operator", "us_linear", "--samples", "1", *FAST)
    code, out, err = run_cli(capsys, *common, "--measurement", str(tmp_path / "y.npy"), "--scale", "10",
                             "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "r") and "PSNR" not in out  # no truth, no metrics
    assert "training distribution not assessed: a measurement is not an image" in err
    assert np.load(tmp_path / "r" / "samples.npy").shape == (1, 64, 64)
    assert not (tmp_path / "r" / "truth.png").exists()
    code, _, err = run_cli(capsys, *common, "--measurement", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "bad.npy", "64x32")
    assert not (tmp_path / "b").exists()  # refused before any work


def test_prior_refusals_are_one_line(tmp_path: Path, lung_png: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "sample", "--checkpoint", PRIOR, "--input", str(lung_png),
                           "--output", str(tmp_path / "o.png"))
    assert_one_line_error(code, err, "is an unconditional prior: use 'medgen generate' or 'medgen reconstruct'")
    code, _, err = run_cli(capsys, "reconstruct", "--checkpoint", PRIOR, "--operator", "deblur",
                           "--input", str(lung_png), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown operator 'deblur'", "us_linear")
    code, _, err = run_cli(capsys, "reconstruct", "--checkpoint", PRIOR, "--operator", "blur",
                           "--measurement", str(lung_png), "--input", str(lung_png), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not allowed with argument")
    code, _, err = run_cli(capsys, "generate", "--task", "mri_to_ct/ddim_image", "--preset", "cpu",
                           "--out", str(tmp_path / "g"))
    assert_one_line_error(code, err, "cannot generate", "method cddpm")
    code, _, err = run_cli(capsys, "generate", "--checkpoint", PRIOR, "--n", "0", "--out", str(tmp_path / "g"))
    assert_one_line_error(code, err, "--n must be at least 1")
    code, _, err = run_cli(capsys, "reconstruct", "--checkpoint", PRIOR, "--operator", "blur", "--samples", "0",
                           "--input", str(lung_png), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--samples must be at least 1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "g").exists()  # refused before any work


def test_default_scale_only_for_the_lung_prior() -> None:
    from dataclasses import replace

    from assertions import raises_one_line

    from medgen.commands import default_dps_scale
    from medgen.config import ConfigError, get_preset

    cfg = get_preset("smoke", "lung_us/prior")
    assert default_dps_scale(cfg, "us_acoustic") == 10.0
    raises_one_line(ConfigError, "--scale is required", default_dps_scale, replace(cfg, name="my_prior"), "blur")


def test_ci_prior_through_the_zoo(tmp_path: Path, lung_png: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``--task lung_us/prior --preset ci``: trained once in a temporary runs folder, then generate and
    reconstruct at its 32 px (the 64 px input is resized, with a note)."""
    monkeypatch.setenv("MEDGEN_RUNS", str(tmp_path / "runs"))
    model = ("--task", "lung_us/prior", "--preset", "ci")
    code, out, err = run_cli(capsys, "generate", *model, "--n", "2", *FAST, "--out", str(tmp_path / "g"))
    assert code == 0, err
    assert np.load(tmp_path / "g" / "images.npy").shape == (2, 32, 32)
    code, out, err = run_cli(capsys, "reconstruct", *model, "--operator", "inpaint", "--input", str(lung_png),
                             "--samples", "2", *FAST, "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "resized to the model's 32x32" in err and "DPS scale 300 (tuned for this prior)" in err
    assert out.strip().splitlines()[1].startswith("PSNR ")
    assert np.load(tmp_path / "r" / "samples.npy").shape == (2, 32, 32)
