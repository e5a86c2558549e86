"""Validation of every :class:`~medgen.config.RunConfig` field, run at construction.

:func:`validate` raises a one-line :class:`~medgen.config.ConfigError` ``"<section>.<field>: <requirement>,
got <value>"``. The choice tuples below are the known names of the choice fields; they mirror the
implementations' tables (this module imports nothing from medgen but the config), and
tests/test_config.py checks each against its table.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Mapping, NoReturn, Sequence

from medgen.config import (ConfigError, DataConfig, DiffusionConfig, MethodOptions, RunConfig, SampleConfig,
                           TrainConfig, UNetConfig)

# The known names of the choice fields. They mirror the implementation's tables (imported from neither,
# so that a config can be checked without loading torch); tests/test_config.py checks each against its table.
SCHEDULES = ("linear", "scaled_linear", "cosine")  # diffusion.schedules.SCHEDULES
PREDICTIONS = ("eps", "x0", "v")  # diffusion.parameterization.PREDICTIONS
LOSSES = ("mse", "l1")  # diffusion.losses.LOSSES
LATENT_CONDITIONS = ("resize", "encode")  # diffusion.latent.CONDITION_MODES
SAMPLERS = ("ddpm", "ddim", "dpmpp")  # diffusion.samplers.SAMPLERS
SPACINGS = ("trailing", "leading", "linspace")  # diffusion.schedules.SPACINGS
LR_SCHEDULES = ("constant", "cosine")  # train.loop.lr_factor
SKIP_MODES = ("concat", "add")  # nn.unet.SKIP_MODES
MID_ATTENTION = ("auto", "on", "off")  # nn.unet.MID_ATTENTION
WINDOWS = ("soft_tissue", "lung", "bone")  # data.io.windows.WINDOWS ("" = the modality's range)
AUGMENTATIONS = ("flip", "mri_jitter", "elastic3d")  # data.augment.RECIPES, joined by "+"
REGISTRATIONS = ("", "one", "two")  # data.datasets.common.REGISTRATIONS



def _fail(key: str, requirement: str, value: Any) -> NoReturn:
    raise ConfigError(f"{key}: {requirement}, got {value!r}")


def _int(key: str, value: Any, minimum: int | None = None) -> None:
    """An integer (an integral float is kept as it was) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        _fail(key, "must be an integer", value)
    if minimum is not None and value < minimum:
        _fail(key, f"must be >= {minimum}", value)


def _float(key: str, value: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = True) -> None:
    """A finite number in ``[low, high)`` (``low_open``: ``(low``; ``high_open=False``: ``high]``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(key, "must be a finite number", value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            _fail(key, f"must be {'>' if low_open else '>='} {low:g}", value)
        if low is None:
            _fail(key, f"must be {'<' if high_open else '<='} {high:g}", value)
        _fail(key, f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}", value)


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [c for c in choices if isinstance(c, str) and c], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        _fail(key, f"must be one of {', '.join(repr(c) for c in choices)}{hint}", value)


def _name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        _fail(key, "must be a non-empty name", value)


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, "must be true or false", value)


def _validate_model(m: UNetConfig, p: str = "model.") -> None:
    _choice(p + "spatial_dims", m.spatial_dims, (2, 3))  # type: ignore[arg-type]
    for name in ("in_channels", "out_channels", "layers_per_block", "num_heads", "norm_groups"):
        _int(p + name, getattr(m, name), 1)
    if not isinstance(m.channels, tuple) or not m.channels:
        _fail(p + "channels", "must be a non-empty list of channel counts", m.channels)
    for c in m.channels:
        _int(p + "channels", c, 1)
    if not isinstance(m.attention_levels, tuple) or not all(isinstance(a, bool) for a in m.attention_levels):
        _fail(p + "attention_levels", "must be a list of true/false, one per level", m.attention_levels)
    _float(p + "dropout", m.dropout, 0.0, 1.0)
    for name in ("cond_image_channels", "cond_vector_dim", "cond_tokens_dim", "stage_embedding_dim"):
        _int(p + name, getattr(m, name), 0)
    for name in ("skip_residuals", "position_ramps", "time_embedding"):
        _bool(p + name, getattr(m, name))
    _choice(p + "skip_mode", m.skip_mode, SKIP_MODES)
    _choice(p + "mid_attention", m.mid_attention, MID_ATTENTION)


def _validate_diffusion(d: DiffusionConfig, p: str = "diffusion.") -> None:
    _choice(p + "schedule", d.schedule, SCHEDULES)
    _int(p + "timesteps", d.timesteps, 1)
    _float(p + "beta_start", d.beta_start, 0.0, 1.0, low_open=True)
    _float(p + "beta_end", d.beta_end, 0.0, 1.0, low_open=True)
    if d.beta_end < d.beta_start:
        _fail(p + "beta_end", f"must be >= diffusion.beta_start={d.beta_start:g}", d.beta_end)
    _choice(p + "prediction", d.prediction, PREDICTIONS)
    _choice(p + "loss", d.loss, LOSSES)
    _float(p + "x0_loss_weight", d.x0_loss_weight, 0.0)
    _float(p + "cond_drop_prob", d.cond_drop_prob, 0.0, 1.0, high_open=False)
    _float(p + "null_value", d.null_value)
    _bool(p + "clip_x0", d.clip_x0)
    _bool(p + "learn_sigma", d.learn_sigma)
    _float(p + "vlb_weight", d.vlb_weight, 0.0)
    if not isinstance(d.conditions, tuple) or not all(isinstance(c, str) and c.strip() for c in d.conditions):
        _fail(p + "conditions", "must be a list of label names", d.conditions)
    _choice(p + "latent_condition", d.latent_condition, LATENT_CONDITIONS)


def _validate_sample(s: SampleConfig, p: str = "sample.") -> None:
    _choice(p + "sampler", s.sampler, SAMPLERS)
    _int(p + "steps", s.steps, 1)
    _float(p + "eta", s.eta, 0.0)
    _float(p + "guidance_scale", s.guidance_scale)
    _choice(p + "spacing", s.spacing, SPACINGS)


def _validate_train(t: TrainConfig, p: str = "train.") -> None:
    _int(p + "steps", t.steps, 0)
    _int(p + "batch_size", t.batch_size, 1)
    _int(p + "grad_accum", t.grad_accum, 1)
    if t.batch_size % t.grad_accum:
        _fail(p + "grad_accum", f"must divide train.batch_size={t.batch_size}", t.grad_accum)
    _float(p + "lr", t.lr, 0.0, low_open=True)
    _float(p + "weight_decay", t.weight_decay, 0.0)
    if not isinstance(t.betas, tuple) or len(t.betas) != 2:
        _fail(p + "betas", "must be two numbers", t.betas)
    for beta in t.betas:
        _float(p + "betas", beta, 0.0, 1.0)
    _int(p + "warmup_steps", t.warmup_steps, 0)
    _choice(p + "lr_schedule", t.lr_schedule, LR_SCHEDULES)
    _float(p + "ema_decay", t.ema_decay, 0.0, 1.0)
    _float(p + "grad_clip", t.grad_clip, 0.0)
    _bool(p + "amp", t.amp)
    for name in ("log_every", "sample_every", "ckpt_every", "num_threads"):
        _int(p + name, getattr(t, name), 0)


def _validate_data(d: DataConfig, p: str = "data.") -> None:
    _name(p + "dataset", d.dataset)
    _int(p + "image_size", d.image_size, 8)
    _int(p + "image_height", d.image_height, 0)
    if 0 < d.image_height < 8:
        _fail(p + "image_height", "must be 0 (the data's aspect ratio) or >= 8", d.image_height)
    for name in ("n_train", "n_test", "split_seed", "depth"):
        _int(p + name, getattr(d, name), 0)
    for name in ("manifest", "phantom", "source", "target"):
        if not isinstance(getattr(d, name), str):
            _fail(p + name, "must be a string", getattr(d, name))
    _float(p + "test_fraction", d.test_fraction, 0.0, 1.0)
    _choice(p + "window", d.window.strip() if isinstance(d.window, str) else d.window, ("",) + WINDOWS)
    if not isinstance(d.augment, str):
        _fail(p + "augment", "must be recipe names joined by '+'", d.augment)
    for recipe in (r.strip() for r in d.augment.split("+")) if d.augment.strip() else ():
        if recipe not in AUGMENTATIONS:
            _fail(p + "augment", f"names an unknown recipe '{recipe}' (known: {', '.join(AUGMENTATIONS)})", d.augment)
    _bool(p + "source_resize", d.source_resize)
    _choice(p + "registration", d.registration, REGISTRATIONS)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field of ``cfg`` (ranges, choices, types); one-line :class:`ConfigError` naming the first
    bad field, e.g. ``train.batch_size: must be >= 1, got 0``. Returns ``cfg``.

    Run by ``RunConfig.__post_init__`` (and once at the end of :func:`apply_overrides`), so a preset, a
    ``--set``, ``--dry-run``, a notebook's ``replace(...)`` and a loaded ``config.json`` all get the same
    errors. Checks that need the built network or the data (the UNet's channel divisibility, a method's
    needs, the manifest's columns) stay where those are built. Changes nothing: hashes are untouched.
    """
    for name in ("name", "preset", "method"):
        _name(name, getattr(cfg, name))
    _int("seed", cfg.seed, 0)
    sections = (("data", DataConfig, _validate_data), ("model", UNetConfig, _validate_model),
                ("diffusion", DiffusionConfig, _validate_diffusion), ("sample", SampleConfig, _validate_sample),
                ("train", TrainConfig, _validate_train))
    for name, cls, check in sections:
        section = getattr(cfg, name)
        if not isinstance(section, cls):
            _fail(name, f"must be a {cls.__name__}", section)
        check(section)
    if cfg.options is not None and not isinstance(cfg.options, MethodOptions):
        _fail("options", "must be the method's options (a MethodOptions) or None", cfg.options)
    if not isinstance(cfg.parents, Mapping) or not all(isinstance(v, RunConfig) for v in cfg.parents.values()):
        _fail("parents", "must map parent names to RunConfigs", cfg.parents)
    return cfg
