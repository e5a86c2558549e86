"""The one training loop for every method: :func:`fit` (tensors ``[B, C, *S]`` from ``collate``).

Each optimiser step, :func:`fit` first calls ``method.begin_step(micro_batch, generator)`` on
each of the ``grad_accum`` micro-batches (the method's once-per-step draws, shared by every
group; the default does nothing). Then, for every group of ``method.param_groups()`` in order
(one group for diffusion models; generator then discriminator for GANs), it runs
``method.training_step(micro_batch, group, generator)`` on the micro-batches,
back-propagates ``loss / grad_accum`` into *that group's parameters only*
(``torch.autograd.backward(..., inputs=params)``), clips the group's global gradient norm and
steps its AdamW optimiser and LR schedule (linear warm-up, then constant or cosine). After
all groups an EMA of every float parameter and buffer is updated; the EMA weights are
what ``translate()`` uses after training. Mixed precision (bf16 autocast) is used only on
CUDA: on the reference CPU bf16 autocast is about 50x slower.

Several networks. ``method.optim_settings()`` (:class:`~medgen.methods.base.GroupSettings`)
gives a group its own lr / betas / weight decay (``None``: ``cfg``'s), a rate ``every=k`` (the
group steps on optimiser steps ``0, k, 2k, ...``; on the others it is not called, but its LR
schedule still advances, so the LR is a function of the global step) and ``shared=True``
(it may hold parameters an earlier group holds; each group's optimiser steps them, with its
own moments; the EMA, over the module, counts each parameter once). Without settings every
group optimises exactly as before.

Exact resume. Data order and randomness are pure functions of ``(seed, step)``: global batch
``s`` holds samples ``s*B .. s*B+B-1`` of the stream of per-epoch permutations (epoch ``e``
permuted by a generator seeded with ``(seed, e)``, :mod:`medgen.train.order`); micro-batch ``m`` of
group ``g`` (its index in ``param_groups()``, whether or not it steps this time) gets a
``torch.Generator`` seeded with ``(seed, step, g, global micro-batch index)``; ``begin_step``
gets one seeded with ``(seed, "begin", step, global micro-batch index)`` (a stream of its own:
methods without ``begin_step`` draw exactly what they drew before it existed); the global
torch RNG (dropout) is re-seeded with ``(seed, step, rank)`` every step, before ``begin_step``.
Nothing a method draws survives its step, so no RNG state beyond the step counter is needed. With
optimiser, scheduler and EMA states in the checkpoint, a resumed run ends with bit-identical
weights on the CPU (on CUDA up to non-deterministic kernels; ``seed_everything(deterministic=True)``).
RNG states are saved too, for the record.

EMA. ``torch.optim.swa_utils.AveragedModel``; the decay at update ``n`` is
``min(ema_decay, (1 + n) / (10 + n))`` (the usual warm-up), so short runs do not end near their
random init. Non-float buffers are copied, not averaged. ``ema_decay=0`` disables the EMA.

End of training. When the step count reaches ``cfg.steps`` (not at an earlier ``stop_at_step``),
``method.after_fit(batches)`` runs on the raw and on the EMA weights, before the final checkpoint,
with :func:`training_batches` (the training batches in fit's order from step 0, lazily): a
method finishes there what needs its trained weights and its data, e.g. the KL autoencoder's
latent scale (a buffer, so it is saved). A resumed run that is already complete does not rerun it.

Multi-GPU / multi-node. ``torch.distributed`` directly (gloo on CPU, nccl on CUDA), launched by
torchrun (``torchrun --nproc_per_node 2 -m medgen.cli train ...``); ``fit`` calls
``init_process_group`` itself (:mod:`medgen.train.distributed`) when ``WORLD_SIZE > 1``. Every rank loads its slice
``[r*B/W, (r+1)*B/W)`` of the global batch (``batch_size`` divisible by ``world_size *
grad_accum``); a group's gradients are averaged with one flat ``all_reduce`` per dtype (not DDP:
docs/paper_notes.md#train). Rank 0 writes checkpoints, logs and sample grids; ``out_dir`` must be
shared by all ranks for resuming; buffers are broadcast from rank 0 at the start.

Outputs in ``out_dir``: ``checkpoints/`` + ``latest`` (see :mod:`medgen.checkpoint`),
``log.jsonl`` (one JSON object per ``log_every`` steps: step, lr, wall time, mean of every
loss returned by ``training_step`` as ``"<group>/<key>"``) and ``samples/step_*.png``
(rows: samples; columns: source | prediction | target).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from medgen import progress as status
from medgen.checkpoint import (CHECKPOINTS_DIR, LATEST, CheckpointError, check_config, checkpoint_name,
                               latest_checkpoint, load_training_state, load_weights, make_manifest,
                               save_checkpoint)
from medgen.config import RunConfig, TrainConfig
from medgen.data.batch import Batch, collate
from medgen.methods.base import GroupSettings, Method
from medgen.train.distributed import DistContext
from medgen.train.order import StepBatchSampler
from medgen.train.samples import save_sample_grid
from medgen.utils import atomic_write_text, derive_seed

LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"


@dataclass
class FitResult:
    """What :func:`fit` did. ``checkpoint`` is the final checkpoint folder."""

    out_dir: Path
    checkpoint: Path
    step: int  # optimiser steps done in total (including those before a resume)
    resumed_from: int  # step the run resumed from (0: fresh start)
    wall_time: float  # training seconds summed over every resumed segment
    losses: dict[str, float] = field(default_factory=dict)  # last logged means, "<group>/<key>"
    log_path: Path | None = None


# --------------------------------------------------------------------------------------
# Schedules and EMA
# --------------------------------------------------------------------------------------
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based): linear warm-up, then constant/cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_update_fn(decay: float):
    """``multi_avg_fn`` for AveragedModel: warm-up EMA of float tensors, copy of the others."""

    @torch.no_grad()
    def update(ema_tensors: list[torch.Tensor], tensors: list[torch.Tensor], n_averaged: Any) -> None:
        n = int(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(e, t) for e, t in zip(ema_tensors, tensors) if e.is_floating_point() and e.dtype == t.dtype]
        if floats:  # one fused multi-tensor lerp instead of a Python loop (the benchmark's (c) row)
            torch._foreach_lerp_([e for e, _ in floats], [t for _, t in floats], weight)
        for e, t in zip(ema_tensors, tensors):
            if e.is_floating_point() and e.dtype != t.dtype:
                e.lerp_(t.to(e.dtype), weight)
            elif not e.is_floating_point():
                e.copy_(t)

    return update


def validate_train_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """One-line ``ValueError`` for train settings :func:`fit` cannot run."""
    if cfg.steps < 0:
        raise ValueError(f"train.steps must be >= 0, got {cfg.steps}")
    if cfg.grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {cfg.grad_accum}")
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by world_size*grad_accum="
                         f"{world_size}*{cfg.grad_accum}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got '{cfg.lr_schedule}'")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {cfg.ema_decay}")
    for name in ("warmup_steps", "log_every", "sample_every", "ckpt_every", "num_threads"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"train.{name} must be >= 0, got {getattr(cfg, name)}")

# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
def _dataset_attr(dataset: Any, name: str) -> Any:
    """``dataset.<name>`` (called if callable) or None."""
    value = getattr(dataset, name, None)
    return value() if callable(value) else value


def _param_groups(method: Method, settings: dict[str, GroupSettings] | None = None) -> dict[str, list[nn.Parameter]]:
    """The method's optimiser groups, checked non-empty and disjoint ({} for untrainable baselines).

    A group whose :class:`GroupSettings` say ``shared=True`` may hold parameters of earlier groups.
    """
    groups, settings = dict(method.param_groups()), settings or {}
    seen: set[int] = set()
    for name, params in groups.items():
        params = list(params)
        if not params:
            raise ValueError(f"{type(method).__name__}.param_groups()['{name}'] has no parameters")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{type(method).__name__}.param_groups()['{name}'] lists a parameter twice")
        if seen & set(ids) and not (name in settings and settings[name].shared):
            raise ValueError(f"{type(method).__name__}.param_groups()['{name}'] shares parameters "
                             "with an earlier group (declare GroupSettings(shared=True) in optim_settings())")
        seen |= set(ids)
        groups[name] = params
    return groups


def _group_settings(method: Method, names: list[str]) -> dict[str, GroupSettings]:
    """``method.optim_settings()`` for every group (defaults where left out); unknown names are errors."""
    declared = dict(method.optim_settings())
    unknown = [n for n in declared if n not in names]
    if unknown:
        raise ValueError(f"{type(method).__name__}.optim_settings() names group '{unknown[0]}', which "
                         f"param_groups() lacks (groups: {', '.join(names) or 'none'})")
    bad = [n for n, v in declared.items() if not isinstance(v, GroupSettings)]
    if bad:
        raise TypeError(f"{type(method).__name__}.optim_settings()['{bad[0]}'] must be a GroupSettings")
    return {n: declared.get(n, GroupSettings()) for n in names}


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _adamw(params: list[nn.Parameter], cfg: TrainConfig, settings: GroupSettings | None = None) -> torch.optim.AdamW:
    """AdamW (``settings`` override ``cfg``'s lr / betas / weight decay), fused (one kernel for
    all tensors) where every parameter is float32/16 on CPU or CUDA.

    Fused AdamW took ~7 ms per step on the cpu-preset UNet vs ~30 ms for the default
    implementation on 2 cores (benchmark/speed.py, row (c)); it is deterministic, so exact
    resume is unaffected.
    """
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    s = settings or GroupSettings()
    return torch.optim.AdamW(params, lr=cfg.lr if s.lr is None else s.lr,
                             betas=tuple(cfg.betas if s.betas is None else s.betas),
                             weight_decay=cfg.weight_decay if s.weight_decay is None else s.weight_decay,
                             fused=fusable or None)


class _Trainer:
    """State of one :func:`fit` call; short methods for each part of a step."""

    def __init__(self, method: Method, dataset: Dataset, cfg: TrainConfig, run_config: RunConfig,
                 out_dir: Path, seed: int, ctx: DistContext, keep_last: int | None) -> None:
        self.method, self.dataset, self.cfg, self.run_config = method, dataset, cfg, run_config
        self.out_dir, self.seed, self.ctx, self.keep_last = out_dir, seed, ctx, keep_last
        self.settings = _group_settings(method, list(method.param_groups()))
        self.groups = _param_groups(method, self.settings)
        self.optimizers = {n: _adamw(p, cfg, self.settings[n]) for n, p in self.groups.items()}
        # begin_step is called only where a method overrides it (the default draws nothing)
        self.has_begin = type(method).begin_step is not Method.begin_step
        # One group holding every trainable parameter: a plain backward() is the same and cheaper
        # than backward(inputs=...), which the GAN-style multi-group case needs.
        trainable = {id(p) for p in method.parameters() if p.requires_grad}
        self.plain_backward = len(self.groups) == 1 and {id(p) for ps in self.groups.values() for p in ps} == trainable
        self.schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, functools.partial(lr_factor, cfg=cfg))
                           for n, o in self.optimizers.items()}
        self.ema = (AveragedModel(method, multi_avg_fn=ema_update_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay > 0 else None)
        self.amp = cfg.amp and ctx.device.type == "cuda"
        self.step, self.start_step, self.wall_time = 0, 0, 0.0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # steps each summed loss was seen (a group with every=k: fewer)
        self.n_summed = 0
        self.last_losses: dict[str, float] = {}

    # ---- resume ---------------------------------------------------------------------
    def restore(self, ckpt: Path) -> None:
        """Load weights, EMA, optimiser/scheduler states and counters from ``ckpt``."""
        check_config(ckpt, self.run_config)
        state = load_training_state(ckpt, map_location="cpu")  # optimisers move their state to the params
        if state.get("seed") != self.seed:
            raise CheckpointError(f"{ckpt}: checkpoint was trained with seed {state.get('seed')}, asked {self.seed}")
        load_weights(ckpt, self.method, ema=False)
        if self.ema is not None:
            load_weights(ckpt, self.ema.module, ema=True)
            self.ema.n_averaged.fill_(int(state["ema_n_averaged"]))
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
        self.step = self.start_step = int(state["step"])
        self.wall_time = float(state["wall_time"])
        torch.set_rng_state(state["rng"]["torch"])

    # ---- one optimiser step -----------------------------------------------------------
    def train_step(self, batch: Batch) -> None:
        """begin_step on every micro-batch, the due groups' updates for one global batch (this
        rank's shard), then the EMA."""
        torch.manual_seed(derive_seed(self.seed, "global", self.step, self.ctx.rank))
        accum = self.cfg.grad_accum
        size = len(batch) // accum
        micros = [batch.slice(m * size, (m + 1) * size) for m in range(accum)]
        if self.has_begin:
            micros = [self._begin(micro, m) for m, micro in enumerate(micros)]
        for g, (name, params) in enumerate(self.groups.items()):
            if self.step % self.settings[name].every == 0:
                self._group_step(micros, g, name, params)
            else:  # skipped this step; its LR schedule still follows the global step
                self.schedulers[name].step()
        if self.ema is not None:
            self.ema.update_parameters(self.method)

    def _begin(self, micro: Batch, m: int) -> Batch:
        gen = torch.Generator(device=self.ctx.device)
        gen.manual_seed(derive_seed(self.seed, "begin", self.step, self.ctx.rank * self.cfg.grad_accum + m))
        out = self.method.begin_step(micro, gen)
        if not isinstance(out, Batch):
            raise TypeError(f"{type(self.method).__name__}.begin_step() must return the Batch to train on, "
                            f"got {type(out).__name__}")
        return out

    def _group_step(self, micros: list[Batch], g: int, name: str, params: list[nn.Parameter]) -> None:
        opt, accum = self.optimizers[name], self.cfg.grad_accum
        opt.zero_grad(set_to_none=True)
        for m, micro in enumerate(micros):
            gen = torch.Generator(device=self.ctx.device)
            gen.manual_seed(derive_seed(self.seed, "method", self.step, g, self.ctx.rank * accum + m))
            with torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
                out = self.method.training_step(micro, name, gen)
            if "loss" not in out:
                raise KeyError(f"{type(self.method).__name__}.training_step(group='{name}') returned no 'loss'")
            loss = out["loss"].float() / accum
            loss.backward() if self.plain_backward else torch.autograd.backward(loss, inputs=params)
            self._accumulate(name, out, accum, first=m == 0)
        self._finish_grads(params)
        opt.step()
        self.schedulers[name].step()

    def _finish_grads(self, params: list[nn.Parameter]) -> None:
        """Zero-fill missing grads (so ranks agree), average over ranks, clip the global norm."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.ctx.all_mean_([p.grad for p in params])
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def _accumulate(self, group: str, out: dict[str, Any], accum: int, first: bool = True) -> None:
        for key, value in out.items():
            if not isinstance(value, (torch.Tensor, float, int)):
                continue
            value = torch.as_tensor(value).detach()
            if value.numel() == 1:
                name = f"{group}/{key}"
                self.sums[name] = self.sums.get(name, 0) + value.float().reshape(()) / accum
                if first:  # once per step in which the group ran
                    self.counts[name] = self.counts.get(name, 0) + 1

    # ---- logging, samples, checkpoints ------------------------------------------------
    def flush_log(self, bar: tqdm | None, elapsed: float) -> None:
        """Average the losses since the last log over steps and ranks; write log.jsonl; update the bar."""
        if not self.sums:
            return
        names = sorted(self.sums)
        counts = [self.counts.get(n, 0) for n in names]
        if all(c == self.n_summed for c in counts):  # every group ran every step (the usual case)
            values = torch.stack([self.sums[n].to(self.ctx.device) for n in names]) / max(1, self.n_summed)
        else:  # a group stepping every k-th step: its mean over the steps it ran
            values = torch.stack([self.sums[n].to(self.ctx.device) / max(1, c) for n, c in zip(names, counts)])
        self.ctx.all_mean_([values])
        self.last_losses = dict(zip(names, values.tolist()))
        self.sums, self.counts, self.n_summed = {}, {}, 0
        bad = [n for n, v in self.last_losses.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"step {self.step}: {bad[0]} is {self.last_losses[bad[0]]} "
                                     "(training diverged; lower train.lr or set train.grad_clip)")
        if self.ctx.is_main:
            lr = next(iter(self.schedulers.values())).get_last_lr()[0]
            own = {f"{n}/lr": s.get_last_lr()[0] for n, s in self.schedulers.items()
                   if self.settings[n].lr is not None}  # groups with a learning rate of their own
            record = {"step": self.step, "lr": lr, "wall_time_s": round(elapsed, 3), **own, **self.last_losses}
            with open(self.out_dir / LOG_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.set_postfix({k.split("/", 1)[1] if len(self.groups) == 1 else k: f"{v:.4g}"
                             for k, v in self.last_losses.items() if k.endswith("/loss")}, refresh=False)

    def write_samples(self, sample_batch: Batch) -> Path:
        """Outputs for ``sample_batch.source`` (``Method.outputs_for``) of the EMA (else raw) model, saved as a grid."""
        model = self.ema.module if self.ema is not None else self.method
        was_training = model.training
        model.eval()
        gen = torch.Generator(device=self.ctx.device).manual_seed(derive_seed(self.seed, "samples"))
        with torch.no_grad():
            pred = model.outputs_for(sample_batch.source.to(self.ctx.device), generator=gen,
                                     cond=model.batch_conditions(sample_batch))  # the items' labels, if it has conditions
        model.train(was_training)
        path = self.out_dir / SAMPLES_DIR / f"step_{self.step:08d}.png"
        return save_sample_grid(path, sample_batch.source, pred, sample_batch.target)

    def save(self, elapsed: float) -> Path:
        """Write a checkpoint of the current step (rank 0)."""
        state = {"format": 1, "step": self.step, "seed": self.seed, "wall_time": elapsed,
                 "world_size": self.ctx.world_size,
                 "ema_n_averaged": int(self.ema.n_averaged) if self.ema is not None else 0,
                 "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                 "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                 "rng": _rng_state()}
        manifest = make_manifest(self.run_config, step=self.step, total_steps=self.cfg.steps, seed=self.seed,
                                 wall_time=elapsed, split_hash=_dataset_attr(self.dataset, "split_hash"),
                                 world_size=self.ctx.world_size, device=str(self.ctx.device))
        return save_checkpoint(self.out_dir, self.step, model=self.method, state=state, manifest=manifest,
                               config=self.run_config, keep_last=self.keep_last,
                               ema_model=self.ema.module if self.ema is not None else None)

    def end_of_training(self) -> None:
        """Training reached ``cfg.steps``: ``Method.after_fit`` on the training batches (fit's order, from
        step 0), for the raw and the EMA weights alike, before the final checkpoint is written."""
        for model in (self.method, *([self.ema.module] if self.ema is not None else [])):
            model.after_fit(training_batches(self.dataset, self.cfg, self.seed, self.ctx.device))

    def finish(self) -> None:
        """Leave the method holding the EMA weights (what translate() should use), in eval mode."""
        if self.ema is not None:
            self.method.load_state_dict(self.ema.module.state_dict())
        self.method.eval()


def _log_step(line: str) -> int | None:
    """Step of a log.jsonl line, or None for a line torn by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (or torn) by a run that died before its next checkpoint."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if (s := _log_step(line)) is not None and s <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _clear_run(out_dir: Path) -> None:
    """Remove fit()'s own outputs from ``out_dir`` (resume=False)."""
    for name in (CHECKPOINTS_DIR, SAMPLES_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (LATEST, LOG_FILE):
        path = out_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()


def _default_sample_batch(dataset: Dataset, n: int = 4) -> Batch:
    return collate([dataset[i] for i in range(min(n, len(dataset)))])


def training_batches(dataset: Dataset, cfg: TrainConfig, seed: int,
                     device: str | torch.device | None = None) -> Iterator[Batch]:
    """fit's global training batches ``[B, C, *S]`` in order from step 0 (lazily, whole, on ``device``): in a
    single process exactly the batches it trains on. What ``Method.after_fit`` receives."""
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed, 0, cfg.steps)
    for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
        yield batch.to(device) if device is not None else batch


def fit(method: Method, train_dataset: Dataset, cfg: TrainConfig, *, out_dir: str | os.PathLike,
        run_config: RunConfig | None = None, seed: int = 0, resume: bool = True, progress: bool = True,
        sample_batch: Batch | None = None, device: str | torch.device | None = None,
        stop_at_step: int | None = None, num_workers: int = 0, keep_last: int | None = 2) -> FitResult:
    """Train ``method`` on ``train_dataset`` for ``cfg.steps`` optimiser steps; see the module docstring.

    ``run_config`` (default ``method.config``) is saved with ``train`` replaced by ``cfg``.
    ``resume=True`` continues from ``out_dir/latest`` when it exists (its config and seed must
    match); ``resume=False`` deletes fit's previous outputs in ``out_dir`` first.
    ``sample_batch`` (default: the first 4 training items) is translated every
    ``cfg.sample_every`` steps. ``stop_at_step`` ends early with a checkpoint (train in
    time-boxed chunks; a later call resumes). On return ``method`` holds the EMA weights,
    in eval mode, on ``device`` (default: CUDA if available).
    """
    ctx = DistContext.setup(device)
    threads = torch.get_num_threads()
    try:
        validate_train_config(cfg, ctx.world_size)
        if cfg.num_threads > 0 and ctx.device.type == "cpu":  # share the cores among this node's ranks
            torch.set_num_threads(max(1, cfg.num_threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        run_config = replace(run_config if run_config is not None else method.config, train=cfg)
        return _fit(method, train_dataset, cfg, Path(out_dir), run_config, seed, resume, progress, sample_batch,
                    ctx, stop_at_step, num_workers, keep_last)
    finally:
        torch.set_num_threads(threads)
        ctx.close()


def _prepare_out_dir(out_dir: Path, resume: bool, ctx: DistContext) -> Path | None:
    """Create / clear ``out_dir`` (rank 0) and return the checkpoint to resume from, if any."""
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _clear_run(out_dir)
    ctx.barrier()
    ckpt = latest_checkpoint(out_dir) if resume else None
    ctx.same_on_all_ranks(None if ckpt is None else ckpt.name, "the checkpoint to resume from")
    return ckpt


def _fit(method: Method, dataset: Dataset, cfg: TrainConfig, out_dir: Path, run_config: RunConfig, seed: int,
         resume: bool, progress: bool, sample_batch: Batch | None, ctx: DistContext, stop_at_step: int | None,
         num_workers: int, keep_last: int | None) -> FitResult:
    if len(dataset) == 0:
        raise ValueError("fit(): the training dataset is empty")
    ckpt = _prepare_out_dir(out_dir, resume, ctx)
    method.to(ctx.device).train()
    ctx.broadcast_module(method)
    trainer = _Trainer(method, dataset, cfg, run_config, out_dir, seed, ctx, keep_last)
    if ckpt is not None:
        trainer.restore(ckpt)
    if ctx.is_main:
        _truncate_log(out_dir / LOG_FILE, trainer.step)
    stop = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
    if cfg.sample_every and sample_batch is None:
        sample_batch = _default_sample_batch(dataset)
    final = _run_loop(trainer, stop, progress, sample_batch, num_workers)
    ctx.barrier()
    trainer.finish()
    return FitResult(out_dir=out_dir, checkpoint=final or latest_checkpoint(out_dir), step=trainer.step,
                     resumed_from=trainer.start_step, wall_time=trainer.wall_time, losses=trainer.last_losses,
                     log_path=out_dir / LOG_FILE)


def _run_loop(tr: _Trainer, stop: int, progress: bool, sample_batch: Batch | None, num_workers: int) -> Path | None:
    """Steps ``tr.step .. stop-1``; returns the last checkpoint written (rank 0) or None."""
    cfg, ctx = tr.cfg, tr.ctx
    if not tr.groups:  # an untrainable baseline: nothing to optimise, only a checkpoint to write
        tr.step = max(tr.step, stop)
    sampler = StepBatchSampler(len(tr.dataset), cfg.batch_size, tr.seed, tr.step, stop, ctx.rank, ctx.world_size)
    loader = DataLoader(tr.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    bar = tqdm(total=stop, initial=tr.step, desc=tr.run_config.name, unit="step", dynamic_ncols=True,
               disable=not progress or not ctx.is_main) if stop > tr.step else None
    t0, base, shown, saved = time.perf_counter(), tr.wall_time, tr.step, None
    first, name = tr.step, f"{tr.run_config.name} at `{tr.run_config.preset}`"
    log_every = max(1, cfg.log_every)
    for batch in loader:
        tr.train_step(batch.to(ctx.device))
        tr.step += 1
        tr.n_summed += 1
        if tr.step == cfg.steps:
            tr.end_of_training()  # before the final checkpoint (e.g. the autoencoder's latent scale)
        tr.wall_time = base + time.perf_counter() - t0
        if tr.step % log_every == 0 or tr.step == stop:
            tr.flush_log(bar, tr.wall_time)
            if bar is not None:
                bar.update(tr.step - shown)
                shown = tr.step
        if ctx.is_main:  # the terminal's status line (medgen.progress; a no-op unless `medgen reproduce` watches)
            left = (time.perf_counter() - t0) / (tr.step - first) * (stop - tr.step)
            status.report(f"training {name}: step {tr.step} / {stop} ({100 * tr.step // max(1, stop)} %), "
                          f"{status.format_eta(left)} left", phase=f"train {name}")
        if ctx.is_main and cfg.sample_every and tr.step % cfg.sample_every == 0:
            tr.write_samples(sample_batch)
        if ctx.is_main and ((cfg.ckpt_every and tr.step % cfg.ckpt_every == 0) or tr.step == stop):
            saved = tr.save(tr.wall_time)
    if bar is not None:
        bar.close()
    latest = latest_checkpoint(tr.out_dir) if ctx.is_main and saved is None else None
    if ctx.is_main and saved is None and (latest is None or latest.name != checkpoint_name(tr.step)):
        saved = tr.save(tr.wall_time)  # nothing was trained (baseline, steps=0): still leave a checkpoint
    return saved
