"""``lung``: 2D lung sections (CT-like, HU) and their ultrasound measurements.

Dataset card
------------
* **Paper** (lung_us_diffusion.txt): an unconditional DDPM on 4,500 "2D lung images" of
  256 x 256 pixels whose *aeration* -- the fraction of air in the lung, "the average
  normalized pixel value" of the gray-scale image -- splits them into category 0
  (< 60 %, poorly aerated), 1 (60-85 %, normal) and 2 (> 85 %, hyper-aerated) for a
  ResNet18 nearest-neighbour memorization check per category; the planned next step
  guides sampling with ultrasound measurements (DPS). The data are not public.
* **What a subject is**: a 6 x 6 cm section below a linear ultrasound probe (row 0 touches
  the skin, rows are depth, columns lateral position), rendered as a **CT-like image in
  HU** (``ct``) together with its per-pixel **air volume fraction** (``air_fraction``, in
  [0, 1]: the paper's "normalized pixel value"). The CT follows from the air fraction
  exactly: ``HU = -1000 a + (1 - a) T`` with ``T`` the HU of the non-air tissue in the pixel,
  so ``a = (T - HU) / (T + 1000)``.
* **Anatomy** (geometry in normalised coordinates, drawn before any noise, so a subject is
  the same at every size): skin (40 HU, 0.012-0.02 of the depth), subcutaneous fat
  (-100 HU, 0.03-0.12 with lateral undulation), intercostal muscle (50 HU), 4 rib slots
  (elliptic cross-sections, cortex 550 HU / marrow 200 HU, just above the pleura, spaced
  0.42-0.6 of the width), the pleural line (depth 0.26-0.40, gently curved), lung below.
  Lung tissue is 50 HU; its air fraction is ``AIR_MAX * sigmoid(b + F - g (z - p))`` with
  ``F`` a smooth random field (8 low-frequency plus 12 fine Fourier modes: parenchymal
  texture), ``g`` a gravity gradient (dependent lung less aerated) and ``b`` solved by
  bisection so that the lung's mean air fraction hits the subject's target aeration.
* **Pathology** (``pathology``: 0 none, 1 consolidation, 2 interstitial, 3 effusion), blended
  into the air fraction with weight maps ``w``: ``a <- a + s w (a_p - a)``:
  1. consolidation: 1-2 subpleural blobs (lobulated ellipses, radii 0.08-0.3) of airless
     lung (``a_p`` 0-0.02: tissue-like, "hepatised"), with 2 air bronchograms per blob;
  2. interstitial: a patchy subpleural region of reduced air (``a_p`` 0.3-0.5) with 3-6
     thickened septa (thin strips of ``a_p`` 0.1) perpendicular to the pleura;
  3. effusion: a lens of anechoic fluid (5 HU, up to 0.05-0.2 thick) between the parietal
     pleura and the lung, which it compresses (a band of atelectasis, ``a_p`` 0.1).
  If a target aeration cannot be reached with the full pathology (e.g. aeration 0.95
  with a large consolidation) its severity ``s`` in [0, 1] is reduced until it can.
* **Aeration and categories**: ``aeration`` = mean of ``air_fraction`` over the lung pixels
  (``lung_mask`` 1 or 2); ``aeration_category`` 0 (< 0.60), 1 (0.60-0.85), 2 (>= 0.85). The
  target is drawn per subject: pathology with probabilities ``PATHOLOGY_PROBS``, then a
  category with ``CATEGORY_PROBS[pathology]``, then the aeration uniformly within the
  category's ``AERATION_RANGES``; overall 37 % / 41 % / 23 % of subjects fall in categories
  0 / 1 / 2 (2,000 subjects, seed 0). The ``aeration`` control (0.2-0.98) fixes the target;
  ``b`` is solved on the rendered grid, so the rendered aeration hits it to < 1e-4 up to
  ~0.97; above that, partial-volume pixels on the pleural line (counted as lung with half
  their air) cap the mean at small sizes (0.976 at 32 px for some subjects).
  ``pathology`` fixes the type.
* **Measurements**: ``us_linear`` and ``us_acoustic`` (``[n, H, ceil(W / 2)]``, a.u.) are
  :class:`~medgen.data.phantoms.ultrasound.LinearUltrasound` and
  :class:`~medgen.data.phantoms.ultrasound.AcousticUltrasound` applied to the ``ct``
  modality's model-range image ``to_model(ct)``, plus Gaussian noise (std ``NOISE_STD``)
  from the subject's generator: ``y = A(x) + n`` exactly as DPS assumes. The acoustic
  one shows the chest wall, rib shadows, a bright pleural line and, below an aerated
  pleura, nothing but decaying A-line reverberations; consolidated lung and effusions
  transmit. See ``ultrasound.py`` for the physics and what it ignores.
* **Outputs** (leading axis ``n``): ``ct`` ``[n, H, W]`` float32 HU; ``air_fraction``
  ``[n, H, W]`` float32 in [0, 1] (the pixel's air volume; zero outside the lung except on
  partial-volume pixels of the lung border); ``lung_mask`` ``[n, H, W]`` uint8 label map
  (0 chest wall, 1 lung, 2 consolidated lung, 3 pleural effusion, 4 rib); ``aeration``
  ``[n]`` float32; ``aeration_category`` ``[n]`` int64; ``pathology`` ``[n]`` int64;
  ``pleura_row`` ``[n, W]`` float32 (pixel row of the pleural line per column); ``us_linear``,
  ``us_acoustic`` ``[n, H', W']`` float32.
* **Aeration of any CT section** (e.g. a generated one, for the per-category memorization
  study): :func:`aeration_from_ct` in HU, :func:`aeration_from_model` in model range (with a
  lung mask, or estimating the lung as everything below a pleural line fitted to the first
  dark row per column: median error 0.001, largest 0.05, category agreement 98 % on 200
  default subjects at 64 px) and :func:`aeration_category`.
* **Sizes**: ci / smoke 32 x 32, cpu 64 x 64, paper 256 x 256 (the paper's image size).
  Any size >= 16 works (the operators need >= 4).
* **Ignored**: 3D anatomy, heart / diaphragm / mediastinum, vessels and airways outside
  consolidations, CT noise and reconstruction blur (the image is the clean section the
  paper's simulations start from), breathing motion, speckle. Thin structures (air
  bronchograms, septa) are drawn at least one pixel wide, so they look thicker at small sizes.

Rendering is written by hand (NumPy, vectorised over the subjects; the Fourier field is
two matrix products per subject batch) because no installed library draws this anatomy;
the measurements use the torch operators of ``ultrasound.py``.
"""
from __future__ import annotations

import numpy as np
import torch

from medgen.data.phantoms.base import (Control, Modality, PhantomError, PhantomSpec, Sizes, register_phantom,
                                       subject_rng)
from medgen.data.phantoms.ultrasound import HU_HIGH, HU_LOW, NOISE_STD, AcousticUltrasound, LinearUltrasound

__all__ = ["SPEC", "generate", "aeration_category", "aeration_from_ct", "aeration_from_model", "air_fraction_from_ct",
           "CT", "LINEAR", "ACOUSTIC", "LABELS"]

NAME = "lung"
# Tissue HU of the non-air part of each pixel.
HU_SKIN, HU_FAT, HU_MUSCLE = 40.0, -100.0, 50.0
HU_CORTEX, HU_MARROW = 550.0, 200.0  # rib cortex (partial volume of a thin shell) and marrow
HU_FLUID = 5.0  # pleural effusion (transudate)
HU_LUNG_TISSUE = 50.0  # alveolar walls, blood, interstitium
HU_AIR = -1000.0
AIR_MAX = 0.99  # largest air fraction of lung tissue
LUNG_DETECT_HU = -300.0  # aeration_from_ct: the lung starts at the first row darker than this
PLEURA_FIT_ROUNDS = 6  # aeration_from_ct: refits of the pleural line to its shallow envelope
LABELS = {0: "chest wall", 1: "lung", 2: "consolidated lung", 3: "pleural effusion", 4: "rib"}
PATHOLOGIES = ("none", "consolidation", "interstitial", "effusion")
PATHOLOGY_PROBS = (0.4, 0.2, 0.2, 0.2)  # default mix of pathology types
CATEGORY_BOUNDS = (0.60, 0.85)  # aeration category thresholds (paper)
CATEGORY_PROBS = ((0.10, 0.40, 0.50),  # none: mostly normal or hyper-aerated
                  (0.70, 0.30, 0.00),  # consolidation: poorly aerated or normal
                  (0.60, 0.40, 0.00),  # interstitial
                  (0.40, 0.50, 0.10))  # effusion
AERATION_RANGES = ((0.30, 0.60), (0.60, 0.85), (0.85, 0.96))  # target drawn uniformly per category
N_RIBS = 4  # rib slots (some fall outside the field of view)
N_LOW, N_FINE = 8, 12  # Fourier modes of the smooth air-fraction field (low, fine)
LOW_AMP, FINE_AMP = 0.3, 0.15  # amplitude (logit units) of each low / fine mode
N_BLOBS, N_SEPTA = 2, 6  # consolidation blobs and septal-line slots
B_RANGE = (-10.0, 10.0)  # bisection interval of the air-fraction logit offset b
BISECTION_STEPS = 8  # bisection steps on the logit offset b (bracket 20 / 2^8), then ...
NEWTON_STEPS = 4  # ... safeguarded Newton steps (aeration error ~1e-6)
SEVERITY_STEPS = 14  # bisection steps on the pathology severity (resolution 2^-14)
TORCH_CHUNK = 64  # subjects per torch operator call

CT = Modality("ct", "HU", HU_LOW, HU_HIGH, "CT-like lung section: chest wall, ribs, pleura, aerated lung")
AIR = Modality("air_fraction", "air volume fraction", 0.0, 1.0,
               "per-pixel air fraction (the paper's normalized pixel value); 0 in the chest wall")
LINEAR = LinearUltrasound()  # measurement operators (no parameters; shared, stateless)
ACOUSTIC = AcousticUltrasound()


def air_fraction_from_ct(ct: np.ndarray) -> np.ndarray:
    """Per-pixel air fraction of lung tissue from HU (any shape): ``(T - HU) / (T + 1000)``
    with ``T = HU_LUNG_TISSUE``, clipped to [0, 1] (meaningful inside the lung only)."""
    return np.clip((HU_LUNG_TISSUE - np.asarray(ct, np.float64)) / (HU_LUNG_TISSUE - HU_AIR), 0.0, 1.0)


def aeration_from_ct(ct: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Aeration ``[n]`` of CT sections ``ct [n, H, W]`` (HU), e.g. generated ones.

    ``lung_mask [n, H, W]``: the lung pixels are labels 1 and 2; without it the lung is
    estimated as everything below the pleural line: per column the first row darker than
    ``LUNG_DETECT_HU``, then a cubic in the column fitted to the shallow envelope of those
    rows (refitted without columns more than a pixel deeper than the fit: a subpleural
    consolidation or an effusion pushes the first dark row down). Consolidations wider
    than about half the section still bias the estimate upwards."""
    ct = np.asarray(ct, np.float64)
    if ct.ndim != 3:
        raise PhantomError(f"ct must be [n, H, W], got shape {ct.shape}")
    if lung_mask is not None:
        lung = np.isin(lung_mask, (1, 2))
    else:
        lung = np.arange(ct.shape[1])[None, :, None] >= _pleura_estimate(ct)[:, None, :]
    return (air_fraction_from_ct(ct) * lung).sum((1, 2)) / np.maximum(lung.sum((1, 2)), 1)


def aeration_from_model(images: np.ndarray | torch.Tensor, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Aeration ``[n]`` of sections in model range, ``[n, H, W]`` or ``[n, 1, H, W]`` (array or tensor):
    HU by the ``ct`` modality's inverse map (:data:`CT`), then :func:`aeration_from_ct` (with
    ``lung_mask [n, H, W]``, else the lung estimated below the fitted pleural line). The one
    readout of a generated, reconstructed or real section in model range."""
    x = images.detach().float().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise PhantomError(f"images must be [n, H, W] or [n, 1, H, W], got shape {x.shape}")
        x = x[:, 0]
    return aeration_from_ct(CT.from_model(x), lung_mask)


def _pleura_estimate(ct: np.ndarray) -> np.ndarray:
    """First lung row per column ``[n, W]`` of CT sections ``[n, H, W]`` (see :func:`aeration_from_ct`)."""
    n, h, w = ct.shape
    dark = ct < LUNG_DETECT_HU
    first = np.where(dark.any(1), dark.argmax(1), h).astype(np.float64)  # [n, W]
    cols = np.linspace(-1.0, 1.0, w)
    basis = np.stack([cols**k for k in range(4)], 1)  # [W, 4] cubic
    keep = np.ones((n, w), bool)
    for _ in range(PLEURA_FIT_ROUNDS):
        fit = np.stack([basis @ np.linalg.lstsq(basis[k], first[i, k], rcond=None)[0] for i, k in enumerate(keep)])
        keep = first <= fit + 1.0
        keep[keep.sum(1) < 4] = True  # too few columns left: use them all
    return np.clip(np.ceil(fit - 0.5), 0, h)


def aeration_category(aeration: np.ndarray) -> np.ndarray:
    """Paper's category per aeration ``[n] -> [n]`` int64: 0 (< 0.6), 1 (0.6-0.85), 2 (>= 0.85)."""
    return np.searchsorted(np.asarray(CATEGORY_BOUNDS), np.asarray(aeration), side="right").astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Parameters (one generator per subject; geometry first, noise last)
# ----------------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, controls: dict[str, float]) -> dict[str, np.ndarray]:
    """All random parameters of one subject (every draw is made whatever the controls are,
    so fixing a control changes nothing else about the subject)."""
    u = rng.uniform
    p: dict[str, np.ndarray] = {}
    p["pathology"] = np.array(rng.choice(4, p=PATHOLOGY_PROBS))
    cat_draw, aer_draw = u(), u()
    if "pathology" in controls:
        p["pathology"] = np.array(int(controls["pathology"]))
    cat = int(np.searchsorted(np.cumsum(CATEGORY_PROBS[int(p["pathology"])]), cat_draw, side="right"))
    lo, hi = AERATION_RANGES[min(cat, 2)]
    p["target"] = np.array(controls.get("aeration", lo + (hi - lo) * aer_draw))
    # Chest wall and pleura.
    p["skin"] = np.array(u(0.012, 0.02))
    p["fat"] = np.array([u(0.03, 0.12), u(0.0, 0.02), u(0.5, 2.0), u(0, 2 * np.pi)])  # mean, amp, freq, phase
    p["pleura"] = np.array([u(0.26, 0.40), u(0.0, 0.03), u(0.3, 1.0), u(0, 2 * np.pi)])
    spacing = u(0.42, 0.6)
    p["rib_x"] = u(0.0, spacing) + spacing * (np.arange(N_RIBS) - 1.0)
    p["rib_size"] = np.stack([u(0.07, 0.11, N_RIBS), u(0.035, 0.06, N_RIBS), u(0.005, 0.03, N_RIBS)], 1)
    # Air-fraction field: low and fine Fourier modes (frequency in cycles per field of view).
    freq = np.concatenate([u(0.3, 2.5, N_LOW), u(4.0, 10.0, N_FINE)])
    angle = u(0, 2 * np.pi, N_LOW + N_FINE)
    amp = np.concatenate([np.full(N_LOW, LOW_AMP), np.full(N_FINE, FINE_AMP)])
    p["modes"] = np.stack([freq * np.cos(angle), freq * np.sin(angle), u(0, 2 * np.pi, N_LOW + N_FINE), amp], 1)
    p["gravity"] = np.array(u(0.0, 2.0))
    # Consolidation: blobs (active, x, depth factor, rx, rz, 3 lobulation amps, 3 phases, a_p)
    blobs = []
    for i in range(N_BLOBS):
        blobs.append([1.0 if i == 0 else float(u() < 0.4), u(0.15, 0.85), u(0.3, 0.9), u(0.1, 0.3), u(0.08, 0.25),
                      *u(-0.08, 0.08, 3), *u(0, 2 * np.pi, 3), u(0.0, 0.02)])
    p["blobs"] = np.array(blobs)
    # Bronchograms: 2 per blob, (start angle, length fraction) inside the blob's frame.
    p["bronchi"] = np.stack([u(-0.6, 0.6, 2 * N_BLOBS), u(0.5, 0.9, 2 * N_BLOBS)], 1)
    # Interstitial: region (centre x, half width, decay depth, a_p) and septa (active, x offset, length).
    p["interstitial"] = np.array([u(0.2, 0.8), u(0.15, 0.4), u(0.1, 0.35), u(0.3, 0.5)])
    n_septa = rng.integers(3, N_SEPTA + 1)
    p["septa"] = np.stack([np.arange(N_SEPTA) < n_septa, u(-1.0, 1.0, N_SEPTA), u(0.04, 0.2, N_SEPTA)], 1)
    # Effusion: lens (centre x, half width, max thickness).
    p["effusion"] = np.array([u(0.2, 0.8), u(0.2, 0.6), u(0.05, 0.2)])
    return p


def _stack(draws: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-subject parameter dicts -> dict of ``[n, ...]`` arrays."""
    return {k: np.stack([d[k] for d in draws]).astype(np.float64) for k in draws[0]}


# ----------------------------------------------------------------------------------------------
# Rendering (all maps [n, H, W]; z = normalised depth (rows), x = normalised lateral (columns))
# ----------------------------------------------------------------------------------------------
def _step(d: np.ndarray, px: float) -> np.ndarray:
    """Partial-volume fraction of a pixel on the positive side of an edge at signed distance ``d``."""
    return np.clip(0.5 + d / px, 0.0, 1.0)


def _wave(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mean + amp sin(2 pi freq x + phase)`` per subject: q ``[n, 4]``, x ``[W]`` or ``[n, K]``."""
    return q[:, :1] + q[:, 1:2] * np.sin(2 * np.pi * q[:, 2:3] * x + q[:, 3:4])


def _pleura_depth(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Normalised depth of the pleural line at lateral positions ``x`` (``[W]`` or ``[n, K]``)."""
    return np.clip(_wave(q, x), 0.15, 0.6)


def _field(modes: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum of cosine modes ``amp cos(2 pi (fz z + fx x) + phase)``: modes ``[n, K, 4]`` -> ``[n, H, W]``.

    Uses cos(A + B) = cos A cos B - sin A sin B so the sum is two batched matrix products."""
    a = 2 * np.pi * modes[:, :, 0, None] * z + modes[:, :, 2, None]  # [n, K, H]
    b = 2 * np.pi * modes[:, :, 1, None] * x  # [n, K, W]
    amp = modes[:, :, 3, None]
    return (np.cos(a) * amp).transpose(0, 2, 1) @ np.cos(b) - (np.sin(a) * amp).transpose(0, 2, 1) @ np.sin(b)


def _segment_distance(px, pz, ax, az, bx, bz) -> np.ndarray:
    """Distance from points ``(px, pz)`` to segments ``a -> b`` (broadcasting)."""
    dx, dz = bx - ax, bz - az
    t = np.clip(((px - ax) * dx + (pz - az) * dz) / (dx * dx + dz * dz + 1e-12), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, pz - az - t * dz)


def _chest_wall(p: dict[str, np.ndarray], z, x, pz: float, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue HU of the chest wall ``[n, H, W]`` and rib occupancy ``[n, H, W]``."""
    skin = p["skin"][:, None, None]
    fat_bottom = skin + np.maximum(_wave(p["fat"], x[0, 0]), 0.02)[:, None, :]
    tissue = HU_SKIN + (HU_FAT - HU_SKIN) * _step(z - skin, pz)
    tissue = tissue + (HU_MUSCLE - tissue) * _step(z - fat_bottom, pz)
    rib = np.zeros_like(tissue)
    rib_hu = np.zeros_like(tissue)
    under = _pleura_depth(p["pleura"], p["rib_x"])  # [n, N_RIBS] pleura below each rib
    for j in range(N_RIBS):
        hw, hh, gap = (p["rib_size"][:, j, k, None, None] for k in range(3))
        cx = p["rib_x"][:, j, None, None]
        cz = under[:, j, None, None] - gap - hh
        r = np.sqrt(((x - cx) / hw) ** 2 + ((z - cz) / hh) ** 2)  # 1 on the rib's outline
        occ = _step((1.0 - r) * np.minimum(hw, hh), min(pz, px))
        hu = HU_CORTEX + (HU_MARROW - HU_CORTEX) * _step((0.7 - r) * np.minimum(hw, hh), min(pz, px))
        rib_hu = np.where(occ > rib, hu, rib_hu)
        rib = np.maximum(rib, occ)
    return tissue + rib * (rib_hu - tissue), rib


def _subset(p: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The parameters of the subjects ``idx`` only."""
    return {k: v[idx] for k, v in p.items()}


def _consolidation(p, z, x, px: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layers ``(weight [m, H, W], a_p [m, H, W])`` of each blob of ``m`` consolidated subjects:
    lobulated subpleural ellipses of airless lung, each with two air bronchograms."""
    layers = []
    for i in range(N_BLOBS):
        q = p["blobs"][:, i]
        cx, rx, rz = (q[:, k, None, None] for k in (1, 3, 4))
        cz = _pleura_depth(p["pleura"], q[:, 1:2])[:, :, None] + q[:, 2, None, None] * rz
        u_, v_ = (x - cx) / rx, (z - cz) / rz
        theta = np.arctan2(v_, u_)
        radius = 1.0 + sum(q[:, 5 + j, None, None] * np.cos((j + 2) * theta + q[:, 8 + j, None, None])
                           for j in range(3))
        inside = np.hypot(u_, v_) / radius  # 1 on the lobulated outline
        weight = 1.0 / (1.0 + np.exp(np.clip((inside - 1.0) * np.minimum(rx, rz) / 0.006, -50, 50)))
        weight = weight * (q[:, 0, None, None] > 0)
        a_p = np.broadcast_to(q[:, 11, None, None], weight.shape)
        for j in range(2):  # air bronchograms: segments from the deep side towards the pleura
            ang, frac = p["bronchi"][:, 2 * i + j, 0, None, None], p["bronchi"][:, 2 * i + j, 1, None, None]
            ax, az = cx + 0.5 * rx * np.sin(ang), cz + 0.6 * rz
            bx, bz = ax + frac * rx * np.sin(ang) * 0.5, az - frac * 1.2 * rz
            d = _segment_distance(x, z, ax, az, bx, bz)
            a_p = a_p + np.exp(-0.5 * (d / max(0.006, px)) ** 2) * (0.6 - a_p)
        layers.append((weight, a_p))
    return layers


def _interstitial(p, z, x, pleura, px: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layers of ``m`` interstitial subjects: a patchy subpleural region of reduced air
    and thickened septa (thin strips perpendicular to the pleura)."""
    cx, half, decay, a_int = (p["interstitial"][:, k, None, None] for k in range(4))
    below = np.clip(z - pleura, 0.0, None)
    window = np.exp(-0.5 * ((x - cx) / half) ** 2) * np.exp(-below / decay)
    patch = window / (1.0 + np.exp(-(3.0 * _field(p["modes"][:, N_LOW:], z[0, :, 0] * 1.3, x[0, 0] * 1.3) + 0.5)))
    septa = np.zeros_like(patch)
    for j in range(N_SEPTA):
        active, offset, length = (p["septa"][:, j, k, None, None] for k in range(3))
        line = np.exp(-0.5 * ((x - cx - offset * half) / max(0.006, 0.7 * px)) ** 2) * np.exp(-below / length)
        septa = np.maximum(septa, line * active)
    return [(patch, np.broadcast_to(a_int, patch.shape)), (septa, np.full((1, 1, 1), 0.1))]


def _effusion(p, z, pleura, surface) -> list[tuple[np.ndarray, np.ndarray]]:
    """Layer of ``m`` effusion subjects: compressive atelectasis under the fluid lens."""
    lens = (surface - pleura) / p["effusion"][:, 2, None, None]
    return [(np.exp(-np.clip(z - surface, 0.0, None) / 0.04) * lens, np.full((1, 1, 1), 0.1))]


def _lung_layers(p, z, x, pleura, surface, px: float) -> tuple[np.ndarray, list]:
    """Healthy logit field ``F - g (z - p)`` ``[n, H, W]`` and the pathology layers
    ``[(idx [m], weight [m, H, W], a_p)]``, each computed only for the ``m`` subjects ``idx``
    that have that pathology."""
    field = _field(p["modes"], z[0, :, 0], x[0, 0]) - p["gravity"][:, None, None] * (z - pleura)
    kind = p["pathology"].astype(int)
    layers = []
    for k, make in ((1, lambda q, i: _consolidation(q, z, x, px)),
                    (2, lambda q, i: _interstitial(q, z, x, pleura[i], px)),
                    (3, lambda q, i: _effusion(q, z, pleura[i], surface[i]))):
        idx = np.flatnonzero(kind == k)
        if idx.size:
            layers += [(idx, w, a_p) for w, a_p in make(_subset(p, idx), idx)]
    return field.astype(np.float32), layers


def _compose(layers: list, s: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Blending ``a <- a + s w (a_p - a)`` layer by layer is affine in the healthy ``a``:
    returns ``(P, Q)`` ``[n, H, W]`` with ``a = P a_healthy + Q`` for severities ``s [n]``."""
    scale, offset = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    for idx, weight, a_p in layers:
        sw = s[idx, None, None] * weight
        scale[idx] *= 1.0 - sw
        offset[idx] = offset[idx] * (1.0 - sw) + sw * a_p
    return scale, offset


def _healthy(field: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Healthy air fraction ``AIR_MAX sigmoid(F + b)`` ``[n, H, W]`` for offsets ``b [n]``."""
    return AIR_MAX / (1.0 + np.exp(-(field + b[:, None, None].astype(np.float32))))


def _solve(field, layers, weight, target) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``b [n]`` and severities ``s [n]`` such that ``sum(weight * air) == target [n]``
    (``weight`` ``[n, H, W]``: the lung pixels' partial-volume fractions over their count).

    Mean air is increasing in ``b`` and (at ``b = B_RANGE[1]``) decreasing in ``s``: first the
    largest severity that can still reach the target (bisection), then ``b`` by bisection
    refined with safeguarded Newton steps (``d a / d b = P a (1 - a / AIR_MAX)``)."""
    n = len(target)
    mean = lambda pq, a: ((pq[0] * a + pq[1]) * weight).sum((1, 2))  # noqa: E731
    s = np.ones(n)
    pq = _compose(layers, s, field.shape)
    top = _healthy(field, np.full(n, B_RANGE[1]))
    short = mean(pq, top) < target
    if short.any():
        lo, hi = np.zeros(n), np.ones(n)
        for _ in range(SEVERITY_STEPS):
            mid = 0.5 * (lo + hi)
            ok = mean(_compose(layers, mid, field.shape), top) >= target
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        s = np.where(short, lo, 1.0)
        pq = _compose(layers, s, field.shape)
    lo, hi = np.full(n, B_RANGE[0]), np.full(n, B_RANGE[1])
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        up = mean(pq, _healthy(field, mid)) < target
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    b = 0.5 * (lo + hi)
    for _ in range(NEWTON_STEPS):
        a = _healthy(field, b)
        slope = (pq[0] * a * (1.0 - a / AIR_MAX) * weight).sum((1, 2))
        b = np.clip(b - (mean(pq, a) - target) / np.maximum(slope, 1e-9), lo, hi)
    return b, s


def _render(p: dict[str, np.ndarray], sizes: Sizes) -> dict[str, np.ndarray]:
    """Images and labels of the subjects ``p`` (stacked parameters) at ``sizes``."""
    h, w = sizes.height, sizes.width
    pz, px = 1.0 / h, 1.0 / w
    z = ((np.arange(h) + 0.5) / h)[None, :, None]
    x = ((np.arange(w) + 0.5) / w)[None, None, :]
    pleura = _pleura_depth(p["pleura"], x[0, 0])[:, None, :]  # [n, 1, W]
    kind = p["pathology"].astype(int)
    cx, half, thick = (p["effusion"][:, k, None, None] for k in range(3))
    lens = thick * np.clip(1.0 - ((x - cx) / half) ** 2, 0.0, None) ** 1.5 * (kind == 3)[:, None, None]
    surface = pleura + lens  # visceral pleura (lung surface)
    wall, rib = _chest_wall(p, z, x, pz, px)
    pleura_in, lung_in = _step(z - pleura, pz), _step(z - surface, pz)
    rib = rib * (1.0 - pleura_in)
    tissue = wall + pleura_in * (HU_FLUID - wall)
    tissue = tissue + lung_in * (HU_LUNG_TISSUE - tissue)
    field, layers = _lung_layers(p, z, x, pleura, surface, px)
    lung = lung_in >= 0.5
    count = np.maximum(lung.sum((1, 2)), 1)[:, None, None]
    b, s = _solve(field, layers, (lung_in * lung / count).astype(np.float32), p["target"])
    scale, offset = _compose(layers, s, field.shape)
    air = lung_in * (scale * _healthy(field, b) + offset)
    ct = HU_AIR * air + (1.0 - air) * tissue
    consolidated = np.zeros(air.shape, bool)
    for idx, weight, _ in layers:
        if p["pathology"][idx[0]] == 1:
            consolidated[idx] |= s[idx, None, None] * weight >= 0.5
    labels = np.zeros(air.shape, np.uint8)
    labels[rib >= 0.5] = 4
    labels[(pleura_in >= 0.5) & ~lung] = 3
    labels[lung] = 1
    labels[lung & consolidated] = 2
    aeration = (air * lung).sum((1, 2)) / np.maximum(lung.sum((1, 2)), 1)
    return {"ct": ct.astype(np.float32), "air_fraction": air.astype(np.float32), "lung_mask": labels,
            "aeration": aeration.astype(np.float32), "aeration_category": aeration_category(aeration),
            "pathology": kind.astype(np.int64),
            "pleura_row": (pleura[:, 0, :] * h - 0.5).astype(np.float32)}


def _measure(ct: np.ndarray, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    """``us_linear`` / ``us_acoustic`` ``[n, H', W']``: operator(to_model(ct)) + seeded noise."""
    out = {"us_linear": [], "us_acoustic": []}
    with torch.no_grad():
        for i in range(0, len(ct), TORCH_CHUNK):
            x = torch.from_numpy(CT.to_model(ct[i:i + TORCH_CHUNK]))[:, None]
            out["us_linear"].append(LINEAR(x)[:, 0].numpy())
            out["us_acoustic"].append(ACOUSTIC(x)[:, 0].numpy())
    ys = {k: np.concatenate(v) for k, v in out.items()}
    shape = ys["us_linear"].shape[1:]
    for key in ("us_linear", "us_acoustic"):  # noise after all geometry draws, per subject
        ys[key] = ys[key] + NOISE_STD * np.stack([rng.standard_normal(shape) for rng in rngs]).astype(np.float32)
    return {k: v.astype(np.float32) for k, v in ys.items()}


def generate(numbers: np.ndarray, *, seed: int = 0, sizes: Sizes, **controls: float) -> dict[str, np.ndarray]:
    """Render subjects ``numbers`` (int64 ``[n]``) of the lung phantom at ``sizes``.

    Controls: ``aeration`` (target mean air fraction of the lung, 0.2-0.98), ``pathology``
    (0 none, 1 consolidation, 2 interstitial, 3 effusion). Returns the arrays of the dataset
    card (``ct``, ``air_fraction``, ``lung_mask``, ``aeration``, ``aeration_category``,
    ``pathology``, ``pleura_row``, ``us_linear``, ``us_acoustic``), leading axis ``n``."""
    if sizes.height < 16 or sizes.width < 16:
        raise PhantomError(f"lung phantom needs height and width >= 16, got {sizes}")
    numbers = np.asarray(numbers, dtype=np.int64)
    rngs = [subject_rng(NAME, seed, int(k)) for k in numbers]
    if not rngs:
        return _empty(sizes)
    out = _render(_stack([_draw(rng, controls) for rng in rngs]), sizes)
    out.update(_measure(out["ct"], rngs))
    return out


def _empty(sizes: Sizes) -> dict[str, np.ndarray]:
    """Zero-subject output with the right dtypes and trailing shapes."""
    h, w = sizes.height, sizes.width
    hm, wm = LINEAR.output_shape(h, w)
    f = lambda *s: np.zeros((0, *s), np.float32)  # noqa: E731
    return {"ct": f(h, w), "air_fraction": f(h, w), "lung_mask": np.zeros((0, h, w), np.uint8),
            "aeration": f(), "aeration_category": np.zeros(0, np.int64), "pathology": np.zeros(0, np.int64),
            "pleura_row": f(w), "us_linear": f(hm, wm), "us_acoustic": f(hm, wm)}


SPEC = register_phantom(PhantomSpec(
    name=NAME,
    card=__doc__,
    generate=generate,
    modalities={
        "ct": CT,
        "air_fraction": AIR,
        "us_linear": Modality("us_linear", "a.u. (linear ultrasound)", -1.0, 1.0,
                              "attenuated, PSF-blurred, laterally subsampled image (LinearUltrasound)"),
        "us_acoustic": Modality("us_acoustic", "a.u. (log-compressed B-mode)", -0.1, 1.0,
                                "pulse-echo B-mode: pleural line, rib shadows, A-lines (AcousticUltrasound)"),
    },
    labels={
        "lung_mask": "label map: 0 chest wall, 1 lung, 2 consolidated lung, 3 pleural effusion, 4 rib (uint8)",
        "aeration": "mean air fraction of the lung pixels (lung_mask 1 or 2) [fraction]",
        "aeration_category": "paper's aeration category: 0 (< 0.6), 1 (0.6-0.85), 2 (>= 0.85) (int)",
        "pathology": "0 none, 1 consolidation, 2 interstitial, 3 effusion (int)",
        "pleura_row": "row of the parietal pleural line per column [pixels]",
    },
    controls={
        "aeration": Control(0.2, 0.98, step=0.01, default=0.75, description="target mean air fraction of the lung"),
        "pathology": Control(0, 3, step=1, default=0,
                             description="0 none, 1 consolidation, 2 interstitial, 3 effusion"),
    },
    sizes={"ci": Sizes(32, 32), "smoke": Sizes(32, 32), "cpu": Sizes(64, 64), "paper": Sizes(256, 256)},
    label_maps=("lung_mask",),
))
