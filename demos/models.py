"""The models a demo tab shows: a shipped checkpoint when there is one, else trained once on first use.

Every paper tab keeps its ``cpu``-preset checkpoints under ``checkpoints/<paper>/<folder>/``
(:func:`checkpoints_root`). A folder that holds a checkpoint is loaded with
:func:`medgen.checkpoint.load_translator`; a missing one is trained (or loaded from the runs
cache) by :func:`medgen.train.train_or_load` at :func:`train_preset` -- ``smoke``, or ``ci`` for
a ``ci`` demo -- with a tqdm bar that ``gr.Progress(track_tqdm=True)`` tracks. Models are kept in
memory, one per (checkpoint folder) or (training config, runs folder), behind one lock, so two
browser sessions never train the same model twice.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

__all__ = ["checkpoints_root", "train_preset", "is_shipped", "model_config", "describe", "is_loaded", "get_model"]

_MODELS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()
TrainConfig = Callable[[], Any]  # () -> the RunConfig a missing checkpoint is trained with (cheap)


def checkpoints_root(paper: str) -> Path:
    """``<repo>/checkpoints/<paper>`` (the shipped ``cpu`` checkpoints of one paper's tab)."""
    from medgen.reports import repo_root

    return repo_root() / "checkpoints" / paper


def train_preset(preset: str) -> str:
    """The preset a missing checkpoint is trained at: ``ci`` for a ``ci`` demo, else ``smoke``."""
    return "ci" if preset == "ci" else "smoke"


def is_shipped(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint (its ``config.json``)."""
    return (folder / "config.json").is_file()


def model_config(folder: Path, train_config: TrainConfig) -> Any:
    """The config of the model the tab uses: the shipped checkpoint's, else ``train_config()``; cheap."""
    if is_shipped(folder):
        from medgen.checkpoint import read_config

        return read_config(folder)
    return train_config()


def describe(folder: Path, train_config: TrainConfig) -> str:
    """``"shipped `cpu` checkpoint, 64 px"`` or ``"trained at `smoke` on first use, 32 px"`` (one phrase)."""
    cfg = model_config(folder, train_config)
    where = f"shipped `{cfg.preset}` checkpoint" if is_shipped(folder) else f"trained at `{cfg.preset}` on first use"
    return f"{where}, {cfg.data.image_size} px"


def _key(folder: Path, train_config: TrainConfig, runs: Path) -> tuple[str, ...]:
    if is_shipped(folder):
        return ("shipped", str(folder.resolve()))
    from medgen.config import config_hash

    return ("trained", config_hash(train_config()), str(runs.resolve()))


def is_loaded(folder: Path, train_config: TrainConfig, runs: Path) -> bool:
    """Whether the model is already in memory."""
    return _key(folder, train_config, runs) in _MODELS


def get_model(folder: Path, train_config: TrainConfig, runs: Path, *, label: str,
              progress: Callable[..., Any] | None = None) -> Any:
    """The model (eval mode), loaded once: the checkpoint in ``folder``, else trained with
    ``train_config()`` under ``runs``, reporting "training <label> ..." to ``progress``."""
    key = _key(folder, train_config, runs)
    with _LOCK:
        if key not in _MODELS:
            if key[0] == "shipped":
                from medgen.checkpoint import load_translator

                _MODELS[key] = load_translator(folder)
            else:
                from medgen.train import train_or_load

                cfg = train_config()
                if progress is not None:
                    progress(0.0, desc=f"training {label} at `{cfg.preset}` ({cfg.train.steps} steps, once)")
                _MODELS[key] = train_or_load(cfg, root=runs, progress=True).eval()
        return _MODELS[key]
