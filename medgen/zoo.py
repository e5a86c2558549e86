"""The model finder: one way from a :class:`~medgen.config.RunConfig` to a trained model.

:func:`resolve` is what every notebook, experiment, demo tab and the CLI call:

1. a **shipped** checkpoint under ``checkpoints/`` whose saved config equals ``cfg`` (same
   :func:`~medgen.config.config_hash`) is loaded;
2. else the run cached under ``runs/<task>/<config_hash>/`` is loaded, resumed or trained by
   :func:`medgen.train.train_or_load` (with a progress bar and one line saying what trains).

A staged config (``cfg.parents``) gets its parents first, each found the same way
(:func:`resolve_parents`), and attached frozen to the model before it is loaded or trained.

A shipped checkpoint of the same task, preset and source whose config no longer matches is
never used silently: one line names it and the first differing keys (once per folder), and
the model is trained instead. ``retrain=True`` (``RETRAIN=1`` in the environment) ignores the
shipped checkpoints. ``keep=True`` keeps the model in memory, behind one lock, so that several
demo sessions asking for the same model load or train it once.

>>> from medgen.config import get_preset
>>> from medgen import zoo
>>> cfg = get_preset("cpu", "mri_to_ct/ddim_image")
>>> zoo.describe(cfg)                       # doctest: +SKIP
'shipped `cpu` checkpoint, 64 px'
>>> model = zoo.resolve(cfg)                # doctest: +SKIP
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from medgen import progress as status
from medgen.config import RunConfig, config_hash

__all__ = ["resolve", "resolve_parents", "shipped", "describe", "is_loaded", "pick", "checkpoints_root", "runs_root",
           "retrain_requested"]

_MEMORY: dict[tuple[str, str], Any] = {}
_LOCK = threading.RLock()
_WARNED: set[str] = set()
Progress = Callable[..., Any]  # gradio-style progress(fraction, desc=...)


def checkpoints_root(root: str | os.PathLike | None = None) -> Path:
    """``<root>/checkpoints`` (default root: the repository, :func:`medgen.reports.repo_root`)."""
    from medgen.reports import repo_root

    return Path(root if root is not None else repo_root()) / "checkpoints"


def runs_root(root: str | os.PathLike | None = None, runs: str | os.PathLike | None = None) -> Path:
    """Where trained runs are cached: ``runs`` when given (a demo's own runs folder), else
    ``$MEDGEN_RUNS``, else ``<root>/runs`` (default root: the repository)."""
    if runs is not None:
        return Path(runs)
    if root is None and os.environ.get("MEDGEN_RUNS"):
        return Path(os.environ["MEDGEN_RUNS"])
    from medgen.reports import repo_root

    return Path(root if root is not None else repo_root()) / "runs"


def retrain_requested() -> bool:
    """Whether ``RETRAIN`` is set to a true value (``make reproduce RETRAIN=1``): ignore shipped models."""
    return os.environ.get("RETRAIN", "").strip().lower() not in ("", "0", "false", "no")


def _shipped_index(ckpts: Path) -> list[tuple[Path, RunConfig]]:
    """``[(folder, saved config)]`` of every readable shipped checkpoint under ``ckpts``."""
    from medgen.checkpoint import read_config

    out = []
    for path in sorted(ckpts.glob("*/*/config.json")):
        try:
            out.append((path.parent, read_config(path.parent)))
        except Exception as err:  # noqa: BLE001 -- a damaged shipped checkpoint is said, then skipped
            _say_once(str(path.parent), f"medgen: skipping shipped checkpoint {path.parent}: {err}")
    return out


def _say_once(key: str, line: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        print(line, file=sys.stderr)


def _same_model(a: RunConfig, b: RunConfig) -> bool:
    """Whether a shipped checkpoint ``a`` is meant to be the model of ``b``: task, preset, method, source and
    the kind of data (a 2D model trained on the slices of registered volumes -- the registration comparison --
    shares its task name with the plain 2D model but is another model, not a stale one)."""
    key = lambda c: (c.name, c.preset, c.method, c.data.source, c.data.dataset, c.data.registration)  # noqa: E731
    return key(a) == key(b)


def shipped(cfg: RunConfig, root: str | os.PathLike | None = None) -> Path | None:
    """The shipped checkpoint folder whose config equals ``cfg``, else ``None``.

    A checkpoint of the same task, preset, method and source with another config is said once
    on stderr (folder and first differing keys) and not used.
    """
    from medgen.checkpoint import config_diff

    want = config_hash(cfg)
    stale = []
    for folder, saved in _shipped_index(checkpoints_root(root)):
        if config_hash(saved) == want:
            return folder
        if _same_model(saved, cfg):
            stale.append((folder, saved))
    for folder, saved in stale:
        diff = config_diff(saved, cfg)
        _say_once(str(folder), f"medgen: shipped checkpoint {folder} no longer matches its config "
                               f"({'; '.join(diff[:2])}{' ...' if len(diff) > 2 else ''}); training instead")
    return None


def _key(cfg: RunConfig, folder: Path | None, root: str | os.PathLike | None,
         runs: str | os.PathLike | None = None) -> tuple[str, str]:
    """The memory key of a model: its shipped ``folder`` (or the runs folder) and its config hash."""
    return (str(folder) if folder is not None else str(runs_root(root, runs).resolve()), config_hash(cfg))


def is_loaded(cfg: RunConfig, root: str | os.PathLike | None = None, *, runs: str | os.PathLike | None = None) -> bool:
    """Whether :func:`resolve` with ``keep=True`` (and the same ``root`` / ``runs``) already holds this model."""
    return _key(cfg, None if retrain_requested() else shipped(cfg, root), root, runs) in _MEMORY


def ready(cfg: RunConfig, root: str | os.PathLike | None = None, *, runs: str | os.PathLike | None = None) -> bool:
    """Whether :func:`resolve` would return ``cfg``'s model without training: held in memory, a shipped
    checkpoint it uses (not under ``RETRAIN``) or a cached run. Cheap (one scan of the shipped configs);
    the demos load such a model at once, e.g. to show an input's out-of-distribution verdict."""
    from medgen.train import run_dir_for

    folder = None if retrain_requested() else shipped(cfg, root)
    if folder is not None or _key(cfg, None, root, runs) in _MEMORY:
        return True
    return (run_dir_for(cfg, runs_root(root, runs)) / "latest").exists()


def describe(cfg: RunConfig, root: str | os.PathLike | None = None) -> str:
    """One phrase for a UI or a log: ``"shipped `cpu` checkpoint, 64 px"`` or
    ``"trained at `smoke` on first use, 32 px"``. Cheap (reads configs only)."""
    where = (f"shipped `{cfg.preset}` checkpoint" if not retrain_requested() and shipped(cfg, root)
             else f"trained at `{cfg.preset}` on first use")
    return f"{where}, {cfg.data.image_size} px"


def pick(*configs: RunConfig, root: str | os.PathLike | None = None) -> RunConfig:
    """The first of ``configs`` that has a shipped checkpoint, else the last one (the one to train).

    A demo tab asks ``pick(cpu_config, smoke_config)``: the shipped ``cpu`` model when there is
    one, else a ``smoke`` model trained on first use.
    """
    if not configs:
        raise ValueError("pick: no configs given")
    if not retrain_requested():
        for cfg in configs:
            if shipped(cfg, root) is not None:
                return cfg
    return configs[-1]


def resolve(cfg: RunConfig, *, root: str | os.PathLike | None = None, progress: bool = True,
            retrain: bool | None = None, keep: bool = False, label: str | None = None,
            report: Progress | None = None, runs: str | os.PathLike | None = None) -> Any:
    """The trained model of ``cfg`` in eval mode: shipped checkpoint, else cached or trained run.

    ``root``: the folder holding ``checkpoints/`` and ``runs/`` (default: the repository;
    ``$MEDGEN_RUNS`` moves the runs); ``runs``: the runs folder itself (a demo's ``runs_root``).
    ``retrain``: ignore shipped checkpoints (default: :func:`retrain_requested`). ``keep``: hold
    the model in memory for later calls (demos). ``label`` names the model in the progress line;
    ``report(fraction, desc=...)`` (a Gradio progress) hears that line too.
    """
    from medgen.checkpoint import load_translator
    from medgen.train import run_dir_for, train_or_load

    retrain = retrain_requested() if retrain is None else bool(retrain)
    folder = None if retrain else shipped(cfg, root)  # read once: it scans every shipped config
    key = _key(cfg, folder, root, runs)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
        parents = (resolve_parents(cfg, root=root, runs=runs, progress=progress, retrain=retrain)
                   if _is_staged(cfg) else None)
        if folder is not None:
            model = load_translator(folder, config=cfg, parents=parents)
        else:
            runs = runs_root(root, runs)
            cached = (run_dir_for(cfg, runs) / "latest").exists()
            what = f"{'loading' if cached else 'training'} {label or cfg.name} at `{cfg.preset}`"
            if not cached:
                what += f" ({cfg.train.steps} steps, cached under {run_dir_for(cfg, runs)})"
            if progress or report is not None:
                print(f"medgen: {what}", file=sys.stderr, flush=True)
            status.report(what, phase=f"resolve {cfg.name}", force=True)  # the terminal of `medgen reproduce`
            if report is not None:
                report(0.0, desc=what)
            model = train_or_load(cfg, root=runs, progress=progress, parents=parents).eval()
        if keep:
            _MEMORY[key] = model
        return model


def _is_staged(cfg: RunConfig) -> bool:
    """Whether ``cfg`` names parents or its method needs some (an unknown method: only ``cfg.parents``)."""
    if cfg.parents:
        return True
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen import registry

    return bool(getattr(registry.METHODS.get(cfg.method), "parent_names", ()))


def resolve_parents(cfg: RunConfig, *, root: str | os.PathLike | None = None, progress: bool = True,
                    runs: str | os.PathLike | None = None, retrain: bool | None = None) -> dict[str, Any]:
    """The parents of a staged config: ``{name: trained Method}`` (eval mode), one per ``cfg.parents``.

    Each parent is found like any model, by :func:`resolve` (shipped checkpoint, else cached or
    trained under ``runs``), so a parent's own parents are resolved the same way, recursively.
    Their names are checked against the method's ``parent_names`` first, before anything
    trains (one-line :class:`~medgen.methods.base.ParentError` naming the missing / unknown
    ones); a parent that cannot be loaded or trained is a one-line ``ParentError`` naming it
    (and the chain of parents above it). Returns ``{}`` for a config without parents.
    """
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen import registry
    from medgen.methods.base import ParentError, check_parent_names

    factory = registry.METHODS.get(cfg.method)
    if factory is not None:
        check_parent_names(cfg.method, getattr(factory, "parent_names", ()), cfg.parents,
                           getattr(factory, "optional_parent_names", ()))
    out: dict[str, Any] = {}
    for name, parent in cfg.parents.items():
        if not isinstance(parent, RunConfig):
            raise ParentError(f"{cfg.name} ({cfg.method}): parent '{name}' is a {type(parent).__name__}, "
                              "not a RunConfig")
        try:
            out[name] = resolve(parent, root=root, runs=runs, progress=progress, retrain=retrain,
                                label=f"parent '{name}' ({parent.name}/{parent.method}) of {cfg.name}")
        except ParentError as err:
            raise ParentError(f"{cfg.name} ({cfg.method}): parent '{name}': {err}") from err
        except Exception as err:  # noqa: BLE001 -- any failure becomes one line naming the parent
            text = str(err).strip().splitlines()
            raise ParentError(f"{cfg.name} ({cfg.method}): parent '{name}' ({parent.name}/{parent.method} at "
                              f"`{parent.preset}`, config {config_hash(parent)}) could not be loaded or trained: "
                              f"{type(err).__name__}: {text[0] if text else ''}") from err
    return out
