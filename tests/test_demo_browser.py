"""Every tab of the demo hub in headless Chromium at ``ci`` (issue 14.5): the panels a tab promises at
load are rendered without pressing a button, table headers neither overflow nor break a word across
lines, the upload drop zones show their icon, and a screenshot of every tab is kept.

Screenshots go to ``reports/demos/ci/screenshots/`` (git-ignored, like every ``ci`` report) and to
``$MEDGEN_SCREENSHOTS`` when set; the test prints the folder. Tables appear only after a run, so the
test runs each tab once at its cheapest settings (the lung tab's Reconstruct without Simulate first).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from browser import open_page, screenshot, set_numbers

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]  # pandas noise (TOOLCHAIN.md)

SHOTS = Path(__file__).resolve().parent.parent / "reports" / "demos" / "ci" / "screenshots"
RUN_TIMEOUT_MS = 180_000  # a first run may train a `ci` model
QUICKSTART, PHANTOMS = "Quickstart: toy shapes", "Phantom explorer"
MRI_TO_CT, LUNG = "Spine MRI -> CT", "Lung ultrasound"

# Header cells whose text is wider than the cell, and words broken across lines ("aeratio / n").
TABLE_PROBLEMS_JS = """
() => {
  const bad = [];
  for (const th of document.querySelectorAll('th')) {
    if (th.offsetParent === null || !th.innerText.trim()) continue;  // hidden tab, empty corner cell
    const text = th.innerText.trim().replace(/\\s+/g, ' ');
    if (th.scrollWidth > th.clientWidth + 1)
      bad.push(`header '${text}' overflows its cell (scrollWidth ${th.scrollWidth} > clientWidth ${th.clientWidth})`);
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (lines.size > 1) bad.push(`header '${text}': the word '${m[0]}' is broken across ${lines.size} lines`);
      }
    }
  }
  return bad;
}
"""

# Visible file drop zones: their height and whether the upload icon is hidden behind the label.
UPLOAD_ZONES_JS = """
() => [...document.querySelectorAll('input[type=file]')].map(input => {
  const block = input.closest('.block');
  if (!block || block.offsetParent === null) return null;
  const zone = input.closest('button, .upload-container, label').getBoundingClientRect();
  const label = block.querySelector('[data-testid=block-label]');
  const icon = block.querySelector('[data-testid=upload-icon]');
  const lb = label ? label.getBoundingClientRect() : null, ib = icon ? icon.getBoundingClientRect() : null;
  const overlap = lb && ib && ib.width > 0 && Math.min(lb.bottom, ib.bottom) - Math.max(lb.top, ib.top) > 1 &&
    Math.min(lb.right, ib.right) - Math.max(lb.left, ib.left) > 1;
  return {id: block.id, height: Math.round(zone.height), iconHidden: !!overlap};
}).filter(Boolean)
"""
MIN_DROP_ZONE_PX = 140  # was 110-120 px: the floating label covered the upload icon


def _open_tab(page: Any, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).click()
    page.wait_for_timeout(300)  # layout settles


def _shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return screenshot(page, SHOTS, name)


def _table_problems(page: Any) -> list[str]:
    return page.evaluate(TABLE_PROBLEMS_JS)


def _missing(page: Any, selector: str, timeout_ms: float = 10_000) -> bool:
    """Whether nothing matching ``selector`` is visible after ``timeout_ms``."""
    try:
        page.locator(selector).first.wait_for(state="visible", timeout=timeout_ms)
    except Exception:  # noqa: BLE001 -- playwright's TimeoutError
        return True
    return False


def test_every_tab_renders_at_load_and_tables_fit(hub_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from demos.app import TABS
    from demos.phantoms import ANATOMY_TITLES, N_PANELS
    from medgen.registry import PHANTOMS as SPECS

    print(f"\nscreenshots: {SHOTS}" + (f" and {os.environ['MEDGEN_SCREENSHOTS']}"
                                      if os.environ.get("MEDGEN_SCREENSHOTS") else ""))
    assert [t for t, _ in TABS] == [QUICKSTART, PHANTOMS, MRI_TO_CT, LUNG], "a new tab: add its checks here"
    problems: list[str] = []
    with open_page(hub_url, tmp_path / "profile") as page:
        # (a) at load, before any button: the panels each tab promises
        _open_tab(page, QUICKSTART)
        problems += [f"{QUICKSTART}: #{e} is empty after load"  # the first example and its ground truth
                     for e in ("qs-input", "qs-truth") if _missing(page, f"#{e} img")]
        _shot(page, "quickstart_load.png")
        _open_tab(page, PHANTOMS)
        for name, title in ANATOMY_TITLES.items():
            if name not in SPECS:
                continue
            page.get_by_role("tab", name=title, exact=True).click()
            problems += [f"{PHANTOMS}: #ph-{name}-panel{i} is empty after load"
                         for i in range(N_PANELS.get(name, 2)) if _missing(page, f"#ph-{name}-panel{i} img")]
            _shot(page, f"phantoms_{name}_load.png")
        for title, name in ((MRI_TO_CT, "mri_to_ct_load.png"), (LUNG, "lung_us_load.png")):
            _open_tab(page, title)
            _shot(page, name)
        for title in (QUICKSTART, MRI_TO_CT, LUNG):
            _open_tab(page, title)
            for zone in page.evaluate(UPLOAD_ZONES_JS):
                if zone["height"] < MIN_DROP_ZONE_PX:
                    problems.append(f"{title}: drop zone #{zone['id']} is {zone['height']} px high")
                if zone["iconHidden"]:
                    problems.append(f"{title}: the label of #{zone['id']} covers its upload icon")

        # (b) tables appear after a run: each tab once, cheaply, then no header overflows
        _open_tab(page, QUICKSTART)
        page.locator("#qs-run").click()  # on the example shown at load
        expect(page.locator("#qs-status")).to_contain_text("Done:", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#qs-metrics table")).to_be_visible()
        # the out-of-distribution verdict beside the input: the ci quickstart model has no calibration
        expect(page.locator("#qs-verdict")).to_contain_text("Training distribution not assessed")
        problems += [f"{QUICKSTART}: {p}" for p in _table_problems(page)]
        _shot(page, "quickstart_run.png")

        _open_tab(page, MRI_TO_CT)
        set_numbers(page, {"m2c-steps": "1", "m2c-samples": "2"})
        page.locator("#m2c-run").click()
        expect(page.locator("#m2c-status")).to_contain_text("Done:", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#m2c-dice table")).to_be_visible()
        expect(page.locator("#m2c-verdict")).to_contain_text("Within the training distribution")  # a phantom
        problems += [f"{MRI_TO_CT}: {p}" for p in _table_problems(page)]
        _shot(page, "mri_to_ct_run.png")

        _open_tab(page, LUNG)  # Reconstruct straight away: the measurement is simulated on demand
        set_numbers(page, {"lus-steps": "2", "lus-samples": "2", "lus-gen-steps": "2", "lus-gen-n": "2"})
        page.locator("#lus-run").click()
        expect(page.locator("#lus-status")).to_contain_text("Done: DPS", timeout=RUN_TIMEOUT_MS)
        for elem in ("lus-truth", "lus-measurement", "lus-sample"):
            expect(page.locator(f"#{elem} img")).to_be_visible()
        if _missing(page, "#lus-meas-download a", 1000):
            problems.append(f"{LUNG}: Reconstruct without Simulate offers no measurement download")
        expect(page.locator("#lus-metrics table")).to_be_visible()
        expect(page.locator("#lus-verdict")).to_contain_text("Within the training distribution")
        page.locator("#lus-gen-run").click()
        expect(page.locator("#lus-gen-status")).to_contain_text("Done:", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#lus-gen-readout table")).to_be_visible()
        problems += [f"{LUNG}: {p}" for p in _table_problems(page)]
        _shot(page, "lung_us_run.png")
        assert "Traceback" not in page.content()
    assert not problems, "\n".join(problems)
