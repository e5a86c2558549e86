"""Training: the loop :func:`fit` and the config-hash cache :func:`train_or_load` (defined here).

- :mod:`medgen.train.loop`: :func:`fit` (``collate``-d batches ``[B, C, *S]``), :class:`FitResult`,
  LR schedule (:func:`lr_factor`), EMA (:func:`ema_update_fn`), :func:`validate_train_config`.
- :mod:`medgen.train.order`: the data order, a pure function of ``(seed, step)`` (:func:`step_indices`,
  :class:`StepBatchSampler`), which makes resumed runs exact.
- :mod:`medgen.train.distributed`: :class:`DistContext` (torchrun ranks, gradient all-reduce).
- :mod:`medgen.train.samples`: :func:`save_sample_grid` (source | prediction | target PNGs).

:func:`train_or_load` keeps each config's model in ``root/<cfg.name>/<config_hash(cfg)>/``; it
looks up ``_train_cached`` and ``fit`` in this module at call time (tests replace them here).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen import registry
from medgen.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_translator, read_manifest
from medgen.config import RunConfig, config_hash
from medgen.data.splits import check_disjoint
from medgen.methods.base import Method
from medgen.train.distributed import DistContext
from medgen.train.loop import (LOG_FILE, SAMPLES_DIR, FitResult, _dataset_attr, ema_update_fn, fit,  # noqa: F401
                               lr_factor, training_batches, validate_train_config)
from medgen.train.order import StepBatchSampler, StepIndices, step_indices  # noqa: F401
from medgen.train.samples import save_sample_grid  # noqa: F401
from medgen.utils import seed_everything


class SplitOverlapError(ValueError):
    """Train and test splits share patients; training on them would leak the test set."""


# --------------------------------------------------------------------------------------
# Config-hash cache
# --------------------------------------------------------------------------------------
def run_dir_for(cfg: RunConfig, root: str | os.PathLike = "runs") -> Path:
    """Where :func:`train_or_load` keeps the model of ``cfg``: ``root/<name>/<config_hash>``."""
    return Path(root) / cfg.name / config_hash(cfg)


def check_patient_overlap(train_dataset: Any, test_dataset: Any, name: str = "dataset") -> None:
    """Raise :class:`SplitOverlapError` if both datasets expose ``patient_ids`` and they intersect."""
    train_ids, test_ids = _dataset_attr(train_dataset, "patient_ids"), _dataset_attr(test_dataset, "patient_ids")
    if train_ids is None or test_ids is None:
        return
    try:
        check_disjoint(list(train_ids), list(test_ids))
    except ValueError as err:
        raise SplitOverlapError(f"{name}: {err}; refusing to train on a split that overlaps test") from None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a cached run (``.<hash>.lock`` beside it), so that two processes asking
    for one config train it once: the second waits, then loads. No-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached_checkpoint(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The complete final checkpoint of ``cfg`` in ``run_dir``, or None."""
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None or int(read_manifest(ckpt).get("step", -1)) < cfg.train.steps:
        return None
    return ckpt


def train_or_load(cfg: RunConfig, *, root: str | os.PathLike = "runs", progress: bool = True, force: bool = False,
                  device: str | torch.device | None = None, parents: dict[str, Method] | None = None) -> Method:
    """The trained model of ``cfg`` (EMA weights, eval mode), trained only if not cached.

    Looks in ``root/<cfg.name>/<config_hash(cfg)>/``: a complete final checkpoint is loaded,
    a partial one is resumed, otherwise the method is trained from scratch (``force=True``
    deletes the cached run first). Refuses (:class:`SplitOverlapError`) to train when the
    train and test datasets both expose ``patient_ids`` and share any. Concurrent callers
    for one config are serialised by :func:`run_lock`: the first trains, the others load.

    A staged method (``cfg.parents``) first gets its parents, each through the model finder
    (:func:`medgen.zoo.resolve_parents`: shipped, cached under ``root`` or trained there), unless
    ``parents`` hands them in already resolved; they are attached frozen before fitting or
    loading. Their configs are part of ``config_hash(cfg)``: a changed parent retrains the child.
    """
    run_dir = run_dir_for(cfg, root)
    if parents is None and (cfg.parents or getattr(registry.METHODS.get(cfg.method), "parent_names", ())):
        from medgen.zoo import resolve_parents  # the model finder; it imports this module

        parents = resolve_parents(cfg, runs=root, progress=progress)
    ctx = DistContext.setup(device)
    try:
        with run_lock(run_dir) if ctx.is_main else contextlib.nullcontext():  # rank 0 locks for the job
            if force and ctx.is_main:
                shutil.rmtree(run_dir, ignore_errors=True)
            ctx.barrier()
            cached = _cached_checkpoint(run_dir, cfg)
            if cached is not None:
                return load_translator(cached, device=ctx.device, config=cfg, parents=parents)
            return _train_cached(cfg, run_dir, progress, ctx, parents)
    finally:
        ctx.close()


def _train_cached(cfg: RunConfig, run_dir: Path, progress: bool, ctx: DistContext,
                  parents: dict[str, Method] | None = None) -> Method:
    """Build the datasets and method of ``cfg`` (with its frozen ``parents`` attached), check the split,
    and fit (resuming) into ``run_dir``."""
    make_dataset = registry.lookup(registry.DATASETS, cfg.data.dataset)
    train_ds = make_dataset(cfg.data, "train")
    if _dataset_attr(train_ds, "patient_ids") is not None:
        check_patient_overlap(train_ds, make_dataset(cfg.data, "test"), f"dataset '{cfg.data.dataset}'")
    seed_everything(cfg.seed)
    method = registry.lookup(registry.METHODS, cfg.method)(cfg)
    if parents is not None:
        method.attach_parents(parents)
    try:
        fit(method, train_ds, cfg.train, out_dir=run_dir, run_config=cfg, seed=cfg.seed, resume=True,
            progress=progress, device=ctx.device)
    except BaseException:
        if ctx.is_main:
            _remove_if_no_checkpoint(run_dir)
        raise
    folder = latest_checkpoint(run_dir)
    if folder is not None:  # as load_translator records it: medgen.ood names it ('medgen upgrade <folder>')
        method.checkpoint_folder = Path(folder)
    return method


def _remove_if_no_checkpoint(run_dir: Path) -> None:
    """Delete ``run_dir`` after a failed fit that left no checkpoint in it (a fresh run that failed before
    its first save: nothing to resume, so no empty run folder is left). Its lock file lives beside it."""
    try:
        has_checkpoint = bool(list_checkpoints(run_dir)) or latest_checkpoint(run_dir) is not None
    except CheckpointError:  # 'latest' points at a missing folder: keep the folder for inspection
        has_checkpoint = True
    if not has_checkpoint:
        shutil.rmtree(run_dir, ignore_errors=True)
