"""``spine_coronal``: ultrasound volume-projection images (VPI) and a radiograph of the same scoliotic spine.

Dataset card
------------
Serves the two coronal-spine papers: ultrasound VPI -> X-ray translation with UCA / Cobb
angle conditioning (uxdiff_us_to_xray_spine.txt, 256x512 images) and multi-depth VPI
enhancement with segmentation priors (morphology_consistent_us_enhancement.txt, D = 5 depths).

**Anatomy** (drawn in millimetres, relative to the image's top edge and centre column, before
any noise, so a subject is the same at every size of the same 2:1 aspect):

* 17 vertebrae T1-L5 (:data:`LEVELS`). Body height, disc height, body width and
  transverse-process span grow from T1 to L5 (tables ``*_MM`` below, for a late-adolescent
  spine), scaled per patient (overall size 0.85-1.05, width 0.9-1.1, disc spacing 0.8-1.25,
  4 % jitter per level). The spine (T1 top 40-65 mm below the image top) spans about 70 %
  of the image height, with the pelvis below it.
* Lateral curve: the centreline's tilt is a sum of one or two derivative-of-Gaussian bumps in
  arc length -- a single thoracic curve (apex T6-T9.5, 40 %), a single thoracolumbar/lumbar
  curve (apex T12.5-L3, 25 %) or a double curve of opposite sides (35 %, minor/major
  0.5-1.0) -- so end vertebrae are neutral and the apical vertebra is horizontal. Each
  vertebra is the quadrilateral between the endplates perpendicular to the centreline at its
  top and at its bottom (apical wedging follows). The curve's amplitude is scaled so that the
  Cobb angle of the endplates is exactly the drawn ``cobb`` (uniform 0-60 degrees, or the
  control).
* Axial rotation grows with lateral deviation from the line T1-L5:
  ``psi = 30 deg * tanh(k * deviation / 30 deg)``, ``k`` 0.20-0.60 deg/mm per patient (apical
  rotation 9-22 deg, median 15, for a 60 deg curve with its median apical deviation 44 mm). The posterior elements sit ``arm`` = 28-42 mm behind
  the body centre, so they swing towards the concavity: the posterior column follows
  ``x_post = x_body - arm * sin(psi)``, a flatter curve than the bodies. Transverse processes
  (TPs) lie on lines perpendicular to that posterior curve and are foreshortened by
  ``cos(psi)``; pedicles and spinous processes move with the rotation (Nash-Moe). This is
  how the phantom makes UCA < Cobb, as reported in the ultrasound literature; in life the
  vertebra is rigid and the gap comes from the 3D projection of rotated vertebrae and the
  smaller deformation of the posterior column -- the phantom lumps both into ``x_post``.
* Ribs on T1-T12: tubes from the TP tips running laterally and bending downwards (length,
  slope, bend and thickness vary per patient; floating ribs 11-12 short); a rib follows half
  of its TP line's tilt (the rib cage resists). Iliac wings with crests at the L4 level and
  the sacrum below L5; torso outline (half-width and antero-posterior thickness grow with
  BMI); lungs (air) from T1 to T10.
* BMI: normal(20, 3) clipped to 15-32 (the paper excluded BMI > 25; the tail gives
  difficult-to-image subjects). Soft tissue over the spinous processes is
  ``T = 4 + 1.5 * (BMI - 15)`` mm.

**Radiograph** ``xray`` ``[n, H, W]``, film density in ``[0, 1]`` shown as on a light box
(1 = white = unexposed, bone; 0 = black, air). Line integral of attenuation (1/mm: soft
tissue 0.020; bone in excess of it: cortical +0.045, cancellous +0.012, rib +0.030) through
elliptic-cylinder bodies with a cortical shell and endplates, pedicle rings, spinous
processes, TP capsules, rib tubes, iliac plates with cortical crests, sacrum, torso and
lungs; automatic exposure control (mid-grey behind the abdomen's soft tissue, +-0.15
attenuation error); Gaussian detector blur (0.8 mm, at least 0.4 px against aliasing);
quantum noise (Gaussian approximation of Poisson, 600 photons/mm^2 behind the abdomen:
visible at the ``paper`` size, negligible at 8.75 mm pixels); logistic film curve (gamma
1.4, fog 0.03). It shows every bone and no soft-tissue texture.

**Ultrasound** ``us_vpi`` / ``us_clean`` ``[n, 5, H, W]``, a.u. in ``[0, 1]``. Each of the 5
depths is a slab (14 mm thick, 12 mm apart) parallel to the skin; a pixel shows the first
bone surface along the beam if it lies in the slab (bright, rounded reflection profile),
acoustic shadow (dark) if that surface lies above the slab, and muscle echo (grey, a smooth
random texture) otherwise. Bone depths below the skin: spinous processes ``T``, laminae
``T + 7``, TPs ``T + 18``, ribs ``T + 20`` deepening laterally, lumbar lumps (laminae / TP
roots) ``T + 22`` (lumbar posterior elements 3 mm deeper); axial rotation lifts the convex
side by ``lateral * sin(psi)`` (lever capped at 30 mm: the rib hump). Time-gain
compensation undoes the attenuation of a BMI-18 patient (0.008/mm, amplifying the additive
noise 0.02 with depth); fat adds ``0.0012 * (BMI - 18)``/mm that it does not undo. Speckle
is multiplicative, log-normal (relative std 0.5, 1.2 mm grain: a VPI averages a slab).
Only the scanned strip (65-85 mm either side of the posterior column, from above T1 to
below L5) holds data (0 outside); bodies, pelvis and lungs are not seen. The operator's
depth profile puts a depth drawn from the paper's optimal-index distribution
(:data:`OPTIMAL_DEPTH_PRIOR`) on the TP / rib / lump layer (+-1.5 mm); shallower depths show
spinous processes and laminae (the shallowest may lie above the skin: black), deeper ones
mostly shadow. ``optimal_depth`` is then the depth whose slab holds the largest area of
visible bone surface, counted on the rendered pixel grid (it equals the aimed depth for
500 of 500 subjects at ``cpu`` and 498 of 500 at ``ci``, where 8.75 mm pixels break two
near ties). ``us_clean`` is the same scan without artifacts (the enhancement target);
``us_vpi`` adds scanning artifacts: in 60 % of scans motion drop-out bands (signal x 0.1,
8-35 mm high) and / or blurred stretches (30-90 mm, cranio-caudal blur 5-11 mm), both on
all depths; multipath haze on the 1-3 shallowest depths with probability
``0.05 + 0.05 * (BMI - 18)`` (0 to 0.6). ``artifact_free`` flags every depth image.

**Labels** (see ``SPEC.labels``): ``cobb``, ``uca`` (degrees), ``landmarks`` ``[n, 17, 4, 2]``
corners (top-left, top-right, bottom-left, bottom-right) in pixels ``(row, col)`` with pixel
centres at integer coordinates, ``tp_landmarks`` ``[n, 17, 2, 2]`` (left, right) TP tips
(lumbar TPs too; their tilt is also the lumbar lumps'), ``optimal_depth``,
``artifact_free``, ``bmi``, ``curve_type``, ``apex_level``, and ``seg`` ``[n, H, W]``
(0 background, 1 transverse process T1-T12, 2 rib, 3 lumbar lump) at the optimal depth: the
class of the first bone surface where it is visible in that slab.

**Measured relations** (:func:`relations`: 500 subjects, seed 0; labels do not depend on the
size): UCA = 0.79 x Cobb (least squares through the origin; 0.81 x Cobb - 0.7 deg with an
intercept), Pearson r = 0.988, UCA < Cobb in 100 % of subjects with Cobb > 5 deg; Cobb spans
0.3-59.9 deg; optimal depth 0-4 in 11 / 18 / 30 / 25 / 17 % (paper: 11 / 21 / 25 / 26 /
17 %); 39 % of optimal images are artifact-free (paper: 151 of 432, 35 %).
``cobb_angle(landmarks)`` and ``curve_angle(tp_landmarks)`` (:mod:`medgen.measure.spine`)
reproduce ``cobb`` and ``uca`` to 1e-4 degrees.

**Units and sizes**: pixels are square; the image height is :data:`FOV_HEIGHT_MM` and the
width follows the requested aspect (wider images show more of the flanks). Sizes: ``ci``
64x32, ``smoke`` 64x32, ``cpu`` 128x64, ``paper`` 512x256 (height x width; the 5 depths are
their own axis, ``Sizes.depth`` stays 0).

**Ignored**: sagittal curves (kyphosis / lordosis; only the lumbar posterior elements lie a
little deeper), vertebral shape changes other than wedging, the anterior ribs, clavicles, scapulae,
femora, bowel gas, scatter and the heel effect; ultrasound beam physics (no PSF, refraction,
reverberation other than the haze artifact); rib cage deformation other than the rotation
lift.

Rendering is written by hand (vectorised NumPy over the subjects of a chunk) because no
dependency draws parametric vertebrae: each part (vertebral body frame, laminae / lumps, each
TP, each level's ribs, the lungs) is evaluated only in a per-subject window around its box
(all 17 levels at once), the ribs past their distance test and the ultrasound slabs only on
the pixels that hold bone; blurs use :func:`scipy.ndimage.gaussian_filter`; the angle
bookkeeping uses :func:`medgen.measure.spine.tilt_range`. Speed (one CPU core, process time,
64 subjects per call, radiograph and both VPI stacks): about 890 subjects/s at 64x32, 275 at
128x64, 17 at 512x256.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from medgen.data.phantoms.base import Control, Modality, PhantomSpec, Sizes, register_phantom, subject_rng
from medgen.measure.spine import tilt_range

__all__ = ["SPEC", "LEVELS", "SEG_CLASSES", "generate", "draw_parameters", "spine_geometry", "haze_probability",
           "relations"]

NAME = "spine_coronal"
LEVELS = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)])  # cranial -> caudal
N_LEVELS = len(LEVELS)  # 17 vertebrae
N_THORACIC = 12  # T1-T12 carry ribs; L1-L5 carry lumbar lumps
N_DEPTHS = 5  # ultrasound VPI depths (D = 5 in the enhancement paper)
SEG_CLASSES = ("background", "transverse process", "rib", "lumbar lump")  # seg label values 0..3
FOV_HEIGHT_MM = 560.0  # image height in mm (the width follows the aspect; 280 mm at 2:1)

# --- anatomy at scale 1, per level T1..L5 (mm) ---------------------------------------------
BODY_HEIGHT_MM = np.r_[np.linspace(13.0, 21.0, 12), [23.0, 24.0, 25.0, 25.0, 24.0]]
DISC_HEIGHT_MM = np.r_[np.linspace(3.5, 5.5, 12), [7.0, 8.0, 9.0, 9.0, 8.0]]  # disc below the level
BODY_HALF_WIDTH_MM = np.r_[np.linspace(14.0, 21.0, 12), [22.0, 23.5, 24.5, 25.5, 26.5]]  # upper endplate
LOWER_WIDTH_RATIO = 1.04  # lower endplate half-width / upper
BODY_AP_RATIO = 0.75  # antero-posterior half-depth / half-width (elliptic cylinder)
BODY_WAIST = 0.08  # concavity of the lateral body walls at mid height (fraction of width)
CORTEX_MM = 1.5  # cortical shell thickness of vertebral bodies
ENDPLATE_MM = 1.0  # cortical endplate thickness
TP_HALF_SPAN_MM = np.r_[np.linspace(38.0, 27.0, 12), [34.0, 40.0, 45.0, 42.0, 40.0]]  # midline -> tip
TP_RADIUS_MM = np.r_[np.full(12, 5.5), np.full(5, 3.5)]  # thoracic TPs stubby, lumbar thin
TP_LEVEL = 0.3  # TP / pedicle height within the vertebra (0 top endplate, 1 bottom)
RIB_TILT_SHARE = 0.5  # share of the TP line's tilt that the rib follows
RIB_LENGTH_MM = np.array([55, 85, 100, 108, 112, 112, 110, 105, 98, 85, 55, 35], dtype=float)
SP_HALF_WIDTH_MM = 5.0  # spinous process half-width in the coronal view
SP_ARM_EXTRA_MM = 20.0  # spinous tip lies this much further behind the body than the TPs
LAMINA_OFFSET_MM = 11.0  # lamina centre lateral to the posterior midline
LAMINA_HALF_WIDTH_MM = 4.5  # lamina half-width (its half-height is 0.3 body heights)
LUMP_OFFSET_MM = 15.0  # lumbar lump centre lateral to the posterior midline
LUMP_HALF_WIDTH_MM = 9.0  # lumbar lump half-width (its half-height is 0.42 body heights)
PSI_MAX_DEG = 30.0  # axial rotation saturates smoothly at this angle
CURVE_TYPE_P = (0.40, 0.25, 0.35)  # single thoracic, single (thoraco)lumbar, double
DENSE = 513  # samples of the centreline integral along the spine

# --- radiograph (attenuation in 1/mm above soft tissue unless noted) -------------------------
MU_SOFT = 0.020  # soft tissue (water) itself
MU_CORTICAL = 0.045
MU_CANCELLOUS = 0.012
MU_RIB = 0.030
LUNG_AP_MM = 35.0  # antero-posterior half-depth of the air in each lung
XRAY_BLUR_MM = 0.8  # detector (screen) unsharpness, Gaussian sigma
MIN_BLUR_PX = 0.4  # lower bound of the blur in pixels (anti-aliasing at coarse sizes)
PHOTONS_PER_MM2 = 600.0  # detected quanta per mm^2 behind the abdomen's soft tissue
FILM_GAMMA = 1.4  # slope of the logistic film curve per unit of attenuation
FILM_FOG = 0.03  # base + fog: the whitest value is 1 - fog

# --- ultrasound ----------------------------------------------------------------------------
OPTIMAL_DEPTH_PRIOR = np.array([0.109, 0.205, 0.252, 0.259, 0.174]) / 0.999  # paper's index weights
SLAB_STEP_MM = 12.0  # distance between consecutive VPI depths
SLAB_THICK_MM = 14.0  # thickness of each VPI slab
SLAB_EDGE_MM = 1.0  # softness of the slab boundaries
KEY_DEPTH_MM = 22.0  # TP / rib / lump layer below the soft tissue, where the optimal slab sits
DEPTH_MM = {"sp": 0.0, "lamina": 7.0, "tp": 18.0, "rib": 20.0, "lump": 22.0}  # below T_soft
RIB_DEEPENING_MM = 14.0  # ribs get this much deeper at 80 mm from the TP tip (quadratic)
HUMP_MAX_MM = 30.0  # lateral lever of the rotation lift is capped here (rib hump)
RIB_RING_CUTOFF = 1.6  # the rib's cortical rim (a Gaussian ring) ends at this many radii
_LUMBAR_EXTRA = np.r_[np.zeros(12), np.full(5, 3.0)].astype(np.float32)[None, :, None, None]  # mm deeper
_TP_SIDES = np.tile([-1.0, 1.0], 17)[None, :]  # side of each TP (left, right per level)
REFLECTIVITY = {"sp": 0.9, "lamina": 0.85, "tp": 1.0, "rib": 0.9, "lump": 0.8}
CLASS = {"sp": 4, "lamina": 4, "tp": 1, "rib": 2, "lump": 3}  # 4: bone not in the label set
TISSUE_ECHO = 0.15  # muscle echo level before attenuation
TEXTURE_CONTRAST = 0.35  # relative amplitude of the smooth tissue texture
TEXTURE_GRID = (9, 5)  # low-resolution grid of the tissue texture (size independent)
BONE_GAIN = 0.85  # bright bone reflection before attenuation
ALPHA_BASE = 0.008  # ultrasound attenuation (1/mm, round trip) at BMI 18: what the TGC undoes
ALPHA_PER_BMI = 0.0012  # extra attenuation per BMI unit (fat), not compensated
SPECKLE_SIGMA = 0.47  # log-normal speckle: exp(s z - s^2 / 2), relative std about 0.5 (VPI averages a slab)
SPECKLE_GRAIN_MM = 1.2  # speckle grain (Gaussian sigma of the correlation)
US_NOISE = 0.02  # additive electronic noise before the TGC gain
P_SCAN_ARTIFACT = 0.6  # probability of motion artifacts in a scan (default draw)
DROPOUT_GAIN = 0.1  # signal left in a motion drop-out band
HAZE_LEVEL = 0.35  # echo level of multipath haze
CHUNK_PIXELS = 1 << 20  # subjects are rendered in chunks of about this many pixels (x 5 depths)

CONTROLS = {
    "cobb": Control(0.0, 60.0, step=0.5, default=30.0,
                    description="Cobb angle of the major curve (degrees)"),
    "bmi": Control(15.0, 35.0, step=0.5, default=20.0,
                   description="body-mass index: soft-tissue thickness and ultrasound attenuation"),
    "artifacts": Control(0.0, 1.0, step=1.0, default=1.0,
                         description="ultrasound scanning artifacts: 0 none, 1 in every scan"),
}


# ============================================================================================
# Parameters
# ============================================================================================
def draw_parameters(rng: np.random.Generator) -> dict[str, Any]:
    """The size-independent parameters of one subject, drawn in a fixed order from ``rng``.

    Everything a subject looks like (anatomy, curve, BMI, ultrasound profile, artifact
    placement, smooth textures) comes from here; only pixel noise is drawn later, at the
    requested size.
    """
    p: dict[str, Any] = {}
    p["scale"] = rng.uniform(0.85, 1.05)  # overall size
    p["width"] = rng.uniform(0.9, 1.1)  # vertebral width factor
    p["spacing"] = rng.uniform(0.8, 1.25)  # disc height factor
    p["top"] = rng.uniform(40.0, 65.0)  # T1 top, mm below the image top
    p["shift"] = rng.normal(0.0, 4.0)  # lateral positioning offset, mm
    p["level_jitter"] = rng.normal(0.0, 0.04, N_LEVELS)  # per-level body-height jitter
    p["curve_type"] = rng.choice(3, p=CURVE_TYPE_P)
    p["apex_t"] = rng.uniform(5.0, 8.5)  # thoracic apex, vertebra index (T6..T9.5)
    p["apex_l"] = rng.uniform(11.5, 14.0)  # lumbar apex (T12.5..L3)
    p["width_t"] = rng.uniform(2.5, 4.0)  # curve half-widths in vertebrae
    p["width_l"] = rng.uniform(2.0, 3.0)
    p["side"] = 1.0 if rng.random() < 0.8 else -1.0  # major curve convex to the right (image)
    p["ratio"] = rng.uniform(0.5, 1.0)  # minor / major amplitude of a double curve
    p["thoracic_major"] = rng.random() < 0.6
    p["cobb"] = rng.uniform(0.0, 60.0)
    p["rotation"] = rng.uniform(0.20, 0.60)  # deg axial rotation per mm of deviation
    p["arm"] = rng.uniform(28.0, 42.0)  # posterior-element arm, mm
    p["bmi"] = float(np.clip(rng.normal(20.0, 3.0), 15.0, 32.0))
    p["rib_slope"] = rng.uniform(0.15, 0.35)  # initial downward slope of the ribs
    p["rib_bend"] = rng.uniform(1.5e-3, 3.5e-3)  # downward curvature, 1/mm
    p["rib_length"] = rng.uniform(0.9, 1.1)
    p["rib_radius"] = rng.uniform(4.0, 5.5)  # rib half-height in the coronal view, mm
    p["iliac_x"] = rng.uniform(85.0, 105.0)  # iliac wing centre from the midline, mm
    p["exposure"] = rng.uniform(-0.15, 0.15)  # AEC error (attenuation units)
    p["optimal_depth"] = int(rng.choice(N_DEPTHS, p=OPTIMAL_DEPTH_PRIOR))
    p["depth_jitter"] = rng.uniform(-1.5, 1.5)  # mm
    p["strip"] = rng.uniform(65.0, 85.0)  # half-width of the scanned strip, mm
    p["texture"] = rng.standard_normal((N_DEPTHS, *TEXTURE_GRID))
    p["haze_field"] = rng.standard_normal(TEXTURE_GRID)
    p["scan_artifact"] = rng.random() < P_SCAN_ARTIFACT
    p["artifact_kind"] = rng.choice(3, p=(0.4, 0.4, 0.2))  # drop-out, blur, both
    p["dropout"] = np.stack([rng.uniform(0.05, 0.95, 2), rng.uniform(8.0, 35.0, 2)], axis=1)  # (pos, mm)
    p["n_dropout"] = rng.integers(1, 3)
    p["blur_band"] = np.array([rng.uniform(0.1, 0.9), rng.uniform(30.0, 90.0), rng.uniform(5.0, 11.0)])
    p["haze_u"] = rng.random()  # haze if below haze_probability(BMI), decided after the controls
    p["haze_depths"] = rng.integers(1, 4)  # haze on depths 0 .. haze_depths-1
    p["haze_strength"] = rng.uniform(0.4, 0.7)
    return p


def _stack(draws: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-subject parameter dicts -> dict of arrays with a leading subject axis."""
    return {key: np.stack([np.asarray(d[key]) for d in draws]) for key in draws[0]}


# ============================================================================================
# Geometry (mm; y down from the image top, x right from the image centre column)
# ============================================================================================
def _bump_tilt(s: np.ndarray, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Tilt shape of one lateral bump: minus the derivative of a Gaussian, peak |value| 1 at
    one width from the apex (positive above a right-convex apex)."""
    t = (s - centre) / width
    return -t * np.exp(0.5 * (1.0 - t * t))


def _interp_rows(values: np.ndarray, s: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Linear interpolation of dense samples ``values [n, DENSE]`` (uniform on ``[0, length]``)
    at arc lengths ``s [n, k]`` -> ``[n, k]``."""
    idx = np.clip(s / length[:, None] * (DENSE - 1), 0.0, DENSE - 1.0)
    i0 = np.minimum(idx.astype(np.int64), DENSE - 2)
    frac = idx - i0
    return (np.take_along_axis(values, i0, axis=1) * (1.0 - frac)
            + np.take_along_axis(values, i0 + 1, axis=1) * frac)


def spine_geometry(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vertebra geometry of a batch from stacked parameters (:func:`draw_parameters`).

    Returns arrays in mm / radians with a leading subject axis ``n``: per level ``[n, 17]``
    (``y_top, x_top, y_bot, x_bot, phi_top, phi_bot, half_top, half_bot, height, psi, phi_post,
    y_tp, x_tp, tp_half``), the dense centreline ``[n, DENSE]`` (``y_dense, x_dense,
    x_post_dense``), ``cobb`` and ``uca`` ``[n]`` in degrees and ``length`` ``[n]``.
    """
    n = len(p["scale"])
    scale = p["scale"][:, None]
    # 1. arc-length layout: bodies and discs stacked from T1's top endplate (s = 0)
    height = BODY_HEIGHT_MM * scale * (1.0 + p["level_jitter"])
    pitch = height + DISC_HEIGHT_MM * scale * p["spacing"][:, None]
    s_top = np.concatenate([np.zeros((n, 1)), np.cumsum(pitch, axis=1)[:, :-1]], axis=1)
    s_bot = s_top + height
    s_mid = 0.5 * (s_top + s_bot)
    length = s_bot[:, -1]
    mean_pitch = length / N_LEVELS

    # 2. curve shape g(s): one or two bumps at the apices (vertebra index -> arc length)
    def apex_s(index: np.ndarray) -> np.ndarray:
        k0 = np.clip(np.floor(index).astype(np.int64), 0, N_LEVELS - 2)
        frac = (index - k0)[:, None]
        s0 = np.take_along_axis(s_mid, k0[:, None], axis=1)
        s1 = np.take_along_axis(s_mid, k0[:, None] + 1, axis=1)
        return (s0 * (1 - frac) + s1 * frac)[:, 0]

    ctype, side, ratio = p["curve_type"], p["side"], p["ratio"]
    major_t = p["thoracic_major"]
    amp_t = np.select([ctype == 0, ctype == 1], [side, 0.0], np.where(major_t, side, side * ratio))
    amp_l = np.select([ctype == 0, ctype == 1], [0.0, side], np.where(major_t, -side * ratio, -side))
    bumps = [(apex_s(p["apex_t"]), p["width_t"] * mean_pitch, amp_t),
             (apex_s(p["apex_l"]), p["width_l"] * mean_pitch, amp_l)]

    def shape(s: np.ndarray) -> np.ndarray:
        return sum(a[:, None] * _bump_tilt(s, c[:, None], w[:, None]) for c, w, a in bumps)

    # 3. amplitude: the Cobb angle of the unit shape's endplates scales linearly with it
    unit_cobb = tilt_range(shape(s_top), shape(s_bot))[0]
    amp_deg = p["cobb"] / np.maximum(unit_cobb, 1e-9)
    tilt = lambda s: np.radians(amp_deg[:, None] * shape(s))  # noqa: E731  centreline tilt phi(s)

    # 4. centreline: integrate (sin phi, cos phi) along arc length (trapezoid rule)
    s_dense = np.linspace(0.0, 1.0, DENSE)[None, :] * length[:, None]
    phi_dense = tilt(s_dense)
    ds = (length / (DENSE - 1))[:, None]

    def integrate(f: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((n, 1)), np.cumsum(0.5 * (f[:, 1:] + f[:, :-1]), axis=1)], axis=1) * ds

    x_dense, y_dense = integrate(np.sin(phi_dense)), integrate(np.cos(phi_dense))
    x_dense = x_dense - 0.5 * (x_dense[:, :1] + x_dense[:, -1:]) + p["shift"][:, None]  # centred
    y_dense = y_dense + p["top"][:, None]

    # 5. axial rotation psi(s) from the deviation off the line T1-L5, and the posterior column
    chord = (x_dense[:, -1] - x_dense[:, 0]) / length
    deviation = x_dense - x_dense[:, :1] - chord[:, None] * (s_dense - 0.0)
    k_rot, psi_max = np.radians(p["rotation"])[:, None], np.radians(PSI_MAX_DEG)
    psi_dense = psi_max * np.tanh(k_rot * deviation / psi_max)
    arm = p["arm"][:, None]
    x_post_dense = x_dense - arm * np.sin(psi_dense)

    # 6. per level: endplate centres and tilts (exact), TP line tilt of the posterior column
    out = {"y_top": _interp_rows(y_dense, s_top, length), "x_top": _interp_rows(x_dense, s_top, length),
           "y_bot": _interp_rows(y_dense, s_bot, length), "x_bot": _interp_rows(x_dense, s_bot, length),
           "phi_top": tilt(s_top), "phi_bot": tilt(s_bot), "height": height}
    s_tp = s_top + TP_LEVEL * height
    phi_tp = tilt(s_tp)
    dev_tp = _interp_rows(deviation, s_tp, length)
    psi_tp = psi_max * np.tanh(k_rot * dev_tp / psi_max)
    dpsi = k_rot * (1.0 - np.tanh(k_rot * dev_tp / psi_max) ** 2) * (np.sin(phi_tp) - chord[:, None])
    dx_post = np.sin(phi_tp) - arm * np.cos(psi_tp) * dpsi  # d x_post / ds
    out["phi_post"] = np.arctan2(dx_post, np.cos(phi_tp))
    out["psi"] = psi_tp
    out["y_tp"] = _interp_rows(y_dense, s_tp, length)
    out["x_tp"] = _interp_rows(x_dense, s_tp, length) - arm * np.sin(psi_tp)
    half = BODY_HALF_WIDTH_MM * scale * p["width"][:, None]
    out["half_top"], out["half_bot"] = half, half * LOWER_WIDTH_RATIO
    out["tp_half"] = TP_HALF_SPAN_MM * scale * p["width"][:, None] * np.cos(psi_tp)
    out.update(y_dense=y_dense, x_dense=x_dense, x_post_dense=x_post_dense, length=length,
               cobb=np.asarray(p["cobb"], dtype=np.float64),
               uca=tilt_range(np.degrees(out["phi_post"]))[0])
    return out


def _corners_mm(g: dict[str, np.ndarray]) -> np.ndarray:
    """Vertebra corners ``[n, 17, 4, 2]`` (y, x) in mm: TL, TR, BL, BR.

    The endplate through centre ``c`` with tilt ``phi`` runs along ``e = (-sin phi, cos phi)``
    in (y, x); left corner ``c - half * e``, right corner ``c + half * e``.
    """
    def ends(y: np.ndarray, x: np.ndarray, phi: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ey, ex = -np.sin(phi) * half, np.cos(phi) * half
        return np.stack([y - ey, x - ex], -1), np.stack([y + ey, x + ex], -1)

    tl, tr = ends(g["y_top"], g["x_top"], g["phi_top"], g["half_top"])
    bl, br = ends(g["y_bot"], g["x_bot"], g["phi_bot"], g["half_bot"])
    return np.stack([tl, tr, bl, br], axis=2)


def _tp_tips_mm(g: dict[str, np.ndarray]) -> np.ndarray:
    """Left and right TP tips ``[n, 17, 2, 2]`` (y, x) in mm, on the posterior-column line."""
    phi, half = g["phi_post"], g["tp_half"]
    ey, ex = -np.sin(phi) * half, np.cos(phi) * half
    left = np.stack([g["y_tp"] - ey, g["x_tp"] - ex], -1)
    right = np.stack([g["y_tp"] + ey, g["x_tp"] + ex], -1)
    return np.stack([left, right], axis=2)


# ============================================================================================
# Rendering helpers
# ============================================================================================
class _Grid:
    """Pixel-centre coordinates (mm) of one size and row bands of it for local structures."""

    def __init__(self, sizes: Sizes) -> None:
        self.height, self.width = sizes.height, sizes.width
        self.sp = FOV_HEIGHT_MM / sizes.height  # square pixels, mm
        self.y = ((np.arange(self.height) + 0.5) * self.sp).astype(np.float32)
        self.x = ((np.arange(self.width) + 0.5) * self.sp - 0.5 * self.width * self.sp).astype(np.float32)

    def band(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, np.ndarray, np.ndarray]:
        """Rows covering ``[min lo, max hi]`` over the batch (+2 px): ``(rows, Y [1,r,1], X [1,1,W])``."""
        lo = int(np.clip(np.floor(np.min(lo_mm) / self.sp) - 2, 0, self.height))
        hi = int(np.clip(np.ceil(np.max(hi_mm) / self.sp) + 2, lo, self.height))
        return slice(lo, hi), self.y[lo:hi][None, :, None], self.x[None, None, :]

    def to_pixels(self, pts_mm: np.ndarray) -> np.ndarray:
        """(y, x) mm -> (row, col) pixels with pixel centres at integer coordinates."""
        out = np.empty_like(pts_mm)
        out[..., 0] = pts_mm[..., 0] / self.sp - 0.5
        out[..., 1] = (pts_mm[..., 1] + 0.5 * self.width * self.sp) / self.sp - 0.5
        return out


def _col(a: np.ndarray) -> np.ndarray:
    """``[n]`` parameters -> float32 ``[n, 1, 1]`` for broadcasting against a band."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


class _Windows:
    """Pixel windows of one common size ``rows x cols``, one per subject and item (``m`` items per
    subject: the 17 levels, or the 24 ribs), each placed over its item's box.

    An item is evaluated only inside its window, which is what makes rendering fast: the box
    ``[ylo, yhi] x [xlo, xhi]`` (mm, ``[n, m]`` each) must hold the item's whole support (outside
    it the item adds nothing), and the window holds every pixel centre of the box (one pixel
    more on each side), clipped to the image. Coordinates: ``Y [n, m, rows, 1]``, ``X [n, m, 1,
    cols]`` (float32, as :class:`_Grid`); ``flat [n, m, rows, cols]``: indices into a flattened
    ``[n, H, W]`` image.
    """

    def __init__(self, grid: _Grid, ylo: np.ndarray, yhi: np.ndarray, xlo: np.ndarray, xhi: np.ndarray) -> None:
        n = ylo.shape[0]
        self.sp = grid.sp
        offset = 0.5 * grid.width * grid.sp  # x of the left image edge is -offset
        r0, self.rows = self._place(ylo, yhi, grid.sp, grid.height)
        c0, self.cols = self._place(xlo + offset, xhi + offset, grid.sp, grid.width)
        rows = r0[..., None] + np.arange(self.rows)  # [n, m, rows]
        cols = c0[..., None] + np.arange(self.cols)  # [n, m, cols]
        self.Y, self.X = grid.y[rows][..., None], grid.x[cols][..., None, :]
        index = np.int32 if n * grid.height * grid.width < 2 ** 31 else np.int64
        first = np.arange(n, dtype=index).reshape(n, 1, 1, 1) * (grid.height * grid.width)
        self.flat = first + (rows * grid.width).astype(index)[..., None] + cols.astype(index)[..., None, :]

    @staticmethod
    def _place(lo: np.ndarray, hi: np.ndarray, sp: float, size: int) -> tuple[np.ndarray, int]:
        """First pixels ``[n, m]`` and the common length of windows over ``[lo, hi]`` (mm from
        the image edge): pixel ``i`` has its centre at ``(i + 0.5) * sp``."""
        first = np.floor(lo / sp - 0.5).astype(np.int64)
        last = np.ceil(hi / sp - 0.5).astype(np.int64)
        length = int(np.clip((last - first).max(initial=0) + 1, 1, size))
        return np.clip(first, 0, size - length), length

    def add(self, image: np.ndarray, values: np.ndarray) -> None:
        """``image [n, H, W] += values [n, m, rows, cols]``, item by item in order (windows of
        different items may overlap; within one item every pixel occurs once)."""
        flat = image.reshape(-1)
        for j in range(self.flat.shape[1]):
            flat[self.flat[:, j]] += values[:, j]


def _min(*arrays: np.ndarray) -> np.ndarray:
    """Elementwise minimum of broadcastable arrays."""
    return functools.reduce(np.minimum, arrays)


def _max(*arrays: np.ndarray) -> np.ndarray:
    """Elementwise maximum of broadcastable arrays."""
    return functools.reduce(np.maximum, arrays)


def _frame_box(yc: np.ndarray, xc: np.ndarray, angle: np.ndarray, lat: tuple[np.ndarray, np.ndarray],
               axial: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Image box ``(ylo, yhi, xlo, xhi)`` of the rectangle ``lat x axial`` (ranges, mm) of a frame
    centred at ``(yc, xc)`` and turned by ``angle``: ``y = yc - lat sin + axial cos``, ``x = xc + lat
    cos + axial sin`` (the frames of :func:`_render_vertebrae` and :func:`_render_ribs`)."""
    s, c = np.sin(angle), np.cos(angle)
    ys = [yc - a * s + b * c for a in lat for b in axial]
    xs = [xc + a * c + b * s for a in lat for b in axial]
    return _min(*ys), _max(*ys), _min(*xs), _max(*xs)


def _union(*boxes: tuple[np.ndarray, ...], margin: float) -> tuple[np.ndarray, ...]:
    """The box holding ``boxes`` (each ``(ylo, yhi, xlo, xhi)``), grown by ``margin`` mm."""
    ylo, yhi, xlo, xhi = zip(*boxes)
    return _min(*ylo) - margin, _max(*yhi) + margin, _min(*xlo) - margin, _max(*xhi) + margin


def _lv(a: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, m]`` values -> float32 ``[n, 1|m, 1, 1]`` against windows ``[n, m, rows, cols]``."""
    a = np.asarray(a, dtype=np.float32)
    return (a[:, None] if a.ndim == 1 else a)[..., None, None]


def _chord(q: np.ndarray) -> np.ndarray:
    """``sqrt(1 - q^2)`` inside the unit radius, 0 outside (normalised chord of a circle)."""
    return np.sqrt(np.clip(1.0 - q * q, 0.0, None))


def _segment(Y: np.ndarray, X: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray,
             x1: np.ndarray) -> np.ndarray:
    """Distance from pixels ``(Y, X)`` to segments ``(y0, x0)-(y1, x1)`` (all broadcast)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((Y - y0) * dy + (X - x0) * dx) / (dy * dy + dx * dx + 1e-9), 0.0, 1.0)
    return np.hypot(Y - (y0 + t * dy), X - (x0 + t * dx))


class _Surfaces:
    """The first bone surface along the ultrasound beam per pixel: depth, class, reflection,
    of a whole image ``[n, H, W]`` or of windows ``[n, m, rows, cols]`` (:class:`_Windows`)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.depth = np.full(shape, np.inf, dtype=np.float32)
        self.cls = np.zeros(shape, dtype=np.int8)
        self.refl = np.zeros(shape, dtype=np.float32)

    def add(self, inside: np.ndarray, depth: np.ndarray, refl: np.ndarray, cls: int,
            items: slice = slice(None)) -> None:
        """Keep a structure of windows ``items`` where it lies inside its footprint and above
        what is there (strictly: of equal depths the first drawn stays)."""
        d = self.depth[:, items]
        take = inside & (depth < d)
        np.copyto(d, depth, where=take)
        np.copyto(self.cls[:, items], np.int8(cls), where=take)
        np.copyto(self.refl[:, items], refl, where=take)

    def drawn(self, win: _Windows) -> tuple[np.ndarray, ...]:
        """The pixels these window surfaces ``[n, m, rows, cols]`` hold: ``(at, depth, cls, refl)``,
        ``at`` indexing the flattened image of ``win``; per subject, earlier items first (pixels of
        different subjects never meet)."""
        drawn = np.isfinite(self.depth)
        return win.flat[drawn], self.depth[drawn], self.cls[drawn], self.refl[drawn]

    def merge(self, at: np.ndarray, depth: np.ndarray, cls: np.ndarray, refl: np.ndarray) -> None:
        """Merge candidate surfaces (flat pixel indices ``at`` and their values, ``[k]`` each) as
        if drawn one by one in order: a pixel takes the shallowest candidate strictly above what
        is there (of equal depths, the earliest)."""
        image = self.depth.reshape(-1)
        before = image[at]
        np.minimum.at(image, at, depth)
        won = (depth == image[at]) & (depth < before)
        at, first = np.unique(at[won], return_index=True)  # the earliest winner per pixel
        self.cls.reshape(-1)[at] = cls[won][first]
        self.refl.reshape(-1)[at] = refl[won][first]


# ============================================================================================
# Structures: each adds its attenuation (radiograph) and its surface (ultrasound)
# ============================================================================================
def _level_boxes(g: dict, p: dict, sp: float) -> dict[str, tuple[np.ndarray, ...]]:
    """Image boxes ``(ylo, yhi, xlo, xhi)`` (mm) of the three kinds of level windows, each holding
    the reach of the formulas below in its frame: ``"body"`` ``[n, 17]`` (body, pedicles and
    spinous process, body frame), ``"medial"`` ``[n, 17]`` (laminae and lumbar lumps, posterior
    frame) and ``"tp"`` ``[n, 34]`` (each TP capsule; T1 left, T1 right, T2 left, ...)."""
    scale, arm = p["scale"][:, None], p["arm"][:, None]
    h, psi = g["height"], np.abs(np.sin(g["psi"]))
    widest = np.maximum(g["half_top"], g["half_bot"])
    wedge = np.abs(np.tan(0.5 * (g["phi_top"] - g["phi_bot"])))  # endplates vs the mid tilt
    lat_b = _max(1.05 * widest, 0.81 * g["half_top"] + 0.5 * arm * psi,
                 (arm + SP_ARM_EXTRA_MM) * psi + SP_HALF_WIDTH_MM * scale)
    ax_b = np.maximum(0.5 * h + 1.05 * widest * wedge + 0.25 * sp, 0.7 * h)  # endplates soft over sp / 4
    body = _frame_box(0.5 * (g["y_top"] + g["y_bot"]), 0.5 * (g["x_top"] + g["x_bot"]),
                      0.5 * (g["phi_top"] + g["phi_bot"]), (-lat_b, lat_b), (-ax_b, ax_b))
    lat_m = np.maximum(LAMINA_OFFSET_MM + LAMINA_HALF_WIDTH_MM, LUMP_OFFSET_MM + LUMP_HALF_WIDTH_MM) * scale
    medial = _frame_box(g["y_tp"], g["x_tp"], g["phi_post"], (-lat_m, lat_m), (-0.42 * h, 0.55 * h))
    two = lambda a: np.repeat(a, 2, axis=1)  # noqa: E731  per level -> per TP
    sgn, half, tp_r = _TP_SIDES, two(g["tp_half"]), two(TP_RADIUS_MM * scale)
    lat_t = (sgn * 0.35 * half - sgn * tp_r, sgn * half + sgn * tp_r)  # root .. tip, +- the radius
    tp = _frame_box(two(g["y_tp"]), two(g["x_tp"]), two(g["phi_post"]), lat_t, (-tp_r, tp_r))
    return {key: _union(box, margin=1.0) for key, box in (("body", body), ("medial", medial), ("tp", tp))}


def _render_vertebrae(g: dict, p: dict, grid: _Grid, atten: np.ndarray, surf: _Surfaces) -> None:
    """Bodies, pedicles, spinous processes, laminae, TPs and lumbar lumps of all 17 levels, then
    the ribs. Each kind of part is drawn for all levels at once, in windows of one size per kind
    (:class:`_Windows`): body-frame parts, laminae / lumps, TPs. Attenuation is added window by
    window, cranial to caudal; the first surfaces are resolved once at the end, in that drawing
    order (the shallowest wins; of exactly equal depths, the earlier drawn)."""
    t_soft = 4.0 + 1.5 * (p["bmi"] - 15.0)
    boxes = _level_boxes(g, p, grid.sp)
    drawn = []  # surfaces of each window, merged in drawing order at the end
    for key, parts in (("body", _body_frame_parts), ("medial", _medial_parts), ("tp", _tp_parts)):
        win = _Windows(grid, *boxes[key])
        local = _Surfaces(win.flat.shape)
        a = parts(g, p, win, local, t_soft)
        if a is not None:
            win.add(atten, a)
        drawn.append(local.drawn(win))
    drawn += _render_ribs(g, p, grid, atten, t_soft)
    surf.merge(*(np.concatenate(values) for values in zip(*drawn)))


def _body_frame_parts(g: dict, p: dict, win: _Windows, surf: _Surfaces, t_soft: np.ndarray) -> np.ndarray:
    """Attenuation ``[n, 17, rows, cols]`` of the bodies, pedicles and spinous processes; adds
    the spinous processes' surfaces to ``surf``."""
    Y, X = win.Y, win.X
    yt, xt, yb, xb = (_lv(g[key]) for key in ("y_top", "x_top", "y_bot", "x_bot"))
    ht, hb, h, psi = _lv(g["half_top"]), _lv(g["half_bot"]), _lv(g["height"]), _lv(g["psi"])
    arm, scale, sin_psi = _lv(p["arm"]), _lv(p["scale"]), _lv(np.sin(g["psi"]))
    # --- body: local frame between the two endplates (wedged quadrilateral) ---
    pt, pb = _lv(g["phi_top"]), _lv(g["phi_bot"])
    d_top = (Y - yt) * np.cos(pt) + (X - xt) * np.sin(pt)  # below the top endplate
    d_bot = (yb - Y) * np.cos(pb) + (xb - X) * np.sin(pb)  # above the bottom one
    v = np.clip(d_top / np.maximum(d_top + d_bot, 1e-3), 0.0, 1.0)  # 0 top .. 1 bottom
    pm = 0.5 * (pt + pb)
    yc, xc = _lv(0.5 * (g["y_top"] + g["y_bot"])), _lv(0.5 * (g["x_top"] + g["x_bot"]))
    lat = -(Y - yc) * np.sin(pm) + (X - xc) * np.cos(pm)  # lateral, right positive
    axial = (Y - yc) * np.cos(pm) + (X - xc) * np.sin(pm)  # along the axis, down positive
    half_v = (ht + (hb - ht) * v) * (1.0 - BODY_WAIST * 4.0 * v * (1.0 - v))
    edge = 0.5 * win.sp  # soft endplates over about one pixel
    inside_v = np.clip(d_top / edge + 0.5, 0, 1) * np.clip(d_bot / edge + 0.5, 0, 1)
    inner_v = (np.clip((d_top - ENDPLATE_MM) / edge + 0.5, 0, 1)
               * np.clip((d_bot - ENDPLATE_MM) / edge + 0.5, 0, 1))
    ap = BODY_AP_RATIO * half_v
    outer = 2.0 * ap * _chord(lat / half_v) * inside_v
    inner = 2.0 * (ap - CORTEX_MM) * _chord(lat / (half_v - CORTEX_MM)) * inner_v
    a = MU_CORTICAL * (outer - inner) + MU_CANCELLOUS * inner

    # --- pedicles: cortical rings at TP height, moved by the axial rotation ---
    ap_shift = 0.5 * arm * sin_psi
    for sgn in (-1.0, 1.0):
        lat0 = sgn * 0.55 * ht * np.cos(psi) - ap_shift
        r = np.hypot((lat - lat0) / (0.2 * ht), (axial - (TP_LEVEL - 0.5) * h) / (0.28 * h))
        a += MU_CORTICAL * 10.0 * np.exp(-((r - 0.8) / 0.25) ** 2) * (r < 1.3)

    # --- spinous process (towards the concavity) ---
    sp_lat = -(arm + SP_ARM_EXTRA_MM) * sin_psi
    sp_axial = _lv(np.where(np.arange(N_LEVELS) < N_THORACIC, 0.35, 0.1)[None, :]) * h
    q = np.hypot((lat - sp_lat) / (SP_HALF_WIDTH_MM * scale), (axial - sp_axial) / (0.35 * h))
    chord = _chord(q)
    a += MU_CORTICAL * 12.0 * chord
    surf.add(q < 1.0, _lv(t_soft + DEPTH_MM["sp"]) + _LUMBAR_EXTRA, REFLECTIVITY["sp"] * chord, CLASS["sp"])
    return a


def _medial_parts(g: dict, p: dict, win: _Windows, surf: _Surfaces, t_soft: np.ndarray) -> None:
    """Adds the surfaces of the laminae (ultrasound only: hidden behind the body on X-ray) and of
    the lumbar lumps (rounded rectangles beside the posterior midline) to ``surf``. Frame:
    along the TP line (perpendicular to the posterior column) through the posterior midline."""
    scale, h, sin_psi = _lv(p["scale"]), _lv(g["height"]), _lv(np.sin(g["psi"]))
    qy, qx, ph = _lv(g["y_tp"]), _lv(g["x_tp"]), _lv(g["phi_post"])
    plat = -(win.Y - qy) * np.sin(ph) + (win.X - qx) * np.cos(ph)  # lateral from the posterior midline
    pax = (win.Y - qy) * np.cos(ph) + (win.X - qx) * np.sin(ph)
    depth_of = lambda part: _lv(t_soft + DEPTH_MM[part]) - plat * sin_psi + _LUMBAR_EXTRA  # noqa: E731
    for sgn in (-1.0, 1.0):
        q = np.hypot((plat - sgn * LAMINA_OFFSET_MM * scale) / (LAMINA_HALF_WIDTH_MM * scale),
                     (pax - 0.25 * h) / (0.3 * h))
        surf.add(q < 1.0, depth_of("lamina"), REFLECTIVITY["lamina"] * _chord(q), CLASS["lamina"])
    lm = slice(N_THORACIC, N_LEVELS)
    for sgn in (-1.0, 1.0):
        q4 = (np.abs((plat[:, lm] - sgn * LUMP_OFFSET_MM * scale) / (LUMP_HALF_WIDTH_MM * scale)) ** 4
              + np.abs(pax[:, lm] / (0.42 * h[:, lm])) ** 4)
        surf.add(q4 < 1.0, depth_of("lump")[:, lm], REFLECTIVITY["lump"] * np.sqrt(np.clip(1.0 - q4, 0, None)),
                 CLASS["lump"], lm)


def _tp_parts(g: dict, p: dict, win: _Windows, surf: _Surfaces, t_soft: np.ndarray) -> np.ndarray:
    """Attenuation ``[n, 34, rows, cols]`` of the TPs (capsules from the pedicle to the tip along
    the TP line); adds the thoracic TPs' surfaces to ``surf``."""
    two = lambda a: _lv(np.repeat(a, 2, axis=1))  # noqa: E731  per level -> per TP
    sgn, tp_half, tp_r = _lv(_TP_SIDES), two(g["tp_half"]), two(TP_RADIUS_MM * p["scale"][:, None])
    qy, qx, ph = two(g["y_tp"]), two(g["x_tp"]), two(g["phi_post"])
    ey, ex = -np.sin(ph), np.cos(ph)
    root, tip = sgn * 0.35 * tp_half, sgn * tp_half
    q = _segment(win.Y, win.X, qy + root * ey, qx + root * ex, qy + tip * ey, qx + tip * ex) / tp_r
    chord = _chord(q)
    t = slice(0, 2 * N_THORACIC)
    plat = -(win.Y[:, t] - qy[:, t]) * np.sin(ph[:, t]) + (win.X[:, t] - qx[:, t]) * np.cos(ph[:, t])
    depth = _lv(t_soft + DEPTH_MM["tp"]) - plat * two(np.sin(g["psi"]))[:, t]
    surf.add(q[:, t] < 1.0, depth, REFLECTIVITY["tp"] * chord[:, t], CLASS["tp"], t)
    return MU_CORTICAL * 1.2 * tp_r * chord


def _rib_items(g: dict, p: dict) -> dict[str, np.ndarray]:
    """The ribs as values ``[n, 24]`` (T1 left, T1 right, T2 left, ...; float64): side ``sgn``,
    TP tip line ``y_tp, x_tp, half, phi``, ``length``, ``sin_psi``; and the image box ``box`` of
    each rib (:func:`_render_ribs` gives the shape)."""
    n, level = len(p["scale"]), np.repeat(np.arange(N_THORACIC), 2)
    sgn = np.tile([-1.0, 1.0], N_THORACIC)[None, :]
    it = {"sgn": np.broadcast_to(sgn, (n, 2 * N_THORACIC))}
    it.update({key: val[:, level] for key, val in (("half", g["tp_half"]), ("phi", g["phi_post"]), ("y_tp", g["y_tp"]),
                                                    ("x_tp", g["x_tp"]), ("sin_psi", np.sin(g["psi"])))})
    it["length"] = RIB_LENGTH_MM[level][None, :] * p["scale"][:, None] * p["rib_length"][:, None]
    # box in the rib frame (a outward from the tip, b downward): a within [-0.025, 1] lengths
    # (the taper), b within RIB_RING_CUTOFF radii of the centreline b = f(a) (q below), f
    # increasing there; then its four corners in the image
    pr, half, phi = RIB_TILT_SHARE * it["phi"], it["half"], it["phi"]
    tip_y, tip_x = it["y_tp"] - sgn * half * np.sin(phi), it["x_tp"] + sgn * half * np.cos(phi)
    s, c, length = p["rib_slope"][:, None], p["rib_bend"][:, None], it["length"]
    a0 = -0.025 * length
    reach = RIB_RING_CUTOFF * (p["rib_radius"] * p["scale"])[:, None] * np.sqrt(1.0 + (s + 2.0 * c * length) ** 2)
    b_lo, b_hi = s * a0 + c * a0 ** 2 - reach, s * length + c * length ** 2 + reach
    ys = [tip_y - a * sgn * np.sin(pr) + b * np.cos(pr) for a in (a0, length) for b in (b_lo, b_hi)]
    xs = [tip_x + a * sgn * np.cos(pr) + b * np.sin(pr) for a in (a0, length) for b in (b_lo, b_hi)]
    it["box"] = _union((_min(*ys), _max(*ys), _min(*xs), _max(*xs)), margin=1.0)
    return it


def _render_ribs(g: dict, p: dict, grid: _Grid, atten: np.ndarray, t_soft: np.ndarray) -> list[tuple]:
    """The ribs of T1-T12, a level's pair (left, right) at a time in windows of one size
    (:class:`_Windows`): tubes from the TP tips, running laterally and bending downwards:
    centreline ``b = slope * a + bend * a^2`` in the (outward a, downward b) frame of the TP line.
    Adds their attenuation; returns their surfaces (:meth:`_Surfaces.drawn` of each window)."""
    drawn = []
    radius = _lv(p["rib_radius"] * p["scale"])
    s_, c_ = _lv(p["rib_slope"]), _lv(p["rib_bend"])
    ribs = _rib_items(g, p)
    for k in range(N_THORACIC):  # one level's pair at a time
        it = {key: (tuple(b[:, 2 * k:2 * k + 2] for b in val) if key == "box" else val[:, 2 * k:2 * k + 2])
              for key, val in ribs.items()}
        win = _Windows(grid, *it["box"])
        Y, X = win.Y, win.X
        sgn, half, ph, sin_psi = _lv(it["sgn"]), _lv(it["half"]), _lv(it["phi"]), _lv(it["sin_psi"])
        tip_y = _lv(it["y_tp"]) + sgn * half * -np.sin(ph)
        tip_x = _lv(it["x_tp"]) + sgn * half * np.cos(ph)
        # the rib leaves the TP tip along half the TP line's tilt: the rib cage (anterior
        # attachments) keeps the ribs from following the vertebra's full tilt
        pr = RIB_TILT_SHARE * ph
        out_y, out_x = -sgn * np.sin(pr), sgn * np.cos(pr)  # outward
        dn_y, dn_x = np.cos(pr), np.sin(pr)  # downward, perpendicular to it
        a_loc = (Y - tip_y) * out_y + (X - tip_x) * out_x
        b_loc = (Y - tip_y) * dn_y + (X - tip_x) * dn_x
        dist = np.abs(b_loc - (s_ * a_loc + c_ * a_loc ** 2)) / np.sqrt(1.0 + (s_ + 2.0 * c_ * a_loc) ** 2)
        along = a_loc / _lv(it["length"])
        taper = np.clip(along / 0.05 + 0.5, 0, 1) * np.clip((1.0 - along) / 0.08, 0, 1)
        q = dist / (radius * (1.0 - 0.25 * np.clip(along, 0, 1)))
        # the rest only on the rib's support (within RIB_RING_CUTOFF radii, inside the taper):
        # values [k] of its pixels, per subject left rib first
        on = (q < RIB_RING_CUTOFF) & (taper > 0)
        at, q, taper, a_loc = win.flat[on], q[on], taper[on], a_loc[on]
        pick = lambda a: np.broadcast_to(a, on.shape)[on]  # noqa: E731
        prof = _chord(q) * taper
        # cortical rim: a narrow Gaussian ring at 0.9 radii (cut at RIB_RING_CUTOFF: < 4e-11 there)
        rim = MU_CORTICAL * 2.0 * np.exp(-((q - 0.9) / 0.15) ** 2) * taper
        np.add.at(atten.reshape(-1), at, MU_RIB * 2.0 * 0.7 * pick(radius) * prof + rim)
        lateral = pick(sgn) * np.minimum(pick(half) + np.maximum(a_loc, 0.0), HUMP_MAX_MM)  # from the midline
        depth = (pick(_lv(t_soft + DEPTH_MM["rib"])) + RIB_DEEPENING_MM * (np.maximum(a_loc, 0.0) / 80.0) ** 2
                 - lateral * pick(sin_psi))
        seen = (q < 1.0) & (taper > 0.5)
        drawn.append((at[seen], depth[seen], np.full(seen.sum(), CLASS["rib"], np.int8),
                      REFLECTIVITY["rib"] * prof[seen]))
    return drawn


def _render_body_outline(g: dict, p: dict, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue and lungs: attenuation ``[n, H, W]`` and the abdomen's reference attenuation ``[n]``.

    Torso: elliptic cylinder whose half-width follows shoulders (T1) -> chest -> waist (L3)
    -> hips (below L5), widening with BMI; lungs: ellipses of air from T1 to T10."""
    n = len(p["scale"])
    fat = (p["bmi"] - 18.0)
    y_t1, y_t10, y_l3, y_l5 = g["y_top"][:, 0], g["y_bot"][:, 9], g["y_top"][:, 14], g["y_bot"][:, 16]
    half_w = np.empty((n, grid.height), dtype=np.float32)
    ap_half = np.empty((n, grid.height), dtype=np.float32)
    for i in range(n):  # piecewise-linear outline along the rows
        knots = [y_t1[i] - 40, y_t1[i] + 60, y_l3[i], y_l5[i] + 40]
        widths = np.array([150.0, 135.0, 118.0, 148.0]) * p["scale"][i] + 3.0 * fat[i]
        half_w[i] = np.interp(grid.y, knots, widths)
        ap_half[i] = np.interp(grid.y, [y_t1[i], y_l3[i]], [95.0, 100.0]) * p["scale"][i] + 4.0 * fat[i]
    X, Y = grid.x[None, None, :], grid.y[None, :, None]
    u = (X - _col(p["shift"])) / half_w[:, :, None]
    atten = MU_SOFT * 2.0 * ap_half[:, :, None] * _chord(u)
    # lungs (left, right), each in its window: ellipses around (cy, cx) with half-axes (ry, rx)
    lung_half = 0.5 * (130.0 * p["scale"] + 3.0 * fat - 45.0)  # medial border 25 mm off the midline
    sgn = np.array([[-1.0, 1.0]])
    cx = sgn * (25.0 * p["scale"] + lung_half)[:, None] + p["shift"][:, None]
    top, bottom = (y_t1 - 10.0)[:, None], y_t10[:, None] + sgn * 8.0  # right dome a little higher (image left)
    cy, ry, rx = 0.5 * (top + bottom), 0.5 * (bottom - top), np.repeat(lung_half[:, None], 2, axis=1)
    win = _Windows(grid, *_union((cy - ry, cy + ry, cx - rx, cx + rx), margin=1.0))
    q = np.hypot((win.X - _lv(cx)) / _lv(rx), (win.Y - _lv(cy)) / _lv(ry))
    win.add(atten, -(MU_SOFT * 2.0 * LUNG_AP_MM * _chord(q)))
    ref = MU_SOFT * 2.0 * (100.0 * p["scale"] + 4.0 * fat)
    return atten, ref


def _render_pelvis(g: dict, p: dict, grid: _Grid, atten: np.ndarray) -> None:
    """Sacrum below L5 and the iliac wings (plates with cortical crests at the L4 level)."""
    scale = _col(p["scale"])
    y_s1 = g["y_bot"][:, -1] + DISC_HEIGHT_MM[-1] * p["scale"] * p["spacing"]
    x_s1 = g["x_bot"][:, -1]
    rows, Y, X = grid.band(g["y_top"][:, 14] - 10.0, np.full_like(y_s1, FOV_HEIGHT_MM))
    a = atten[:, rows]
    # sacrum: a trapezoid narrowing from 50 mm to 15 mm half-width over 95 mm
    t = (Y - _col(y_s1)) / (95.0 * scale)
    half = (50.0 - 35.0 * np.clip(t, 0, 1)) * scale
    a += (MU_CANCELLOUS * 40.0 * scale * _chord((X - _col(x_s1)) / half)
          * np.clip(t / 0.02 + 0.5, 0, 1) * np.clip((1 - t) / 0.05, 0, 1))
    # iliac wings: tilted ellipses, crest top at the middle of L4
    y_crest = 0.5 * (g["y_top"][:, 15] + g["y_bot"][:, 15])
    for sgn in (-1.0, 1.0):
        cy, cx = _col(y_crest) + 85.0 * scale, _col(x_s1 + sgn * p["iliac_x"] * p["scale"])
        cos, sin = float(np.cos(np.radians(sgn * -15.0))), float(np.sin(np.radians(sgn * -15.0)))  # float32 below
        u = ((X - cx) * cos + (Y - cy) * sin) / (60.0 * scale)
        w = (-(X - cx) * sin + (Y - cy) * cos) / (85.0 * scale)
        r = np.hypot(u, w)
        fade = np.clip((0.6 - w) / 0.6, 0.0, 1.0)  # the wing narrows towards the acetabulum
        a += MU_CORTICAL * (8.0 * _chord(r) * fade + 14.0 * np.exp(-((r - 0.94) / 0.05) ** 2) * (w < 0.0))


# ============================================================================================
# Images
# ============================================================================================
def _xray(atten: np.ndarray, ref: np.ndarray, p: dict, grid: _Grid, noise: np.ndarray) -> np.ndarray:
    """Film density ``[n, H, W]`` from attenuation: exposure, blur, quantum noise, film curve."""
    sigma = max(XRAY_BLUR_MM / grid.sp, MIN_BLUR_PX)
    exposure = np.exp(-(atten - _col(ref)))  # 1 behind the abdomen's soft tissue (AEC)
    exposure = gaussian_filter(exposure, sigma=(0, sigma, sigma), mode="nearest")
    quanta = PHOTONS_PER_MM2 * grid.sp ** 2  # photons per pixel behind the reference tissue
    counts = np.maximum(quanta * exposure + np.sqrt(quanta * exposure) * noise, 0.5)
    log_exposure = np.log(counts / quanta)
    film = (1.0 - FILM_FOG) / (1.0 + np.exp(FILM_GAMMA * (log_exposure + _col(p["exposure"]) + 0.1)))
    return np.clip(film, 0.0, 1.0).astype(np.float32)


def _upsample(field: np.ndarray, grid: _Grid) -> np.ndarray:
    """Bilinear upsampling of coarse fields ``[..., a, b]`` spanning the image -> ``[..., H, W]``
    (separable: two small interpolation matrices)."""
    def weights(n_out: int, n_in: int) -> np.ndarray:
        pos = np.clip((np.arange(n_out) + 0.5) / n_out * (n_in - 1), 0, n_in - 1)
        i0 = np.minimum(pos.astype(int), n_in - 2)
        w = np.zeros((n_out, n_in), dtype=np.float32)
        w[np.arange(n_out), i0] = 1.0 - (pos - i0)
        w[np.arange(n_out), i0 + 1] = pos - i0
        return w

    wy, wx = weights(grid.height, field.shape[-2]), weights(grid.width, field.shape[-1])
    field = field.astype(np.float32)
    out = np.empty((*field.shape[:-2], grid.height, grid.width), np.float32)
    for f, o in zip(field, out):  # one subject at a time: BLAS blocking (hence rounding) must not depend on the batch
        np.matmul(wy @ f, wx.T, out=o)
    return out


def _speckle(z: np.ndarray, grid: _Grid) -> np.ndarray:
    """Unit-mean, spatially correlated log-normal speckle ``[n, D, H, W]`` from white normals
    ``z [n, D, H, W]`` (float32, used as the work array): the normals are smoothed by the grain
    kernel ``h`` and rescaled to unit variance (divided by ``sqrt(sum h^2)``), then
    ``exp(s z - s^2 / 2)``. A VPI pixel averages many speckle cells along the slab, so its
    speckle is milder than B-mode's exponential law; the log-normal keeps it positive and
    right-skewed at one normal per pixel."""
    grain = SPECKLE_GRAIN_MM / grid.sp
    if grain > 0.25:
        z = gaussian_filter(z, sigma=(0, 0, grain, grain), mode="wrap")
        delta = np.zeros((grid.height, grid.width))
        delta[0, 0] = 1.0
        z /= np.sqrt(float((gaussian_filter(delta, grain, mode="wrap") ** 2).sum()))
    z *= SPECKLE_SIGMA  # in place: exp(s z - s^2 / 2)
    z -= 0.5 * SPECKLE_SIGMA ** 2
    return np.exp(z, out=z)


def _slab_depths(p: dict) -> np.ndarray:
    """Centres ``[n, D]`` (mm below the skin) of the operator's VPI slabs: depth
    ``optimal_depth`` sits on the TP / rib / lump layer."""
    t_soft = 4.0 + 1.5 * (p["bmi"] - 15.0)
    key = t_soft + KEY_DEPTH_MM + p["depth_jitter"]
    return key[:, None] + (np.arange(N_DEPTHS)[None, :] - p["optimal_depth"][:, None]) * SLAB_STEP_MM


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _scan_mask(g: dict, p: dict, grid: _Grid) -> np.ndarray:
    """The scanned region ``[n, H, W]`` in [0, 1]: a strip around the posterior column."""
    n = len(p["scale"])
    centre = np.empty((n, grid.height), dtype=np.float32)
    for i in range(n):
        centre[i] = np.interp(grid.y, g["y_dense"][i], g["x_post_dense"][i])
    lateral = np.abs(grid.x[None, None, :] - centre[:, :, None])
    soft = 0.5 * grid.sp + 2.0
    across = _sigmoid((_col(p["strip"]) - lateral) / soft)
    y = grid.y[None, :, None]
    along = (_sigmoid((y - _col(g["y_top"][:, 0] - 25.0)) / soft)
             * _sigmoid((_col(g["y_bot"][:, -1] + 35.0) - y) / soft))
    return (across * along).astype(np.float32)


def _ultrasound(surf: _Surfaces, g: dict, p: dict, grid: _Grid, speckle: np.ndarray,
                noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Clean VPIs ``[n, D, H, W]``, the scan mask ``[n, H, W]`` and the slab visibility of the
    first bone surface as ``(px, vis)``: pixels ``[m]`` (flat indices into ``[n, H, W]``) with a
    surface and their visibility in each slab ``[m, D]`` (0 at every other pixel). ``speckle``
    and ``noise`` (white normals) are used as work arrays.

    Only pixels with a bone surface (about a fifth) have a visibility and a shadow in a slab;
    elsewhere both are 0 and a VPI shows the tissue echo, so those two are computed on the
    bone pixels alone."""
    n, D = len(p["scale"]), N_DEPTHS
    centres = _slab_depths(p).astype(np.float32)  # [n, D]
    c4 = centres[:, :, None, None]
    residual = np.maximum(ALPHA_PER_BMI * (p["bmi"] - 18.0), 0.0).astype(np.float32)  # attenuation left after TGC
    half = 0.5 * SLAB_THICK_MM
    # 1. tissue echo everywhere: smooth texture, residual attenuation down to the slab, part of
    #    the slab inside the body (in place: 1 + contrast * tanh(texture), times the rest)
    below_skin = np.clip((c4 + half) / SLAB_THICK_MM, 0.0, 1.0)
    echo = _upsample(p["texture"], grid)
    np.tanh(echo, out=echo)
    echo *= TEXTURE_CONTRAST
    echo += 1.0
    echo *= TISSUE_ECHO
    echo *= np.exp(-residual[:, None, None, None] * np.maximum(c4, 0.0))
    echo *= below_skin
    # 2. bone pixels: visibility of the surface in each slab, shadow below it, its echo
    px = np.flatnonzero(np.isfinite(surf.depth))
    who, where = np.divmod(px, grid.height * grid.width)
    z, c = surf.depth.reshape(-1)[px][:, None], centres[who]  # [m, 1], [m, D]
    vis = _sigmoid((z - (c - half)) / SLAB_EDGE_MM) * _sigmoid(((c + half) - z) / SLAB_EDGE_MM)
    shadow = _sigmoid((c - z) / SLAB_EDGE_MM)
    bone = BONE_GAIN * surf.refl.reshape(-1)[px][:, None] * vis * np.exp(-residual[who, None] * np.minimum(z, 200.0))
    at = (who[:, None] * D + np.arange(D)) * (grid.height * grid.width) + where[:, None]  # [m, D] into echo
    echo.reshape(-1)[at] = echo.reshape(-1)[at] * (1.0 - shadow) + bone
    # 3. speckle, electronic noise amplified by the TGC, the scanned strip
    clean = echo
    clean *= speckle
    noise *= US_NOISE * np.exp(ALPHA_BASE * np.maximum(c4, 0.0))
    clean += noise
    scan = _scan_mask(g, p, grid)
    clean *= scan[:, None]
    return np.clip(clean, 0.0, 1.0, out=clean), scan, (px, vis)


def _band(grid: _Grid, centre: float, height: float, soft: float) -> tuple[np.ndarray, slice]:
    """A soft band of rows ``height`` mm high around row position ``centre`` mm: weights ``[H, 1]``
    (float32) and the slice of the rows where they are not 0."""
    band = _sigmoid((0.5 * height - np.abs(grid.y - centre)) / soft)
    rows = np.flatnonzero(band)
    return band[:, None], slice(rows[0], rows[-1] + 1) if rows.size else slice(0, 0)


def _blur_rows(image: np.ndarray, rows: slice, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Rows ``rows`` of ``gaussian_filter(image [D, H, W], (0, sigma_rows, sigma_cols), mode="nearest")``,
    filtering only the rows within the kernel's reach (scipy's radius: 4 sigma)."""
    reach = int(4.0 * sigma_rows + 0.5)
    lo, hi = max(rows.start - reach, 0), min(rows.stop + reach, image.shape[1])
    blurred = gaussian_filter(image[:, lo:hi], sigma=(0, sigma_rows, sigma_cols), mode="nearest")
    return blurred[:, rows.start - lo:rows.stop - lo]


def _artifacts(clean: np.ndarray, g: dict, p: dict, grid: _Grid, scan: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Scanning artifacts on the VPIs: returns ``(us_vpi [n, D, H, W], artifact_free [n, D])``.
    Bands of rows change only where their weight is not 0."""
    n = clean.shape[0]
    out = clean.copy()
    flags = np.ones((n, N_DEPTHS), dtype=bool)
    top, bottom = g["y_top"][:, 0] - 25.0, g["y_bot"][:, -1] + 35.0
    extent = bottom - top
    soft = 0.5 * grid.sp + 1.0
    for i in np.flatnonzero(p["scan_artifact"]):
        kind = p["artifact_kind"][i]
        if kind in (0, 2):  # motion drop-out: the probe lost contact, rows without signal
            for pos, height in p["dropout"][i][: p["n_dropout"][i]]:
                band, rows = _band(grid, float(top[i] + pos * extent[i]), float(height), soft)
                out[i, :, rows] *= 1.0 - (1.0 - DROPOUT_GAIN) * band[rows]
        if kind in (1, 2):  # blurred stretch: fast probe motion smears along the spine
            pos, length, sigma_mm = p["blur_band"][i]
            band, rows = _band(grid, float(top[i] + pos * extent[i]), float(length), soft)
            blurred = _blur_rows(out[i], rows, sigma_mm / grid.sp, 1.0 / grid.sp)
            out[i, :, rows] = out[i, :, rows] * (1.0 - band[rows]) + blurred * band[rows]
        flags[i] = False
    haze_map = np.tanh(_upsample(p["haze_field"], grid)) * 0.5 + 0.5  # [n, H, W] in [0, 1]
    for i in np.flatnonzero(p["haze"]):
        depths = slice(0, int(p["haze_depths"][i]))
        h = float(p["haze_strength"][i]) * haze_map[i] * scan[i]  # [H, W]
        level = (HAZE_LEVEL * np.exp(-0.5 * np.arange(depths.stop))).astype(np.float32)[:, None, None]
        out[i, depths] = out[i, depths] * (1.0 - h) + level * h
        flags[i, depths] = False
    return np.clip(out, 0.0, 1.0, out=out), flags


# ============================================================================================
# generate
# ============================================================================================
def haze_probability(bmi: np.ndarray) -> np.ndarray:
    """Probability ``[n]`` of multipath haze in a scan: grows with BMI (thicker fat layers)."""
    return np.clip(0.05 + 0.05 * (np.asarray(bmi) - 18.0), 0.0, 0.6)


def _apply_controls(p: dict[str, np.ndarray], controls: dict[str, float]) -> None:
    """Fixed parameters replace the drawn ones (after drawing, so the rest of a subject stays)."""
    n = len(p["scale"])
    if "cobb" in controls:
        p["cobb"] = np.full(n, float(controls["cobb"]))
    if "bmi" in controls:
        p["bmi"] = np.full(n, float(controls["bmi"]))
    p["haze"] = p["haze_u"] < haze_probability(p["bmi"])
    if "artifacts" in controls:
        on = controls["artifacts"] >= 0.5
        p["scan_artifact"] = np.full(n, on)
        if not on:
            p["haze"] = np.zeros(n, dtype=bool)


def _render_chunk(params: dict[str, np.ndarray], rngs: list[np.random.Generator], sizes: Sizes
                  ) -> dict[str, np.ndarray]:
    """Render one chunk of subjects (parameters already drawn; pixel noise drawn here)."""
    n, grid = len(rngs), _Grid(sizes)
    H, W = grid.height, grid.width
    g = spine_geometry(params)
    # pixel noise, per subject in a fixed order: radiograph, speckle, ultrasound noise
    xr_noise = np.empty((n, H, W), dtype=np.float32)
    sp_z = np.empty((n, N_DEPTHS, H, W), dtype=np.float32)
    us_noise = np.empty((n, N_DEPTHS, H, W), dtype=np.float32)
    for i, rng in enumerate(rngs):
        for out in (xr_noise[i], sp_z[i], us_noise[i]):
            rng.standard_normal(dtype=np.float32, out=out)

    atten, ref = _render_body_outline(g, params, grid)
    surf = _Surfaces((n, H, W))
    _render_vertebrae(g, params, grid, atten, surf)
    _render_pelvis(g, params, grid, atten)
    xray = _xray(atten, ref, params, grid, xr_noise)

    clean, scan, (px, vis) = _ultrasound(surf, g, params, grid, _speckle(sp_z, grid), us_noise)
    us_vpi, flags = _artifacts(clean, g, params, grid, scan)
    # the optimal depth: the slab where the most bone surface is visible (the operator aimed
    # the drawn params["optimal_depth"] at the TP / rib / lump layer; this makes it exact);
    # visibility is 0 off the bone pixels px, so the sums run over those
    who = px // (H * W)
    counted = ((surf.cls > 0) & (scan >= 0.5)).reshape(-1)[px]
    bone_area = np.stack([np.bincount(who, vis[:, d] * counted, minlength=n) for d in range(N_DEPTHS)], axis=1)
    opt = bone_area.argmax(axis=1).astype(np.int64)
    vis_opt = np.zeros(n * H * W, np.float32)
    vis_opt[px] = vis[np.arange(len(px)), opt[who]]
    seg = np.where((surf.cls >= 1) & (surf.cls <= 3) & (vis_opt.reshape(n, H, W) >= 0.5) & (scan >= 0.5),
                   surf.cls, 0)

    landmarks = grid.to_pixels(_corners_mm(g)).astype(np.float32)
    tips = grid.to_pixels(_tp_tips_mm(g)).astype(np.float32)
    apex = np.where(params["curve_type"] == 1, params["apex_l"],
                    np.where((params["curve_type"] == 0) | params["thoracic_major"], params["apex_t"],
                             params["apex_l"]))
    return {
        "xray": xray, "us_vpi": us_vpi, "us_clean": clean,
        "seg": seg.astype(np.int64),
        "cobb": g["cobb"].astype(np.float32), "uca": g["uca"].astype(np.float32),
        "landmarks": landmarks, "tp_landmarks": tips,
        "optimal_depth": opt, "artifact_free": flags,
        "bmi": params["bmi"].astype(np.float32),
        "curve_type": params["curve_type"].astype(np.int64),
        "apex_level": apex.astype(np.float32),
    }


def generate(numbers: np.ndarray, *, seed: int = 0, sizes: Sizes, **controls: float) -> dict[str, np.ndarray]:
    """Render subjects ``numbers`` (``[n]`` int) at ``sizes``; every array has leading axis ``n``.

    Images: ``xray [n, H, W]`` (film density), ``us_vpi`` / ``us_clean [n, 5, H, W]`` (a.u.);
    labels as documented in ``SPEC.labels``. ``controls``: ``cobb`` (degrees), ``bmi``,
    ``artifacts`` (0 or 1), validated by :meth:`PhantomSpec.check_controls`.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    rngs = [subject_rng(NAME, seed, int(k)) for k in numbers]
    if not rngs:
        return _empty(sizes)
    params = _stack([draw_parameters(rng) for rng in rngs])
    _apply_controls(params, controls)
    chunk = max(1, CHUNK_PIXELS // (sizes.height * sizes.width * N_DEPTHS // 4))
    parts = []
    for start in range(0, len(rngs), chunk):
        part = {key: val[start:start + chunk] for key, val in params.items()}
        parts.append(_render_chunk(part, rngs[start:start + chunk], sizes))
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _empty(sizes: Sizes) -> dict[str, np.ndarray]:
    """The output of ``generate([])``: every key with a leading axis of length 0."""
    H, W = sizes.height, sizes.width
    f, i = np.float32, np.int64
    return {"xray": np.zeros((0, H, W), f), "us_vpi": np.zeros((0, N_DEPTHS, H, W), f),
            "us_clean": np.zeros((0, N_DEPTHS, H, W), f), "seg": np.zeros((0, H, W), i),
            "cobb": np.zeros(0, f), "uca": np.zeros(0, f), "landmarks": np.zeros((0, N_LEVELS, 4, 2), f),
            "tp_landmarks": np.zeros((0, N_LEVELS, 2, 2), f), "optimal_depth": np.zeros(0, i),
            "artifact_free": np.zeros((0, N_DEPTHS), bool), "bmi": np.zeros(0, f),
            "curve_type": np.zeros(0, i), "apex_level": np.zeros(0, f)}


def relations(n: int = 500, *, seed: int = 0, sizes: Sizes | str = "ci") -> dict[str, float]:
    """Measured relations of a default set (the numbers quoted in the dataset card).

    Renders subjects ``0 .. n-1`` and returns: the UCA-vs-Cobb least-squares slope through
    the origin and with an intercept, Pearson ``r``, the fraction with UCA < Cobb among
    Cobb > 5 deg, the Cobb range, the optimal-depth distribution, the artifact-free fraction
    of optimal images and the largest |landmark-measured - label| angle errors (degrees).
    Run: ``python -c "from medgen.data.phantoms.spine_coronal import relations; print(relations())"``.
    """
    from medgen.measure.spine import cobb_angle, curve_angle

    out = SPEC(np.arange(n), seed=seed, sizes=sizes)
    cobb, uca = out["cobb"].astype(np.float64), out["uca"].astype(np.float64)
    slope, intercept = np.polyfit(cobb, uca, 1)
    share = np.bincount(out["optimal_depth"], minlength=N_DEPTHS) / n
    result = {
        "uca_slope_through_0": float(cobb @ uca / (cobb @ cobb)),
        "uca_slope": float(slope), "uca_intercept": float(intercept),
        "pearson_r": float(np.corrcoef(cobb, uca)[0, 1]),
        "uca_below_cobb_if_cobb_gt_5": float((uca < cobb)[cobb > 5].mean()),
        "cobb_min": float(cobb.min()), "cobb_max": float(cobb.max()),
        "artifact_free_optimal": float(out["artifact_free"][np.arange(n), out["optimal_depth"]].mean()),
        "cobb_landmark_error_max": float(np.abs(cobb_angle(out["landmarks"]) - cobb).max()),
        "uca_landmark_error_max": float(np.abs(curve_angle(out["tp_landmarks"]) - uca).max()),
    }
    result.update({f"optimal_depth_{d}": float(share[d]) for d in range(N_DEPTHS)})
    return result


SPEC = register_phantom(PhantomSpec(
    name=NAME,
    card=__doc__ or "",
    generate=generate,
    modalities={
        "xray": Modality("xray", "film density", 0.0, 1.0,
                         "coronal radiograph: every bone (bodies, pedicles, processes, ribs, pelvis), "
                         "no soft-tissue detail"),
        "us_vpi": Modality("us_vpi", "a.u. (ultrasound VPI)", 0.0, 1.0,
                           "5 coronal VPI depths [n, 5, H, W]: bone surfaces in each slab, shadows, speckle, "
                           "scanning artifacts; no vertebral bodies"),
        "us_clean": Modality("us_clean", "a.u. (ultrasound VPI)", 0.0, 1.0,
                             "the same 5 VPIs without scanning artifacts (enhancement target)"),
    },
    labels={
        "cobb": "Cobb angle of the major curve from the endplates [degrees] (float32 [n])",
        "uca": "ultrasound curve angle from the transverse-process lines [degrees] (float32 [n])",
        "landmarks": "vertebra corners T1..L5 (TL, TR, BL, BR) as (row, col) [pixels] (float32 [n, 17, 4, 2])",
        "tp_landmarks": "left and right transverse-process tips T1..L5 as (row, col) [pixels] (float32 [n, 17, 2, 2])",
        "seg": "VPI segmentation at the optimal depth: 0 background, 1 transverse process, 2 rib, "
               "3 lumbar lump (int64 [n, H, W])",
        "optimal_depth": "index 0-4 of the VPI depth showing the most of the spine (int64 [n])",
        "artifact_free": "True where a us_vpi depth image has no scanning artifact (bool [n, 5])",
        "bmi": "body-mass index [kg/m^2] (float32 [n])",
        "curve_type": "0 single thoracic, 1 single (thoraco)lumbar, 2 double curve (int64 [n])",
        "apex_level": "apex of the major curve as a vertebra index, 0 = T1 .. 16 = L5 (float32 [n])",
    },
    controls=CONTROLS,
    sizes={"ci": Sizes(64, 32), "smoke": Sizes(64, 32), "cpu": Sizes(128, 64), "paper": Sizes(512, 256)},
    label_maps=("seg",),
))
