"""Shared test setup: the ``ci`` preset, two torch threads, a temporary runs folder, markers.

Tests run at the tiny ``ci`` preset (``MEDGEN_PRESET=ci`` unless the caller chose another)
and with two CPU threads (TOOLCHAIN.md: one thread is about 2x slower, more threads than
cores stall). Never run them in parallel (no pytest-xdist).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MEDGEN_PRESET", "ci")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (also declared in pyproject.toml) so ``--strict-markers`` works."""
    config.addinivalue_line("markers", "slow: trains or samples a model; seconds to a minute on 2 CPU cores")
    config.addinivalue_line("markers", "browser: drives headless Chromium through Playwright")


@pytest.fixture
def tmp_runs(tmp_path: Path) -> Path:
    """An empty folder for training runs / checkpoints, removed with ``tmp_path``."""
    runs = tmp_path / "runs"
    runs.mkdir()
    return runs


@pytest.fixture
def zoo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repo-like root for :mod:`medgen.zoo` (no shipped checkpoints; runs in ``<root>/runs``), with
    ``MEDGEN_RUNS`` / ``RETRAIN`` unset and the zoo's said-once memory cleared."""
    from medgen import zoo

    monkeypatch.delenv("MEDGEN_RUNS", raising=False)
    monkeypatch.delenv("RETRAIN", raising=False)
    zoo._WARNED.clear()
    return tmp_path


@pytest.fixture
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    For tiny networks one thread is barely slower on idle cores, while two threads stall
    10-20x when other processes share the 2 cores (measured: 72 s vs 3.5 s for the cddpm
    training test under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a demo hub under test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """The whole demo hub at ``ci`` on a free port (one per test module): ``.url`` and ``.runs`` (its
    temporary runs folder)."""
    from types import SimpleNamespace

    from demos.app import launch

    runs, port = tmp_path_factory.mktemp("hub-runs"), free_port()
    app = launch("ci", "127.0.0.1", port, runs_root=runs, prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", runs=runs)
    finally:
        app.close()


@pytest.fixture(scope="module")
def hub_url(hub_server) -> str:
    """The URL of :func:`hub_server`."""
    return hub_server.url
