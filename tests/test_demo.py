"""The Gradio demo hub, end to end: one server per module at preset ``ci``.

(a) the gradio client runs the quickstart model and gets images back;
(b) bad uploads give one-line messages, never a traceback;
(c) headless Debian Chromium (Playwright, no `playwright install`) drives the page.
The quickstart model trains once into a temporary runs folder (a few seconds at ``ci``).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest

from browser import open_page, screenshot
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 16  # image_size of the quickstart `ci` preset
RUN_TIMEOUT_MS = 180_000  # the first Run trains the `ci` model
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas noise (TOOLCHAIN.md)


@pytest.fixture(scope="module")
def hub(hub_server: SimpleNamespace) -> SimpleNamespace:
    """The hub at preset ci (conftest ``hub_server``) with the quickstart config and its examples."""
    from demos import quickstart

    cfg = quickstart.get_preset("ci", "quickstart")
    return SimpleNamespace(url=hub_server.url, runs=hub_server.runs, cfg=cfg, examples=quickstart.example_labels(cfg))


@pytest.fixture(scope="module")
def client(hub: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    return Client(hub.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Good and bad upload files."""
    d = tmp_path_factory.mktemp("uploads")
    yy, xx = np.mgrid[:48, :48]
    disk = ((yy - 24) ** 2 + (xx - 24) ** 2 < 15 ** 2).astype(np.uint8) * 200 + 20
    Image.fromarray(disk).save(d / "disk.png")
    (d / "notes.png").write_text("this is a text file, not a PNG\n")
    Image.fromarray(disk.astype(np.uint16) * 250).save(d / "deep16.png")
    Image.fromarray(np.stack([disk, disk // 2, disk // 3], axis=-1)).save(d / "colour.png")
    Image.fromarray(np.zeros((4200, 4200), np.uint8)).save(d / "huge.png")  # 17.6 MP, ~20 KB on disk
    bad = disk.astype(np.float32) / 255
    bad[3, 3] = np.nan
    np.save(d / "nan.npy", bad)
    return SimpleNamespace(dir=d, **{p.stem: p for p in d.iterdir()})


def _upload(client: Any, path: Path) -> tuple[Any, ...]:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/quickstart_load_upload")


def _run(client: Any, upload: Path | None, example: str | None, sampler: str = "ddim", steps: int = 4,
         eta: float = 0.0, seed: int = 0) -> tuple[Any, ...]:
    from gradio_client import handle_file

    up = handle_file(str(upload)) if upload is not None else None
    return client.predict(up, example, sampler, steps, eta, seed, api_name="/quickstart_run")


def _gray(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


# ------------------------------------------------------------------------------------------
# (a) the run function through gradio_client
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_example_returns_output_truth_metrics_and_gallery(client: Any, hub: SimpleNamespace) -> None:
    assert len(hub.examples) == 4
    picked = client.predict(hub.examples[0], api_name="/quickstart_pick_example")
    assert picked[1] is not None and picked[2] is not None  # input preview and ground truth
    status, output, gallery, truth, metrics, raw, verdict = _run(client, None, hub.examples[0], seed=3)
    assert status.startswith("Done: DDIM, 4 steps, seed 3."), status
    assert _gray(output).shape == (256, 256)  # 16 px enlarged 16x for display
    assert _gray(truth).shape == (256, 256)
    raw_img = Image.open(raw)
    assert raw_img.size == (SIZE, SIZE) and np.asarray(raw_img).dtype == np.uint16
    np.testing.assert_array_equal(_gray(output)[::16, ::16], np.round(np.asarray(raw_img) / 257).astype(np.uint8))
    assert "| model output |" in metrics and "| input, unchanged (trivial baseline) |" in metrics
    assert 1 <= len(gallery) <= 6 and all("predicted x0" in g["caption"] for g in gallery)
    assert (hub.runs / "quickstart").is_dir()  # trained once into the configured runs folder
    # trained on first use, never exported: no calibration, and the verdict says how to add one
    assert verdict.startswith("**Training distribution not assessed:**") and "medgen upgrade" in verdict


@pytest.mark.slow
def test_same_seed_same_output_other_seed_differs(client: Any, hub: SimpleNamespace) -> None:
    a = np.asarray(Image.open(_run(client, None, hub.examples[1], "ddim", 3, 0.0, 7)[5]))
    b = np.asarray(Image.open(_run(client, None, hub.examples[1], "ddim", 3, 0.0, 7)[5]))
    c = np.asarray(Image.open(_run(client, None, hub.examples[1], "ddim", 3, 0.0, 8)[5]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp"])
def test_run_upload_with_each_sampler(client: Any, files: SimpleNamespace, sampler: str) -> None:
    status, output, gallery, truth, metrics, raw, verdict = _run(client, files.disk, None, sampler, 2)
    assert status.startswith("Done:") and "disk.png" in status and "resized from 48x48 to the model's 16x16" in status
    assert _gray(output).shape == (256, 256) and truth is None
    assert "No ground truth for uploads" in metrics


def test_run_without_input_or_with_bad_settings(client: Any, hub: SimpleNamespace) -> None:
    from gradio_client.exceptions import AppError

    status, output = _run(client, None, None)[:2]
    assert status == "**Error:** Pick an example or upload an image first." and output is None
    # gradio checks the components' own bounds and choices first: one-line errors too
    with pytest.raises(AppError, match="euler is not in the list of choices"):
        _run(client, None, hub.examples[0], "euler")
    with pytest.raises(AppError, match="Value 0 is less than minimum value 1"):
        _run(client, None, hub.examples[0], steps=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("euler", 4, 0.0, 0), "unknown sampler 'euler' (choose from ddpm, ddim, dpmpp)"),
        (("ddim", 101, 0.0, 0), "steps must be between 1 and 100, got 101"),
        (("ddim", 4, 2.0, 0), "eta must be between 0 and 1, got 2.0"),
        (("ddim", 4, 0.0, -1), "seed must be a non-negative integer, got -1"),
        (("ddim", "many", 0.0, 0), "steps, eta and seed must be numbers"),
    ],
)
def test_check_settings_messages(args: tuple, message: str) -> None:
    from demos import quickstart

    cfg = quickstart.get_preset("ci", "quickstart")
    with pytest.raises(quickstart.DemoError) as info:
        quickstart.check_settings(cfg, *args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert quickstart.check_settings(cfg, "ddpm", 4.0, 0.5, None) == ("ddpm", 4, 0.5, 0)


# ------------------------------------------------------------------------------------------
# (b) bad uploads: a one-line message, no traceback
# ------------------------------------------------------------------------------------------
REJECTED = [
    ("notes", "notes.png: not an image"),
    ("huge", "huge.png: image too large (4200x4200 = 17,640,000 pixels; limit 16,777,216)"),
    ("nan", "nan.npy: contains 1 NaN and 0 Inf values"),
]
ACCEPTED_WITH_NOTE = [
    ("deep16", "deep16.png: 16-bit image scaled by 1/65535 to [0, 1]"),
    ("colour", "colour.png: RGB colour image converted to grayscale luminance"),
]


def _assert_one_line_error(status: str, expected: str) -> None:
    assert status.startswith("**Error:** "), status
    assert "\n" not in status and "Traceback" not in status, status
    assert expected in status.replace("\\", ""), status  # file names are Markdown-escaped


@pytest.mark.parametrize("stem, expected", REJECTED)
def test_bad_upload_is_refused_with_one_line(client: Any, files: SimpleNamespace, stem: str, expected: str) -> None:
    example, preview, truth, status = _upload(client, getattr(files, stem))
    _assert_one_line_error(status, expected)
    assert preview is None and truth is None


@pytest.mark.parametrize("stem, expected", REJECTED)
def test_run_with_bad_upload_is_refused(client: Any, files: SimpleNamespace, stem: str, expected: str) -> None:
    status, output, gallery, truth, metrics, raw, verdict = _run(client, getattr(files, stem), None)
    _assert_one_line_error(status, expected)
    assert output is None and raw is None and gallery == []


@pytest.mark.parametrize("stem, note", ACCEPTED_WITH_NOTE)
def test_16bit_and_rgb_uploads_are_accepted_with_a_note(client: Any, files: SimpleNamespace, stem: str,
                                                        note: str) -> None:
    example, preview, truth, status = _upload(client, getattr(files, stem))
    assert preview is not None and _gray(preview).shape == (256, 256)
    lines = status.replace("\\", "").splitlines()
    assert lines[0].startswith(f"Input: **{stem}.png** at 16x16 px"), status
    assert any(line.startswith("- Note: ") and note in line for line in lines), status
    assert "Traceback" not in status


# ------------------------------------------------------------------------------------------
# (c) the page in headless Chromium
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(hub: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with open_page(hub.url, tmp_path_factory.mktemp("chromium-profile")) as pg:
        yield pg


_screenshot = screenshot  # full page into tmp_path (and $MEDGEN_SCREENSHOTS when set, for a human)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_example_then_run(page: Any, hub: SimpleNamespace, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#hub-tabs")).to_contain_text("Quickstart: toy shapes")
    expect(page.locator("#qs-intro")).to_contain_text("Inputs are resized to 16x16 px")
    page.locator("#qs-example input").click()
    page.get_by_role("option", name=hub.examples[2]).click()
    expect(page.locator("#qs-input img")).to_be_visible()
    expect(page.locator("#qs-truth img")).to_be_visible()
    page.locator("#qs-run").click()
    expect(page.locator("#qs-output img")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#qs-status")).to_contain_text("Done: DDIM", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#qs-metrics")).to_contain_text("PSNR (dB)")
    expect(page.locator("#qs-gallery img").first).to_be_visible()
    shot = _screenshot(page, tmp_path, "quickstart_example.png")
    assert Image.open(shot).size[0] >= 1000


@pytest.mark.browser
@pytest.mark.slow
def test_browser_upload_bad_then_good(page: Any, files: SimpleNamespace, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    file_input = page.locator("#qs-upload input[type=file]")
    file_input.set_input_files(str(files.notes))
    expect(page.locator("#qs-status")).to_contain_text("notes.png: not an image")
    expect(page.locator("#qs-status")).not_to_contain_text("Traceback")
    page.locator("#qs-upload button[aria-label='Clear']").click()
    file_input.set_input_files(str(files.colour))
    expect(page.locator("#qs-status")).to_contain_text("RGB colour image converted to grayscale")
    expect(page.locator("#qs-input img")).to_be_visible()
    page.locator("#qs-run").click()
    expect(page.locator("#qs-status")).to_contain_text("Done:", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#qs-output img")).to_be_visible()
    assert "Traceback" not in page.content()
    _screenshot(page, tmp_path, "quickstart_upload.png")


# ------------------------------------------------------------------------------------------
# (d) the phantom explorer tab
# ------------------------------------------------------------------------------------------
def _phantom(client: Any, name: str, *args: Any) -> tuple[Any, ...]:
    return client.predict(*args, api_name=f"/phantom_{name}")


def test_phantom_explorer_knee_renders_both_modalities_and_follows_the_grade(client: Any) -> None:
    status, xray, mri = _phantom(client, "knee", 2, 0, 1.0, 0.03, 0.5)
    assert status.startswith("Subject 2 of the knee phantom") and "kl_grade = 0" in status, status
    status4, xray4, mri4 = _phantom(client, "knee", 2, 4, 1.0, 0.03, 0.5)
    assert "kl_grade = 4" in status4
    a, b = _gray(xray["value"] if isinstance(xray, dict) else xray), _gray(xray4["value"] if isinstance(xray4, dict) else xray4)
    assert a.shape == b.shape and a.shape[0] >= 256 and not np.array_equal(a, b)  # narrower joint at grade 4


@pytest.mark.parametrize("name", ["spine_coronal", "spine_sagittal", "lung"])
def test_phantom_explorer_other_anatomies(client: Any, name: str) -> None:
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from demos.phantoms import N_PANELS, VIEW_OPTIONS
    from medgen.registry import PHANTOMS

    spec = PHANTOMS[name]
    views = [c[0] if isinstance(c, list) else c[3] for _, _, c in VIEW_OPTIONS[name]]
    out = _phantom(client, name, 1, *[c.default for c in spec.controls.values()], *views)
    assert out[0].startswith(f"Subject 1 of the {name} phantom"), out[0]
    assert len(out) == 1 + N_PANELS.get(name, 2) and all(img is not None for img in out[1:])


def test_phantom_explorer_bad_request_is_one_line() -> None:
    from demos.phantoms import DemoError, render

    with pytest.raises(ValueError, match="unknown control 'kl' for phantom 'knee'"):
        render("knee", "ci", 0, {"kl": 3}, {})
    with pytest.raises(ValueError, match=r"control 'kl_grade' of phantom 'knee' must be in \[0, 4\], got 7"):
        render("knee", "ci", 0, {"kl_grade": 7}, {})
    with pytest.raises(DemoError, match="subject must be an integer"):
        render("knee", "ci", 1.5, {}, {})
    with pytest.raises(DemoError, match="unknown phantom 'kne'"):
        render("kne", "ci", 0, {}, {})


def test_tabs_show_their_default_input_at_load(hub: SimpleNamespace) -> None:
    """Issue 14.5: the page shows a render before any button (the browser check: test_demo_browser.py)."""
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from demos import phantoms, quickstart

    for name in phantoms.ANATOMY_TITLES:
        n = phantoms.N_PANELS.get(name, 2)
        status, views = phantoms._first_render(name, "ci", n)
        assert status.startswith(f"Subject 0 of the {name} phantom") and len(views) == n, status
        assert all(img is not None and img.shape[0] >= 256 for _, img in views)
    first = quickstart.first_example(hub.cfg)
    assert first is not None and first.label == hub.examples[0] and first.target is not None


@pytest.mark.browser
def test_browser_phantom_explorer(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Phantom explorer").click()
    page.get_by_role("tab", name="Knee: X-ray / MRI").click()
    page.locator("#ph-knee-render").click()
    expect(page.locator("#ph-knee-panel0 img")).to_be_visible(timeout=60_000)
    expect(page.locator("#ph-knee-panel1 img")).to_be_visible()
    expect(page.locator("#ph-knee-status")).to_contain_text("Ground truth: kl_grade = 2")
    assert "Traceback" not in page.content()
    _screenshot(page, tmp_path, "phantom_explorer_knee.png")
    page.get_by_role("tab", name="Quickstart: toy shapes").click()  # leave the page as the other tests expect


# ------------------------------------------------------------------------------------------
# the hub itself
# ------------------------------------------------------------------------------------------
def test_hub_is_offline_and_uploads_go_to_a_private_temp_dir(client: Any, files: SimpleNamespace) -> None:
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    temp = Path(os.environ["GRADIO_TEMP_DIR"])
    _upload(client, files.disk)
    assert any(p.name == "disk.png" for p in temp.rglob("*.png")), f"upload not under {temp}"


def test_one_tab_per_built_paper() -> None:
    from demos import app

    assert app.TABS[0][0] == "Quickstart: toy shapes"
    assert len({title for title, _ in app.TABS}) == len(app.TABS)
    assert all(callable(builder) for _, builder in app.TABS)


def test_main_rejects_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from demos.app import main

    with pytest.raises(SystemExit) as info:
        main(["--preset", "smok"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown preset 'smok'" in err and "did you mean 'smoke'?" in err


def test_tabs_find_models_through_the_zoo_with_their_own_runs_folder(tmp_path, monkeypatch):
    """A tab's model: ``zoo.pick(cpu, train preset)``, then ``zoo.resolve(..., runs=runs_root, keep=True)``
    trains once into the tab's runs folder (not ``<root>/runs``) and keeps the model in memory; a
    shipped checkpoint under the zoo root whose config matches is picked and loaded instead."""
    import dataclasses

    from demos import ui
    from medgen import zoo
    from medgen.checkpoint import export_checkpoint
    from medgen.config import get_preset
    from medgen.train import run_dir_for

    monkeypatch.delenv("RETRAIN", raising=False)
    short = lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, steps=1, num_threads=1))  # noqa: E731
    cpu, ci = short(get_preset("cpu", "quickstart")), short(get_preset(ui.train_preset("ci"), "quickstart"))
    assert ui.train_preset("ci") == "ci" and ui.train_preset("cpu") == ui.train_preset("smoke") == "smoke"
    root, runs = tmp_path / "root", tmp_path / "runs"
    assert zoo.pick(cpu, ci, root=root) is ci and zoo.runs_root(root, runs) == runs
    assert zoo.describe(ci, root) == f"trained at `ci` on first use, {ci.data.image_size} px"
    assert not zoo.is_loaded(ci, root, runs=runs)
    first = zoo.resolve(ci, root=root, runs=runs, keep=True, progress=False)
    assert zoo.is_loaded(ci, root, runs=runs) and not zoo.is_loaded(ci, root, runs=tmp_path / "other")
    assert (run_dir_for(ci, runs) / "latest").exists() and not (root / "runs").exists()
    assert zoo.resolve(ci, root=root, runs=runs, keep=True) is first      # not retrained, not reloaded
    export_checkpoint(run_dir_for(ci, runs), root / "checkpoints" / "quickstart" / "model")
    assert zoo.describe(ci, root).startswith("shipped `ci` checkpoint")
    shipped = zoo.resolve(ci, root=root, runs=runs, keep=True)
    assert shipped is not first and not shipped.training


def test_ui_display_helpers():
    """demos.ui: one-line errors, Markdown escaping, integer enlargement (stretched for a non-square
    measurement), the SD colour map, and the worker stream (frames in order, then the result or the error)."""
    from demos import ui

    assert ui.one_line(ValueError("a\n  b")) == "a b" and ui.one_line(KeyError()) == "KeyError"
    assert ui.md("x_1*[y]") == "x\\_1\\*\\[y\\]"
    img = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert ui.enlarge(img).shape == (170, 255) and ui.enlarge(img, stretch=True).shape == (256, 255)
    np.testing.assert_array_equal(ui.enlarge(img)[::85, ::85], img)
    assert ui.gray(None) is None and ui.show_model(np.zeros((16, 16))).max() == 128
    assert ui.show_sd(np.zeros((16, 16)), 100.0).shape == (256, 256, 3)
    status = ui.input_status("a_b.png", 16, ", no truth", ["resized"], "**OOD**")
    assert status == "Input: **a\\_b.png** at 16x16 px, no truth.\n\n**OOD**\n\n- Note: resized"
    with pytest.raises(ui.DemoError, match=r"steps must be an integer in \[1, 5\], got 1.5"):
        ui.number(1.5, "steps", 1, 5, integer=True)

    def work(emit):
        for i in range(3):
            emit(i)
        return "done"

    assert list(ui.stream(work)) == [("frame", 0), ("frame", 1), ("frame", 2), ("done", "done")]

    def broken(emit):
        emit(0)
        raise RuntimeError("diverged")

    items = ui.stream(broken)
    assert next(items) == ("frame", 0)
    with pytest.raises(RuntimeError, match="diverged"):
        next(items)
