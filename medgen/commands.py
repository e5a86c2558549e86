"""What the ``medgen`` commands do beyond parsing their arguments (:mod:`medgen.cli` parses and dispatches).

* :func:`sample_options` -- ``translate()`` keyword options from a config's ``sample`` section.
* :func:`translate_image` -- ``medgen sample``: one ``[H, W]`` image (or a ``[K, H, W]`` stack for a
  source of ``K`` channels) in [0, 1] translated at the model's size, with the model's per-sample
  conditions (``--cond uca=32.5``), and resized back; :func:`source_channels` says how many
  images the model's source takes.
* :func:`evaluation_frame` -- ``medgen evaluate``: :func:`medgen.evaluate.evaluate` rows of the
  model and of the identity baseline (DESIGN.md: every table carries a trivial baseline row).
* :func:`generate_command` (:func:`generate_images`) -- ``medgen generate``: ``n`` images of a prior (a
  method with ``generate``, e.g. the lung prior) as PNGs and one ``.npy`` stack in model range.
* :func:`reconstruct_command` (:func:`prepare_measurement`, then :func:`reconstruct_measurement`) --
  ``medgen reconstruct``: a measurement (read, or simulated from an image) reconstructed by DPS: mean /
  SD maps, samples, PSNR / SSIM against the image when known; :func:`default_dps_scale` is the lung
  prior's tuned guidance scale.
* :func:`require_translator` -- ``medgen sample`` / ``evaluate`` on a prior (``Method.is_translator``
  False) is one line naming ``generate`` / ``reconstruct``.

Writing phantom and dataset folders (``medgen phantoms``) lives in :mod:`medgen.data.writers`.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from medgen.config import ConfigError, RunConfig

if TYPE_CHECKING:  # numpy, torch and pandas load with the command that needs them, not with the CLI
    import numpy as np

__all__ = ["sample_options", "source_channels", "translate_image", "evaluation_frame", "identity_baseline",
           "require_translator", "require_ability", "image_modality", "gray_meaning", "out_folder", "generate_images",
           "generate_options", "reconstruct_options", "read_truth", "default_dps_scale", "prepare_measurement",
           "reconstruct_measurement", "generate_command", "reconstruct_command"]


def sample_options(cfg: RunConfig) -> dict[str, Any]:
    """``translate()`` keyword options from ``cfg.sample``."""
    s = cfg.sample
    return {"sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance_scale": s.guidance_scale}


def source_channels(cfg: RunConfig) -> int:
    """How many images the model's source takes (``model.cond_image_channels``, of the pixel-space twin
    for a latent model; 1 for a model without an image condition): the number of ``--input`` files
    of ``medgen sample``."""
    from medgen.diffusion.latent import pixel_config

    return max(1, int(pixel_config(cfg).model.cond_image_channels))


def translate_image(translator: Any, image: np.ndarray, cfg: RunConfig, *, seed: int = 0, name: str = "image",
                    notes: list[str] | None = None, cond: Mapping[str, float] | None = None) -> np.ndarray:
    """Translate ``image`` ``[H, W]`` (or a ``[K, H, W]`` stack, one image per source channel) in [0, 1]
    at the model's size; returns ``[H, W]`` in [0, 1].

    An image of another size is resized to the model's ``(H, W)`` (``spatial_shape(data)``:
    ``data.image_size`` wide, ``data.image_height`` or the data's aspect ratio high; antialiased
    bilinear, :func:`~medgen.data.io.to_model_range`) and the result resized back, with a note
    (appended to ``notes``, or warned when ``notes`` is None). ``seed`` seeds the sampling noise;
    ``cfg.sample`` gives the sampler options. ``cond``: the model's per-sample conditions
    ``{key: value}`` (its ``condition_keys``); a missing or unknown key is a one-line ``ValueError``.
    """
    import torch

    from medgen.data.datasets import spatial_shape
    from medgen.data.io import from_model_range, to_model_range

    size = spatial_shape(translator.config.data)  # (H, W): may be non-square (the coronal spine's 2:1)
    hw = tuple(image.shape[-2:])
    if hw != size:
        note = (f"{name} is {hw[0]}x{hw[1]}; the model works at {size[0]}x{size[1]}, "
                "so the image is resized in and the result resized back")
        if notes is None:
            warnings.warn(note, stacklevel=2)
        else:
            notes.append(note)
    if image.ndim == 3:
        channels = source_channels(translator.config)
        if image.shape[0] != channels:
            raise ValueError(f"{name}: a stack of {image.shape[0]} images but the model's source has {channels} channels")
        source = torch.cat([to_model_range(channel, size) for channel in image], dim=1)  # [1, K, H, W]
    else:
        source = to_model_range(image, size)
    values = {k: float(v) for k, v in (cond or {}).items()}
    if hasattr(translator, "check_conditions"):
        translator.check_conditions(values, 1)  # a missing / unknown key fails before sampling
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        pred = translator.translate(source, generator=generator, cond=values or None, **sample_options(cfg))
    result = from_model_range(pred[:1, :1])
    if result.shape != hw:
        result = from_model_range(to_model_range(result, hw))
    return result


def identity_baseline(cfg: RunConfig) -> Any:
    """The trivial baseline that returns its input, configured like ``cfg`` (DESIGN.md: every table carries one);
    for a latent model, like its pixel-space twin (image channels, no autoencoder parent)."""
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.diffusion.latent import pixel_config
    from medgen.registry import METHODS, lookup

    return lookup(METHODS, "identity")(replace(pixel_config(cfg), method="identity"))


def evaluation_frame(translator: Any, dataset: Any, metrics: Sequence[str], *, options: Mapping[str, Any],
                     seed: int = 0, batch_size: int = 16, baseline: bool = True) -> Any:
    """Per-sample rows of ``translator`` and, with ``baseline``, of :func:`identity_baseline` on ``dataset``.

    Each run is :func:`medgen.evaluate.evaluate` (``score(predict(...))``) with ``data_range`` 2.0
    (the model range ``[-1, 1]``) and a generator seeded with ``seed``; ``options`` go to the
    model's ``translate`` (the baseline takes none). Returns one DataFrame, column ``method``
    telling the runs apart.
    """
    import pandas as pd
    import torch

    from medgen.evaluate import evaluate

    runs = [(translator, dict(options))]
    if baseline:
        runs.append((identity_baseline(translator.config), {}))
    frames = []
    for model, run_options in runs:
        generator = torch.Generator().manual_seed(seed)
        frames.append(evaluate(model, dataset, tuple(metrics), data_range=2.0, batch_size=batch_size,
                               generator=generator, **run_options))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------
# medgen generate / reconstruct: priors (methods with generate / reconstruct, e.g. ddpm)
# --------------------------------------------------------------------------------------
SD_PNG_MAX = 0.5  # sd.png shows 0 .. this SD in model-range units (a quarter of [-1, 1]: 400 HU in the lung window)
RECONSTRUCT_METRICS = ("psnr", "ssim")


def method_class(cfg: RunConfig) -> type:
    """The registered class of ``cfg.method`` (no weights loaded)."""
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.registry import METHODS, lookup

    return lookup(METHODS, cfg.method)


def require_translator(cfg: RunConfig, command: str) -> None:
    """One-line :class:`~medgen.config.ConfigError` when ``cfg``'s method is not a translator
    (``Method.is_translator`` False: its ``translate`` takes a measurement, e.g. the ``ddpm`` prior),
    naming the commands that serve it."""
    cls = method_class(cfg)
    if not getattr(cls, "is_translator", True):
        uses = " or ".join(f"'medgen {c}'" for c in ("generate", "reconstruct") if callable(getattr(cls, c, None)))
        raise ConfigError(f"{cfg.name} (method {cfg.method}) is an unconditional prior: use {uses} "
                          f"('medgen {command}' needs a model that translates images)")


def require_ability(cfg: RunConfig, ability: str) -> None:
    """One-line :class:`~medgen.config.ConfigError` when ``cfg``'s method has no ``ability``
    (``"generate"`` / ``"reconstruct"``), before any weights load."""
    if not callable(getattr(method_class(cfg), ability, None)):
        raise ConfigError(f"{cfg.name} (method {cfg.method}) cannot {ability}: 'medgen {ability}' needs a prior "
                          "such as method 'ddpm' (e.g. --task lung_us/prior)")


def image_modality(cfg: RunConfig) -> Any:
    """The phantom :class:`~medgen.data.phantoms.base.Modality` of the model's output image (its
    target, or its source for a single-image prior such as the lung prior's ``ct``), or ``None``
    when unknown (real data, an HU window)."""
    if not cfg.data.phantom or cfg.data.window:
        return None
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS

    spec = PHANTOMS.get(cfg.data.phantom)
    return None if spec is None else spec.modalities.get(cfg.data.target or cfg.data.source)


def gray_meaning(cfg: RunConfig) -> str:
    """What a PNG's gray 0..1 means: ``"gray 0..1 = -1000..600 HU (ct)"`` or the model range."""
    mod = image_modality(cfg)
    return (f"gray 0..1 = {mod.low:g}..{mod.high:g} {mod.unit} ({mod.key})" if mod is not None
            else "gray 0..1 = model range -1..1")


def _write_pngs(folder: Any, stem: str, image: Any) -> list[Any]:
    """``image`` ``[C, H, W]`` (model range) -> ``stem.png`` (``stem_c{k}.png`` per channel when C > 1)."""
    from medgen.data.io import from_model_range, write_image

    names = [stem] if image.shape[0] == 1 else [f"{stem}_c{k}" for k in range(image.shape[0])]
    return [write_image(folder / f"{name}.png", from_model_range(channel)) for name, channel in zip(names, image)]


def out_folder(out: Any) -> Any:
    """``out`` as a folder (created with its parents; called before any work); a file there is one line."""
    from pathlib import Path

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def generate_images(model: Any, n: int, out: Any, *, seed: int = 0, options: Mapping[str, Any] | None = None,
                    batch_size: int = 16) -> list[Any]:
    """``medgen generate``: ``n`` images of the prior ``model`` (``model.generate``, one generator seeded
    with ``seed``, ``options`` as ``generate``'s: sampler, steps, eta, spacing) written to the folder
    ``out``: ``image_000.png`` ... (gray in [0, 1]: the model range -1..1, i.e. the modality's fixed
    window, :func:`gray_meaning`) and ``images.npy`` ``[n, H, W]`` (``[n, C, H, W]`` for C > 1) in model
    range. Returns the paths written (the ``.npy`` first)."""
    import numpy as np
    import torch

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    folder = out_folder(out)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode():
        images = model.generate(int(n), generator=generator, batch_size=batch_size, **dict(options or {}))
    images = images.float().cpu().clamp(-1.0, 1.0)  # [n, C, H, W]
    stack = folder / "images.npy"
    np.save(stack, (images[:, 0] if images.shape[1] == 1 else images).numpy())
    return [stack, *(p for i, image in enumerate(images) for p in _write_pngs(folder, f"image_{i:03d}", image))]


def generate_options(cfg: RunConfig) -> dict[str, Any]:
    """``generate()`` options from ``cfg.sample`` (``eta`` only for ddim; no guidance: no condition)."""
    s = cfg.sample
    return {"sampler": s.sampler, "steps": s.steps, "spacing": s.spacing,
            **({"eta": s.eta} if s.sampler == "ddim" else {})}


def reconstruct_options(cfg: RunConfig, *, sampler: str | None = None, eta: float | None = None) -> dict[str, Any]:
    """``reconstruct()`` options: ``cfg.sample``'s steps and spacing; ``sampler`` / ``eta`` only when asked
    (DPS samples ancestrally by default, :data:`medgen.methods.ddpm.DPS_SAMPLER`)."""
    return {"steps": cfg.sample.steps, "spacing": cfg.sample.spacing, **({"sampler": sampler} if sampler else {}),
            **({"eta": eta} if eta is not None else {})}


def read_truth(path: Any, cfg: RunConfig, notes: list[str]) -> Any:
    """An image file (:func:`~medgen.data.io.read_sample_input`: PNG, DICOM, NIfTI, ...) as the model's
    truth ``[1, 1, H, W]`` in model range at the model's size (resized with a note). Gray [0, 1] is the
    model range (the modality's window); a CT read in HU (mapped by the phantoms' fixed map
    ``HU / 1000``) is re-mapped into the model's HU modality (e.g. the lung window) when it has one."""
    from pathlib import Path

    import torch

    from medgen.data.datasets import spatial_shape
    from medgen.data.io import read_sample_input, to_model_range

    image = read_sample_input(path, notes=notes)
    size = spatial_shape(cfg.data)
    if tuple(image.shape) != tuple(size):
        notes.append(f"{Path(path).name} is {image.shape[0]}x{image.shape[1]}; "
                     f"resized to the model's {size[0]}x{size[1]}")
    x = to_model_range(image, size)
    mod = image_modality(cfg)
    if mod is not None and mod.unit == "HU" and any("CT in HU" in note for note in notes):
        x = torch.from_numpy(mod.to_model(x.numpy() * 1000.0))  # the fixed map's model range is HU / 1000
        notes.append(f"HU mapped to the model's {mod.key} window {mod.low:g}..{mod.high:g} HU (values outside clipped)")
    return x


def default_dps_scale(cfg: RunConfig, operator: str) -> float:
    """The DPS guidance scale of ``operator`` tuned for ``cfg``'s preset when ``cfg`` is the lung prior
    (:func:`medgen.experiments.lung_us.dps_scale`); any other model: a one-line error asking for ``--scale``."""
    from medgen.presets.lung_us import DPS_SCALE, PRIOR

    if cfg.name != PRIOR or cfg.preset not in DPS_SCALE:
        raise ConfigError(f"--scale is required: {cfg.name} (preset {cfg.preset}) has no tuned DPS scale "
                          f"(only {PRIOR} at presets {', '.join(DPS_SCALE)} has)")
    from medgen.experiments.lung_us.plan import dps_scale

    return dps_scale(operator, cfg.preset)


def prepare_measurement(cfg: RunConfig, operator: str, *, measurement: Any = None, image: Any = None,
                        noise: float | None = None, seed: int = 0,
                        notes: list[str] | None = None) -> tuple[Any, Any, Any]:
    """``(operator module, y [1, 1, H', W'], truth [1, 1, H, W] or None)`` for ``medgen reconstruct``,
    before any model loads: the ``.npy`` ``measurement`` (:func:`medgen.inverse.read_measurement`: a wrong
    shape is one line naming the expected one), or ``y = A(x) + noise`` simulated from ``image``
    (:func:`read_truth`; ``noise`` default: the operator's ``default_noise_std``; seeded with ``seed``)."""
    import torch

    from medgen.data.datasets import spatial_shape
    from medgen.inverse import make_operator, measure, read_measurement

    if (measurement is None) == (image is None):
        raise ConfigError("reconstruct needs exactly one of --measurement Y.npy or --input IMAGE")
    op = make_operator(operator, size=spatial_shape(cfg.data))
    if measurement is not None:
        if noise is not None:
            raise ConfigError("--noise applies to --input (the simulated measurement), not to --measurement")
        return op, read_measurement(measurement, op), None
    truth = read_truth(image, cfg, [] if notes is None else notes)
    return op, measure(op, truth, noise, torch.Generator().manual_seed(int(seed))), truth


def reconstruct_measurement(model: Any, operator: Any, y: Any, out: Any, *, scale: float, samples: int = 4,
                            truth: Any = None, seed: int = 0, options: Mapping[str, Any] | None = None
                            ) -> dict[str, float]:
    """``medgen reconstruct``: ``samples`` DPS posterior samples of the prior ``model`` for the measurement
    ``y`` of ``operator`` (``model.reconstruct``, generator seeded with ``seed + 1``: ``seed`` drew the
    simulated noise; ``options``: steps, sampler, eta, spacing; DPS's ancestral sampler by default), written
    to the folder ``out``: ``mean.png``, ``sd.png`` (0 .. :data:`SD_PNG_MAX` model units), ``mean.npy`` /
    ``sd.npy`` ``[H, W]``, ``samples.npy`` ``[K, H, W]`` (model range), ``measurement.npy`` (``y``) and,
    with a ``truth``, ``truth.png``. Returns the mean's PSNR / SSIM against ``truth``
    (:func:`medgen.score.score`, data_range 2.0), ``{}`` without one."""
    import numpy as np
    import torch

    from medgen.inverse import mean_sd_maps

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    if scale < 0:
        raise ConfigError(f"--scale must be >= 0, got {scale}")
    folder = out_folder(out)
    generator = torch.Generator().manual_seed(int(seed) + 1)
    xs = model.reconstruct(y, operator=operator, scale=float(scale), n_samples=int(samples), generator=generator,
                           **dict(options or {})).float().cpu()  # [K, 1, C, H, W]
    mean, sd = mean_sd_maps(xs)  # [1, C, H, W]
    arrays = {"mean": mean[0], "sd": sd[0], "samples": xs[:, 0], "measurement": y.float().cpu()[0]}
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", (value[..., 0, :, :] if value.shape[-3] == 1 else value).numpy())
    _write_pngs(folder, "mean", mean[0])
    _write_pngs(folder, "sd", (sd[0] / SD_PNG_MAX).clamp(0.0, 1.0) * 2.0 - 1.0)
    if truth is None:
        return {}
    from medgen.score import score

    _write_pngs(folder, "truth", truth[0])
    rows = score(mean, truth.to(mean), RECONSTRUCT_METRICS, data_range=2.0)
    return {str(r.metric): float(r.value) for r in rows.itertuples()}


def generate_command(cfg: RunConfig, load_model: Callable[[], Any], *, n: int, out: Any, seed: int = 0,
                     note: Callable[[str], None] = print) -> Any:
    """``medgen generate`` after parsing: checks ``n`` and the folder ``out`` before ``load_model()`` runs,
    then :func:`generate_images` with ``cfg.sample``'s options; ``note`` hears what the PNGs mean.
    Returns the folder."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    folder = out_folder(out)
    generate_images(load_model(), n, folder, seed=seed, options=generate_options(cfg))
    note(f"PNG {gray_meaning(cfg)}; images.npy in model range")
    return folder


def reconstruct_command(cfg: RunConfig, load_model: Callable[[], Any], *, operator: str, out: Any,
                        measurement: Any = None, image: Any = None, noise: float | None = None,
                        scale: float | None = None, samples: int = 4, seed: int = 0, sampler: str | None = None,
                        eta: float | None = None, note: Callable[[str], None] = print,
                        allow_modality_mismatch: bool = False, model_name: str | None = None,
                        verdict: Callable[[Any], None] | None = None) -> tuple[Any, dict[str, float]]:
    """``medgen reconstruct`` after parsing: the modality guard on ``image``
    (:func:`medgen.ood.check_input`: another modality than the prior's is one line naming both, unless
    ``allow_modality_mismatch``; ``model_name`` names the prior in it), the measurement
    (:func:`prepare_measurement`), the scale (``scale`` or :func:`default_dps_scale`) and the folder ``out``
    before ``load_model()`` runs, then :func:`reconstruct_measurement`; ``note`` hears the input's notes and
    the settings, ``verdict`` the :class:`~medgen.ood.Verdict` of ``image`` against the prior's training
    distribution (a ``measurement`` is not an image of it: not assessed, saying so).
    Returns ``(folder, {"psnr": ..., "ssim": ...} or {})``."""
    from medgen import ood

    notes: list[str] = []
    code = ""
    if image is not None:
        code, guard_note = ood.check_input(image, cfg, allow=allow_modality_mismatch, model=model_name)
        notes += [guard_note] if guard_note else []
    op, y, truth = prepare_measurement(cfg, operator, measurement=measurement, image=image, noise=noise, seed=seed,
                                       notes=notes)
    used = default_dps_scale(cfg, operator) if scale is None else float(scale)
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    folder = out_folder(out)
    for text in [*notes, f"DPS scale {used:g}{' (tuned for this prior)' if scale is None else ''}, {samples} "
                 f"samples, {cfg.sample.steps} steps; PNG {gray_meaning(cfg)}"]:
        note(text)
    model = load_model()
    if verdict is not None:
        verdict(ood.assess(model, truth, modality=code)[0] if truth is not None else ood.not_assessed(
            "a measurement is not an image of the prior's kind: pass --input to check the image it came from",
            trained_modality=ood.trained_modality(cfg)[0]))
    metrics = reconstruct_measurement(model, op, y, folder, scale=used, samples=samples, truth=truth,
                                      seed=seed, options=reconstruct_options(cfg, sampler=sampler, eta=eta))
    return folder, metrics

