"""Demo tab "Spine MRI -> CT": the run function directly (phantom, real MR DICOM, bad uploads, the
train-on-first-use path at ``ci``) and the hub through gradio_client.

Translations use the shipped 64 px checkpoints with 1-2 DDIM steps so that the file stays fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from browser import screenshot, set_numbers, tab_page

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "checkpoints" / "mri_to_ct"
pytestmark = [
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
    pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),  # gr.Warning outside a request
    pytest.mark.skipif(not (SHIPPED / "ddim_image-t2w").is_dir(), reason="shipped mri_to_ct checkpoints missing"),
]
OUTPUTS = ("status", "input", "ct_bone", "ct_soft", "reference", "overlay", "dice", "mean", "sd", "raw", "verdict")


@pytest.fixture(scope="module")
def m2c() -> Any:
    from demos import mri_to_ct

    return mri_to_ct


@pytest.fixture(scope="module")
def tab(m2c: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return m2c.Tab("ci", runs_root=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def mr_dicom() -> str:
    pydicom_data = pytest.importorskip("pydicom.data")
    return pydicom_data.get_testdata_file("MR_small.dcm")


@pytest.fixture(scope="module")
def ct_dicom() -> str:
    pydicom_data = pytest.importorskip("pydicom.data")
    return pydicom_data.get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import nibabel as nib

    d = tmp_path_factory.mktemp("bad")
    (d / "notes.dcm").write_bytes(b"this is a text file, not DICOM\n" * 20)
    nan = np.ones((16, 16, 3), np.float32)
    nan[4, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(d / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.float32), np.eye(4)), str(d / "series4d.nii"))
    Image.fromarray(np.zeros((4200, 4200), np.uint8)).save(d / "huge.png")  # 17.6 MP, small on disk
    with open(d / "big.dcm", "wb") as fh:  # over the 50 MB upload limit, checked before decoding
        fh.truncate(51 * 1024 * 1024)
    return SimpleNamespace(**{p.name.split(".")[0]: p for p in d.iterdir()})


def _run(tab: Any, upload: Any = None, *, subject: int = 3, segment: int = 2, contrast: str = "t2w",
         method: str = "ddim_image", steps: Any = 2, eta: Any = 1.0, w: Any = 0.0, n: Any = 2, seed: Any = 0,
         progress: Any = None, allow: bool = False) -> dict[str, Any]:
    """The last output of ``Tab.run`` as a dict of :data:`OUTPUTS`."""
    outs = list(tab.run(upload, subject, segment, contrast, method, steps, eta, w, n, seed, progress, allow=allow))
    return dict(zip(OUTPUTS, outs[-1]))


def _assert_one_line_error(status: str, expected: str) -> None:
    assert status.startswith("**Error:** "), status
    assert "\n" not in status and "Traceback" not in status, status
    assert expected in status.replace("\\", ""), status  # file names are Markdown-escaped


# ------------------------------------------------------------------------------------------
# the run function
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_phantom_ddim_gives_windows_overlay_dice_and_uncertainty(tab: Any, m2c: Any) -> None:
    from medgen.data.io import window

    assert tab.methods == ["ddim_image", "pix2pix_unet"]  # both shipped
    out = _run(tab, steps=1, n=2, seed=5)
    assert out["status"].startswith("Done: DDIM (image mode) from T2w, 1 steps, eta 1, w 0, 2 samples, seed 5"), \
        out["status"]
    ct = np.load(out["raw"])
    assert ct.shape == (2, 64, 64) and ct.dtype == np.float32  # shipped checkpoints work at 64 px
    assert -1000.0 <= ct.min() < 0.0 < 500.0 < ct.max() <= 1000.0  # HU = model output x 1000: air and bone
    assert not np.array_equal(ct[0], ct[1])  # eta = 1: the samples differ, so the SD map is not empty
    k = 256 // 64
    bone = np.asarray(out["ct_bone"])[::k, ::k]
    np.testing.assert_array_equal(bone, np.round(window(ct[0], "bone") * 255).astype(np.uint8))
    soft = np.asarray(out["ct_soft"])[::k, ::k]
    assert np.mean(soft == 255) > np.mean(bone == 255)  # the narrow soft-tissue window saturates on bone
    mean = np.asarray(out["mean"])[::k, ::k]
    np.testing.assert_array_equal(mean, np.round(window(ct.mean(0), "bone") * 255).astype(np.uint8))
    sd = np.asarray(out["sd"])
    assert sd.shape == (256, 256, 3) and len(np.unique(sd.reshape(-1, 3), axis=0)) > 10
    assert out["reference"] is not None and np.asarray(out["overlay"]).shape == (256, 256, 3)
    lines = out["dice"].splitlines()
    assert lines[0] == "| Dice | synthesized CT (mean ± SD over 2 samples) | real registered CT (ceiling) |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert "all bone (per volume)" in rows and "posterior elements (per volume)" in rows
    assert sum(name.startswith("vertebra ") for name in rows) >= 3  # complete vertebrae scored one by one
    ceiling = float(rows["all bone (per volume)"].split(" | ")[-1].strip(" |"))
    assert ceiling > 0.9  # the segmenter on the real registered CT (its docstring: ~0.97 at 64 px)
    assert "stand-in for the paper's public CT segmentation algorithm" in out["dice"]


@pytest.mark.slow
def test_same_seed_same_samples_and_guidance_changes_them(tab: Any, m2c: Any) -> None:
    model = tab.model("ddim_image", "t2w")
    mri = m2c.load_phantom(1, 2, "t2w", 64).mri

    def sample(seed: int, w: float = 0.0) -> np.ndarray:
        return m2c.translate(model, mri, m2c.Settings("ddim_image", "t2w", 1, 1.0, w, 1, seed))

    a, b, c = sample(7), sample(7), sample(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, sample(7, w=1.0))  # w reaches the sampler


def test_hu_and_segmenter_input_come_from_the_phantoms_ct_modality(m2c: Any) -> None:
    """Model range <-> HU is the spine phantom's ``ct`` modality (no constant of the tab's own), and the
    segmenter gets the CT in model range through ``Segmenter.segment(..., resize=True)``."""
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS, lookup
    from types import SimpleNamespace

    ct = lookup(PHANTOMS, "spine_sagittal").modalities["ct"]
    assert m2c.ct_modality() is ct
    np.testing.assert_allclose(ct.from_model(np.array([-1.0, 0.0, 1.0])), [-1000.0, 0.0, 1000.0])
    seen = {}

    def segment(x: Any, *, resize: bool = False) -> Any:
        seen.update(x=x, resize=resize)
        return x[:, 0].long()

    hu = np.array([[[-1500.0, -1000.0], [0.0, 2500.0]]], np.float32)
    m2c.segment_ct(SimpleNamespace(segment=segment), hu)
    np.testing.assert_allclose(seen["x"].numpy()[:, 0], ct.to_model(hu))
    assert seen["resize"] and seen["x"].numpy().min() == -1.0 and seen["x"].numpy().max() == 1.0  # clipped


def test_pix2pix_is_deterministic_and_runs_once(tab: Any) -> None:
    out = _run(tab, method="pix2pix_unet", contrast="t1w", n=4, subject=2, segment=0)
    assert "deterministic (steps, eta, w and seed do not apply; one output, SD 0)" in out["status"]
    assert "cervical, T1w" in out["status"]
    assert np.load(out["raw"]).shape == (1, 64, 64)
    assert "| Dice | synthesized CT (one sample) |" in out["dice"]
    sd = np.asarray(out["sd"])
    assert (sd == sd[0, 0]).all()  # one output: a flat SD map (every pixel the colour of 0 HU)


def test_real_mr_dicom_runs_and_is_flagged_out_of_distribution(tab: Any, m2c: Any, mr_dicom: str) -> None:
    for method in ("pix2pix_unet", "ddim_image"):
        out = _run(tab, mr_dicom, method=method, steps=1, n=2, contrast="t1w")
        assert out["status"].startswith("Done: "), out["status"]
        assert "**Input outside the training distribution (score " in out["status"] and "MR\\_small.dcm" in out["status"]
        assert out["verdict"].startswith("**Outside the training distribution**: score ")
        assert "The output is not trustworthy" in out["verdict"]
        assert "axial slice, not sagittal" in out["status"] and "rescaled linearly" in out["status"]
        assert out["reference"] is None and out["dice"].startswith("No reference CT for uploads")
        assert np.asarray(out["overlay"]).shape == (256, 256, 3) and np.isfinite(np.load(out["raw"])).all()


def test_the_verdict_is_shown_beside_every_input(tab: Any, m2c: Any, mr_dicom: str) -> None:
    """The out-of-distribution guard in the tab (issue 14): a phantom test subject is within the shipped
    translator's training distribution, a real axial head MR outside, each with score and threshold."""
    *_, status, verdict = tab.on_phantom(3, 2, "t2w", "ddim_image")
    assert verdict.startswith("**Within the training distribution**: score "), verdict
    assert "<= threshold " in verdict and "99th percentile of 1024 held-out training images" in verdict
    preview, reference, status, verdict = tab.on_upload(mr_dicom, "pix2pix_unet", "t2w")
    assert preview is not None and verdict.startswith("**Outside the training distribution**: score ")
    out = _run(tab, method="pix2pix_unet")  # the phantom through Translate: the Done line repeats the verdict
    assert "Input within the training distribution (score " in out["status"]
    assert out["verdict"].startswith("**Within the training distribution**")


def test_an_upload_of_another_modality_is_refused_unless_the_box_is_ticked(tab: Any, ct_dicom: str) -> None:
    preview, reference, status, verdict = tab.on_upload(ct_dicom, "ddim_image", "t2w")
    assert preview is None and verdict == ""
    _assert_one_line_error(status, "the upload is CT (DICOM Modality) but the DDIM (image mode) T2w model was "
                                   "trained on MR (t2w); tick 'Use a file of another modality anyway'")
    out = _run(tab, ct_dicom, method="pix2pix_unet")
    _assert_one_line_error(out["status"], "the upload is CT (DICOM Modality)")
    assert out["ct_bone"] is None and out["raw"] is None and out["verdict"] == ""
    preview, reference, status, verdict = tab.on_upload(ct_dicom, "ddim_image", "t2w", True)
    assert preview is not None and verdict.startswith("**Outside the training distribution**")
    assert "- modality mismatch allowed: the upload is CT" in verdict
    out = _run(tab, ct_dicom, method="pix2pix_unet", allow=True)
    assert out["status"].startswith("Done: ") and np.load(out["raw"]).shape == (1, 64, 64)
    assert out["verdict"].startswith("**Outside the training distribution**")


def test_upload_mri_normalisation_is_the_papers_zero_to_max_map(m2c: Any, tmp_path: Path) -> None:
    """A NIfTI in arbitrary units: model input = 2 * x / max - 1, whatever the scanner scale."""
    from medgen.data.io import write_volume

    image = np.random.default_rng(0).uniform(0.0, 1.0, (64, 64)).astype(np.float32)
    for scale in (1.0, 3000.0):
        vol = np.repeat((image * scale)[::-1, ::-1, None], 3, axis=2)  # canonical RAS [S, A, R], sagittal
        write_volume(tmp_path / f"mri{scale:g}.nii", vol, unit="a.u.")
        inp = m2c.load_upload(tmp_path / f"mri{scale:g}.nii", 64)
        np.testing.assert_allclose(inp.mri, 2.0 * image / image.max() - 1.0, atol=1e-5)
    png = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(png).save(tmp_path / "slice.png")
    np.testing.assert_allclose(m2c.load_upload(tmp_path / "slice.png", 64).mri, png / 127.5 - 1.0, atol=1e-5)
    assert "resized from 64x64" not in " ".join(m2c.load_upload(tmp_path / "slice.png", 64).notes)
    assert "resized from 64x64 to the model's 32x32" in " ".join(m2c.load_upload(tmp_path / "slice.png", 32).notes)


@pytest.mark.parametrize("stem, expected", [
    ("notes", "notes.dcm"),
    ("nan", "nan.nii.gz: contains"),
    ("series4d", "series4d.nii"),
    ("huge", "huge.png: image too large (4200x4200"),
    ("big", "big.dcm: file too large (51.0 MB; limit 50 MB)"),
])
def test_bad_upload_is_one_line(tab: Any, bad_files: SimpleNamespace, stem: str, expected: str) -> None:
    path = str(getattr(bad_files, stem))
    preview, reference, status, verdict = tab.on_upload(path, "ddim_image", "t2w")
    assert preview is None and reference is None and verdict == ""
    _assert_one_line_error(status, expected)
    out = _run(tab, path)
    _assert_one_line_error(out["status"], expected)
    assert all(out[k] is None for k in ("ct_bone", "overlay", "raw"))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "cut_resnet"}, "unknown method 'cut_resnet' (choose from ddim_image, pix2pix_unet)"),
    ({"contrast": "flair"}, "unknown contrast 'flair'"),
    ({"steps": 0}, "steps must be an integer between 1 and 100, got 0"),
    ({"n": 9}, "samples must be an integer between 1 and 8, got 9"),
    ({"eta": 1.5}, "eta must be between 0 and 1, got 1.5"),
    ({"w": -1}, "w must be between 0 and 5, got -1"),
    ({"seed": -3}, "seed must be a non-negative integer, got -3"),
    ({"steps": "many"}, "must be numbers"),
    ({"subject": 2.5}, "subject must be an integer in [0, 99999], got 2.5"),
    ({"segment": 3}, "segment must be 0 (cervical), 1 (thoracic) or 2 (lumbar), got 3"),
])
def test_bad_settings_are_one_line(tab: Any, kwargs: dict, message: str) -> None:
    out = _run(tab, **kwargs)
    _assert_one_line_error(out["status"], message)
    assert out["ct_bone"] is None and out["dice"] == ""


@pytest.mark.slow
def test_missing_checkpoint_is_trained_with_a_progress_bar(m2c: Any, tmp_path: Path) -> None:
    """A zoo root without checkpoints at ``ci``: both models are trained (ci preset) on the first Run."""
    empty, runs = tmp_path / "no_checkpoints", tmp_path / "runs"
    empty.mkdir()
    tab = m2c.Tab("ci", runs_root=runs, root=empty)
    assert tab.methods == list(m2c.METHODS)  # nothing shipped: every method is offered, trained on demand
    assert "trained at `ci` on first use, 32 px" in tab.status()
    calls: list[tuple[Any, dict]] = []
    out = _run(tab, steps=1, n=2, progress=lambda *a, **k: calls.append((a, k)))
    assert out["status"].startswith("Done: DDIM (image mode)"), out["status"]
    assert np.load(out["raw"]).shape == (2, 32, 32)  # the ci model's size; the phantom is rendered at it
    descs = [k.get("desc", "") for _, k in calls]
    assert any(d.startswith("training ddim_image at `ci`") for d in descs), descs
    assert any(d.startswith("training segmenter at `ci`") for d in descs), descs
    assert any(d == "sampling step 1 of 1" for d in descs), descs
    assert (runs / "mri_to_ct" / "ddim_image").is_dir() and (runs / "mri_to_ct" / "segmenter").is_dir()
    calls.clear()
    _run(tab, steps=1, n=1)  # second run: in memory, nothing trained again
    assert not any(k.get("desc", "").startswith("training") for _, k in calls)


# ------------------------------------------------------------------------------------------
# the hub, through gradio_client
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(hub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    return Client(hub_url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


def test_tab_is_in_the_hub() -> None:
    from demos import app, mri_to_ct

    assert ("Spine MRI -> CT", mri_to_ct.build_tab) in app.TABS


@pytest.mark.slow
def test_client_runs_the_real_mr_dicom(client: Any, m2c: Any, mr_dicom: str) -> None:
    from gradio_client import handle_file

    preview, reference, status, verdict = client.predict(handle_file(mr_dicom), "ddim_image", "t1w", False,
                                                         api_name="/mri_to_ct_load_upload")
    assert preview is not None and reference is None and verdict.startswith("**Outside the training distribution**")
    out = dict(zip(OUTPUTS, client.predict(handle_file(mr_dicom), 0, 2, "t1w", "ddim_image", 1, 1.0, 0.5, 2, 0, False,
                                           api_name="/mri_to_ct_run")))
    assert out["status"].startswith("Done: DDIM (image mode) from T1w, 1 steps, eta 1, w 0.5, 2 samples")
    assert "**Input outside the training distribution" in out["status"]
    assert out["verdict"].startswith("**Outside the training distribution**")
    assert np.load(out["raw"]).shape == (2, 64, 64)
    assert Image.open(out["ct_bone"]).size == (256, 256) and out["reference"] is None


def test_client_phantom_pick_and_bad_upload(client: Any, bad_files: SimpleNamespace) -> None:
    from gradio_client import handle_file

    upload, preview, reference, status, verdict = client.predict(4, 1, "t2w", "ddim_image",
                                                                 api_name="/mri_to_ct_pick_phantom")
    assert upload is None and preview is not None and reference is not None  # picking a phantom clears the upload
    assert status.startswith("Input: **spine\\_sagittal test subject 4 (thoracic, T2w)** at 64x64 px"), status
    assert "training distribution" in verdict
    preview, reference, status, verdict = client.predict(handle_file(str(bad_files.notes)), "ddim_image", "t2w",
                                                         False, api_name="/mri_to_ct_load_upload")
    assert preview is None and reference is None
    upload, preview, reference, status, verdict = client.predict(4, 1.5, "t2w", "ddim_image",
                                                                 api_name="/mri_to_ct_pick_phantom")
    assert preview is None
    _assert_one_line_error(status, "segment must be 0 (cervical), 1 (thoracic) or 2 (lumbar), got 1.5")
    preview, reference, status, verdict = client.predict(handle_file(str(bad_files.notes)), "ddim_image", "t2w",
                                                         False, api_name="/mri_to_ct_load_upload")
    _assert_one_line_error(status, "notes.dcm")


def test_client_refuses_a_ct_upload_unless_allowed(client: Any, ct_dicom: str) -> None:
    from gradio_client import handle_file

    preview, _, status, verdict = client.predict(handle_file(ct_dicom), "pix2pix_unet", "t2w", False,
                                                 api_name="/mri_to_ct_load_upload")
    assert preview is None and verdict == ""
    _assert_one_line_error(status, "the upload is CT (DICOM Modality) but the Pix2Pix (UNet) T2w model")
    preview, _, status, verdict = client.predict(handle_file(ct_dicom), "pix2pix_unet", "t2w", True,
                                                 api_name="/mri_to_ct_load_upload")
    assert preview is not None and verdict.startswith("**Outside the training distribution**")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_phantom_translate(hub_url: str, tmp_path: Path) -> None:
    """Headless Chromium: open the tab, set 1 step and 2 samples, translate the default phantom."""
    from playwright.sync_api import expect

    with tab_page(hub_url, "Spine MRI -> CT", tmp_path / "profile") as page:
        expect(page.locator("#m2c-status")).to_contain_text("shipped cpu checkpoint, 64 px")  # rendered Markdown
        set_numbers(page, {"m2c-steps": "1", "m2c-samples": "2"})
        page.locator("#m2c-run").click()
        expect(page.locator("#m2c-status")).to_contain_text("Done: DDIM (image mode) from T2w, 1 steps",
                                                            timeout=120_000)
        for elem in ("m2c-ct-bone", "m2c-ct-soft", "m2c-reference", "m2c-overlay", "m2c-mean", "m2c-sd"):
            expect(page.locator(f"#{elem} img")).to_be_visible()
        expect(page.locator("#m2c-dice")).to_contain_text("real registered CT (ceiling)")
        assert "Traceback" not in page.content()
        screenshot(page, tmp_path, "mri_to_ct.png")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_guard_refuses_a_ct_upload_until_the_box_is_ticked(hub_url: str, tmp_path: Path, ct_dicom: str
                                                                   ) -> None:
    """Headless Chromium: a real CT DICOM uploaded to the MRI tab is refused in one line; ticking the
    override box loads it, with the verdict "outside" beside the input image."""
    from playwright.sync_api import expect

    with tab_page(hub_url, "Spine MRI -> CT", tmp_path / "profile") as page:
        page.locator("#m2c-upload input[type=file]").set_input_files(ct_dicom)
        expect(page.locator("#m2c-status")).to_contain_text("the upload is CT (DICOM Modality) but the DDIM",
                                                            timeout=60_000)
        expect(page.locator("#m2c-input img")).to_have_count(0)
        page.locator("#m2c-allow-modality input").check()
        expect(page.locator("#m2c-verdict")).to_contain_text("Outside the training distribution", timeout=60_000)
        expect(page.locator("#m2c-verdict")).to_contain_text("modality mismatch allowed")
        expect(page.locator("#m2c-input img")).to_be_visible()
        assert "Traceback" not in page.content()
        screenshot(page, tmp_path, "mri_to_ct_guard.png")
