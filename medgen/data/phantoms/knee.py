"""``knee``: a knee radiograph and the T1 MRI volume behind it (xray2mri_knee_volume paper).

Dataset card
------------
The paper pairs an antero-posterior (AP) knee radiograph (the knee joint cropped by a
detector, 256x256) with a coronal T1-weighted MRI of the same knee (80 slices, of which
slices 13..62 -- proportional positions 0.16-0.78 -- are kept, S = 50, each 256x256), and
labels each knee with its Kellgren-Lawrence (KL) grade 0-4 (OAI). No such data are public,
so this module renders both images from ONE seeded 3D knee.

* **Volume and axes.** Normalised coordinates in ``[-1, 1]``: ``x`` across the image columns
  (medio-lateral), ``y`` down the rows (cranio-caudal: femur at the top, tibia at the bottom),
  ``z`` antero-posterior (``-1`` anterior, the patella side). One unit is ``UNIT_CM`` = 6 cm.
  The full AP field of view holds ``F = round(S * 80 / 50)`` slices; slices
  ``round(F * 13 / 80) .. + S - 1`` are kept as the MRI (slice 0 is the most anterior kept
  slice). Each slice is ``r`` thin sub-slices (``r`` chosen so that a sub-slice is about
  ``SUBSLICE_PX`` pixels thick; 1-2 at the preset sizes), averaged into the MRI slice
  (partial volume of a thick slice) and summed into the radiograph.
* **Anatomy** (analytic implicit shapes, approximate signed distances, rendered with
  anti-aliased partial-volume fractions so edges move smoothly with sub-pixel geometry):
  distal femur (shaft, metaphysis, medial and lateral condyle ellipsoids with the
  intercondylar notch), tibia (flaring shaft, plateau with a shallow dish under each
  condyle and the two tibial spines), fibular head and shaft, patella, each bone with a
  cortical shell (``CORTEX``) around fatty marrow; femoral cartilage (a shell on the distal,
  weight-bearing surface of each condyle) and tibial cartilage (a layer on each compartment of the plateau),
  wedge-shaped menisci around each compartment, Hoffa's and the popliteal fat pad, muscle,
  subcutaneous fat (thickness drawn, "BMI") and skin. Left and right knees (the medial
  compartment on either side of the image), knee position, size and shape vary per subject.
* **KL grade** drives, with the medial compartment worse than the lateral one:
  joint-space narrowing (cartilage thickness = half the joint-space width on each side,
  ``JSW_FACTOR``), meniscal thinning (``MENISCUS_HEIGHT``), marginal osteophytes on the
  tibial plateau and the femoral condyles from grade 2 (``OSTEOPHYTE``, medial ones 25 %
  larger) and subchondral sclerosis (a dense band of ``SCLEROSIS_DEPTH`` under the joint
  surfaces) from grade 3 (medial compartment at grade 3, both at grade 4). Grades are drawn
  with the OAI-like prior ``KL_PRIOR``. The KL0 joint space (``JSW_KL0``, 0.12-0.16 units,
  6-8 % of the field of view) is about twice the real ratio so that it stays resolvable at
  64 px (about 4 px at KL0, 2 px at KL4; at 32 px the KL3-KL4 gaps are sub-pixel).
* **MRI** ``mri`` ``[n, S, H, W]``, a.u. in ``[0, 1]`` (T1-like: fat and marrow bright,
  muscle dark-grey, cartilage intermediate, menisci and cortical bone black, sclerosis
  dark; ``T1_SIGNAL``) times a smooth multiplicative bias field (quadratic log-polynomial,
  ``BIAS_STRENGTH``), with Rician noise of standard deviation ``mri_noise`` (0.02-0.04).
* **Radiograph** ``xray`` ``[n, H, W]``, film density in ``[0, 1]`` (bone white): the line
  integral ``P`` of the linear attenuation coefficients (``ATTENUATION``, 1/cm at about
  60 keV) through the WHOLE AP field of view of the same volume, blurred by the detector
  PSF (``XRAY_BLUR_PX``), with quantum noise whose std grows as ``exp(P / 2)`` (fewer
  photons behind bone), through a sigmoid film (H&D) curve of log exposure
  (``FILM_GAMMA``) whose mid point an automatic exposure control sets per image (the median
  line integral over the central third of the field plus ``AEC_SHIFT``). Soft tissues
  attenuate alike (0.18-0.22 /cm), so cartilage, menisci and fat pads are nearly invisible
  on it, as in life.
* **Ground truth** (see ``SPEC.labels``): ``kl_grade``; ``slice_depth`` (the paper's target
  depth ``d``: slice index / (S - 1)); ``slice_position`` (proportional position of each
  slice in the full 80-slice-like stack, 0.16-0.78); ``bone_mask`` (0 none, 1 femur,
  2 tibia, 3 fibula, 4 patella; osteophytes belong to their bone); ``tissue`` (``TISSUES``:
  the tissue covering most of each MRI voxel); ``rssim_mask`` ``[n, H, W]`` (the RSSIM
  region: rows from the lower third of the femur visible in the image to the upper third
  of the tibia, columns spanning the bones and osteophytes plus 0.05 units); ``jsw_true``
  (mean over the two compartments of the minimum bone-to-bone joint-space width that the
  AP projection shows, in radiograph pixels along the rows), ``jsw_compartments``
  ``[n, 2]`` (medial, lateral); ``koa_prob`` ``[n, 5]``: a STAND-IN for the paper's
  pre-trained KOA classifier -- softmax of ``-(k - grade)^2 / (2 * 0.7^2)`` plus per-subject
  logit noise (std 0.8): about 75 % top-1 accuracy, errors almost always one grade off (published
  KL-grade CNNs reach about 65-70 %), never one-hot; ``medial_right`` (1 when
  the medial compartment is on the image's right); ``knee_scale``.
* **Controls** (demo sliders): ``kl_grade`` (0-4, integer), ``knee_scale`` (0.85-1.15,
  size of the whole knee about its centre), ``mri_noise`` (0-0.1). A fixed control
  replaces the drawn value; every other draw is unchanged, so the same patient can be
  shown at each KL grade.
* **Checks** (``tests/phantoms/test_knee.py``): the JSW that
  :func:`medgen.measure.knee.joint_space_width` measures on the radiograph falls with the
  grade (6 subjects at 64 px: 4.3, 3.8, 3.2, 2.6, 1.8 px at KL0-4) and tracks ``jsw_true``
  (correlation over 40 random subjects 0.74-0.84 at 32 px, 0.84-0.96 at 64 px, 0.998 at
  128 px; at 256 px within 0.55 px). Giving cartilage and menisci the properties of
  muscle changes their MRI voxels by 0.084 a.u. on average but the radiograph pixels over
  them by 0.009, while bone stands 0.41 above soft tissue on the radiograph.
* **Speed** (NumPy, one core, CPU time): ``ci`` ~270 subjects/s, ``smoke`` ~400, ``cpu``
  ~54 (870 MRI slices/s), ``paper`` ~1.2 (60 MRI slices/s), each subject being the MRI
  volume, the radiograph and all labels.
* **Ignored**: trabecular texture, ligaments and tendons (cruciates, collaterals, patellar
  tendon), vessels, joint effusion, bone marrow lesions, knee flexion, rotation and varus
  or valgus tilt of the joint line, posterior tibial slope, scatter and heel effect, MRI
  chemical shift, motion and Gibbs ringing.

Sizes: ``ci`` 32x32x8, ``smoke`` 32x32x10, ``cpu`` 64x64x16, ``paper`` 256x256x50; any
``H, W >= 16`` and depth ``>= 4`` works. Rendering is hand-written vectorised NumPy (no
library renders implicit anatomies into partial-volume voxels), in chunks of at most
``VOXEL_BUDGET`` voxels (subjects x sub-slices x H x W); blur is
:func:`scipy.ndimage.gaussian_filter`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from medgen.data.phantoms.base import (Control, Modality, PhantomError, PhantomSpec, Sizes,
                                       register_phantom, subject_rng)

__all__ = ["SPEC", "generate", "TISSUES", "BONES"]

NAME = "knee"

# --- acquisition geometry (paper: 80 coronal T1 slices, slices 13..62 kept) ---------------------
FULL_SLICES_PAPER = 80  # slices of the full T1 stack
KEPT_FIRST_PAPER = 13  # first kept slice (0-based) of the full stack
KEPT_SLICES_PAPER = 50  # kept slices S at paper size
UNIT_CM = 6.0  # one normalised unit (half the field of view) in cm
SUBSLICE_PX = 1.5  # sub-slice thickness target, in pixel widths (sets r)
VOXEL_BUDGET = 1 << 17  # voxels rendered at once: small blocks stay in cache (fastest measured)

# --- tissues: id, name, attenuation (1/cm, ~60 keV), T1 signal (a.u.) ----------------------------
TISSUES = ("air", "skin", "fat", "muscle", "cortical_bone", "marrow", "sclerotic_bone",
           "cartilage", "meniscus")
AIR, SKIN, FAT, MUSCLE, CORTEX_T, MARROW, SCLEROSIS_T, CARTILAGE, MENISCUS = range(len(TISSUES))
ATTENUATION = np.array([0.0, 0.21, 0.18, 0.21, 0.50, 0.26, 0.40, 0.215, 0.22])
T1_SIGNAL = np.array([0.0, 0.50, 0.80, 0.30, 0.03, 0.72, 0.25, 0.42, 0.06])
BONES = ("none", "femur", "tibia", "fibula", "patella")  # bone_mask label values 0..4

# --- KL grade effects (index = grade 0..4) ---------------------------------------------------------
KL_PRIOR = (0.35, 0.20, 0.22, 0.15, 0.08)  # OAI-like share of grades 0..4 when not fixed
JSW_KL0 = (0.12, 0.16)  # KL0 joint-space width range (normalised units, both compartments)
JSW_FACTOR = np.array([[1.0, 0.86, 0.66, 0.44, 0.22],  # medial compartment: JSW / JSW at KL0
                       [1.0, 0.95, 0.85, 0.72, 0.55]])  # lateral compartment
MENISCUS_HEIGHT = np.array([0.09, 0.09, 0.08, 0.065, 0.05])  # peripheral meniscus height (units)
OSTEOPHYTE = np.array([0.0, 0.0, 0.035, 0.06, 0.09])  # marginal osteophyte size (units)
OSTEOPHYTE_MEDIAL = 1.25  # medial osteophytes are this much larger than lateral ones
SCLEROSIS = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]])  # sclerosis on (medial, lateral) rows
SCLEROSIS_DEPTH = (0.04, 0.06)  # subchondral sclerotic band depth range (units)
KOA_SIGMA, KOA_LOGIT_NOISE = 0.7, 0.8  # stand-in classifier: grade-peak width, logit noise (~70 % top-1)

# --- anatomy constants (normalised units, knee-local frame: plateau level at v = 0) -------------
CORTEX = 0.02  # cortical shell thickness
SKIN_T = 0.015  # skin thickness
FAT_T = (0.04, 0.14)  # subcutaneous fat thickness range ("BMI")
BONE_W = 0.05  # AP position (w) of the femoral and tibial shafts and the plateau
CONDYLE_W = 0.08  # AP position of the condyle centres (posterior of the shaft)
FEMUR_SHAFT_R = 0.24  # femoral shaft radius
METAPHYSIS = ((0.0, -0.56, 0.05), (0.42, 0.30, 0.40))  # centre, radii of the distal femoral flare
TIBIA_SHAFT_R = (0.20, 0.19)  # tibial shaft half-widths (u, w)
TIBIA_FLARE_L = 0.25  # decay length of the tibial flare below the plateau
DISH = (0.012, 0.15)  # depth and half-width of the plateau dish under each condyle
SPINES = (0.07, 0.04, 0.025)  # tibial spine height, offset from the centre, width
PLATEAU_AP = 0.40  # plateau half-depth (w)
CART_UW = (0.17, 0.30)  # half-extent of the tibial cartilage on each compartment (u, w)
MENISCUS_UW = (0.21, 0.36, 0.55)  # meniscus outer half-extent (u, w) and inner/outer ratio
PATELLA = ((0.02, -0.40, -0.52), (0.19, 0.23, 0.09))  # centre, radii
FIBULA_HEAD = ((0.44, 0.24, 0.30), (0.10, 0.11, 0.10))  # centre (lateral side), radii
FIBULA_SHAFT_R = 0.055
FAT_PADS = (((0.0, -0.05, 0.62), (0.30, 0.45, 0.20)),  # popliteal fat
            ((0.0, 0.04, -0.45), (0.22, 0.12, 0.12)))  # Hoffa's infrapatellar fat pad

# --- image formation -----------------------------------------------------------------------------
BIAS_STRENGTH = 0.08  # std of the log bias field's polynomial coefficients
XRAY_BLUR_PX = 0.6  # detector PSF std (pixels)
XRAY_NOISE = 0.012  # quantum noise std of the line integral where the film is at mid density
FILM_GAMMA = 5.0  # slope of the film curve (logit of density per unit of log exposure)
AEC_SHIFT = 0.06  # mid-density line integral minus the median one in the AEC chamber

CONTROLS = {
    "kl_grade": Control(0, 4, step=1, default=2, description="Kellgren-Lawrence grade"),
    "knee_scale": Control(0.85, 1.15, step=0.01, default=1.0, description="knee size (x)"),
    "mri_noise": Control(0.0, 0.1, step=0.005, default=0.03, description="MRI Rician noise std (a.u.)"),
}


# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator) -> dict[str, Any]:
    """One subject's parameters (normalised units), drawn in a fixed order before any noise."""
    return {
        "kl_grade": int(rng.choice(5, p=KL_PRIOR)),
        "knee_scale": rng.uniform(0.9, 1.1),
        "mri_noise": rng.uniform(0.02, 0.04),
        "medial_right": int(rng.integers(2)),
        "centre": rng.normal(0.0, (0.03, 0.04, 0.03)),  # knee centre (x, y of plateau, z)
        "jsw0": rng.uniform(*JSW_KL0),
        "plat_w": rng.uniform(0.44, 0.50),  # plateau half-width
        "cond_sep": rng.uniform(0.23, 0.27),  # condyle centre offset from the knee centre
        "cond_r": rng.uniform((0.17, 0.20, 0.40), (0.20, 0.25, 0.46)),  # condyle radii (u, v, w)
        "leg_r": rng.uniform((0.80, 0.80), (0.92, 0.90)),  # leg outline half-widths (u, w)
        "fat": rng.uniform(*FAT_T),
        "patella": rng.normal(0.0, 0.03, 2),  # patella offset (u, v)
        "osteo": rng.uniform(0.8, 1.2),  # osteophyte size factor
        "scl_depth": rng.uniform(*SCLEROSIS_DEPTH),
        "koa_noise": rng.normal(0.0, KOA_LOGIT_NOISE, 5),
        "bias": rng.normal(0.0, BIAS_STRENGTH, 7),
    }


def _params(draws: list[dict[str, Any]], controls: dict[str, float]) -> dict[str, np.ndarray]:
    """Stack per-subject draws into arrays (leading axis n), apply controls, derive the geometry."""
    p = {k: np.array([d[k] for d in draws], dtype=np.float64) for k in draws[0]}
    if "kl_grade" in controls:
        grade = controls["kl_grade"]
        if grade != round(grade):
            raise PhantomError(f"control 'kl_grade' of phantom 'knee' must be an integer, got {grade!r}")
        p["kl_grade"][:] = round(grade)
    for key in ("knee_scale", "mri_noise"):
        if key in controls:
            p[key][:] = controls[key]
    g = p["kl_grade"].astype(np.int64)
    p["kl_grade"] = g
    # Joint-space width per compartment (medial, lateral): [n, 2], knee-local units.
    p["jsw"] = p["jsw0"][:, None] * JSW_FACTOR[:, g].T
    p["osteo_r"] = OSTEOPHYTE[g] * p["osteo"]
    p["men_h"] = MENISCUS_HEIGHT[g]
    p["scl_on"] = SCLEROSIS[:, g].T.astype(np.float64)  # [n, 2]
    # Condyle centres: lowest point at v = DISH depth - jsw, so the gap at the compartment
    # centre (plateau at the dish bottom) is exactly jsw; medial condyle 5 % larger.
    r = p["cond_r"]
    p["cond_ry"] = np.stack([r[:, 1] * 1.05, r[:, 1]], axis=1)
    p["cond_rx"] = np.stack([r[:, 0] * 1.05, r[:, 0]], axis=1)
    p["cond_cy"] = DISH[0] - p["jsw"] - p["cond_ry"]
    return p


# ---------------------------------------------------------------------------------------------------
# implicit shapes (approximate signed distances, negative inside; knee-local units)
# ---------------------------------------------------------------------------------------------------
def _ellipsoid(du: np.ndarray, dv: np.ndarray, dw: np.ndarray, rx, ry, rz) -> np.ndarray:
    """Signed distance (Quilez's k0 (k0 - 1) / k1 bound) of an axis-aligned ellipsoid at the origin."""
    k0 = np.sqrt((du / rx) ** 2 + (dv / ry) ** 2 + (dw / rz) ** 2)
    k1 = np.sqrt((du / rx**2) ** 2 + (dv / ry**2) ** 2 + (dw / rz**2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _ellipse(du: np.ndarray, dw: np.ndarray, ru, rw) -> np.ndarray:
    """Signed distance (approximate) of an infinite elliptic cylinder along v."""
    return (np.sqrt((du / ru) ** 2 + (dw / rw) ** 2) - 1.0) * np.minimum(ru, rw)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two distances (polynomial smooth minimum, blend width k)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _p(p: dict[str, np.ndarray], key: str, col: int | None = None) -> np.ndarray:
    """Parameter ``key`` (column ``col``) shaped ``[n, 1, 1, 1]`` for broadcasting over a volume."""
    v = p[key] if col is None else p[key][:, col]
    return v.reshape(-1, 1, 1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------
class _Layout:
    """Sampling of the volume for ``sizes``: full stack F, kept slices, sub-slices r."""

    def __init__(self, sizes: Sizes) -> None:
        h, w, s = sizes.height, sizes.width, sizes.depth
        if h < 16 or w < 16 or s < 4:
            raise PhantomError(f"knee phantom needs height, width >= 16 and depth >= 4, got {sizes}")
        self.h, self.w, self.s = h, w, s
        self.full = max(s + 2, int(round(s * FULL_SLICES_PAPER / KEPT_SLICES_PAPER)))
        self.first = int(round(self.full * KEPT_FIRST_PAPER / FULL_SLICES_PAPER))
        pixel = 2.0 / max(h, w)
        self.r = max(1, int(round((2.0 / self.full) / (SUBSLICE_PX * pixel))))
        nz = self.full * self.r
        self.dz = 2.0 / nz  # sub-slice thickness (units)
        self.z = (-1.0 + (np.arange(nz) + 0.5) * self.dz).astype(np.float32)
        self.y = (-1.0 + (np.arange(h) + 0.5) * 2.0 / h).astype(np.float32)
        self.x = (-1.0 + (np.arange(w) + 0.5) * 2.0 / w).astype(np.float32)
        self.soft = float((2.0 / h * 2.0 / w * self.dz) ** (1.0 / 3.0))  # edge ramp width (units)
        self.slice_position = ((self.first + np.arange(s) + 0.5) / self.full).astype(np.float32)

    def slabs(self, n_subjects: int) -> list[tuple[int, int, bool]]:
        """Sub-slice ranges ``(a, b, kept)`` of at most VOXEL_BUDGET voxels for n subjects,
        each wholly inside or outside the kept slices, on slice boundaries."""
        per_slice = n_subjects * self.r * self.h * self.w
        step = max(1, VOXEL_BUDGET // per_slice)
        cuts = [(0, self.first, False), (self.first, self.first + self.s, True),
                (self.first + self.s, self.full, False)]
        out = []
        for a, b, kept in cuts:
            for c in range(a, b, step):
                out.append((c * self.r, min(b, c + step) * self.r, kept))
        return out


Box = tuple[slice, slice]  # (sub-slices, rows) of a slab


def _inside(outer: Box, inner: Box) -> tuple[Box, Box]:
    """``inner`` clipped to ``outer``: (absolute box, box relative to ``outer``'s start)."""
    a = tuple(slice(max(i.start, o.start), max(min(i.stop, o.stop), max(i.start, o.start)))
              for o, i in zip(outer, inner))
    return a, tuple(slice(x.start - o.start, x.stop - o.start) for x, o in zip(a, outer))


class _Frame:
    """Knee-local coordinates of one slab of a chunk of subjects, and boxes of it.

    ``u`` (medial -, lateral +) ``[n, 1, 1, W]``, ``v`` (down from the tibial plateau)
    ``[n, 1, H, 1]``, ``w`` (anterior -, posterior +) ``[n, z, 1, 1]``, all divided by the knee
    scale; the image x is mirrored when the medial compartment is on the image's right. A box
    is the block of sub-slices and rows that holds a local range of ``v`` and ``w`` for every
    subject of the chunk (plus the edge ramp), aligned to whole slices; shapes are evaluated
    only inside their box, which is what makes rendering fast.
    """

    def __init__(self, p: dict[str, np.ndarray], lay: _Layout, za: int, zb: int) -> None:
        self.lay, self.r = lay, lay.r
        self.scale = _p(p, "knee_scale")
        self.centre = p["centre"] * 1.0
        self.ks = p["knee_scale"] * 1.0
        mirror = np.where(_p(p, "medial_right") > 0, -1.0, 1.0).astype(np.float32)
        self.u = mirror * (lay.x[None, None, None, :] - _p(p, "centre", 0)) / self.scale
        self.v = (lay.y[None, None, :, None] - _p(p, "centre", 1)) / self.scale
        self.w = (lay.z[None, za:zb, None, None] - _p(p, "centre", 2)) / self.scale
        self.z_img = lay.z[za:zb]
        self.gain = self.scale / np.float32(lay.soft)  # local distance -> ramp units
        self.margin = lay.soft + 2.0 / min(lay.h, lay.w)  # image units around a box

    def box(self, v_lo: float = -np.inf, v_hi: float = np.inf,
            w_lo: float = -np.inf, w_hi: float = np.inf) -> Box:
        """Sub-slices and rows holding local ``v`` in [v_lo, v_hi] and ``w`` in [w_lo, w_hi]."""
        def span(coord: np.ndarray, centre: np.ndarray, lo: float, hi: float, align: int) -> slice:
            with np.errstate(invalid="ignore"):
                a = np.min(centre + self.ks * lo) - self.margin
                b = np.max(centre + self.ks * hi) + self.margin
            idx = np.nonzero((coord >= a) & (coord <= b))[0]
            if idx.size == 0:
                return slice(0, 0)
            start, stop = idx[0] // align * align, -(-(idx[-1] + 1) // align) * align
            return slice(int(start), int(min(stop, coord.size)))
        return (span(self.z_img, self.centre[:, 2], w_lo, w_hi, self.r),
                span(self.lay.y, self.centre[:, 1], v_lo, v_hi, 1))

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(u, v, w)`` restricted to ``box``."""
        return self.u, self.v[:, :, box[1]], self.w[:, box[0]]

    def frac(self, sdf: np.ndarray) -> np.ndarray:
        """Occupancy of a voxel from the signed distance at its centre (linear ramp)."""
        return np.clip(0.5 - sdf * self.gain, 0.0, 1.0)


class _Accumulator:
    """Front-to-back compositing of nested partial-volume objects into attenuation, T1 and labels.

    An object is a list of nested occupancy fractions ``f_0 >= f_1 >= ...`` (outer to inner
    shell) with one tissue each: tissue ``i`` covers ``f_i - f_{i+1}`` of a voxel. Objects added
    earlier occlude later ones: the remaining transmittance ``T`` starts at 1 and each object
    multiplies it by ``1 - f_0``. The tissue label of an MRI voxel is the tissue (of one
    object) with the largest slice-averaged cover.
    """

    def __init__(self, shape: tuple[int, int, int, int], r: int, kept: bool) -> None:
        n, nz, h, w = shape
        self.r, self.kept = r, kept
        self.t = np.ones(shape, np.float32)  # remaining transmittance
        self.mu = np.zeros(shape, np.float32)  # attenuation (1/cm)
        if kept:
            self.t1 = np.zeros(shape, np.float32)
            self.best = np.zeros((n, nz // r, h, w), np.float32)
            self.tissue = np.zeros((n, nz // r, h, w), np.uint8)
            self.bone = np.zeros((n, nz // r, h, w), np.uint8)

    def slice_mean(self, a: np.ndarray) -> np.ndarray:
        """Average ``[n, z, H, W]`` sub-slices into ``[n, z / r, H, W]`` slices."""
        n, nz, h, w = a.shape
        return a if self.r == 1 else a.reshape(n, nz // self.r, self.r, h, w).mean(axis=2)

    def add(self, shells: list[tuple[np.ndarray, int]], box: Box, bone: int = 0) -> None:
        """Composite one object inside ``box``: ``shells`` = [(fraction, tissue id), ...] outer to
        inner, each fraction shaped like the box ``[n, z, h, W]``."""
        zs, rs = box
        t = self.t[:, zs, rs]
        sl = slice(zs.start // self.r, zs.stop // self.r)
        for i, (f, tissue) in enumerate(shells):
            cover = (f - shells[i + 1][0]) * t if i + 1 < len(shells) else f * t
            self.mu[:, zs, rs] += cover * np.float32(ATTENUATION[tissue])
            if self.kept:
                self.t1[:, zs, rs] += cover * np.float32(T1_SIGNAL[tissue])
                c, best = self.slice_mean(cover), self.best[:, sl, rs]
                win = c > best
                best[win] = c[win]
                self.tissue[:, sl, rs][win] = tissue
        if self.kept and bone:
            self.bone[:, sl, rs][self.slice_mean(shells[0][0] * t) >= 0.5] = bone
        t *= 1.0 - shells[0][0]

    def finish(self) -> None:
        """The remaining transmittance is air (attenuation and T1 signal 0)."""
        if self.kept:
            self.tissue[self.slice_mean(self.t) > self.best] = AIR


def _plateau(fr: _Frame, comp_u: np.ndarray) -> np.ndarray:
    """Tibial plateau surface ``v_top(u)`` ``[n, 1, 1, W]``: a dish under each condyle, two spines."""
    u, v_top = fr.u, 0.0
    for c in range(2):
        v_top = v_top + DISH[0] * np.clip(1.0 - ((u - comp_u[c]) / DISH[1]) ** 2, 0.0, None)
    for sgn in (-1.0, 1.0):
        v_top = v_top - SPINES[0] * np.exp(-(((u - sgn * SPINES[1]) / SPINES[2]) ** 2))
    return v_top


def _condyle(p: dict[str, np.ndarray], c: int, u, v, w, comp_u: np.ndarray) -> np.ndarray:
    """Signed distance of femoral condyle ``c`` (0 medial, 1 lateral)."""
    return _ellipsoid(u - comp_u[c], v - _p(p, "cond_cy", c), w - CONDYLE_W,
                      _p(p, "cond_rx", c), _p(p, "cond_ry", c), _p(p, "cond_r", 2))


def _bones(p: dict[str, np.ndarray], fr: _Frame, acc: _Accumulator, comp_u: np.ndarray,
           v_top: np.ndarray) -> None:
    """Femur, tibia (with osteophytes and sclerosis), fibula and patella."""
    grade_scl = np.any(p["scl_on"] > 0)
    # --- femur: shaft + metaphysis (smooth union) + two condyles; box above the plateau ---
    # Each part is evaluated in its own box; outside it the part is > 0.1 away, where the
    # exact distance changes no occupancy and no smooth union.
    fbox = fr.box(v_hi=0.12)
    u, v, w = fr.coords(fbox)
    femur = np.maximum(_ellipse(u, w - BONE_W, FEMUR_SHAFT_R, FEMUR_SHAFT_R), v - METAPHYSIS[0][1])
    (mc, mr) = METAPHYSIS
    ab, mrel = _inside(fbox, fr.box(mc[1] - mr[1] - 0.15, mc[1] + mr[1] + 0.15))
    _, v2, w2 = fr.coords(ab)
    femur[:, mrel[0], mrel[1]] = _smin(femur[:, mrel[0], mrel[1]],
                                       _ellipsoid(u - mc[0], v2 - mc[1], w2 - mc[2], *mr), 0.15)
    cbox, crel = _inside(fbox, fr.box(float(np.min(p["cond_cy"] - p["cond_ry"])) - 0.12, 0.12))
    _, vc, wc = fr.coords(cbox)
    cond = [_condyle(p, c, u, vc, wc, comp_u) for c in range(2)]
    femur[:, crel[0], crel[1]] = _smin(femur[:, crel[0], crel[1]], np.minimum(cond[0], cond[1]), 0.06)
    # --- tibia: flaring elliptic shaft cut by the plateau surface; box below the spines.
    # Marginal osteophytes (grade >= 2; medial ones 25 % larger) are a lip of the plateau rim
    # on each side: the half-width grows by s near the plateau and the rim rises by s / 2. ---
    tbox = fr.box(v_lo=-SPINES[0] - 0.1)
    u, vt, wt = fr.coords(tbox)
    flare = np.exp(-np.maximum(vt, 0.0) / TIBIA_FLARE_L)
    plat_w, ost = _p(p, "plat_w"), _p(p, "osteo_r")
    s_side = [ost * OSTEOPHYTE_MEDIAL, ost]  # medial, lateral osteophyte size
    tib_a = TIBIA_SHAFT_R[0] + (plat_w - TIBIA_SHAFT_R[0]) * flare
    lip = [s * np.exp(-(((vt - 0.03) / (0.8 * s + 1e-3)) ** 2)) for s in s_side]
    tib_a = tib_a + np.where(u < 0, lip[0], lip[1])
    tib_b = TIBIA_SHAFT_R[1] + (PLATEAU_AP - TIBIA_SHAFT_R[1]) * flare
    s_u = np.where(u < 0, s_side[0], s_side[1])
    rise = 0.5 * s_u * np.clip((np.abs(u) - plat_w + 0.3 * s_u) / (1.3 * s_u + 1e-6), 0.0, 1.0)
    tibia = np.maximum(_ellipse(u, wt - BONE_W, tib_a, tib_b), v_top - rise - vt)
    # Femoral marginal osteophytes: spurs centred on the outer surface of each condyle.
    if np.any(ost > 0):
        absent = np.float32(10.0) * (ost <= 0)  # no osteophyte: push its distance far away
        ab, rel = _inside(fbox, fr.box(-0.5, 0.12, CONDYLE_W - 0.3, CONDYLE_W + 0.3))
        _, v2, w2 = fr.coords(ab)
        for c, sgn in ((0, -1.0), (1, 1.0)):
            cy, ry, rx = _p(p, "cond_cy", c), _p(p, "cond_ry", c), _p(p, "cond_rx", c)
            edge = comp_u[c] + sgn * rx * np.sqrt(1.0 - 0.55**2)  # outer surface at v = cy + 0.55 ry
            o = _ellipsoid(u - edge, v2 - (cy + 0.55 * ry), w2 - CONDYLE_W,
                           0.5 * s_side[c] + 1e-4, 0.9 * s_side[c] + 1e-4, 0.25)
            femur[:, rel[0], rel[1]] = _smin(femur[:, rel[0], rel[1]], o + absent, 0.02)
    # --- subchondral sclerosis (grade >= 3): a dense band under the joint surfaces ---
    scl_f = np.zeros_like(femur) if grade_scl else None
    scl_t = np.zeros_like(tibia) if grade_scl else None
    if grade_scl:
        depth = _p(p, "scl_depth")
        for c in range(2):
            on = _p(p, "scl_on", c)
            # Under the weight-bearing bottom of the condyle: its lower third, central 60 %.
            cy, ry, rx = _p(p, "cond_cy", c), _p(p, "cond_ry", c), _p(p, "cond_rx", c)
            bearing = fr.frac(cy + 0.5 * ry - vc) * fr.frac(np.abs(u - comp_u[c]) - 0.6 * rx)
            band_f = fr.frac(cond[c]) * (1.0 - fr.frac(cond[c] + depth)) * bearing
            scl_f[:, crel[0], crel[1]] += on * band_f
            ab, rel = _inside(tbox, fr.box(-0.1, 0.1))
            _, v2, _ = fr.coords(ab)
            band_t = fr.frac(v2 - v_top - depth) * fr.frac(np.abs(u - comp_u[c]) - CART_UW[0])
            scl_t[:, rel[0], rel[1]] += on * band_t
    for sdf, bone, scl, box in ((femur, 1, scl_f, fbox), (tibia, 2, scl_t, tbox)):
        marrow = fr.frac(sdf + CORTEX)
        shells = [(fr.frac(sdf), CORTEX_T), (marrow, MARROW)]
        if scl is not None:
            shells.append((marrow * np.minimum(scl, 1.0), SCLEROSIS_T))
        acc.add(shells, box, bone)
    # --- fibula (head + shaft) and patella ---
    (hc, hr), (pc, pr) = FIBULA_HEAD, PATELLA
    box = fr.box(hc[1] - hr[1], np.inf, hc[2] - hr[2], hc[2] + hr[2])
    u, v, w = fr.coords(box)
    shaft = np.maximum(_ellipse(u - hc[0] + 0.02, w - hc[2], FIBULA_SHAFT_R, FIBULA_SHAFT_R), hc[1] - v)
    fib = _smin(_ellipsoid(u - hc[0], v - hc[1], w - hc[2], *hr), shaft, 0.04)
    acc.add([(fr.frac(fib), CORTEX_T), (fr.frac(fib + CORTEX), MARROW)], box, 3)
    shift = p["patella"][:, 1]
    box = fr.box(pc[1] - pr[1] + float(shift.min()), pc[1] + pr[1] + float(shift.max()),
                 pc[2] - pr[2], pc[2] + pr[2])
    u, v, w = fr.coords(box)
    pat = _ellipsoid(u - pc[0] - _p(p, "patella", 0), v - pc[1] - _p(p, "patella", 1), w - pc[2], *pr)
    acc.add([(fr.frac(pat), CORTEX_T), (fr.frac(pat + CORTEX), MARROW)], box, 4)


def _soft_tissue(p: dict[str, np.ndarray], fr: _Frame, acc: _Accumulator, comp_u: np.ndarray,
                 v_top: np.ndarray) -> None:
    """Cartilage, menisci, fat pads and the leg (skin > subcutaneous fat > muscle)."""
    # --- cartilage: femoral shell (distal surface of each condyle) and tibial layer, jsw / 2 thick ---
    box = fr.box(float(np.min(p["cond_cy"])) - 0.03, 0.1, CONDYLE_W - 0.6, CONDYLE_W + 0.6)
    u, v, w = fr.coords(box)
    cart = None
    for c in range(2):
        half = 0.5 * _p(p, "jsw", c)
        cy, ry, rx = _p(p, "cond_cy", c), _p(p, "cond_ry", c), _p(p, "cond_rx", c)
        articular = np.maximum(cy + 0.35 * ry - v, np.abs(u - comp_u[c]) - 0.9 * rx)  # distal surface
        fem_c = np.maximum(_condyle(p, c, u, v, w, comp_u) - half, articular)
        tib_c = np.maximum(np.maximum(v_top - half - v, v - v_top - 0.06),
                           _ellipse(u - comp_u[c], w - BONE_W, *CART_UW))
        both = np.minimum(fem_c, tib_c)
        cart = both if cart is None else np.minimum(cart, both)
    acc.add([(fr.frac(cart), CARTILAGE)], box)
    # --- menisci: wedges on the plateau rim of each compartment, thickest outside ---
    ru, rw, inner = MENISCUS_UW
    box = fr.box(-SPINES[0] - float(p["men_h"].max()) - 0.02, 0.05, BONE_W - rw, BONE_W + rw)
    u, v, w = fr.coords(box)
    men = None
    for c in range(2):
        rho = np.sqrt(((u - comp_u[c]) / ru) ** 2 + ((w - BONE_W) / rw) ** 2)
        height = _p(p, "men_h") * np.clip((rho - inner) / (1.0 - inner), 0.0, 1.0)
        sdf = np.maximum(np.maximum((rho - 1.0) * ru, (inner - rho) * ru),
                         np.maximum(v - v_top, v_top - height - v))
        men = sdf if men is None else np.minimum(men, sdf)
    acc.add([(fr.frac(men), MENISCUS)], box)
    # --- fat pads (each in its box), then the leg over the whole slab ---
    for (c, r) in FAT_PADS:
        box = fr.box(c[1] - r[1], c[1] + r[1], c[2] - r[2], c[2] + r[2])
        u, v, w = fr.coords(box)
        acc.add([(fr.frac(_ellipsoid(u - c[0], v - c[1], w - c[2], *r)), FAT)], box)
    box = fr.box()
    u, v, w = fr.coords(box)
    leg = _ellipse(u, w - 0.02, _p(p, "leg_r", 0) * (1.0 - 0.05 * v), _p(p, "leg_r", 1))
    acc.add([(fr.frac(leg), SKIN), (fr.frac(leg + SKIN_T), FAT),
             (fr.frac(leg + SKIN_T + _p(p, "fat")), MUSCLE)], box)


def _render(p: dict[str, np.ndarray], lay: _Layout, za: int, zb: int, kept: bool) -> _Accumulator:
    """Composite sub-slices ``za:zb`` of the subjects in ``p`` (all arrays leading axis n),
    front to back: bones, cartilage, menisci, fat pads, leg, air."""
    n = len(p["kl_grade"])
    acc = _Accumulator((n, zb - za, lay.h, lay.w), lay.r, kept)
    fr = _Frame(p, lay, za, zb)
    comp_u = np.stack([-_p(p, "cond_sep"), _p(p, "cond_sep")])  # compartment centres (medial, lateral)
    v_top = _plateau(fr, comp_u)
    _bones(p, fr, acc, comp_u, v_top)
    _soft_tissue(p, fr, acc, comp_u, v_top)
    acc.finish()
    return acc


# ---------------------------------------------------------------------------------------------------
# image formation
# ---------------------------------------------------------------------------------------------------
def _xray(line_integral: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """Film density ``[n, H, W]`` in [0, 1] from line integrals ``[n, H, W]`` (dimensionless)."""
    blurred = gaussian_filter(line_integral, sigma=(0, XRAY_BLUR_PX, XRAY_BLUR_PX), mode="nearest")
    # Automatic exposure control: the exposure makes the median line integral over the central
    # third of the field (the AEC chamber, behind the joint) land at a fixed film density.
    h, w = blurred.shape[1:]
    chamber = blurred[:, h // 3:max(2 * h // 3, h // 3 + 1), w // 3:max(2 * w // 3, w // 3 + 1)]
    offset = np.median(chamber.reshape(len(blurred), -1), axis=1)[:, None, None] + AEC_SHIFT
    # Quantum noise: counts N = N0 exp(-P), so the std of the measured P is 1/sqrt(N) ~ exp(P/2).
    std = XRAY_NOISE * np.exp((blurred - offset) / 2.0)
    noisy = blurred + std * np.stack([rng.standard_normal(blurred.shape[1:], dtype=np.float32) for rng in rngs])
    return (1.0 / (1.0 + np.exp(-FILM_GAMMA * (noisy - offset)))).astype(np.float32)


def _mri(t1: np.ndarray, p: dict[str, np.ndarray], lay: _Layout, rngs: list[np.random.Generator]) -> np.ndarray:
    """T1 volume ``[n, S, H, W]`` (a.u.): clean signal x smooth bias field, then Rician noise."""
    z = np.linspace(-1.0, 1.0, lay.s)[:, None, None]
    y, x = lay.y[None, :, None].astype(np.float64), lay.x[None, None, :].astype(np.float64)
    basis = [x, y, z, x * x, y * y, z * z, x * y]  # log-bias polynomial terms
    c = p["bias"]
    log_bias = sum(c[:, i, None, None, None] * b[None] for i, b in enumerate(basis))
    signal = t1 * np.exp(log_bias)
    sigma = p["mri_noise"][:, None, None, None]
    noise = np.stack([rng.standard_normal((2,) + t1.shape[1:], dtype=np.float32) for rng in rngs])
    return np.sqrt((signal + sigma * noise[:, 0]) ** 2 + (sigma * noise[:, 1]) ** 2).astype(np.float32)


def _koa_prob(p: dict[str, np.ndarray]) -> np.ndarray:
    """Stand-in classifier output ``[n, 5]``: a noisy softmax peaked at the true grade."""
    k = np.arange(5)[None, :]
    logits = -((k - p["kl_grade"][:, None]) ** 2) / (2.0 * KOA_SIGMA**2) + p["koa_noise"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _rssim_mask(p: dict[str, np.ndarray], lay: _Layout) -> np.ndarray:
    """RSSIM region ``[n, H, W]`` uint8: lower third of the femur to upper third of the tibia."""
    s, (cx, yj) = p["knee_scale"], (p["centre"][:, 0], p["centre"][:, 1])
    femur_low = yj + s * np.max(p["cond_cy"] + p["cond_ry"], axis=1)  # lowest femoral point
    top = -1.0 + 2.0 / 3.0 * (femur_low + 1.0)  # the femur runs from the image top
    bottom = yj + (1.0 - yj) / 3.0  # the tibia runs from the plateau to the image bottom
    bones = np.maximum(p["plat_w"], p["cond_sep"] + p["cond_rx"].max(axis=1))
    half = s * (bones + OSTEOPHYTE_MEDIAL * p["osteo_r"] + 0.05)
    rows = (lay.y[None, :] >= top[:, None]) & (lay.y[None, :] <= bottom[:, None])
    cols = np.abs(lay.x[None, :] - cx[:, None]) <= half[:, None]
    return (rows[:, :, None] & cols[:, None, :]).astype(np.uint8)


def generate(numbers: np.ndarray, *, seed: int = 0, sizes: Sizes, **controls: float) -> dict[str, np.ndarray]:
    """Render knee subjects ``numbers`` (see the module's dataset card).

    Returns ``mri [n, S, H, W]`` (a.u.), ``xray [n, H, W]`` (film density), ``bone_mask`` and
    ``tissue [n, S, H, W]`` uint8, ``rssim_mask [n, H, W]`` uint8, ``kl_grade [n]`` int64,
    ``slice_depth`` and ``slice_position [n, S]``, ``jsw_true [n]`` and
    ``jsw_compartments [n, 2]`` (radiograph pixels), ``koa_prob [n, 5]``, ``medial_right [n]``,
    ``knee_scale [n]``. ``controls``: ``kl_grade``, ``knee_scale``, ``mri_noise``.
    """
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise PhantomError(f"unknown control(s) {', '.join(sorted(unknown))} for phantom 'knee'")
    lay = _Layout(sizes)
    numbers = np.asarray(numbers, dtype=np.int64)
    n, (h, w, s) = len(numbers), (lay.h, lay.w, lay.s)
    out = {"mri": np.zeros((n, s, h, w), np.float32), "xray": np.zeros((n, h, w), np.float32),
           "bone_mask": np.zeros((n, s, h, w), np.uint8), "tissue": np.zeros((n, s, h, w), np.uint8)}
    if n == 0:
        return _empty(out, lay)
    rngs = [subject_rng(NAME, seed, int(k)) for k in numbers]
    p = _params([_draw(rng) for rng in rngs], controls)
    per_subject = lay.full * lay.r * h * w
    chunk = max(1, VOXEL_BUDGET // per_subject)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        pc = {k: v[a:b] for k, v in p.items()}
        line = np.zeros((b - a, h, w), np.float64)
        t1 = np.zeros((b - a, s, h, w), np.float32)
        for za, zb, kept in lay.slabs(b - a):
            acc = _render(pc, lay, za, zb, kept)
            line += acc.mu.sum(axis=1, dtype=np.float64) * (lay.dz * UNIT_CM)
            if kept:
                sa, sb = za // lay.r - lay.first, zb // lay.r - lay.first
                t1[:, sa:sb] = acc.slice_mean(acc.t1)
                out["tissue"][a:b, sa:sb], out["bone_mask"][a:b, sa:sb] = acc.tissue, acc.bone
        out["xray"][a:b] = _xray(line, rngs[a:b])
        out["mri"][a:b] = _mri(t1, pc, lay, rngs[a:b])
    jsw_px = p["jsw"] * p["knee_scale"][:, None] * h / 2.0
    out.update(kl_grade=p["kl_grade"], jsw_true=jsw_px.mean(axis=1).astype(np.float32),
               jsw_compartments=jsw_px.astype(np.float32), koa_prob=_koa_prob(p),
               rssim_mask=_rssim_mask(p, lay), medial_right=p["medial_right"].astype(np.int64),
               knee_scale=p["knee_scale"].astype(np.float32))
    out["slice_depth"] = np.broadcast_to(np.linspace(0.0, 1.0, s, dtype=np.float32), (n, s)).copy()
    out["slice_position"] = np.broadcast_to(lay.slice_position, (n, s)).copy()
    return out


def _empty(out: dict[str, np.ndarray], lay: _Layout) -> dict[str, np.ndarray]:
    """The output of ``generate`` for zero subjects (every key, leading axis 0)."""
    out.update(kl_grade=np.zeros(0, np.int64), jsw_true=np.zeros(0, np.float32),
               jsw_compartments=np.zeros((0, 2), np.float32), koa_prob=np.zeros((0, 5), np.float32),
               rssim_mask=np.zeros((0, lay.h, lay.w), np.uint8), medial_right=np.zeros(0, np.int64),
               knee_scale=np.zeros(0, np.float32), slice_depth=np.zeros((0, lay.s), np.float32),
               slice_position=np.zeros((0, lay.s), np.float32))
    return out


SPEC = register_phantom(PhantomSpec(
    name=NAME,
    card=__doc__,
    generate=generate,
    modalities={
        "xray": Modality("xray", "film density", 0.0, 1.0,
                         "AP knee radiograph: bones and joint space; cartilage and soft tissue barely visible"),
        "mri": Modality("mri", "a.u. (T1)", 0.0, 1.0,
                        "coronal T1 MRI slices: bone marrow, cartilage, menisci, fat and muscle"),
    },
    labels={
        "kl_grade": "Kellgren-Lawrence grade 0-4 [int]",
        "slice_depth": "target depth d of each MRI slice: index / (S - 1) [0-1], [n, S]",
        "slice_position": "proportional position of each slice in the full AP stack [0-1], [n, S]",
        "bone_mask": "bone label per MRI voxel: 0 none, 1 femur, 2 tibia, 3 fibula, 4 patella [n, S, H, W]",
        "tissue": "tissue label per MRI voxel: " + ", ".join(f"{i} {t}" for i, t in enumerate(TISSUES)),
        "rssim_mask": "RSSIM region (lower third of femur to upper third of tibia) [0/1], [n, H, W]",
        "jsw_true": "mean of the medial and lateral minimum joint-space widths [radiograph px]",
        "jsw_compartments": "minimum joint-space width (medial, lateral) [radiograph px], [n, 2]",
        "koa_prob": "stand-in KOA classifier probabilities of grades 0-4 (noisy softmax) [n, 5]",
        "medial_right": "1 if the medial compartment is on the image's right (a left knee) [int]",
        "knee_scale": "knee size factor [-]",
    },
    controls=CONTROLS,
    sizes={"ci": Sizes(32, 32, 8), "smoke": Sizes(32, 32, 10), "cpu": Sizes(64, 64, 16),
           "paper": Sizes(256, 256, 50)},
    label_maps=("bone_mask", "tissue", "rssim_mask"),
))
