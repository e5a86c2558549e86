"""Demo tab "Lung ultrasound": the handlers directly (phantom -> measurement -> streamed DPS
reconstruction, image and measurement uploads, bad inputs, generate + memorization readout)
and the hub through gradio_client.

The prior is trained once at ``ci`` (2 steps, 32 px) into a temporary runs folder, with an
empty zoo root (no ``checkpoints/``), so the tests never depend on the shipped ``cpu`` prior; it is
untrained, so the tests check the plumbing and the numbers' definitions, not image quality.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from browser import screenshot, set_numbers, tab_page

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),  # gr.Warning outside a request
]
OUTPUTS = ("status", "truth", "measurement", "live", "sample", "mean", "sd", "metrics", "raw", "measurement_file",
           "verdict")
SHIPPED_PRIOR = Path(__file__).resolve().parent.parent / "checkpoints" / "lung_us" / "prior"
SIZE = 32  # the ci prior's image size
K = 256 // SIZE  # display enlargement


@pytest.fixture(scope="module")
def lus() -> Any:
    from demos import lung_us

    return lung_us


@pytest.fixture(scope="module")
def tab(lus: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    empty = tmp_path_factory.mktemp("no_checkpoints")
    return lus.Tab("ci", runs_root=tmp_path_factory.mktemp("runs"), root=empty)


@pytest.fixture(scope="module")
def shipped(lus: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tab on the shipped ``cpu`` prior (64 px, calibrated): the out-of-distribution guard's tests."""
    if not SHIPPED_PRIOR.is_dir():
        pytest.skip("shipped lung prior missing")
    return lus.Tab("ci", runs_root=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Uploads: good and bad images and measurements."""
    import nibabel as nib

    d = tmp_path_factory.mktemp("uploads")
    (d / "notes.dcm").write_bytes(b"this is a text file, not DICOM\n" * 20)
    nan = np.ones((16, 16, 3), np.float32)
    nan[4, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(d / "nan.nii.gz"))
    Image.fromarray(np.zeros((4200, 4200), np.uint8)).save(d / "huge.png")  # 17.6 MP, small on disk
    np.save(d / "square.npy", np.zeros((SIZE, SIZE), np.float32))  # us_linear's output is 32x16
    bad = np.zeros((SIZE, SIZE // 2), np.float32)
    bad[3, 3] = np.nan
    np.save(d / "nan_measurement.npy", bad)
    (d / "measurement.txt").write_text("1 2 3\n")
    with open(d / "big.npy", "wb") as fh:  # over the 50 MB upload limit, checked before reading
        fh.truncate(51 * 1024 * 1024)
    return SimpleNamespace(**{p.name.split(".")[0]: str(p) for p in d.iterdir()})


def _run(tab: Any, upload: Any = None, *, subject: Any = 3, operator: str = "us_linear", noise: Any = 0.02,
         seed: Any = 0, measurement: Any = None, scale: Any = 10.0, steps: Any = 2, n: Any = 2,
         progress: Any = None, every: int | None = None, allow: bool = False) -> tuple[list[tuple], dict[str, Any]]:
    """All outputs of ``Tab.reconstruct`` and the last one as a dict of :data:`OUTPUTS`."""
    outs = list(tab.reconstruct(upload, subject, operator, noise, seed, measurement, scale, steps, n, progress, every,
                                allow=allow))
    return outs, dict(zip(OUTPUTS, outs[-1]))


def _assert_one_line_error(status: str, expected: str) -> None:
    assert status.startswith("**Error:** "), status
    assert "\n" not in status and "Traceback" not in status, status
    assert expected in status.replace("\\", ""), status  # file names are Markdown-escaped


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10.0 * np.log10(2.0**2 / np.mean((x.astype(np.float64) - y) ** 2)))


# ------------------------------------------------------------------------------------------
# phantom -> measurement -> reconstruction
# ------------------------------------------------------------------------------------------
def test_phantom_input_and_measurement_match_the_phantom(tab: Any, lus: Any) -> None:
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.data.phantoms.base import TEST_OFFSET, Sizes
    from medgen.data.phantoms.lung import CT
    from medgen.registry import PHANTOMS

    rec = PHANTOMS["lung"]([TEST_OFFSET + 3], seed=0, sizes=Sizes(SIZE, SIZE, 0))
    image, status, verdict = tab.on_input(None, 3)
    assert status.startswith(f"Input: **lung test subject 3** at 32x32 px (aeration {rec['aeration'][0]:.3f})")
    gray = (CT.to_model(rec["ct"][0]) + 1.0) / 2.0  # the lung window: -1000 .. 600 HU
    np.testing.assert_array_equal(np.asarray(image)[::K, ::K], np.round(gray * 255).astype(np.uint8))
    truth, meas, meas_file, status, verdict = tab.simulate(None, 3, "us_linear", 0.0, 0, None)
    y0 = np.load(meas_file)
    assert y0.shape == (SIZE, SIZE // 2) and np.asarray(meas).shape[:2] == (256, 256)  # 32x16 shown square
    # noise-free y = A(x); the phantom's own us_linear modality is A(x) + N(0, 0.02^2)
    diff = y0 - rec["us_linear"][0]
    assert abs(diff.std() - 0.02) < 0.004 and abs(diff.mean()) < 0.005
    y1 = np.load(tab.simulate(None, 3, "us_linear", 0.05, 7, None)[2])
    assert abs((y1 - y0).std() - 0.05) < 0.008  # the noise slider is the std in measurement units
    np.testing.assert_array_equal(y1, np.load(tab.simulate(None, 3, "us_linear", 0.05, 7, None)[2]))  # seeded
    assert np.load(tab.simulate(None, 3, "blur", 0.0, 0, None)[2]).shape == (SIZE, SIZE)
    assert "Measurement: us\\_linear of lung test subject 3, noise std 0.05, seed 7, 32x16 entries" in \
        tab.simulate(None, 3, "us_linear", 0.05, 7, None)[3]


def test_reconstruct_streams_x0_and_reports_metrics(tab: Any, lus: Any) -> None:
    calls: list[tuple[Any, dict]] = []
    outs, out = _run(tab, operator="us_acoustic", steps=6, n=3, every=2,
                     progress=lambda *a, **k: calls.append((a, k)))
    frames = [o for o in outs if o[0].startswith("Guided sampling: step")]
    assert [f[0].split(" of ")[0] for f in frames] == [f"Guided sampling: step {i}" for i in (2, 4, 6)]
    assert all(f[3] is not None and np.asarray(f[3]).shape == (256, 256) for f in frames)  # the live image
    descs = [k.get("desc", "") for _, k in calls]
    assert "guided sampling step 6 of 6" in descs
    assert out["status"].startswith("Done: DPS with us_acoustic, scale 10, 6 ddpm steps, 3 samples, seed 0"), \
        out["status"]
    x = np.load(out["raw"])
    assert x.shape == (3, SIZE, SIZE) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(np.asarray(out["mean"])[::K, ::K],
                                  np.round(np.clip((x.mean(0) + 1) / 2, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(out["sample"]), np.asarray(frames[-1][3]))  # last frame = sample 0
    assert np.asarray(out["sd"]).shape == (256, 256, 3)
    np.testing.assert_array_equal(out["truth"], tab.on_input(None, 3)[0])  # the page shows what was measured
    simulated = tab.simulate(None, 3, "us_acoustic", 0.02, 0, None)  # Reconstruct needs no Simulate first
    np.testing.assert_array_equal(out["measurement"], simulated[1])
    np.testing.assert_array_equal(np.load(out["measurement_file"]), np.load(simulated[2]))  # and offers its y
    # the metrics table: the posterior mean's PSNR against the phantom, recomputed here
    from medgen.data.phantoms.lung import CT
    truth = CT.to_model(lus._phantom_arrays(3, SIZE)["ct"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out["metrics"].splitlines()
            if line.startswith("| ") and not line.startswith("| |")}
    assert set(rows) == {"truth", "posterior mean", "3 samples (mean ± SD)"}
    assert abs(float(rows["posterior mean"][3]) - _psnr(x.mean(0), truth)) < 0.01
    psnrs = [_psnr(s, truth) for s in x]
    assert rows["3 samples (mean ± SD)"][3] == f"{np.mean(psnrs):.2f} ± {np.std(psnrs, ddof=1):.2f}"
    assert rows["truth"][1] == f"{lus._phantom_arrays(3, SIZE)['aeration']:.3f}"
    assert "phantom lung mask" in out["metrics"]


def test_same_seed_same_samples_and_scale_reaches_the_sampler(tab: Any) -> None:
    a = np.load(_run(tab, seed=4, n=1)[1]["raw"])
    np.testing.assert_array_equal(a, np.load(_run(tab, seed=4, n=1)[1]["raw"]))
    assert not np.array_equal(a, np.load(_run(tab, seed=5, n=1)[1]["raw"]))
    assert not np.array_equal(a, np.load(_run(tab, seed=4, n=1, scale=200.0)[1]["raw"]))


def test_dps_uses_the_notebooks_sampler_and_steps(tab: Any, lus: Any) -> None:
    from medgen.experiments.lung_us import plan

    assert lus.dps_sampler() == "ddpm"  # ancestral DPS, as the notebook (DDIM eta 0 diverged under guidance)
    assert tab.dps_steps() == plan("ci").dps_steps


def test_stream_dps_passes_frames_and_reraises_sampler_errors(lus: Any) -> None:
    """A stand-in prior: its callback frames arrive in order, then the samples; an error is re-raised."""
    m = lus.Measurement(torch.zeros(1, 1, 4, 4), None, 0.0, None, "test")
    s = lus.ReconSettings(1.0, 5, 2, 0)

    def reconstruct(y: Any, *, callback: Any, steps: int, n_samples: int, **kwargs: Any) -> torch.Tensor:
        assert kwargs["sampler"] == "ddpm" and kwargs["scale"] == 1.0
        for i in range(steps):
            callback({"i": i, "n": steps, "x0": torch.full((n_samples, 1, 1, 4, 4), float(i))})
        return torch.ones(n_samples, 1, 1, 4, 4)

    items = list(lus.stream_dps(SimpleNamespace(reconstruct=reconstruct), m, s, every=2))
    assert [(it[0], it[1]) for it in items[:-1]] == [("frame", 2), ("frame", 4), ("frame", 5)]
    assert [float(it[3][0, 0]) for it in items[:-1]] == [1.0, 3.0, 4.0]  # the x0 of step i (0-based i - 1)
    assert items[-1][0] == "done" and tuple(items[-1][1].shape) == (2, 1, 1, 4, 4)

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("guidance diverged")

    with pytest.raises(RuntimeError, match="guidance diverged"):
        list(lus.stream_dps(SimpleNamespace(reconstruct=broken), m, s))


def test_stream_every_throttles_to_about_twenty_frames(lus: Any) -> None:
    assert lus.stream_every(4) == 1 and lus.stream_every(20) == 1 and lus.stream_every(50) == 3
    assert lus.stream_every(200) == 10


# ------------------------------------------------------------------------------------------
# uploads
# ------------------------------------------------------------------------------------------
def test_png_upload_is_read_in_the_lung_window(tab: Any, lus: Any, tmp_path: Path) -> None:
    png = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(png).save(tmp_path / "lung.png")
    inp = lus.load_upload(tmp_path / "lung.png", SIZE)
    np.testing.assert_allclose(inp.x, png / 127.5 - 1.0, atol=1e-5)  # gray g -> 2 g - 1 = (HU + 1000) / 800 - 1
    assert "resized" not in " ".join(inp.notes)
    assert "resized from 32x32 to the model's 16x16" in " ".join(lus.load_upload(tmp_path / "lung.png", 16).notes)
    outs, out = _run(tab, str(tmp_path / "lung.png"), n=1)
    assert out["status"].startswith("Done: "), out["status"]
    assert "lung.png" in out["status"]
    # the ci prior was trained on first use, not exported: no calibration, and the page says so
    assert "Truth training distribution not assessed:" in out["status"] and "medgen upgrade" in out["status"]
    assert out["verdict"].startswith("**Training distribution not assessed:**")
    assert "lung estimated below the fitted pleural line" in out["metrics"] and "| truth |" in out["metrics"]


def test_nifti_upload_in_hu_uses_the_lung_ct_map(lus: Any, tmp_path: Path) -> None:
    from medgen.data.io import write_volume

    hu = np.random.default_rng(0).uniform(-1000.0, 1000.0, (SIZE, SIZE)).astype(np.float32)
    vol = np.repeat(hu[::-1, ::-1, None], 3, axis=2)  # canonical RAS [S, A, R]: the middle sagittal slice is hu
    write_volume(tmp_path / "ct.nii.gz", vol, unit="HU")
    inp = lus.load_upload(tmp_path / "ct.nii.gz", SIZE)
    expected = np.clip((hu + 1000.0) / 1600.0, 0, 1) * 2 - 1  # [-1000, 600] HU -> [-1, 1], clipped above 600
    np.testing.assert_allclose(inp.x, expected, atol=1e-4)
    assert any("lung window [-1000, 600] HU" in n for n in inp.notes)


def test_ct_dicom_upload_in_hu_uses_the_lung_ct_map(lus: Any) -> None:
    pydicom = pytest.importorskip("pydicom")
    path = pytest.importorskip("pydicom.data").get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    inp = lus.load_upload(path, hu.shape[0])  # 128 px: no resize, so the map is compared pixel by pixel
    np.testing.assert_allclose(inp.x, np.clip((hu + 1000.0) / 1600.0, 0, 1) * 2 - 1, atol=1e-4)
    assert any("lung window" in n for n in inp.notes) and any("axial slice" in n for n in inp.notes)


def test_uploaded_measurement_reconstructs_without_truth(tab: Any, tmp_path: Path) -> None:
    _, _, meas_file, _, _ = tab.simulate(None, 2, "us_linear", 0.02, 0, None)
    for shape in [(SIZE, SIZE // 2), (1, 1, SIZE, SIZE // 2)]:
        np.save(tmp_path / "y.npy", np.load(meas_file).reshape(shape))
        truth, meas, _, status, verdict = tab.simulate(None, 2, "us_linear", 0.02, 0, str(tmp_path / "y.npy"))
        assert truth is None and meas is not None and status.startswith("Measurement: uploaded y.npy (us\\_linear)")
    _, out = _run(tab, measurement=str(tmp_path / "y.npy"), n=2)
    assert out["status"].startswith("Done: DPS with us_linear"), out["status"]
    assert "No truth for an uploaded measurement" in out["metrics"] and "| truth |" not in out["metrics"]
    assert out["truth"] is None and out["measurement"] is not None
    assert "| sample 1 |" in out["metrics"]


@pytest.mark.parametrize("stem, kwargs, expected", [
    ("square", {}, "square.npy: measurement shape (32, 32) does not match the us_linear operator's output 32x16"),
    ("nan_measurement", {}, "nan_measurement.npy: measurement contains NaN"),
    ("measurement", {}, "measurement.txt: a measurement must be a .npy array of shape 32x16"),
    ("big", {}, "big.npy: file too large (51.0 MB; limit 50 MB)"),
    ("square", {"operator": "inpaint"}, None),  # the right shape for inpainting: no error
])
def test_bad_measurement_is_one_line(tab: Any, files: SimpleNamespace, stem: str, kwargs: dict,
                                     expected: str | None) -> None:
    path = getattr(files, stem)
    operator = kwargs.get("operator", "us_linear")
    status = tab.simulate(None, 0, operator, 0.02, 0, path)[3]
    if expected is None:
        assert status.startswith("Measurement: uploaded square.npy"), status
        return
    _assert_one_line_error(status, expected)
    _, out = _run(tab, measurement=path)
    _assert_one_line_error(out["status"], expected)
    assert all(out[k] is None for k in ("truth", "measurement", "live", "sample", "mean", "sd", "raw"))
    assert out["metrics"] == ""


@pytest.mark.parametrize("stem, expected", [
    ("notes", "notes.dcm"),
    ("nan", "nan.nii.gz: contains"),
    ("huge", "huge.png: image too large (4200x4200"),
])
def test_bad_image_upload_is_one_line(tab: Any, files: SimpleNamespace, stem: str, expected: str) -> None:
    path = getattr(files, stem)
    image, status, verdict = tab.on_input(path, 0)
    assert image is None and verdict == ""
    _assert_one_line_error(status, expected)
    _, out = _run(tab, path)
    _assert_one_line_error(out["status"], expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"operator": "mri"}, "unknown operator 'mri' (choose from us_linear, us_acoustic, blur, inpaint)"),
    ({"noise": -0.1}, "noise must be a number in [0, 0.5], got -0.1"),
    ({"noise": float("nan")}, "noise must be a number in [0, 0.5], got nan"),
    ({"steps": 0}, "steps must be an integer in [1, 200], got 0"),
    ({"n": 9}, "samples must be an integer in [1, 8], got 9"),
    ({"scale": "big"}, "scale must be a number, got 'big'"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"subject": -1}, "subject must be an integer in [0, 99999], got -1"),
])
def test_bad_settings_are_one_line(tab: Any, kwargs: dict, message: str) -> None:
    _, out = _run(tab, **kwargs)
    _assert_one_line_error(out["status"], message)


# ------------------------------------------------------------------------------------------
# out-of-distribution guard (the shipped, calibrated prior)
# ------------------------------------------------------------------------------------------
def test_the_verdict_is_shown_beside_the_truth(shipped: Any, lus: Any) -> None:
    image, status, verdict = shipped.on_input(None, 3)
    assert image is not None and verdict.startswith("**Within the training distribution**: score "), verdict
    _, out = _run(shipped, n=1)
    assert out["status"].startswith("Done: ") and "Truth within the training distribution (score " in out["status"]
    assert out["verdict"].startswith("**Within the training distribution**")


def test_an_mr_upload_is_refused_unless_the_box_is_ticked(shipped: Any, lus: Any, tmp_path: Path) -> None:
    mr = pytest.importorskip("pydicom.data").get_testdata_file("MR_small.dcm")
    image, status, verdict = shipped.on_input(mr, 0)
    assert image is None and verdict == ""
    _assert_one_line_error(status, "the upload is MR (DICOM Modality) but the lung prior was trained on CT (ct); "
                                   "tick 'Use a file of another modality anyway'")
    _, out = _run(shipped, mr, n=1)
    _assert_one_line_error(out["status"], "the upload is MR (DICOM Modality)")
    assert out["sample"] is None and out["verdict"] == ""
    image, status, verdict = shipped.on_input(mr, 0, True)
    assert image is not None and verdict.startswith("**Outside the training distribution**: score ")
    assert "- modality mismatch allowed: the upload is MR" in verdict
    _, out = _run(shipped, mr, n=1, allow=True)
    assert out["status"].startswith("Done: ") and "**Truth outside the training distribution" in out["status"]
    *_, status, verdict = shipped.simulate(None, 0, "us_linear", 0.02, 0, None, False)
    assert verdict.startswith("**Within the training distribution**")
    _, _, meas_file, _, _ = shipped.simulate(None, 0, "us_linear", 0.02, 0, None)
    *_, status, verdict = shipped.simulate(None, 0, "us_linear", 0.02, 0, meas_file)
    assert verdict.startswith("**Training distribution not assessed:** an uploaded measurement is not an image")


# ------------------------------------------------------------------------------------------
# generate + memorization readout
# ------------------------------------------------------------------------------------------
def test_generate_with_pixel_memorization_readout(tab: Any, lus: Any) -> None:
    from medgen.experiments.lung_us import generated_sections, real_sections

    status, gen, near, table = tab.generate(3, 2, 1, lus.PIXEL_SPACE)
    assert status.startswith("Done: 3 images from the prior (ddpm, 2 steps, seed 1)"), status
    assert len(gen) == 3
    model = tab.model()
    images = model.generate(3, generator=torch.Generator().manual_seed(1), steps=2)[:, :1].float()
    cats = generated_sections(images).category
    train = real_sections(model.config, "train")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[2]) for r in rows] == list(cats)
    shown = 0
    for i, row in enumerate(rows):
        pool = np.flatnonzero(train.category == cats[i])  # the nearest training image of the same category
        if not len(pool):
            assert row[3].startswith("none: no training image") and row[6] == "not calibrated |"
            continue
        d = np.linalg.norm(train.images[pool, 0].numpy().reshape(len(pool), -1) - images[i, 0].numpy().reshape(1, -1),
                           axis=1)
        j = pool[int(np.argmin(d))]
        assert row[3].startswith(f"#{j} (") and abs(float(row[4]) - d.min()) < 1e-3 * d.min()
        np.testing.assert_array_equal(near[shown][0], lus.show_image(train.images[j, 0].numpy()))  # its picture
        shown += 1
    assert len(near) == shown
    assert "pixel space" in table and "held-out images' nearest-training distances" in table


def test_memorization_readout_is_the_notebooks_audit(tab: Any, lus: Any) -> None:
    """The tab's calibration and flags are the notebook's audit (``memorization`` -> ``audit``) on the same
    training / held-out / generated images in the same (pixel) space: same thresholds, same flags."""
    from medgen.experiments.lung_us import FLAG_PERCENTILE, generated_sections, memorization, real_sections
    from medgen.metrics.features import features

    model = tab.model()
    ref = lus.reference_set(model.config, lus.PIXEL_SPACE)
    train, held = real_sections(model.config, "train"), real_sections(model.config, "test")
    images = torch.cat([train.images[5:6], held.images, model.generate(4, generator=torch.Generator().manual_seed(0),
                                                                       steps=2)[:, :1].float()])
    gen, scr = lus.memorization_readout(images, ref)
    feats = {"train": features(train.images, "pixels"), "heldout": features(held.images, "pixels"),
             "generated": features(images, "pixels")}
    notebook = memorization(feats, train, held, generated_sections(images), space="pixels")
    assert notebook.audit.thresholds == ref.calibration.thresholds and ref.calibration.percentile == FLAG_PERCENTILE
    kept = notebook.generated_index  # the images the notebook can calibrate; the tab says the others are not
    np.testing.assert_array_equal(scr.flagged[kept], notebook.audit.flagged)
    np.testing.assert_array_equal(scr.distance[kept], notebook.audit.generated_distance)
    assert scr.calibrated[kept].all() and not scr.calibrated[np.setdiff1d(np.arange(len(images)), kept)].any()
    # a copy of training image 5 is its own nearest neighbour and flagged (when its category is calibrated)
    assert scr.nearest[0] == 5 and scr.distance[0] < 1e-9 and scr.flagged[0] == scr.calibrated[0]
    fresh = scr.flagged[1:1 + len(held)][scr.calibrated[1:1 + len(held)]]  # the calibration set itself
    assert fresh.mean() <= 0.25  # 1st percentile: at most one per small category


def test_generate_bad_settings(tab: Any) -> None:
    _assert_one_line_error(tab.generate(0, 2, 0)[0], "images must be an integer in [1, 8], got 0")
    _assert_one_line_error(tab.generate(1, 2, 0, "inception")[0], "unknown distance space 'inception'")


@pytest.mark.slow
def test_generate_in_the_notebooks_feature_space(tab: Any, lus: Any) -> None:
    space = tab.spaces()[1]
    assert space in ("efficientnet_lite0", "resnet18")
    status, gen, near, table = tab.generate(1, 2, 0, space)
    assert status.startswith("Done: 1 image"), status
    assert f"**`{space}`** feature space" in table


# ------------------------------------------------------------------------------------------
# the hub, through gradio_client
# ------------------------------------------------------------------------------------------
def test_tab_is_in_the_hub() -> None:
    from demos import app, lung_us

    assert ("Lung ultrasound", lung_us.build_tab) in app.TABS


@pytest.mark.slow
def test_client_simulates_and_reconstructs(hub_url: str, tmp_path_factory: pytest.TempPathFactory,
                                           files: SimpleNamespace) -> None:
    from gradio_client import Client, handle_file

    client = Client(hub_url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))
    truth, meas, meas_file, status, verdict = client.predict(None, 1, "us_linear", 0.02, 0, None, False,
                                                             api_name="/lung_us_simulate")
    assert truth is not None and np.load(meas_file).shape[-1] * 2 == np.load(meas_file).shape[-2]
    out = dict(zip(OUTPUTS, client.predict(None, 1, "us_linear", 0.02, 0, None, 10.0, 2, 2, False,
                                           api_name="/lung_us_reconstruct")))
    assert out["status"].startswith("Done: DPS with us_linear, scale 10, 2 ddpm steps, 2 samples"), out["status"]
    assert np.load(out["raw"]).shape[0] == 2 and Image.open(out["mean"]).size[0] >= 256
    out = dict(zip(OUTPUTS, client.predict(None, 1, "us_linear", 0.02, 0, handle_file(files.square), 10.0, 2, 2,
                                           False, api_name="/lung_us_reconstruct")))
    _assert_one_line_error(out["status"], "does not match the us_linear operator's output")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_reconstruct_and_generate(hub_url: str, tmp_path: Path) -> None:
    """Headless Chromium: open the tab, 2 steps and 2 samples, reconstruct the default phantom, generate."""
    from playwright.sync_api import expect

    with tab_page(hub_url, "Lung ultrasound", tmp_path / "profile") as page:
        expect(page.locator("#lus-status")).to_contain_text("Prior:")
        set_numbers(page, {"lus-steps": "2", "lus-samples": "2", "lus-gen-steps": "2", "lus-gen-n": "2"})
        page.locator("#lus-run").click()
        expect(page.locator("#lus-status")).to_contain_text("Done: DPS with us_linear", timeout=120_000)
        for elem in ("lus-live", "lus-sample", "lus-mean", "lus-sd"):
            expect(page.locator(f"#{elem} img")).to_be_visible()
        expect(page.locator("#lus-metrics")).to_contain_text("posterior mean")
        page.locator("#lus-gen-run").click()
        expect(page.locator("#lus-gen-status")).to_contain_text("Done: 2 images", timeout=120_000)
        expect(page.locator("#lus-gen-readout")).to_contain_text("pixel space")
        assert "Traceback" not in page.content()
        screenshot(page, tmp_path, "lung_us.png")
