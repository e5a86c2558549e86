"""What runs at which preset (:func:`plan`) and the model configs of a plan (:func:`prior_config`,
:func:`supervised_config`); the models themselves come from :func:`medgen.zoo.resolve`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medgen.config import RunConfig, get_preset
from medgen.experiments.common import shorten
from medgen.experiments.lung_us.paper import FID_SPACES, OPERATORS, TASK_PRIOR, TASK_SUPERVISED, ULTRASOUND

__all__ = ["Plan", "plan", "prior_config", "supervised_config", "dps_scale", "memorization_space", "space_card",
           "configs"]


@dataclass(frozen=True)
class Plan:
    """The work of one notebook run (:func:`plan`)."""

    preset: str
    seed: int
    image_size: int  # side of the lung sections (the prior preset's)
    n_train: int  # training sections (the prior preset's; all of them enter the audit)
    n_heldout: int  # held-out sections (calibration, FID reference, reconstruction inputs)
    n_generate: int  # images generated from the prior
    operators: tuple[str, ...]
    n_recon: int  # held-out images reconstructed per operator
    n_samples: int  # samples per input (mean and SD maps)
    dps_steps: int  # sampler steps of DPS / the unguided prior
    guidance_scales: tuple[float, ...]  # sweep grid, multiples of the operator's default DPS scale
    steps: tuple[int, ...]  # sweep grid of DPS steps
    sweep_operators: tuple[str, ...]
    n_sweep: int  # images per sweep point
    memorization_space: str
    fid_spaces: tuple[str, ...] = FID_SPACES
    train_steps: Mapping[str, int] = field(default_factory=dict)  # training steps per task (empty: presets')
    one_thread: bool = False  # train with one torch thread (ci / smoke on the shared 2-core machine)

    @property
    def supervised_operators(self) -> tuple[str, ...]:
        """The plan's operators that have a supervised conditional DDPM (:data:`ULTRASOUND`)."""
        return tuple(op for op in ULTRASOUND if op in self.operators)


# per preset: n_recon, n_samples, dps_steps, scale multiples, step grid, sweep operators, n_sweep
_PER_PRESET: dict[str, tuple] = {
    "ci": (3, 2, 4, (0.5, 1.0), (2, 4), ("us_linear",), 3),
    "smoke": (8, 4, 25, (0.25, 1.0, 4.0), (10, 25, 50), ("us_acoustic",), 6),
    "cpu": (16, 8, 50, (0.1, 0.3, 1.0, 3.0, 10.0), (10, 25, 50, 100), OPERATORS, 8),
    "paper": (32, 8, 100, (0.1, 0.3, 1.0, 3.0, 10.0), (25, 50, 100, 250), OPERATORS, 16),
}


def _n_generate_default(preset: str) -> int:
    """``N_GENERATE[preset]`` of :mod:`medgen.presets.lung_us`."""
    from medgen.presets import lung_us as presets
    return int(presets.N_GENERATE[preset])


def plan(preset: str, *, seed: int = 0, n_generate: int | None = None, operators: Sequence[str] | None = None,
         guidance_scales: Sequence[float] | None = None, steps: Sequence[int] | None = None,
         n_recon: int | None = None, n_samples: int | None = None) -> Plan:
    """The per-preset work: sizes from the prior preset, generation count, operators and sweep grids.

    ``guidance_scales`` are multiples of each operator's default DPS scale; ``steps`` the DPS
    step counts of the steps sweep. ``None`` takes the preset's defaults (``ci``: tiny).
    """
    ops = tuple(operators) if operators else OPERATORS
    unknown = [o for o in ops if o not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown operator '{unknown[0]}' (choose from {', '.join(OPERATORS)})")
    base = _PER_PRESET.get(preset, _PER_PRESET["smoke"])
    recon, samples, dps_steps, scales, grid, sweep_ops, n_sweep = base
    prior = get_preset(preset, TASK_PRIOR).data
    scales = tuple(float(s) for s in (guidance_scales if guidance_scales is not None else scales))
    grid = tuple(int(s) for s in (steps if steps is not None else grid))
    if any(s < 0 for s in scales) or any(s < 1 for s in grid):
        raise ValueError(f"guidance scales must be >= 0 and steps >= 1, got {scales} / {grid}")
    n_gen = int(n_generate) if n_generate is not None else _n_generate_default(preset)
    if n_gen < 2:
        raise ValueError(f"n_generate must be >= 2 (FID needs two images), got {n_gen}")
    n_recon = min(int(n_recon if n_recon is not None else recon), prior.n_test)
    return Plan(preset=preset, seed=int(seed), image_size=prior.image_size, n_train=prior.n_train,
                n_heldout=prior.n_test, n_generate=n_gen, operators=ops, n_recon=n_recon,
                n_samples=int(n_samples if n_samples is not None else samples), dps_steps=dps_steps,
                guidance_scales=scales, steps=grid,
                sweep_operators=tuple(o for o in sweep_ops if o in ops) or ops[:1],
                n_sweep=min(n_sweep, n_recon), memorization_space=memorization_space(),
                one_thread=preset in ("ci", "smoke"))


def memorization_space() -> str:
    """``"resnet18"`` (the paper's network) when ``$MEDGEN_RESNET18_WEIGHTS`` names a weights file,
    else ``"efficientnet_lite0"`` (ImageNet weights that ship offline)."""
    from medgen.metrics.features import RESNET18_ENV
    path = os.environ.get(RESNET18_ENV, "")
    return "resnet18" if path and Path(path).expanduser().is_file() else "efficientnet_lite0"


def space_card(space: str) -> Any:
    """The :class:`~medgen.metrics.features.FeatureSpace` card of ``space`` (provenance), or ``None``."""
    from medgen.metrics.features import feature_space_info
    try:
        return feature_space_info(space)
    except Exception:  # noqa: BLE001 -- the card is provenance only; features were given
        return None


def _shortened(cfg: RunConfig, p: Plan, key: str) -> RunConfig:
    return shorten(cfg, steps=p.train_steps.get(key), one_thread=p.one_thread, seed=p.seed)


def prior_config(p: Plan) -> RunConfig:
    """The unconditional prior's preset config (``lung_us/prior``) with the plan's seed and threads."""
    return _shortened(get_preset(p.preset, TASK_PRIOR), p, "prior")


def supervised_config(p: Plan, operator: str) -> RunConfig:
    """The supervised conditional DDPM of an ultrasound ``operator`` (``lung_us/conditional_<op>``)."""
    if operator not in ULTRASOUND:
        raise ValueError(f"no supervised model for operator '{operator}' (trained only for {', '.join(ULTRASOUND)})")
    return _shortened(get_preset(p.preset, TASK_SUPERVISED.format(operator=operator)), p, operator)


def dps_scale(operator: str, preset: str) -> float:
    """The default DPS guidance scale of ``operator`` for the prior of ``preset``:
    :data:`medgen.presets.lung_us.DPS_SCALE` (tuned on training subjects, see there)."""
    from medgen.presets.lung_us import DPS_SCALE
    try:
        return float(DPS_SCALE[preset][operator])
    except KeyError:
        raise ValueError(f"no DPS scale for operator '{operator}' at preset '{preset}' "
                         f"(medgen.presets.lung_us.DPS_SCALE has {', '.join(DPS_SCALE)})") from None


def configs(p: Plan) -> dict[str, RunConfig]:
    """Every model the plan's notebook resolves (the prior, one supervised cDDPM per ultrasound operator):
    what ``medgen.zoo`` must find shipped at ``cpu`` (tests/test_shipped_checkpoints.py)."""
    return {"prior": prior_config(p), **{f"supervised {op}": supervised_config(p, op) for op in p.supervised_operators}}
