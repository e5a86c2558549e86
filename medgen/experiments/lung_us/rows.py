"""The study's data and drivers: lung sections with aeration, generation + audit (section 2) and guided
reconstruction + sweeps (section 3). Reconstruction rows are scored by :func:`medgen.score.score`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medgen import progress as status
from medgen.config import RunConfig
from medgen.data.phantoms import lung
from medgen.experiments.common import concat
from medgen.experiments.lung_us.paper import (CATEGORIES, DATA_RANGE, DPS, DPS_SAMPLER, FLAG_PERCENTILE, SUPERVISED,
                                              TIKHONOV, UNGUIDED)
from medgen.experiments.lung_us.plan import Plan, dps_scale, space_card

__all__ = ["LungSet", "real_sections", "aeration_of", "generated_sections", "generate", "feature_sets",
           "MemorizationResult", "memorization", "Generation", "run_generation", "measure_all", "Reconstruction",
           "recon_metrics", "recon_rows", "run_reconstruction", "run_sweeps"]


# --------------------------------------------------------------------------------------
# Lung sections with aeration
# --------------------------------------------------------------------------------------
@dataclass
class LungSet:
    """Lung sections ``images [n, 1, H, W]`` (model range) with ``aeration [n]`` and ``category [n]``
    (int) read from the image (:func:`aeration_of`, for real and generated images alike, as the paper
    computes aeration from the image), ``lung_mask [n, H, W]`` and ``aeration_label [n]`` (the phantom's
    ground truth; None for generated images) and ids."""

    images: torch.Tensor
    aeration: np.ndarray
    category: np.ndarray
    lung_mask: torch.Tensor | None = None
    patient_ids: list[str] = field(default_factory=list)
    aeration_label: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> "LungSet":
        """The sections at ``index`` (same order)."""
        idx = np.asarray(index, dtype=np.int64)
        t = torch.as_tensor(idx)
        return LungSet(self.images[t], self.aeration[idx], self.category[idx],
                       None if self.lung_mask is None else self.lung_mask[t],
                       [self.patient_ids[i] for i in idx] if self.patient_ids else [],
                       None if self.aeration_label is None else self.aeration_label[idx])


def real_sections(cfg: RunConfig, split: str, n: int | None = None) -> LungSet:
    """The first ``n`` sections of ``cfg``'s phantom ``split`` (``train`` / ``test``): the ``ct``
    modality in model range, aeration and category read from the image (:func:`aeration_of`, the
    same readout as generated images get, so the two are compared without a measurement asymmetry;
    it agrees with the phantom's category on 98 % of 200 test sections at 32 px, 99 % at 64 px),
    and the phantom's ``lung_mask`` and label ``aeration`` (``aeration_label``).

    The subjects are those the prior trains on (train) or never sees (test): same phantom,
    size and dataset seed; only the image keys change (``source = ct``, no target, no augmentation).
    """
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.registry import DATASETS, lookup

    count = {"train": cfg.data.n_train, "test": cfg.data.n_test}[split] if n is None else int(n)
    data = replace(cfg.data, dataset="paired", source="ct", target="", augment="", source_resize=False,
                   **({"n_train": count} if split == "train" else {"n_test": count}))
    ds = lookup(DATASETS, "paired")(data, split)
    items = ds.__getitems__(list(range(len(ds)))) if len(ds) else []
    if not items:
        raise ValueError(f"real_sections: the {split} split of {cfg.name} is empty")
    images = torch.stack([it["source"] for it in items]).float()
    readout = aeration_of(images)
    return LungSet(images, readout, lung.aeration_category(readout),
                   torch.stack([torch.as_tensor(it["lung_mask"]) for it in items]),
                   [str(it["patient_id"]) for it in items],
                   np.array([float(it["aeration"]) for it in items]))


def aeration_of(images: torch.Tensor) -> np.ndarray:
    """Aeration ``[n]`` of sections ``[n, 1, H, W]`` in model range (:func:`lung.aeration_from_model`,
    the readout the demo and the reconstruction metrics use too)."""
    return lung.aeration_from_model(images)


def generated_sections(images: torch.Tensor) -> LungSet:
    """Generated sections ``[n, 1, H, W]`` with aeration from the image (:func:`aeration_of`)."""
    a = aeration_of(images)
    return LungSet(images.float().cpu(), a, lung.aeration_category(a), None, [f"gen{i}" for i in range(len(a))])


@torch.no_grad()
def generate(prior: Any, n: int, *, seed: int = 0, batch_size: int = 64, **options: Any) -> torch.Tensor:
    """``n`` images ``[n, 1, H, W]`` from the prior (one generator seeded with ``seed``), clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(int(seed))
    status.report(f"sampling {n} images from the prior", force=True)
    return prior.generate(int(n), generator=g, batch_size=batch_size, **options).float().cpu().clamp(-1, 1)


# --------------------------------------------------------------------------------------
# Section 2: features, memorization audit by aeration category, driver
# --------------------------------------------------------------------------------------
def feature_sets(images: Mapping[str, torch.Tensor], spaces: Sequence[str], *,
                 batch_size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    """``{space: {set name: features [n, D]}}`` of every image set ``[n, 1, H, W]`` (computed once each)."""
    from medgen.metrics.features import features
    return {s: {name: features(x, s, batch_size=batch_size) for name, x in images.items()}
            for s in dict.fromkeys(spaces)}


@dataclass
class MemorizationResult:
    """The audit (:class:`~medgen.metrics.memorization.MemorizationAudit`) of the generated images whose
    category has training and held-out images (``generated_index`` into the generated set), the
    held-out images used (``heldout_index``), and per category how many generated images were
    left out for lack of calibration (``excluded``)."""

    audit: Any
    space: str
    generated_index: np.ndarray
    heldout_index: np.ndarray
    excluded: dict[int, int]


def memorization(feats: Mapping[str, torch.Tensor], train: LungSet, heldout: LungSet, generated: LungSet, *,
                 space: str, percentile: float = FLAG_PERCENTILE) -> MemorizationResult:
    """Memorization audit per aeration category on features ``feats`` (``train`` / ``heldout`` /
    ``generated`` ``[n, D]`` of the three sets, in ``space``).

    Held-out and generated images are compared with training images of their own category
    (paper Eq. 2). Categories without training images (held-out and generated) or without
    held-out images (generated) cannot be calibrated: those images are left out and counted.
    """
    from medgen.metrics.memorization import audit

    have_train = set(train.category.tolist())
    h_keep = np.flatnonzero(np.isin(heldout.category, list(have_train)))
    calibrated = have_train & set(heldout.category[h_keep].tolist())
    g_keep = np.flatnonzero(np.isin(generated.category, list(calibrated)))
    if g_keep.size == 0:
        raise ValueError("memorization: no generated image falls in a category with training and held-out images")
    excluded = {int(c): int(((generated.category == c) & ~np.isin(generated.category, list(calibrated))).sum())
                for c in CATEGORIES}
    result = audit(feats["train"], feats["heldout"][torch.as_tensor(h_keep)],
                   feats["generated"][torch.as_tensor(g_keep)], train_strata=train.category,
                   heldout_strata=heldout.category[h_keep], generated_strata=generated.category[g_keep],
                   percentile=percentile, feature_space=space_card(space))
    return MemorizationResult(result, space, g_keep, h_keep, excluded)


@dataclass
class Generation:
    """Everything of section 2: the sets, features, audit and tables."""

    train: LungSet
    heldout: LungSet
    generated: LungSet
    memorization: MemorizationResult
    distribution: pd.DataFrame
    aeration: pd.DataFrame
    flags: pd.DataFrame

    @property
    def audited(self) -> LungSet:
        """The generated sections that entered the audit (a category with calibration), in audit order."""
        return self.generated.subset(self.memorization.generated_index)


def run_generation(p: Plan, prior: Any, train: LungSet, heldout: LungSet, *, batch_size: int = 32,
                   generated: torch.Tensor | None = None) -> Generation:
    """Generate ``p.n_generate`` images (or take ``generated``), then FID / KID with the floor, the
    memorization audit per category and the aeration statistics."""
    from medgen.experiments.lung_us.tables import aeration_table, distribution_table, flag_table

    images = generated if generated is not None else generate(prior, p.n_generate, seed=p.seed)
    gen = generated_sections(images)
    matched = train.images[:len(gen)]
    spaces = tuple(dict.fromkeys([*p.fid_spaces, p.memorization_space]))
    feats = {}
    for space in spaces:
        sets = {"heldout": heldout.images, "generated": gen.images}
        sets["train"] = train.images if space == p.memorization_space else matched
        f = feature_sets(sets, [space], batch_size=batch_size)[space]
        f["train_matched"] = f["train"][:len(gen)]
        feats[space] = f
    dist = distribution_table({s: feats[s] for s in p.fid_spaces}, seed=p.seed)
    mem = memorization(feats[p.memorization_space], train, heldout, gen, space=p.memorization_space)
    return Generation(train, heldout, gen, mem, dist, aeration_table(train, gen), flag_table(mem))


# --------------------------------------------------------------------------------------
# Section 3: reconstruction
# --------------------------------------------------------------------------------------
def measure_all(p: Plan, truth: torch.Tensor, *, seed: int | None = None) -> dict[str, dict[str, Any]]:
    """``{operator: {"op", "y", "noise_std"}}``: every operator of the plan applied to ``truth``
    ``[B, 1, H, W]`` plus Gaussian noise from a generator seeded per operator."""
    from medgen import inverse as inv

    out = {}
    for k, name in enumerate(p.operators):
        op = inv.make_operator(name, size=p.image_size)
        std = float(op.default_noise_std)  # the phantom's NOISE_STD for us_*: what the supervised models saw
        g = torch.Generator().manual_seed(int(p.seed if seed is None else seed) * 100 + k)
        out[name] = {"op": op, "y": inv.measure(op, truth, std, g), "noise_std": std}
    return out


@dataclass
class Reconstruction:
    """Section 3 on ``truth`` ``[B, 1, H, W]``: per operator the measurement and per method the
    samples ``[N, B, 1, H, W]``; ``rows``: tidy metrics (``operator, method, patient_id, metric, value``)."""

    truth: torch.Tensor
    heldout: LungSet
    measurements: dict[str, dict[str, Any]]
    samples: dict[str, dict[str, torch.Tensor]]
    rows: pd.DataFrame


def _dps(prior: Any, op: Any, y: torch.Tensor, *, scale: float, steps: int, n_samples: int,
         seed: int, callback: Callable | None = None) -> torch.Tensor:
    """DPS samples ``[N, B, 1, H, W]`` with the :data:`DPS_SAMPLER` (``scale = 0``: the unguided prior)."""
    g = torch.Generator().manual_seed(int(seed))
    return prior.reconstruct(y, generator=g, callback=callback, operator=op, scale=float(scale), steps=int(steps),
                             n_samples=int(n_samples), sampler=DPS_SAMPLER).float().cpu()


def _tikhonov(op: Any, y: torch.Tensor, noise_std: float) -> torch.Tensor:
    from medgen.inverse import tikhonov_auto

    x, _ = tikhonov_auto(op, y, noise_std)
    return x.detach().float().cpu().clamp(-1, 1)[None]  # deterministic: one "sample"


@torch.no_grad()
def _supervised(model: Any, operator: str, y: torch.Tensor, size: int, n_samples: int, seed: int) -> torch.Tensor:
    """Samples ``[N, B, 1, H, W]`` of the supervised cDDPM given measurements ``y`` (measurement units):
    mapped to model range by the phantom's modality of ``operator`` (as its training data were) and
    resized to the image grid (:func:`~medgen.data.datasets.resize_source`, as ``source_resize``)."""
    from medgen.data.datasets import resize_source
    modality = lung.SPEC.modalities[operator]
    source = resize_source(torch.from_numpy(modality.to_model(y.detach().cpu().numpy())), (size, size))
    g = torch.Generator().manual_seed(int(seed))
    return torch.stack([model.translate(source, generator=g).float().cpu() for _ in range(n_samples)])


def recon_metrics(op: Any, y: torch.Tensor, lung_mask: Any = None) -> tuple:
    """The metrics of :data:`~medgen.experiments.lung_us.paper.RECON_METRICS` for :func:`medgen.score.score`:
    ``psnr`` and ``ssim`` by registry name, the measurement residual against ``y`` ``[B, ...]``
    (:func:`medgen.inverse.residual_metric`) and the aeration error inside ``lung_mask`` ``[B, H, W]``
    (:func:`medgen.inverse.aeration_error_metric`): closures over the whole set (``batch_size=None``)."""
    from medgen.inverse import aeration_error_metric, residual_metric

    return "psnr", "ssim", residual_metric(op, y), aeration_error_metric(lung_mask)


def recon_rows(samples: torch.Tensor, truth: LungSet, y: torch.Tensor, op: Any, **labels: Any) -> pd.DataFrame:
    """Tidy rows of the sample mean ``samples.mean(0)`` ``[B, 1, H, W]`` against ``truth`` (in its order),
    scored by :func:`medgen.score.score` (``data_range = 2``), with the columns ``labels`` added."""
    from medgen.score import score

    rows = score(samples.mean(0), truth.images, recon_metrics(op, y, truth.lung_mask), data_range=DATA_RANGE,
                 patient_ids=truth.patient_ids)
    return rows.assign(**labels)


def run_reconstruction(p: Plan, prior: Any, supervised: Mapping[str, Any], heldout: LungSet, *,
                       callback: Callable | None = None) -> Reconstruction:
    """Every method of :data:`METHODS` on the first ``p.n_recon`` held-out images and every operator
    of the plan (the supervised model only where ``supervised`` has the operator)."""
    sel = heldout.subset(range(p.n_recon))
    truth = sel.images
    meas = measure_all(p, truth)
    samples: dict[str, dict[str, torch.Tensor]] = {}
    rows = []
    for k, name in enumerate(p.operators):
        status.report(f"reconstructing {len(truth)} images, operator {name} ({k + 1} / {len(p.operators)}): "
                      f"DPS, unguided, Tikhonov{', supervised' if name in supervised else ''}", force=True)
        op, y, std = meas[name]["op"], meas[name]["y"], meas[name]["noise_std"]
        scale = dps_scale(name, p.preset)
        out = {DPS: _dps(prior, op, y, scale=scale, steps=p.dps_steps, n_samples=p.n_samples,
                         seed=p.seed + k, callback=callback),
               UNGUIDED: _dps(prior, op, y, scale=0.0, steps=p.dps_steps, n_samples=p.n_samples,
                              seed=p.seed + k),
               TIKHONOV: _tikhonov(op, y, std)}
        if name in supervised:
            out[SUPERVISED] = _supervised(supervised[name], name, y, p.image_size, p.n_samples, p.seed + k)
        samples[name] = out
        rows += [recon_rows(s, sel, y, op, operator=name, method=m) for m, s in out.items()]
    return Reconstruction(truth, sel, meas, samples, pd.concat(rows, ignore_index=True))


def run_sweeps(p: Plan, prior: Any, recon: Reconstruction) -> pd.DataFrame:
    """DPS on the first ``p.n_sweep`` reconstruction inputs of each sweep operator: guidance scale
    (multiples of the default, at ``p.dps_steps``) and steps (at the default scale). Tidy rows with
    ``operator, sweep ("guidance_scale" | "steps"), guidance_scale, steps, label, metric, value``."""
    sel = recon.heldout.subset(range(p.n_sweep))
    rows = []
    for k, name in enumerate(p.sweep_operators):
        op, y = recon.measurements[name]["op"], recon.measurements[name]["y"][:p.n_sweep]
        base = dps_scale(name, p.preset)
        points = [("guidance_scale", m, p.dps_steps) for m in p.guidance_scales]
        points += [("steps", 1.0, s) for s in p.steps]
        for j, (sweep, mult, steps) in enumerate(points):
            status.report(f"DPS sweep {name}: point {j + 1} / {len(points)} ({sweep})", force=True)
            s = _dps(prior, op, y, scale=base * mult, steps=steps, n_samples=p.n_samples, seed=p.seed + k)
            rows.append(recon_rows(s, sel, y, op, operator=name, sweep=sweep, guidance_scale=mult, steps=steps,
                                   label=DPS))
    return concat(rows, ["operator", "sweep", "guidance_scale", "steps", "label", "patient_id", "metric", "value"])
