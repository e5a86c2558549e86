"""The status channel from a notebook kernel to the terminal (medgen/progress.py, issue 15)."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from medgen import progress


def test_report_does_nothing_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    progress.report("training x", force=True)
    assert list(tmp_path.iterdir()) == []


def test_watch_prints_new_phases_at_once_and_throttles_one_phase() -> None:
    out = io.StringIO()
    with progress.watch(out, interval=0.02, print_interval=60.0) as path:
        assert os.environ[progress.ENV] == str(path)
        progress.report("training a: step 1 / 3", phase="train a", force=True)
        time.sleep(0.2)
        progress.report("training a: step 2 / 3", phase="train a", force=True)  # same phase: throttled
        time.sleep(0.2)
        progress.report("sampling a: batch 1 / 2", phase="predict a", force=True)  # new phase: at once
        time.sleep(0.2)
        progress.report("sampling a: batch 2 / 2", phase="predict a", force=True)
    assert progress.ENV not in os.environ and not path.exists() and not path.parent.exists()
    # the throttled line is skipped, the last one is printed when the block ends
    assert out.getvalue().splitlines() == ["    training a: step 1 / 3", "    sampling a: batch 1 / 2",
                                           "    sampling a: batch 2 / 2"]


def test_report_throttles_the_same_phase_in_the_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status = tmp_path / "status"
    monkeypatch.setenv(progress.ENV, str(status))
    progress.report("first", phase="p", force=True)
    progress.report("second", phase="p")  # within MIN_INTERVAL: not written
    assert status.read_text() == "p\tfirst\n"
    progress.report("other", phase="q")  # a new phase: written at once
    assert status.read_text() == "q\tother\n"


def test_format_eta() -> None:
    assert [progress.format_eta(s) for s in (4.4, 130, 3900)] == ["4 s", "2 min 10 s", "1 h 05 min"]


def test_training_and_predict_report_their_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """fit() reports its steps with an ETA, predict() its batches (what `medgen reproduce` prints)."""
    from medgen import zoo
    from medgen.config import get_preset
    from medgen.data.toy import ToyShapes
    from medgen.predict import predict

    seen: list[str] = []
    real = progress.report

    def spy(text: str, **kwargs: object) -> None:
        seen.append(text)
        real(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(progress, "report", spy)
    monkeypatch.setenv(progress.ENV, str(tmp_path / "status"))
    cfg = get_preset("ci")
    model = zoo.resolve(cfg, root=tmp_path, runs=tmp_path / "runs", progress=False)
    assert any(t.startswith(f"training {cfg.name} at `ci` (") for t in seen), seen  # zoo: which model
    steps = [t for t in seen if t.startswith(f"training {cfg.name} at `ci`: step ")]
    assert steps and steps[-1].startswith(f"training {cfg.name} at `ci`: step {cfg.train.steps} / "
                                          f"{cfg.train.steps} (100 %), ") and steps[-1].endswith(" left")
    predict(model, ToyShapes(cfg.data, "test"), batch_size=2, steps=2, ood=False)
    assert any(t.startswith(f"sampling {cfg.name}: batch 1 / ") for t in seen), seen
