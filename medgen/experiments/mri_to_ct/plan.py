"""What runs at which preset: :class:`Plan` / :func:`plan`, the configs of every model, the inference options.

``ci`` only executes every code path (T2w, 4 test subjects, the presets' 2-step trainings, a
subset of ablation points); ``smoke`` trains shorter than the ``smoke`` presets
(:data:`SMOKE_STEPS`, :data:`SMOKE_N_TRAIN`) so the notebook fits in about half an hour on 2
shared CPU cores; ``cpu`` / ``paper`` use the presets unchanged (at ``cpu``
:func:`medgen.zoo.resolve` then finds the shipped checkpoints under ``checkpoints/mri_to_ct/``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from medgen.config import RunConfig, get_preset
from medgen.experiments.common import shorten
from medgen.presets.mri_to_ct import CONTRASTS, for_contrast, task

from .paper import (ABLATION, BASE_DDIM, CI_ABLATION, LABELS, METHODS_2D, METHODS_3D, REGISTRATION_MODEL,
                    REGISTRATIONS, UNPAIRED_CUT)

__all__ = ["SMOKE_STEPS", "SMOKE_N_TRAIN", "Plan", "plan", "model_config", "registration_config", "segmenter_config",
           "ablation_settings", "ddpm_options", "configs"]

# Smoke: shorter than the smoke presets (300 steps, 512 subjects) so the notebook fits ~30 min on 2 cores
# (measured from scratch on the shared machine: 150/50/50/150/150/100 steps took 18 min, 14 of them training).
SMOKE_STEPS = {"2d": 250, "gan_unpaired": 80, "3d": 100, "registration": 250, "segmenter": 200, "segmenter_3d": 150}
SMOKE_N_TRAIN = {"2d": 256, "3d": 32}  # training subjects (2D slices) / volumes


@dataclass(frozen=True)
class Plan:
    """The work of one notebook run (:func:`plan`)."""

    preset: str
    contrasts: tuple[str, ...]  # MRI inputs of the 2D experiments ("t1w", "t2w")
    methods_2d: tuple[str, ...]
    methods_3d: tuple[str, ...]  # trained on T2w only, as in the paper
    n_test: int  # 2D test subjects
    n_test_3d: int  # test volumes (3D rows, registration comparison, slice-wise 2D)
    n_ddpm: int  # test subjects of the DDPM-vs-DDIM comparison
    ablation: tuple[str, ...]  # labels of ABLATION points
    ablation_contrasts: tuple[str, ...]
    steps: Mapping[str, int] = field(default_factory=dict)  # training steps per kind (empty: the presets')
    n_train: Mapping[str, int] = field(default_factory=dict)  # training subjects per kind (empty: the presets')
    seed: int = 0
    one_thread: bool = False  # train with one torch thread (ci / smoke on the shared 2-core machine)


def plan(preset: str, *, contrast: str = "both", methods: Sequence[str] | None = None, n_test: int | None = None,
         seed: int = 0) -> Plan:
    """The per-preset work: which contrasts, models, test sizes, ablation points and training lengths.

    ``contrast``: ``"t1w"``, ``"t2w"`` or ``"both"`` (``ci`` runs T2w only whatever is asked:
    it only executes the code paths); ``methods``: preset model names (default all 2D and 3D
    ones); ``n_test``: 2D test subjects (default per preset; the 3D volumes are capped by it).
    """
    if contrast not in (*CONTRASTS, "both"):
        raise ValueError(f"unknown contrast '{contrast}' (choose from t1w, t2w, both)")
    chosen = tuple(methods) if methods else METHODS_2D + METHODS_3D
    unknown = [m for m in chosen if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown mri_to_ct method '{unknown[0]}' (choose from {', '.join(LABELS)})")
    contrasts = CONTRASTS if contrast == "both" else (contrast,)
    defaults = {"ci": (4, 3, 2), "smoke": (16, 8, 6), "cpu": (32, 16, 8), "paper": (128, 32, 16)}
    n2, n3, nd = defaults.get(preset, defaults["smoke"])
    if n_test is not None:
        n2, n3, nd = int(n_test), min(n3, int(n_test)), min(nd, int(n_test))
    steps: dict[str, int] = dict(SMOKE_STEPS) if preset == "smoke" else {}
    n_train: dict[str, int] = dict(SMOKE_N_TRAIN) if preset == "smoke" else {}
    if preset == "ci":
        contrasts = ("t2w",)
    ablation = CI_ABLATION if preset == "ci" else tuple(label for label, _ in ABLATION)
    return Plan(preset=preset, contrasts=contrasts, methods_2d=tuple(m for m in chosen if m in METHODS_2D),
                methods_3d=tuple(m for m in chosen if m in METHODS_3D), n_test=n2, n_test_3d=n3, n_ddpm=nd,
                ablation=ablation, ablation_contrasts=contrasts, steps=steps, n_train=n_train, seed=seed,
                one_thread=preset in ("ci", "smoke"))


def _kind(model: str) -> str:
    if model in METHODS_3D:
        return "3d"
    return "gan_unpaired" if model in UNPAIRED_CUT or model == "syndiff" else "2d"


def model_config(p: Plan, model: str, contrast: str = "t2w") -> RunConfig:
    """The preset config of ``model`` for ``contrast`` with the plan's seed, steps and subjects."""
    cfg = for_contrast(get_preset(p.preset, task(model)), contrast)
    kind = _kind(model)
    return shorten(cfg, steps=p.steps.get(kind), n_train=p.n_train.get("3d" if kind == "3d" else "2d"),
                   one_thread=p.one_thread, seed=p.seed)


def registration_config(p: Plan, registration: str, model: str = REGISTRATION_MODEL) -> RunConfig:
    """2D ``model`` (T2w) trained on ``volume_slices`` of the 3D training volumes registered with
    ``registration`` (``none`` / ``one`` / ``two``), at the 3D presets' size, depth and volume count."""
    if registration not in REGISTRATIONS:
        raise ValueError(f"unknown registration '{registration}' (choose from {', '.join(REGISTRATIONS)})")
    cfg = model_config(p, model, "t2w")
    vol = get_preset(p.preset, task("ddim_image_3d")).data
    data = replace(cfg.data, dataset="volume_slices", image_size=vol.image_size, depth=vol.depth,
                   n_train=p.n_train.get("3d", vol.n_train), n_test=vol.n_test,
                   registration=REGISTRATIONS[registration], augment="mri_jitter")
    return shorten(replace(cfg, data=data), steps=p.steps.get("registration"), one_thread=p.one_thread)


def segmenter_config(p: Plan, volume: bool = False) -> RunConfig:
    """The 2D (``volume=False``) or 3D CT segmenter of the preset, with the plan's steps."""
    cfg = get_preset(p.preset, task("segmenter_3d" if volume else "segmenter"))
    return shorten(cfg, steps=p.steps.get("segmenter_3d" if volume else "segmenter"), one_thread=p.one_thread,
                   seed=p.seed)


def ablation_settings(p: Plan) -> list[tuple[str, dict[str, Any]]]:
    """``[(label, translate options)]`` of the plan's DDIM ablation points (:data:`ABLATION`)."""
    return [(label, {**BASE_DDIM, **change}) for label, change in ABLATION if label in p.ablation]


def ddpm_options(cfg: RunConfig) -> dict[str, Any]:
    """DDPM over all ``cfg.diffusion.timesteps`` training steps (the paper's "DDPM" row)."""
    return {"sampler": "ddpm", "steps": int(cfg.diffusion.timesteps), "guidance_scale": 0.0}


def configs(p: Plan) -> dict[str, RunConfig]:
    """Every model the plan's notebook resolves, by a readable key (``"ddim_image t2w"``, ``"registration
    two"``, ``"segmenter 3d"``): what ``medgen.zoo`` must find shipped at ``cpu`` (tests/test_shipped_checkpoints.py)."""
    out = {f"{m} {c}": model_config(p, m, c) for c in p.contrasts for m in p.methods_2d}
    out.update({f"{m} t2w": model_config(p, m, "t2w") for m in p.methods_3d})
    if p.methods_3d:
        out.update({f"registration {reg}": registration_config(p, reg) for reg in REGISTRATIONS})
    out["segmenter 2d"] = segmenter_config(p)
    out["segmenter 3d"] = segmenter_config(p, volume=True)
    return out
