"""``spine_sagittal``: T1w / T2w MRI and CT of the same spine segment (mri_to_ct_spine_ddim paper).

Dataset card
------------
The paper translates sagittal T1w and T2w spine MRI (cervical, thoracic and lumbar series)
into CT, in 2D (256x256 sagittal crops at 1 x 1 mm) and in 3D (1 mm isotropic patches), after
rigidly registering each CT onto its MRI with one or two landmarks per vertebra: the centre
of mass (CM) of the vertebral body and of the spinous process, taken from the vertebra and
subregion segmentations. CT enters the model as ``HU / 1000`` clipped to ``[-1, 1]``. None of
its data is public, so this module renders both modalities from ONE seeded 3D spine.

* **Axes and units.** World coordinates in mm: ``x`` left-right (the slice axis, D),
  ``y`` cranio-caudal (rows, H, caudal down), ``z`` antero-posterior (columns, W, anterior
  on the left). The square sagittal field of view ``fov`` (mm) is set per subject so that the
  six central vertebrae fill ``FILL`` of it: about 145 mm (cervical), 200 mm (thoracic) and
  280 mm (lumbar), i.e. 0.55-1.1 mm pixels at ``paper`` (the paper resamples to 1 mm and
  crops 256 px; here every segment shows the same number of vertebrae instead). The 3D
  left-right field is ``LR_FRACTION * fov``. Pixel coordinates are array indices, ``(row, col)``
  in 2D and ``(slice, row, col)`` in 3D (``scipy.ndimage.center_of_mass`` convention);
  ``spacing_mm`` gives the pixel size.
* **Anatomy** (analytic implicit shapes in each vertebra's own frame, point-sampled at the
  pixel centres): a chain of ``N_VERT = 10`` vertebrae on a circular sagittal arc (lordosis
  for cervical and lumbar, kyphosis for thoracic; ``curvature_deg`` = angle between the
  tangents at the ends of the six central vertebrae). Each vertebra has a body (rounded
  superellipsoid with slightly concave endplates and walls, cortical shell of ``CORTEX_MM``
  around cancellous bone), a neural arch
  (pedicles and laminae: an elliptical ring around the bony canal, slanting caudally) and a
  spinous process (superellipsoid at ``DIMS`` angle below horizontal, thicker at its base),
  each with a cortical shell around cancellous bone. Dimensions grow from
  the first to the last vertebra (``DIMS``, per segment), times a subject scale and 3 %
  per-vertebra jitter. Discs fill the space between adjacent endplates (annulus; nucleus
  bright on T2w when healthy, dark and 30-45 % flatter when degenerated). Wedge fractures
  (``fracture``) lower the anterior upper endplate by 20-40 % of the body height and add
  marrow oedema on MRI (T1w darker, T2w brighter). Soft tissue follows the arc: dural sac
  with CSF inside the bony canal, epidural fat around it, spinal cord (ending at the conus,
  about L1/L2, in the lumbar segment), paraspinal muscle, subcutaneous fat of drawn
  thickness ("BMI"), air behind the back; prevertebral soft tissue in front (with the airway
  in the neck, a fat pad in front of the lumbar spine and the lungs lateral to the thoracic
  spine). Ten vertebrae are drawn so that the spine runs through the whole image; the
  outer ones are usually cut by the border (``complete`` is False for them).
* **MRI** ``t1w``, ``t2w`` in fixed a.u. (~[0, 1]; ``T1W`` / ``T2W`` tables, each tissue
  jittered 5 % per subject): T1w fat and marrow bright, CSF dark, cortical bone black; T2w CSF
  and fat bright, healthy nucleus bright, degenerated nucleus dark. Thick slices: each MRI
  pixel averages ``SUBSAMPLES`` planes across the slice thickness (2.5-3.5 mm drawn, the
  paper's range; in 3D the larger of that and the slice spacing), times a smooth coil bias
  field (brighter posteriorly; ``BIAS_*``), with Rician noise (std 0.01-0.035 of the scale).
* **CT** ``ct`` in HU: air -1000, fat -80..-120, muscle 50, soft tissue 40, CSF 8, cord 35,
  annulus 90, nucleus 70 (degenerated 90), cancellous bone 150-350 HU (per subject, 20 HU
  per-vertebra jitter, fractured +60), cortical bone 800-1400 HU, lung -850, plus
  reconstruction noise (Gaussian, 8-25 HU, correlated over ~0.6 px). The CT is point-sampled
  (thin slices). The cortical shell is drawn at least ``CORTEX_MIN_PX`` pixels thick so that
  it survives at 32-64 px; where that is thicker than ``CORTEX_MM`` its pixels hold the
  partial-volume mix (fraction ``CORTEX_MM`` / drawn thickness of cortex, the rest marrow) on
  all three images, e.g. about 400 HU instead of 1100 HU at 32 px, full cortex from about
  128 px (lumbar) up.
* **Pose difference.** The CT is acquired in a different pose: its arc curvature differs
  (flexion, 4 deg std), the whole spine moves by a global rigid motion (rotation 3 deg
  in-plane and 3 deg about the cranio-caudal axis in 3D about the arc middle, translation 3 %
  of ``fov`` cranio-caudally and antero-posteriorly, 1 % left-right in 3D) and
  each vertebra by its own small rigid motion (1.5 deg in-plane, 3 deg axial rotation in 3D,
  0.5 mm), all times ``misalignment`` and clipped at 2.5 std. In 2D only the in-plane parts
  (rotation about the left-right axis, translation in the sagittal plane) apply, so that the
  mid-sagittal plane maps onto itself; the 3D poses add the rotations about the cranio-caudal
  axis and the left-right translation. Discs and soft tissue follow the CT pose (discs stay
  between the moved endplates), so MRI and CT are NOT aligned until registered.
* **Ground truth** (``SPEC.labels``): ``labels_mri`` / ``labels_ct`` (value
  ``10 * (v + 1) + sub`` for vertebra ``v = 0..9`` from the top, ``sub`` 1 body, 2 arch
  (pedicles and laminae), 3 spinous process; 0 elsewhere) and ``tissue_mri`` / ``tissue_ct``
  (``TISSUES`` at the slice centre); ``body_com_*`` / ``spinous_com_*`` ``[n, V, 2|3]``: the
  centre of mass of each label in pixel coordinates, computed from the label maps (NaN
  where absent); ``transforms`` ``[n, V, 3, 3]`` (2D) / ``[n, V, 4, 4]`` (3D): homogeneous
  maps of MRI pixel coordinates to CT pixel coordinates per vertebra (exact for the
  continuous shapes); ``complete`` ``[n, V]``: body and spinous process present and clear of
  the image border in both frames, and no bone of the vertebra meeting another vertebra's
  (kissing spinous processes at extreme curvature and misalignment) -- use these for
  landmarks (about 5-6 of the 10 per subject); ``segment``, ``curvature_deg``,
  ``degenerated`` ``[n, V]`` (the disc below vertebra ``v``; the last entry is always False),
  ``fracture`` ``[n, V]``, ``spacing_mm`` and ``slice_thickness_mm``. ``V = N_VERT`` is fixed.
* **Landmark accuracy.** Centres of mass measured on label maps carry rasterisation error
  (flat endplates flip whole pixel rows), so MRI centres mapped by ``transforms`` meet the
  CT centres only to within it. Measured over 64 subjects (24 in 3D), complete vertebrae,
  body / spinous process, max (mean) in pixels: 32x32 0.84 / 0.81 (0.25 / 0.24), 64x64
  0.63 / 0.55 (0.17 / 0.17), 128x128 0.51 / 0.53 (0.13 / 0.13), 256x256 0.34 / 0.29
  (0.09 / 0.09); 3D 32x32x16 0.58 / 0.73, 64x64x32 0.35 / 0.38, 96x96x32 0.26 / 0.38. Before
  registration they are about 1.3 px (32 px) to 10 px (256 px) apart at ``misalignment`` 1.
* **2D vs 3D.** ``Sizes(h, w, 0)`` renders one sagittal slice at ``x = slice * LR/2``
  (``slice`` 0: mid-sagittal) with the slab of one slice thickness; ``Sizes(h, w, d >= 4)``
  renders ``d`` slices across the left-right field. The same subject has the same geometry
  either way: the 2D MRI and its labels equal slice ``d // 2`` of an odd-``d`` volume (noise
  aside) whenever the slice spacing is at most the slice thickness. The 2D CT differs from
  the 3D CT's central slice by the out-of-plane motion that 2D leaves out.
* **Controls** (demo sliders): ``segment`` (0 cervical, 1 thoracic, 2 lumbar),
  ``curvature`` (deg), ``misalignment`` (0 = CT in the MRI pose), ``slice`` (2D only),
  ``noise`` (scale of MRI and CT noise), ``degeneration`` and ``fracture`` (probability per
  disc / vertebra). A fixed control replaces the drawn value; every other draw is unchanged.
* **Ignored**: transverse and articular processes, facet joints, ribs, sacrum (the last
  lumbar-chain vertebra is drawn like L5), ligaments, vessels, heart and bowel, trabecular
  texture, osteophytes, Schmorl nodes, scoliosis, the lateral body outline (soft tissue has no
  left-right boundary), motion and chemical-shift artifacts, a different CT field of view
  (both frames share one pixel grid), CT beam hardening, an in-plane MRI point-spread.

Sizes: ``ci`` 32x32, ``smoke`` and ``cpu`` 64x64, ``paper`` 256x256 (the paper's 2D crops);
3D at any ``Sizes(h, w, d)`` with ``d >= 4`` (e.g. ``Sizes(64, 64, 32)``; the paper's 3D
patches are 128x128x32). Rendering is hand-written vectorised NumPy (no library draws
implicit anatomies with per-vertebra rigid poses); each body, arch and disc is evaluated only
in its bounding window, and the in-plane and left-right parts of every shape test are kept
separable so the MRI slab planes cost little. Centres of mass are weighted ``np.bincount``
sums (the tests cross-check them with :func:`scipy.ndimage.center_of_mass`), the CT noise
correlation :func:`scipy.ndimage.gaussian_filter`. Speed (one CPU core, process time,
64 subjects per call, all three images per subject): about 1200 subjects/s at 32x32,
530 at 64x64, 43 at 256x256; 3D about 185 volumes/s at 32x32x16 and 20 at 64x64x32.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medgen.data.phantoms.base import (Control, Modality, PhantomError, PhantomSpec, Sizes,
                                       register_phantom, subject_rng)

__all__ = ["SPEC", "generate", "TISSUES", "SEGMENTS", "SUBREGIONS", "N_VERT", "label_value"]

NAME = "spine_sagittal"
SEGMENTS = ("cervical", "thoracic", "lumbar")
N_VERT = 10  # vertebrae in the chain (index 0 = most cranial); the outer ones are cut by the border
SUBREGIONS = ("body", "arch", "spinous")  # label sub-values 1, 2, 3

# --- geometry -----------------------------------------------------------------------------------------
FILL = (0.78, 0.86)  # fraction of the fov height spanned by the six central vertebrae (drawn)
LR_FRACTION = 0.35  # left-right extent of the 3D field / fov
CORTEX_MM = 1.5  # cortical shell thickness
CORTEX_MIN_PX = 0.75  # ... but at least this many (in-plane) pixels
SUBSAMPLES = np.array([-1.0, 0.0, 1.0]) / 3.0  # MRI partial-volume planes (fractions of the slice thickness)
SLICE_THICKNESS_MM = (2.5, 3.5)  # MRI slice thickness (paper: 2.5-3.5 mm)

# Vertebra dimensions (mm, deg), (first, last) of the chain, linearly interpolated along it.
DIM_NAMES = ("h", "dp", "wd", "disc", "ca", "cb", "ta", "ah", "slope", "spl", "spa", "spt", "spe",
             "dua", "dub", "coa", "cob")
# h body height, dp body depth (AP), wd body width (LR), disc height below the body, ca / cb bony
# canal LR / AP semi-axes, ta arch (lamina) thickness, ah arch height / body height, slope lamina
# slant (mm caudal per mm posterior), spl spinous length, spa spinous angle below horizontal (deg),
# spt spinous thickness (cranio-caudal), spe spinous half-width (LR), dua / dub dural sac LR / AP
# semi-axes, coa / cob cord LR / AP semi-axes.
DIMS = np.array([
    # cervical C2..T3
    [(13, 19), (15, 21), (17, 28), (5.0, 5.0), (12, 9), (7.0, 7.0), (4.5, 5.5), (0.6, 0.6), (0.3, 0.4),
     (16, 30), (20, 35), (6, 7), (3.0, 3.5), (9, 7), (5.5, 5.2), (6.5, 4.8), (4.0, 3.8)],
    # thoracic T3..T12
    [(17, 24), (22, 31), (26, 38), (4.0, 6.0), (8, 9.5), (7.5, 8.0), (5.0, 6.0), (0.6, 0.6), (0.55, 0.5),
     (34, 32), (50, 35), (7, 10), (3.5, 4.0), (6.5, 7.5), (5.5, 6.0), (4.6, 4.2), (3.8, 3.8)],
    # lumbar T9..S1 (S1 drawn like L5)
    [(21, 27), (27, 36), (33, 50), (5.0, 11.0), (9, 12), (8.0, 8.5), (5.5, 7.0), (0.6, 0.55), (0.45, 0.3),
     (30, 24), (35, 0), (10, 16), (4.0, 4.5), (7.5, 10), (6.0, 7.0), (4.5, 4.5), (3.8, 3.8)],
], dtype=np.float64)  # [segment, param, (first, last)]
SPINOUS_BASE = 0.8  # extra thickness of the spinous process at its base (fraction)
ENDPLATE_SAG = 0.06  # concavity of the endplates (fraction of the body height)
WALL_SAG = 0.04  # concavity of the anterior and posterior body walls (fraction of the body depth)
DISC_INTO = 0.2  # the disc region reaches this fraction of each body's height into it
CURVATURE_DEG = ((10, 35), (15, 40), (20, 45))  # drawn curvature range per segment
CURVATURE_SIGN = (1.0, -1.0, 1.0)  # +1 lordosis (ends posterior), -1 kyphosis
CONUS_INDEX = 4.5  # lumbar chain: the cord ends at this vertebra position (about L1/L2), +-0.5 drawn
Z_CENTRE = (-0.08, -0.06, -0.10)  # AP position of the spine (fraction of fov) per segment
FAT_MM = ((3, 10), (5, 20), (5, 30))  # posterior subcutaneous fat thickness ("BMI") per segment
MUSCLE_MM = (8, 20)  # paraspinal muscle behind the spinous tips
AIRWAY_MM = (12, 18)  # cervical airway AP size (in front of 4 mm prevertebral tissue)
DEGENERATED_HEIGHT = (0.55, 0.7)  # disc height factor of a degenerated disc
WEDGE = (0.2, 0.4)  # anterior height loss of a wedge fracture (fraction of the body height)
DEGENERATION_P = (0.0, 0.5)  # drawn per-subject probability that a disc is degenerated
FRACTURE_P = 0.06  # default per-vertebra fracture probability

# --- CT pose difference (std, times ``misalignment``; clipped at CLIP_SD std) ---------------------------
FLEXION_SD_DEG = 4.0  # change of the curvature angle
GLOBAL_ROT_SD_DEG = (3.0, 3.0)  # whole-spine rotation about left-right (in-plane), cranio-caudal (3D)
GLOBAL_SHIFT_SD = (0.01, 0.03, 0.03)  # whole-spine translation along x (3D), y, z: fraction of fov
LOCAL_ROT_SD_DEG = (1.5, 3.0)  # per-vertebra rotation about left-right, cranio-caudal (3D)
LOCAL_SHIFT_SD_MM = 0.5  # per-vertebra translation per axis
CLIP_SD = 2.5

# --- tissues and signal ---------------------------------------------------------------------------------
TISSUES = ("air", "fat", "muscle", "soft_tissue", "csf", "cord", "annulus", "cortical_bone", "lung",
           "cancellous_bone", "nucleus")
AIR, FAT, MUSCLE, SOFT, CSF, CORD, ANNULUS, CORTEX, LUNG, CANCELLOUS, NUCLEUS = range(len(TISSUES))
CANC0 = 9  # material code of vertebra v's cancellous bone: CANC0 + v
NUC0 = CANC0 + N_VERT  # material code of the nucleus of the disc below vertebra v: NUC0 + v
N_MAT = NUC0 + N_VERT
MAT_TISSUE = np.array(list(range(CANC0)) + [CANCELLOUS] * N_VERT + [NUCLEUS] * N_VERT, np.uint8)
#              air   fat   muscle soft  csf   cord  annulus cortex lung
T1W = np.array([0.0, 0.80, 0.32, 0.40, 0.08, 0.45, 0.30, 0.02, 0.03])
T2W = np.array([0.0, 0.72, 0.22, 0.35, 0.90, 0.45, 0.20, 0.02, 0.03])
CT_HU = np.array([-1000.0, -100.0, 50.0, 40.0, 8.0, 35.0, 90.0, 1100.0, -850.0])
MARROW_T1 = (0.55, 0.78)  # cancellous bone (fatty marrow) per subject
MARROW_T2 = (0.42, 0.58)
NUCLEUS_T2 = (0.75, 0.95)  # healthy nucleus; degenerated: DEGENERATED_T2
DEGENERATED_T2 = (0.18, 0.30)
NUCLEUS_T1 = (0.33, 0.28)  # healthy, degenerated
NUCLEUS_HU = (70.0, 90.0)  # healthy, degenerated
CANCELLOUS_HU = (150.0, 350.0)  # per subject; +-20 HU per vertebra; fractured +60
CORTICAL_HU = (800.0, 1400.0)
FAT_HU = (-120.0, -80.0)
EDEMA = (0.6, 1.5)  # fractured marrow: T1 factor, T2 factor
MRI_NOISE = (0.01, 0.035)  # Rician noise std (a.u.)
CT_NOISE_HU = (8.0, 25.0)
CT_NOISE_CORR_PX = 0.6
BIAS_POSTERIOR = (0.1, 0.3)  # log-gain per half-fov towards the posterior coil
BIAS_SD = 0.05  # std of the other log-polynomial coefficients

CONTROLS = {
    "segment": Control(0, 2, step=1, default=2, description="spine segment: 0 cervical, 1 thoracic, 2 lumbar"),
    "curvature": Control(0, 60, step=1, default=30,
                         description="lordosis (cervical, lumbar) / kyphosis (thoracic) angle, deg"),
    "misalignment": Control(0, 2, step=0.1, default=1,
                            description="scale of the CT pose change (0: CT aligned with the MRI)"),
    "slice": Control(-1, 1, step=0.05, default=0,
                     description="2D only: left-right slice position, in half-widths of the 3D field"),
    "noise": Control(0, 2, step=0.1, default=1, description="scale of the MRI and CT noise"),
    "degeneration": Control(0, 1, step=0.05, default=0.25, description="probability that a disc is degenerated"),
    "fracture": Control(0, 1, step=0.05, default=FRACTURE_P, description="probability of a wedge fracture"),
}


def label_value(vertebra: int | np.ndarray, sub: int) -> int | np.ndarray:
    """Label-map value of subregion ``sub`` (1 body, 2 arch, 3 spinous) of vertebra ``vertebra``."""
    return 10 * (np.asarray(vertebra) + 1) + sub


# ---------------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator) -> dict[str, Any]:
    """One subject's parameters, drawn in a fixed order before any noise (the 3D-only pose
    parts are drawn in 2D too, so 2D and 3D share everything else)."""
    v = N_VERT
    return {
        "segment": int(rng.integers(3)),
        "curv_u": rng.uniform(),
        "scale": rng.uniform(0.92, 1.08),
        "fill": rng.uniform(*FILL),
        "y_shift": rng.uniform(-0.03, 0.03),
        "jitter": rng.normal(0.0, 0.03, (v, 3)),  # body h, dp, wd factors
        "deg_p": rng.uniform(*DEGENERATION_P),
        "deg_u": rng.uniform(size=v),
        "deg_h": rng.uniform(*DEGENERATED_HEIGHT, v),
        "frac_u": rng.uniform(size=v),
        "wedge": rng.uniform(*WEDGE, v),
        "conus": CONUS_INDEX + rng.uniform(-0.5, 0.5),
        "fat_u": rng.uniform(),
        "muscle": rng.uniform(*MUSCLE_MM),
        "airway": rng.uniform(*AIRWAY_MM),
        "thick": rng.uniform(*SLICE_THICKNESS_MM),
        "mri_jitter": rng.normal(0.0, 0.05, (2, len(T1W))),
        "marrow": rng.uniform((MARROW_T1[0], MARROW_T2[0]), (MARROW_T1[1], MARROW_T2[1])),
        "marrow_v": rng.normal(0.0, 0.03, v),
        "nucleus_t2": rng.uniform(*NUCLEUS_T2, v),
        "degen_t2": rng.uniform(*DEGENERATED_T2, v),
        "hu_canc": rng.uniform(*CANCELLOUS_HU),
        "hu_canc_v": rng.normal(0.0, 20.0, v),
        "hu_cort": rng.uniform(*CORTICAL_HU),
        "hu_fat": rng.uniform(*FAT_HU),
        "flex": _clipped(rng, 1),
        "g_rot": _clipped(rng, 2),  # (in-plane, axial)
        "g_shift": _clipped(rng, 3),  # (x, y, z)
        "l_rot": _clipped(rng, (v, 2)),
        "l_shift": _clipped(rng, (v, 3)),
        "bias": np.concatenate([[rng.uniform(*BIAS_POSTERIOR)], rng.normal(0.0, BIAS_SD, 5)]),
        "mri_noise": rng.uniform(*MRI_NOISE),
        "ct_noise": rng.uniform(*CT_NOISE_HU),
    }


def _clipped(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Standard normal draws clipped at +-CLIP_SD."""
    return np.clip(rng.standard_normal(shape), -CLIP_SD, CLIP_SD)


def _params(draws: list[dict[str, Any]], c: dict[str, float], depth: int) -> dict[str, np.ndarray]:
    """Stack the draws (leading axis n), apply the controls and derive the chain geometry (mm)."""
    p = {k: np.array([d[k] for d in draws], dtype=np.float64) for k in draws[0]}
    n, v = len(draws), N_VERT
    if "segment" in c:
        if c["segment"] != round(c["segment"]):
            raise PhantomError(f"control 'segment' of phantom '{NAME}' must be 0, 1 or 2, got {c['segment']!r}")
        p["segment"][:] = round(c["segment"])
    seg = p["segment"].astype(np.int64)
    p["segment"] = seg
    lo, hi = np.array(CURVATURE_DEG, float)[seg].T
    p["curvature_deg"] = np.full(n, c["curvature"]) if "curvature" in c else lo + (hi - lo) * p["curv_u"]
    m = c.get("misalignment", 1.0)
    p["noise_scale"] = np.full(n, c.get("noise", 1.0))
    # Per-vertebra dimensions [n, V]: linear first -> last, times subject scale (and body jitter).
    t = np.linspace(0.0, 1.0, v)
    dims = DIMS[seg]  # [n, P, 2]
    for i, name in enumerate(DIM_NAMES):
        val = dims[:, i, :1] + (dims[:, i, 1:] - dims[:, i, :1]) * t
        if name not in ("ah", "slope", "spa"):
            val = val * p["scale"][:, None]
        p[name] = val
    for i, name in enumerate(("h", "dp", "wd")):
        p[name] = p[name] * (1.0 + p["jitter"][:, :, i])
    p["spa"] = np.deg2rad(p["spa"])
    deg_prob = np.full(n, c["degeneration"]) if "degeneration" in c else p["deg_p"]
    p["degenerated"] = p["deg_u"] < deg_prob[:, None]
    p["degenerated"][:, -1] = False  # no disc below the last vertebra
    p["fracture"] = p["frac_u"] < c.get("fracture", FRACTURE_P)
    p["disc"] = p["disc"] * np.where(p["degenerated"], p["deg_h"], 1.0)
    p["wedge"] = np.where(p["fracture"], p["wedge"], 0.0)
    # Chain along the arc: centre positions s_v (mm of arc length); the six central vertebrae
    # (2..7, top endplate of 2 to bottom endplate of 7) are centred on s = 0.
    h, disc = p["h"], p["disc"]
    steps = h[:, :-1] / 2 + disc[:, :-1] + h[:, 1:] / 2
    s_c = np.concatenate([np.zeros((n, 1)), np.cumsum(steps, axis=1)], axis=1)
    top, bot = s_c[:, 2] - h[:, 2] / 2, s_c[:, 7] + h[:, 7] / 2
    s_c -= ((top + bot) / 2)[:, None]
    p["s_c"], p["span"] = s_c, bot - top
    p["fov"] = p["span"] / p["fill"]
    p["lr"] = LR_FRACTION * p["fov"]
    sign = np.array(CURVATURE_SIGN)[seg]
    p["kappa"] = _safe_kappa(sign * np.deg2rad(p["curvature_deg"]) / p["span"])
    p["kappa_ct"] = _safe_kappa(p["kappa"] + np.deg2rad(FLEXION_SD_DEG) * m * p["flex"][:, 0] / p["span"])
    p["y_mid"] = p["y_shift"] * p["fov"]
    sagitta = _arc_z(p["kappa"], p["span"] / 2)
    p["z_mid"] = np.array(Z_CENTRE)[seg] * p["fov"] - sagitta / 2
    p["fat"] = np.array(FAT_MM, float)[seg, 0] + np.ptp(np.array(FAT_MM, float), axis=1)[seg] * p["fat_u"]
    # CT pose parts; 2D keeps only the in-plane ones (rotation about x, translation in y and z).
    planar = depth == 0
    g_rot = np.deg2rad(np.array(GLOBAL_ROT_SD_DEG)) * m * p["g_rot"]
    l_rot = np.deg2rad(np.array(LOCAL_ROT_SD_DEG)) * m * p["l_rot"]
    g_shift = np.array(GLOBAL_SHIFT_SD) * m * p["g_shift"] * p["fov"][:, None]
    l_shift = LOCAL_SHIFT_SD_MM * m * p["l_shift"]
    if planar:
        g_rot[:, 1], l_rot[:, :, 1], g_shift[:, 0], l_shift[:, :, 0] = 0.0, 0.0, 0.0, 0.0
    p["g_rot_ct"], p["l_rot_ct"], p["g_shift_ct"], p["l_shift_ct"] = g_rot, l_rot, g_shift, l_shift
    return p


def _safe_kappa(kappa: np.ndarray) -> np.ndarray:
    """Signed arc curvature (1/mm) kept away from 0 (|kappa| >= 1e-7: straight within 0.01 deg)."""
    return np.where(kappa >= 0, 1.0, -1.0) * np.maximum(np.abs(kappa), 1e-7)


def _arc_z(kappa: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Posterior offset of the arc at arc length ``s`` from its middle: (1 - cos(kappa s)) / kappa."""
    return 2.0 * np.sin(kappa * s / 2) ** 2 / kappa


# ---------------------------------------------------------------------------------------------------------
# poses (float64)
# ---------------------------------------------------------------------------------------------------------
def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` about world axis 0 (x), 1 (y) or 2 (z) by ``angle`` (rad)."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(np.shape(angle) + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[..., axis, axis] = 1.0
    r[..., i, i], r[..., i, j], r[..., j, i], r[..., j, j] = c, -s, s, c
    return r


def _arc_points(p: dict[str, np.ndarray], kappa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertebra centres ``[n, V, 3]`` (x, y, z mm) and tilts ``[n, V]`` on the arc of curvature kappa."""
    k, s = kappa[:, None], p["s_c"]
    centre = np.stack([np.zeros_like(s), p["y_mid"][:, None] + np.sin(k * s) / k,
                       p["z_mid"][:, None] + _arc_z(k, s)], axis=-1)
    return centre, k * s


def _poses(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """World-from-local rotations ``R [n, V, 3, 3]`` (columns: the vertebra's s, u, w axes) and
    centres ``c [n, V, 3]`` in the MRI and CT frames, and the CT global motion ``G`` (4x4) about the
    arc middle. Local axes: s left-right, u along the arc (caudal), w posterior."""
    c_mri, tilt = _arc_points(p, p["kappa"])
    r_mri = _rot(0, tilt)
    c_arc, tilt_ct = _arc_points(p, p["kappa_ct"])
    # Local motion in the vertebra's own axes: R_s(in-plane) R_u(axial), translation in world axes.
    r_loc = _rot(0, p["l_rot_ct"][..., 0]) @ _rot(1, p["l_rot_ct"][..., 1])
    g_r = _rot(1, p["g_rot_ct"][:, 1]) @ _rot(0, p["g_rot_ct"][:, 0])  # [n, 3, 3]
    pivot = np.stack([np.zeros_like(p["y_mid"]), p["y_mid"], p["z_mid"]], axis=-1)
    g = np.tile(np.eye(4), (len(pivot), 1, 1))
    g[:, :3, :3] = g_r
    g[:, :3, 3] = pivot + p["g_shift_ct"] - np.einsum("nij,nj->ni", g_r, pivot)
    r_ct = g_r[:, None] @ _rot(0, tilt_ct) @ r_loc
    c_ct = np.einsum("nij,nvj->nvi", g_r, c_arc + p["l_shift_ct"]) + g[:, None, :3, 3]
    return {"r_mri": r_mri, "c_mri": c_mri, "r_ct": r_ct, "c_ct": c_ct, "g_ct": g}


def _local_affine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """World -> local affine ``[..., 3, 4]``: local = R^T (p - c)."""
    rt = np.swapaxes(r, -1, -2)
    return np.concatenate([rt, -(rt @ c[..., None])], axis=-1)


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------
class _Grid:
    """World coordinates of one frame's sample points: ``K = D' * S`` x planes (``S`` planes around
    each of ``D'`` slice centres, slice-major) and the pixel grid of rows (y) and columns (z)."""

    def __init__(self, p: dict[str, np.ndarray], sizes: Sizes, centres: np.ndarray, offsets: np.ndarray) -> None:
        self.h, self.w = sizes.height, sizes.width
        self.sy, self.sz = p["fov"] / self.h, p["fov"] / self.w  # [n]
        self.oy, self.oz = -p["fov"] / 2 + self.sy / 2, -p["fov"] / 2 + self.sz / 2  # centre of pixel 0
        self.centres, self.offsets = centres, offsets  # [n, D'], [n, S] (ascending)
        self.xs = (centres[:, :, None] + offsets[:, None, :]).reshape(len(centres), -1)  # [n, K]

    def x(self, start: np.ndarray | int = 0, count: int | None = None) -> np.ndarray:
        """World x ``[n, k, 1, 1]`` of planes ``start .. start + count - 1`` (start ``[n]``)."""
        if count is None:
            return self.xs[:, :, None, None].astype(np.float32)
        idx = np.asarray(start)[..., None] + np.arange(count)
        return np.take_along_axis(self.xs, np.broadcast_to(idx, (len(self.xs), count)), 1)[:, :, None, None].astype(
            np.float32)

    def y(self, start: np.ndarray | int = 0, count: int | None = None) -> np.ndarray:
        """World y ``[n, 1, R, 1]`` of rows ``start .. start + count - 1`` (start ``[n]``)."""
        rows = np.asarray(start)[..., None] + np.arange(self.h if count is None else count)
        return np.broadcast_to(self.oy[:, None] + rows * self.sy[:, None],
                               (len(self.sy), rows.shape[-1]))[:, None, :, None].astype(np.float32)

    def z(self, start: np.ndarray | int = 0, count: int | None = None) -> np.ndarray:
        """World z ``[n, 1, 1, C]`` of columns ``start .. start + count - 1`` (start ``[n]``)."""
        cols = np.asarray(start)[..., None] + np.arange(self.w if count is None else count)
        return np.broadcast_to(self.oz[:, None] + cols * self.sz[:, None],
                               (len(self.sz), cols.shape[-1]))[:, None, None, :].astype(np.float32)

    def plane_window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plane windows (start ``[n, V]``, length ``[V]``) holding every plane whose slice may reach
        world x in ``[lo, hi]`` (``[n, V]``); whole slices (S planes) at a time."""
        c = self.centres[:, None, :]  # [n, 1, D']
        k_lo = (c + self.offsets[:, None, -1:, None][..., 0] < lo[..., None]).sum(-1)
        k_hi = (c + self.offsets[:, None, :1, None][..., 0] <= hi[..., None]).sum(-1)
        d, s = self.centres.shape[1], self.offsets.shape[1]
        span = np.clip((k_hi - k_lo).max(0), 1, d)
        return np.clip(k_lo, 0, d - span) * s, span * s


def _apply(a: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """The three outputs of affines ``a [n, 3, 4]`` at broadcast points; terms whose coefficient is 0
    for the whole batch are skipped, so a frame without left-right mixing keeps ``u, w`` at
    ``[n, 1, R, C]`` and ``s`` at ``[n, K, 1, 1]`` (the separable tests below then stay cheap)."""
    out = []
    a = a.astype(np.float32)
    used = np.any(a[:, :, :3] != 0, axis=0).tolist()  # [3][3]: coefficient not 0 for some subject
    for row, uses in zip(a.transpose(1, 0, 2), used):  # [n, 4] per output
        acc = row[:, 3, None, None, None]
        for k, arr in enumerate((x, y, z)):
            if uses[k]:
                acc = acc + row[:, k, None, None, None] * arr
        out.append(acc)
    return out


def _b(a: np.ndarray) -> np.ndarray:
    """Per-subject values ``[n]`` as float32 (or bool) ``[n, 1, 1, 1]`` for broadcasting."""
    a = np.asarray(a)
    return (a if a.dtype == bool else a.astype(np.float32))[:, None, None, None]


def _soft_tissue(p: dict[str, np.ndarray], grid: _Grid, g_inv: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Material codes ``[n, K, H, W]`` (uint8) of the soft tissue, air and canal of one frame.

    Points are moved by ``g_inv`` (world -> the frame's arc frame) and described by their arc
    length ``s`` and signed offset ``d`` from the arc (posterior positive), both exact for a circle.
    Left-right sizes are per subject (not per level), so every test is ``f(s, d) <= g(x)``.
    """
    xa, ya, za = _apply(g_inv, grid.x(), grid.y(), grid.z())
    k = _b(kappa)
    ya, za = ya - _b(p["y_mid"]), za - _b(p["z_mid"])
    # d = R - |p - C| written without cancellation; s = angle * R.
    one_minus = 1.0 - k * za
    d = (2.0 * za - k * (ya * ya + za * za)) / (1.0 + np.sqrt((k * ya) ** 2 + one_minus ** 2))
    s = np.arctan2(k * ya, one_minus) / k
    # AP sizes linear along the chain (t = 0 first vertebra, 1 last); LR sizes per subject.
    s0, s1 = p["s_c"][:, 0], p["s_c"][:, -1]
    t = np.clip((s - _b(s0)) / _b(s1 - s0), 0.0, 1.0)
    lin = lambda name: _b(p[name][:, 0]) + _b(p[name][:, -1] - p[name][:, 0]) * t  # noqa: E731
    mean = lambda name: _b(p[name].mean(1))  # noqa: E731
    dp, cb, dub = lin("dp"), lin("cb"), lin("dub")
    seg = p["segment"]
    ax2 = xa * xa
    # In-plane layers: muscle behind / soft tissue in front of the arc, posterior subcutaneous
    # fat and air.
    tip = _b(p["dp"].mean(1) / 2 + 2 * p["cb"].mean(1) + p["ta"].mean(1)
             + p["spl"].mean(1) * np.cos(p["spa"]).mean(1) + p["muscle"])
    fat = _b(p["fat"])
    mat = np.where(d >= 0, np.uint8(MUSCLE), np.uint8(SOFT))
    mat = np.where(d > tip, np.uint8(FAT), mat)
    mat = np.where(d > tip + fat, np.uint8(AIR), mat)
    # Structures of one segment, drawn on its subjects only: the neck's front and airway
    # (cervical), lungs (thoracic), fat pad (lumbar); then, for all, the left-right dependent
    # bony canal (epidural fat), dural sac (CSF) and cord (drawn in place, in that order).
    mat = np.broadcast_to(mat, np.broadcast_shapes(mat.shape, ax2.shape)).copy()  # C order
    aw, wd = _b(p["airway"]), mean("wd")
    for segment in range(len(SEGMENTS)):
        sub = np.flatnonzero(seg == segment)
        if sub.size:
            mat[sub] = _segment_structures(segment, mat[sub], d[sub], dp[sub], ax2[sub], aw[sub], wd[sub])
    dc = d - (dp / 2 + cb)
    np.copyto(mat, np.uint8(FAT), where=(dc / cb) ** 2 <= 1 - ax2 / mean("ca") ** 2)
    np.copyto(mat, np.uint8(CSF), where=(dc / dub) ** 2 <= 1 - ax2 / mean("dua") ** 2)
    conus_s = np.array([np.interp(c, np.arange(N_VERT), sc) for c, sc in zip(p["conus"], p["s_c"])])
    taper = np.clip((_b(np.where(seg == 2, conus_s, np.inf)) - s) / 10.0, 0.0, 1.0)  # last 10 mm
    cord = ((dc + 0.15 * dub) / lin("cob")) ** 2 <= taper * taper - ax2 / mean("coa") ** 2
    np.copyto(mat, np.uint8(CORD), where=cord)
    return mat


def _segment_structures(segment: int, mat: np.ndarray, d: np.ndarray, dp: np.ndarray, ax2: np.ndarray,
                        aw: np.ndarray, wd: np.ndarray) -> np.ndarray:
    """Material codes ``mat`` of subjects of one ``segment``, with that segment's own soft-tissue
    structures drawn in place (``d``: offset from the arc, ``dp``: body depth there, ``ax2``:
    squared left-right position, ``aw``: airway size, ``wd``: mean body width; see
    :func:`_soft_tissue`)."""
    front = -dp / 2
    if segment == 0:  # the neck's front (fat, air) and the airway in front of the bodies
        neck = front - 4 - aw - 18
        np.copyto(mat, np.uint8(FAT), where=d < neck)
        np.copyto(mat, np.uint8(AIR), where=d < neck - 4)
        np.copyto(mat, np.uint8(AIR), where=(d < front - 4) & (d > front - 4 - aw) & (ax2 < 81.0))
    elif segment == 1:  # lungs lateral to the thoracic bodies
        np.copyto(mat, np.uint8(LUNG), where=(d < dp / 2 + 5) & (ax2 > (wd / 2 + 8) ** 2))
    else:  # the fat pad in front of the lumbar spine
        np.copyto(mat, np.uint8(FAT), where=(d < front - 2) & (d > front - 10) & (ax2 < (wd / 2) ** 2))
    return mat


def _bbox_body(p: dict[str, np.ndarray]) -> np.ndarray:
    """Local bounding box ``[n, V, 3, 2]`` ((s, u, w) x (min, max), mm) of each vertebral body."""
    return _box(p["wd"] / 2 + 1, -p["h"] / 2 - 1, p["h"] / 2 + 1, -p["dp"] / 2 - 1, p["dp"] / 2 + 1)


def _bbox_posterior(p: dict[str, np.ndarray]) -> np.ndarray:
    """Local bounding box ``[n, V, 3, 2]`` of each vertebra's arch and spinous process."""
    h, dp, cb, ta, ah, sl = p["h"], p["dp"], p["cb"], p["ta"], p["ah"], p["slope"]
    w_o = dp / 2 + 2 * cb + ta / 2
    u_o = -0.1 * h + sl * (w_o - dp / 2 - cb)
    reach = p["spl"] + p["spt"] / 2
    tip_u = u_o + reach * np.sin(p["spa"]) + p["spt"] * (1 + SPINOUS_BASE) / 2 * np.cos(p["spa"])
    u_lo = -0.1 * h - sl * (cb + 2) - ah * h / 2 - 1
    u_hi = np.maximum(tip_u, -0.1 * h + sl * (cb + ta) + ah * h / 2) + 1
    w_hi = w_o + reach * np.cos(p["spa"]) + p["spt"] * (1 + SPINOUS_BASE) / 2 * np.sin(p["spa"]) + 1
    return _box(p["ca"] + p["ta"] + 1, u_lo, u_hi, dp / 2 - 3, w_hi)


def _bbox_disc(p: dict[str, np.ndarray]) -> np.ndarray:
    """Local bounding box ``[n, V, 3, 2]`` (in the upper vertebra's frame) of the disc below it."""
    h, nxt = p["h"], np.concatenate([p["h"][:, 1:], p["h"][:, -1:]], axis=1)
    dp = np.maximum(p["dp"], np.concatenate([p["dp"][:, 1:], p["dp"][:, -1:]], axis=1))
    wd = np.maximum(p["wd"], np.concatenate([p["wd"][:, 1:], p["wd"][:, -1:]], axis=1))
    u_hi = h / 2 + p["disc"] + (DISC_INTO + max(WEDGE)) * nxt + 3
    return _box(0.55 * wd + 2, (0.5 - DISC_INTO) * h - 2, u_hi, -0.55 * dp - 2, 0.55 * dp + 2)


def _box(s_hi: np.ndarray, u_lo: np.ndarray, u_hi: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray) -> np.ndarray:
    """Stack box limits ``[n, V]`` into ``[n, V, 3, 2]``."""
    return np.stack([np.stack([-s_hi, s_hi], -1), np.stack([u_lo, u_hi], -1), np.stack([w_lo, w_hi], -1)], -2)


def _windows(box: np.ndarray, r: np.ndarray, c: np.ndarray, grid: _Grid) -> list[np.ndarray]:
    """Plane, row and column windows covering each local box ``box [n, V, 3, 2]`` posed by
    ``r [n, V, 3, 3]``, ``c [n, V, 3]``: starts ``[n, V]`` and lengths ``[V]`` (one per vertebra
    for the batch), as ``[plane_start, plane_len, row_start, row_len, col_start, col_len]``."""
    corners = np.stack(np.meshgrid(*[[0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3)  # [8, 3]
    local = box[:, :, np.arange(3)[None, :], corners]  # [n, V, 8, 3]
    world = np.einsum("nvij,nvkj->nvki", r, local) + c[:, :, None, :]
    out: list[np.ndarray] = list(grid.plane_window(world[..., 0].min(-1), world[..., 0].max(-1)))
    for idx, size in (((world[..., 1] - grid.oy[:, None, None]) / grid.sy[:, None, None], grid.h),
                      ((world[..., 2] - grid.oz[:, None, None]) / grid.sz[:, None, None], grid.w)):
        lo, hi = np.floor(idx.min(-1)), np.ceil(idx.max(-1))
        span = np.clip((hi - lo).max(0) + 2, 1, size).astype(np.int64)  # [V]
        out += [np.clip(lo - 1, 0, size - span).astype(np.int64), span]
    return out


def _body(p: dict[str, np.ndarray], v: int, s: np.ndarray, u: np.ndarray, w: np.ndarray,
          tc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertebral body ``v`` at local points: (inside, cancellous).

    ``(u'/hh)^8 + (w/rw)^4 + (s/rs)^4 <= 1`` with concave endplates and walls (``ENDPLATE_SAG``,
    ``WALL_SAG``); a wedge fracture lowers the upper endplate towards the front by wedge * h."""
    q = {k: _b(p[k][:, v]) for k in ("h", "dp", "wd", "wedge")}
    s2 = s * s
    drop = q["wedge"] * q["h"] * np.clip(0.5 - w / q["dp"], 0.0, 1.0)
    half = (q["h"] - drop) / 2
    uc = u - drop / 2
    sag = ENDPLATE_SAG * q["h"] * np.clip(1.0 - (w / (q["dp"] / 2)) ** 2, 0.0, 1.0)
    rw = q["dp"] / 2 - WALL_SAG * q["dp"] * np.clip(1.0 - (uc / half) ** 2, 0.0, 1.0)
    body = _sep(uc, w, s2, half - sag, rw, q["wd"] / 2, 4)
    return body, body & _sep(uc, w, s2, half - sag - tc, rw - tc, q["wd"] / 2 - tc, 4)


def _posterior(p: dict[str, np.ndarray], v: int, s: np.ndarray, u: np.ndarray, w: np.ndarray,
               tc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arch and spinous process of vertebra ``v`` at local points: (bone, cancellous, spinous)."""
    q = {k: _b(p[k][:, v]) for k in ("h", "dp", "ca", "cb", "ta", "ah", "slope", "spl", "spa", "spt", "spe")}
    s2 = s * s
    # Arch: elliptical ring around the bony canal, in a band slanting caudally (laminae); its
    # front (the pedicles) reaches 2 mm into the body's back.
    wc = q["dp"] / 2 + q["cb"]
    dw = w - wc
    band = np.abs(u - (-0.1 * q["h"] + q["slope"] * dw))
    ah2 = q["ah"] * q["h"] / 2
    ring = (band <= ah2) & (w >= q["dp"] / 2 - 2) \
        & ((dw / q["cb"]) ** 2 > 1 - s2 / q["ca"] ** 2) \
        & ((dw / (q["cb"] + q["ta"])) ** 2 <= 1 - s2 / (q["ca"] + q["ta"]) ** 2) \
        & ((dw >= -0.5 * q["cb"]) | (s2 >= 0.25 * q["ca"] ** 2))
    ring_in = (band <= ah2 - tc) & ((dw / (q["cb"] + tc)) ** 2 > 1 - s2 / (q["ca"] + tc) ** 2) \
        & ((dw / (q["cb"] + q["ta"] - tc)) ** 2 <= 1 - s2 / (q["ca"] + q["ta"] - tc) ** 2)
    # Spinous process: (along'/L)^4 + (perp/T)^2 + (s/e)^2 <= 1 along a line spa below horizontal,
    # starting inside the lamina, up to 1 + SPINOUS_BASE times thicker at its base.
    w_o = wc + q["cb"] + q["ta"] / 2
    u_o = -0.1 * q["h"] + q["slope"] * (w_o - wc)
    ca_, sa_ = np.cos(q["spa"]), np.sin(q["spa"])
    du, dw_o = u - u_o, w - w_o
    along = du * sa_ + dw_o * ca_
    perp = (du * ca_ - dw_o * sa_) / (1.0 + SPINOUS_BASE * np.clip(1.0 - along / (0.5 * q["spl"]), 0, 1))
    half_len = (q["spl"] + q["ta"]) / 2
    along = along - (half_len - q["ta"])
    sp = _sep(along, perp, s2, half_len, q["spt"] / 2, q["spe"], 2)
    sp_in = _sep(along, perp, s2, half_len - tc, q["spt"] / 2 - tc, q["spe"] - tc, 2)
    bone = ring | sp
    return bone, (ring_in & ring) | sp_in, sp


def _sep(a: np.ndarray, w: np.ndarray, s2: np.ndarray, ra: Any, rw: Any, rs: Any, pw: int) -> np.ndarray:
    """Separable superellipsoid test ``(a/ra)^4 + (w/rw)^pw + (s/rs)^pw <= 1`` (``pw`` 2 or 4); the
    in-plane part and the left-right part meet only in the final comparison."""
    a2, w2 = (a / ra) ** 2, (w / rw) ** 2
    ss = s2 / (rs * rs)
    if pw == 4:
        w2, ss = w2 * w2, ss * ss
        a2 = a2 * a2
    return a2 * a2 + w2 <= 1 - ss


def _disc(p: dict[str, np.ndarray], v: int, la: list[np.ndarray],
          lb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Disc between vertebrae v and v+1 (local coordinates ``la``, ``lb`` of each): (disc, nucleus).

    The disc fills the elliptic cylinder between the two bodies (reaching ``DISC_INTO`` of each body's
    height into it, so it fills the concave endplates; the bodies are drawn over it)."""
    (sa, ua, wa), (sb, ub, wb) = la, lb
    a = {k: _b(p[k][:, v]) for k in ("h", "dp", "wd")}
    b = {k: _b(p[k][:, v + 1]) for k in ("h", "dp", "wd", "wedge")}
    # Distances below a's lower endplate and above b's (possibly wedged) upper endplate.
    drop = b["wedge"] * b["h"] * np.clip(0.5 - wb / b["dp"], 0.0, 1.0)
    e_a = ua - a["h"] / 2
    e_b = (-b["h"] / 2 + drop) - ub
    lam = np.clip(e_a / np.maximum(e_a + e_b, 1e-3), 0.0, 1.0)
    planar = sa.shape[-2:] == (1, 1) and sb.shape[-2:] == (1, 1)
    sd = (sa + sb) / 2 if planar else sa + lam * (sb - sa)
    wd_ = wa + lam * (wb - wa)
    rs = (a["wd"] + b["wd"]) / 4
    rw = (a["dp"] + lam * (b["dp"] - a["dp"])) / 2
    s2 = sd * sd / (rs * rs)
    disc = ((e_a > -DISC_INTO * a["h"]) & (e_b > -DISC_INTO * b["h"])
            & (np.square(np.square(wd_ / rw)) <= 1.1 - s2 * s2))  # squares: x ** 4 is a slow pow
    k = np.where(_b(p["degenerated"][:, v]), np.float32(0.8), np.float32(1.0))
    nucleus = disc & (e_a > 0) & (e_b > 0) & (((lam - 0.5) / (0.4 * k)) ** 2 + ((wd_ - 0.1 * rw) / (0.6 * k * rw)) ** 2
                                              <= 1 - s2 / (0.6 * k) ** 2)
    return disc, nucleus


def _render(p: dict[str, np.ndarray], grid: _Grid, r: np.ndarray, c: np.ndarray, g_inv: np.ndarray,
            kappa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Material codes and labels ``[n, K, H, W]`` (uint8) of one frame (vertebra poses ``r``, ``c``),
    and ``[n, V]`` flags of vertebrae whose bone met another vertebra's (one label map cannot hold
    both, so their label regions are no longer rigid copies of each other).

    Each structure is evaluated only in its own window (``_windows``) and drawn in priority order:
    per vertebra v, the disc below it, then its arch and spinous process, then its body.
    """
    n, v_count = r.shape[:2]
    code = np.ascontiguousarray(_soft_tissue(p, grid, g_inv, kappa), np.uint16)  # label * 32 + material
    clash = np.zeros((n, v_count), bool)
    aff = _local_affine(r, c)  # [n, V, 3, 4]
    win = {key: _windows(box(p), r, c, grid)
           for key, box in (("disc", _bbox_disc), ("post", _bbox_posterior), ("body", _bbox_body))}
    tc = _b(p["cortex_mm"])

    def at(key: str, v: int) -> tuple[Any, ...]:
        k0, kn, r0, rn, c0, cn = win[key]
        return (grid.x(k0[:, v], kn[v]), grid.y(r0[:, v], rn[v]), grid.z(c0[:, v], cn[v]),
                (k0[:, v], r0[:, v], c0[:, v]), (int(kn[v]), int(rn[v]), int(cn[v])))

    for v in range(v_count):
        lab = 10 * (v + 1) * 32
        if v + 1 < v_count:
            x, y, z, start, size = at("disc", v)
            disc, nuc = _disc(p, v, _apply(aff[:, v], x, y, z), _apply(aff[:, v + 1], x, y, z))
            _scatter(code, start, size, disc, clash, v,
                     lambda pick: np.where(pick(nuc), np.uint16(NUC0 + v), np.uint16(ANNULUS)))
        x, y, z, start, size = at("post", v)
        bone, canc, sp = _posterior(p, v, *_apply(aff[:, v], x, y, z), tc)
        _scatter(code, start, size, bone, clash, v,
                 lambda pick: (np.where(pick(canc), np.uint16(CANC0 + v), np.uint16(CORTEX))
                               + np.where(pick(sp), np.uint16(lab + 96), np.uint16(lab + 64))))
        x, y, z, start, size = at("body", v)
        body, canc = _body(p, v, *_apply(aff[:, v], x, y, z), tc)
        _scatter(code, start, size, body, clash, v,
                 lambda pick: np.where(pick(canc), np.uint16(CANC0 + v + lab + 32), np.uint16(CORTEX + lab + 32)))
    return (code & 31).astype(np.uint8), (code >> 5).astype(np.uint8), clash


def _scatter(out: np.ndarray, start: tuple[np.ndarray, ...], size: tuple[int, int, int], mask: np.ndarray,
             clash: np.ndarray, v: int, codes: Any) -> None:
    """``out[i, k0:k0+K, r0:r0+R, c0:c0+C][mask[i]] = val[i]`` for every subject i (``size`` = (K, R, C),
    ``start`` = (k0, r0, c0), each ``[n]``; ``out`` C-contiguous); ``mask`` broadcasts to
    ``[n, K, R, C]``; the values there are ``codes(pick)``, ``pick(a)`` giving ``a`` (broadcast
    like the mask) at the masked pixels, so they are formed for those pixels only.
    Where the mask covers bone of a vertebra other than ``v``, both are flagged in ``clash [n, V]``.
    All subjects at once, through flat indices of the masked pixels."""
    n, depth, height, width = out.shape
    full = (n,) + size
    mask = np.broadcast_to(mask, full)
    index = np.int32 if out.size < 2 ** 31 else np.int64
    col = lambda first, count: (first[:, None] + np.arange(count)).astype(index)  # noqa: E731  [n, count]
    planes = (np.arange(n, dtype=index)[:, None] * depth + col(start[0], size[0])) * height  # [n, K]
    at = ((planes[:, :, None, None] + col(start[1], size[1])[:, None, :, None]) * width
          + col(start[2], size[2])[:, None, None, :])[mask]  # flat indices of the masked pixels
    flat = out.reshape(-1)
    under = flat[at] >> 5  # labels about to be overwritten
    other = (under >= 10) & (under // 10 != v + 1)
    if other.any():
        i = at[other] // (depth * height * width)
        clash[i, v] = True
        clash[i, under[other] // 10 - 1] = True
    flat[at] = codes(lambda a: np.broadcast_to(a, full)[mask])


# ---------------------------------------------------------------------------------------------------------
# image formation
# ---------------------------------------------------------------------------------------------------------
def _luts(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-subject signal of every material code ``[n, N_MAT]`` for t1w, t2w (a.u.) and ct (HU)."""
    n = len(p["segment"])
    t1 = np.zeros((n, N_MAT))
    t2 = np.zeros((n, N_MAT))
    ct = np.zeros((n, N_MAT))
    t1[:, :CANC0] = T1W * (1 + p["mri_jitter"][:, 0])
    t2[:, :CANC0] = T2W * (1 + p["mri_jitter"][:, 1])
    ct[:, :CANC0] = CT_HU
    ct[:, FAT] = p["hu_fat"]
    frac = p["fracture"]
    v = slice(CANC0, CANC0 + N_VERT)
    t1[:, v] = (p["marrow"][:, :1] + p["marrow_v"]) * np.where(frac, EDEMA[0], 1.0)
    t2[:, v] = (p["marrow"][:, 1:] + p["marrow_v"]) * np.where(frac, EDEMA[1], 1.0)
    ct[:, v] = np.clip(p["hu_canc"][:, None] + p["hu_canc_v"] + 60.0 * frac, 150.0, 400.0)
    # A shell drawn thicker than CORTEX_MM holds the partial-volume mix of cortex and marrow.
    phi = CORTEX_MM / p["cortex_mm"]
    for lut, cortex, marrow in ((t1, T1W[CORTEX], p["marrow"][:, 0]), (t2, T2W[CORTEX], p["marrow"][:, 1]),
                                (ct, p["hu_cort"], p["hu_canc"])):
        lut[:, CORTEX] = phi * cortex + (1 - phi) * marrow
    deg = p["degenerated"]
    d = slice(NUC0, NUC0 + N_VERT)
    t1[:, d] = np.where(deg, NUCLEUS_T1[1], NUCLEUS_T1[0])
    t2[:, d] = np.where(deg, p["degen_t2"], p["nucleus_t2"])
    ct[:, d] = np.where(deg, NUCLEUS_HU[1], NUCLEUS_HU[0])
    return {"t1w": t1.astype(np.float32), "t2w": t2.astype(np.float32), "ct": ct.astype(np.float32)}


def _lookup(lut: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``lut[i, mat[i]]`` for every subject i: ``[n, N_MAT]`` at :func:`_lut_index` ``at`` ``[n, ...]``
    -> ``[n, ...]`` float32."""
    return np.take(lut.reshape(-1), at)


def _lut_index(mat: np.ndarray) -> np.ndarray:
    """Flat indices into ``[n, N_MAT]`` tables of material codes ``mat [n, ...]``."""
    at = mat.astype(np.intp)
    at += (np.arange(len(mat)) * N_MAT).reshape((-1,) + (1,) * (mat.ndim - 1))
    return at


def _bias(p: dict[str, np.ndarray], grid: _Grid, x: np.ndarray) -> np.ndarray:
    """Smooth coil bias field ``[n, K, H, W]`` at the MRI voxel centres (x planes ``[n, K]``):
    ``exp(b0 z' + b1 y' + b2 y'^2 + b3 x' + b4 x'^2 + b5 y' z')`` in half-fov units, 1 at the arc middle."""
    n = len(x)
    half = _b(p["fov"] / 2)
    y = (grid.y() - _b(p["y_mid"])) / half
    z = (grid.z() - _b(p["z_mid"])) / half
    xn = (x[:, :, None, None] / (p["lr"][:, None, None, None] / 2)).astype(np.float32)
    b = [_b(p["bias"][:, i]) for i in range(6)]
    return np.exp(b[0] * z + b[1] * y + b[2] * y * y + b[3] * xn + b[4] * xn * xn + b[5] * y * z)


def _ct_noise_gain() -> float:
    """1 / std of unit white noise after the CT noise correlation filter."""
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return 1.0 / float(np.sqrt((ndimage.gaussian_filter(delta, CT_NOISE_CORR_PX) ** 2).sum()))


def _images(p: dict[str, np.ndarray], rngs: list[np.random.Generator], mat_mri: np.ndarray,
            mat_ct: np.ndarray, grid: _Grid, x_centres: np.ndarray) -> dict[str, np.ndarray]:
    """T1w, T2w (slab average, bias, Rician noise) and CT (HU + correlated noise), ``[n, K, H, W]``."""
    n, k3 = mat_mri.shape[:2]
    k = k3 // len(SUBSAMPLES)
    shape = (n, k, len(SUBSAMPLES)) + mat_mri.shape[2:]
    luts = _luts(p)
    bias = _bias(p, grid, x_centres)
    noise = np.empty((n, 5, k) + mat_mri.shape[2:], dtype=np.float32)
    for rng, out_i in zip(rngs, noise):
        rng.standard_normal(dtype=np.float32, out=out_i)
    sd = _b(p["mri_noise"] * p["noise_scale"])
    out = {}
    at = _lut_index(mat_mri)
    for i, key in enumerate(("t1w", "t2w")):
        clean = _lookup(luts[key], at).reshape(shape).mean(axis=2) * bias
        out[key] = np.sqrt((clean + sd * noise[:, 2 * i]) ** 2 + (sd * noise[:, 2 * i + 1]) ** 2)
    ct_noise = ndimage.gaussian_filter(noise[:, 4], (0, 0, CT_NOISE_CORR_PX, CT_NOISE_CORR_PX)) * _ct_noise_gain()
    out["ct"] = _lookup(luts["ct"], _lut_index(mat_ct)) + _b(p["ct_noise"] * p["noise_scale"]) * ct_noise
    return {key: val.astype(np.float32, copy=False) for key, val in out.items()}


# ---------------------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------------------
def _pixel_matrix(p: dict[str, np.ndarray], grid: _Grid, depth: int, x0: np.ndarray) -> np.ndarray:
    """Pixel -> world homogeneous matrices ``[n, 4, 4]`` (3D: (slice, row, col); 2D: (x0, row, col))."""
    n = len(p["fov"])
    s = np.zeros((n, 4, 4))
    s[:, 3, 3] = 1.0
    s[:, 1, 1], s[:, 1, 3] = grid.sy, grid.oy
    s[:, 2, 2], s[:, 2, 3] = grid.sz, grid.oz
    if depth:
        sx = p["lr"] / depth
        s[:, 0, 0], s[:, 0, 3] = sx, -p["lr"] / 2 + sx / 2
    else:
        s[:, 0, 0], s[:, 0, 3] = 1.0, x0
    return s


def _transforms(poses: dict[str, np.ndarray], pix: np.ndarray, depth: int) -> np.ndarray:
    """MRI pixel -> CT pixel maps per vertebra: ``[n, V, 4, 4]`` (3D) or ``[n, V, 3, 3]`` (2D)."""
    rel = poses["r_ct"] @ np.swapaxes(poses["r_mri"], -1, -2)  # [n, V, 3, 3]
    t = np.tile(np.eye(4), rel.shape[:2] + (1, 1))
    t[..., :3, :3] = rel
    t[..., :3, 3] = poses["c_ct"] - np.einsum("nvij,nvj->nvi", rel, poses["c_mri"])
    px = np.linalg.inv(pix)[:, None] @ t @ pix[:, None]
    if depth:
        return px
    return px[..., 1:, 1:]  # (row, col, 1): in 2D the maps do not touch x


def _landmarks(lab: np.ndarray) -> dict[str, np.ndarray]:
    """Centres of mass ``[n, V, nd]`` of every body (sub 1) and spinous process (sub 3) in label maps
    ``[n, *S]`` (pixel coordinates; NaN where absent) and whether each is present and clear of the
    border. Weighted ``np.bincount`` over (subject, label) ids: one pass for all labels."""
    n, shape = len(lab), lab.shape[1:]
    where = np.nonzero((lab > 0) & (lab % 10 != 2))  # bodies and spinous processes only
    ids = 128 * where[0] + lab[where]
    counts = np.bincount(ids, minlength=128 * n).astype(np.float64)
    sums = [np.bincount(ids, weights=coord, minlength=128 * n) for coord in where[1:]]
    with np.errstate(invalid="ignore", divide="ignore"):
        com = (np.stack(sums, -1) / counts[:, None]).reshape(n, 128, len(shape)).astype(np.float32)
    border = np.zeros(shape, bool)
    for ax in range(len(shape)):
        border[(slice(None),) * ax + ([0, -1],)] = True
    touch = np.bincount(lab[:, border].astype(np.int64).ravel() + 128 * np.repeat(np.arange(n), border.sum()),
                        minlength=128 * n).reshape(n, 128) > 0
    counts = counts.reshape(n, 128)
    out = {}
    for name, sub in (("body", 1), ("spinous", 3)):
        want = label_value(np.arange(N_VERT), sub)
        out[name], out[name + "_ok"] = com[:, want], (counts[:, want] > 0) & ~touch[:, want]
    return out


# ---------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------
def generate(numbers: np.ndarray, *, seed: int = 0, sizes: Sizes, **controls: Any) -> dict[str, np.ndarray]:
    """Render subjects ``numbers`` (see the module's dataset card).

    Returns float32 ``t1w``, ``t2w`` (a.u.) and ``ct`` (HU), uint8 ``labels_mri``, ``labels_ct``,
    ``tissue_mri``, ``tissue_ct``: ``[n, H, W]`` when ``sizes.depth == 0`` (one sagittal slice),
    else ``[n, D, H, W]`` (D left-right slices); float32 ``body_com_mri``, ``spinous_com_mri``,
    ``body_com_ct``, ``spinous_com_ct`` ``[n, V, 2|3]`` (pixel coordinates); float64
    ``transforms`` ``[n, V, 3, 3]`` / ``[n, V, 4, 4]`` (MRI pixel -> CT pixel); bool ``complete``,
    ``degenerated``, ``fracture`` ``[n, V]``; int64 ``segment`` ``[n]``; float32
    ``curvature_deg`` ``[n]``, ``spacing_mm`` ``[n, 2|3]``, ``slice_thickness_mm`` ``[n]``.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    depth = _check_sizes(sizes)
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise PhantomError(f"unknown control(s) {', '.join(sorted(unknown))} for phantom '{NAME}'")
    if depth and controls.get("slice", 0.0):
        raise PhantomError(f"control 'slice' of phantom '{NAME}' applies to 2D sizes only (depth is {depth})")
    if len(numbers) == 0:
        return _empty(sizes)
    rngs = [subject_rng(NAME, seed, int(k)) for k in numbers]
    p = _params([_draw(rng) for rng in rngs], controls, depth)
    n = len(numbers)
    # Sample planes: MRI averages SUBSAMPLES planes across each slice's thickness; CT samples the centre.
    if depth:
        sx = p["lr"] / depth
        x_centres = -p["lr"][:, None] / 2 + (np.arange(depth) + 0.5) * sx[:, None]
        thick = np.maximum(sx, p["thick"])
    else:
        x_centres = (controls.get("slice", 0.0) * p["lr"] / 2)[:, None] if "slice" in controls \
            else np.zeros((n, 1))
        thick = p["thick"]
    fov_px = p["fov"] / min(sizes.height, sizes.width)
    p["cortex_mm"] = np.maximum(CORTEX_MM, CORTEX_MIN_PX * fov_px)  # drawn cortical shell thickness
    poses = _poses(p)
    grid_mri = _Grid(p, sizes, x_centres, SUBSAMPLES * thick[:, None])
    grid_ct = _Grid(p, sizes, x_centres, np.zeros((n, 1)))
    eye = np.tile(np.eye(4)[:3], (n, 1, 1))
    mat_mri, lab_mri, clash_mri = _render(p, grid_mri, poses["r_mri"], poses["c_mri"], eye, p["kappa"])
    g_rt = np.swapaxes(poses["g_ct"][:, :3, :3], 1, 2)  # rigid inverse [R^T, -R^T t], exact zeros kept
    g_inv = np.concatenate([g_rt, -(g_rt @ poses["g_ct"][:, :3, 3:])], axis=2)
    mat_ct, lab_ct, clash_ct = _render(p, grid_ct, poses["r_ct"], poses["c_ct"], g_inv, p["kappa_ct"])
    images = _images(p, rngs, mat_mri, mat_ct, grid_mri, x_centres)
    mid = len(SUBSAMPLES) // 2
    lab_mri, mat_mri = lab_mri[:, mid::len(SUBSAMPLES)], mat_mri[:, mid::len(SUBSAMPLES)]
    squeeze = (lambda a: a[:, 0]) if depth == 0 else (lambda a: a)  # noqa: E731
    out = {key: squeeze(val) for key, val in images.items()}
    out.update(labels_mri=squeeze(lab_mri), labels_ct=squeeze(lab_ct),
               tissue_mri=MAT_TISSUE[squeeze(mat_mri)], tissue_ct=MAT_TISSUE[squeeze(mat_ct)])
    lm_mri, lm_ct = _landmarks(out["labels_mri"]), _landmarks(out["labels_ct"])
    pix = _pixel_matrix(p, grid_ct, depth, x_centres[:, 0])
    spacing = [grid_ct.sy, grid_ct.sz] if depth == 0 else [p["lr"] / depth, grid_ct.sy, grid_ct.sz]
    out.update(
        body_com_mri=lm_mri["body"], spinous_com_mri=lm_mri["spinous"],
        body_com_ct=lm_ct["body"], spinous_com_ct=lm_ct["spinous"],
        transforms=_transforms(poses, pix, depth),
        complete=lm_mri["body_ok"] & lm_mri["spinous_ok"] & lm_ct["body_ok"] & lm_ct["spinous_ok"] & ~clash_mri
        & ~clash_ct,
        segment=p["segment"].astype(np.int64), curvature_deg=p["curvature_deg"].astype(np.float32),
        degenerated=p["degenerated"].astype(bool), fracture=p["fracture"].astype(bool),
        spacing_mm=np.stack(spacing, axis=1).astype(np.float32),
        slice_thickness_mm=p["thick"].astype(np.float32),
    )
    return out


def _check_sizes(sizes: Sizes) -> int:
    """The depth of ``sizes`` after checking it (H, W >= 16; depth 0 or >= 4)."""
    if sizes.height < 16 or sizes.width < 16:
        raise PhantomError(f"phantom '{NAME}' needs height and width >= 16, got {sizes}")
    if 0 < sizes.depth < 4:
        raise PhantomError(f"phantom '{NAME}' needs depth 0 (2D) or >= 4 (3D), got {sizes.depth}")
    return sizes.depth


def _empty(sizes: Sizes) -> dict[str, np.ndarray]:
    """The output of ``generate([])``: every key with a leading axis of length 0."""
    shape = (0,) + ((sizes.depth,) if sizes.depth else ()) + (sizes.height, sizes.width)
    nd = 3 if sizes.depth else 2
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    out = {k: f(*shape) for k in ("t1w", "t2w", "ct")}
    out.update({k: np.zeros(shape, np.uint8) for k in ("labels_mri", "labels_ct", "tissue_mri", "tissue_ct")})
    out.update({k: f(0, N_VERT, nd) for k in ("body_com_mri", "spinous_com_mri", "body_com_ct", "spinous_com_ct")})
    out.update(transforms=np.zeros((0, N_VERT, nd + 1, nd + 1)), complete=np.zeros((0, N_VERT), bool),
               degenerated=np.zeros((0, N_VERT), bool), fracture=np.zeros((0, N_VERT), bool),
               segment=np.zeros(0, np.int64), curvature_deg=f(0), spacing_mm=f(0, nd), slice_thickness_mm=f(0))
    return out


_SUBS = "1 body, 2 arch (pedicles, laminae), 3 spinous process"
SPEC = register_phantom(PhantomSpec(
    name=NAME,
    card=__doc__,
    generate=generate,
    modalities={
        "t1w": Modality("t1w", "a.u. (MRI)", 0.0, 1.0,
                        "sagittal T1w MRI: fat and marrow bright, CSF dark, cortical bone black"),
        "t2w": Modality("t2w", "a.u. (MRI)", 0.0, 1.0,
                        "sagittal T2w MRI: CSF, fat and healthy nuclei bright, degenerated discs dark"),
        "ct": Modality("ct", "HU", -1000.0, 1000.0,
                       "CT in another pose (not registered): bone bright; paper's map HU / 1000 clipped"),
    },
    labels={
        "labels_mri": f"vertebra label map in the MRI frame: 10 * (v + 1) + sub ({_SUBS}), 0 none [uint8]",
        "labels_ct": f"vertebra label map in the CT frame: 10 * (v + 1) + sub ({_SUBS}), 0 none [uint8]",
        "tissue_mri": "tissue per MRI pixel (slice centre): " + ", ".join(f"{i} {t}" for i, t in enumerate(TISSUES)),
        "tissue_ct": "tissue per CT pixel: " + ", ".join(f"{i} {t}" for i, t in enumerate(TISSUES)),
        "body_com_mri": "centre of mass of each vertebral body in labels_mri [pixel (row, col) | (slice, row, col)], "
                        "[n, V, 2|3], NaN if absent",
        "spinous_com_mri": "centre of mass of each spinous process in labels_mri [pixel], [n, V, 2|3]",
        "body_com_ct": "centre of mass of each vertebral body in labels_ct [pixel], [n, V, 2|3]",
        "spinous_com_ct": "centre of mass of each spinous process in labels_ct [pixel], [n, V, 2|3]",
        "transforms": "per-vertebra homogeneous map of MRI pixel coordinates to CT pixel coordinates, "
                      "[n, V, 3, 3] (2D) | [n, V, 4, 4] (3D)",
        "complete": "body and spinous process inside the image in both frames [bool], [n, V]",
        "segment": "spine segment: 0 cervical, 1 thoracic, 2 lumbar [int]",
        "curvature_deg": "lordosis (cervical, lumbar) / kyphosis (thoracic) angle of the MRI pose [deg]",
        "degenerated": "disc below vertebra v degenerated [bool], [n, V]",
        "fracture": "wedge fracture of vertebra v [bool], [n, V]",
        "spacing_mm": "pixel spacing (row, col) | (slice, row, col) [mm], [n, 2|3]",
        "slice_thickness_mm": "MRI slice thickness [mm]",
    },
    controls=CONTROLS,
    sizes={"ci": Sizes(32, 32, 0), "smoke": Sizes(64, 64, 0), "cpu": Sizes(64, 64, 0), "paper": Sizes(256, 256, 0)},
    label_maps=("labels_mri", "labels_ct", "tissue_mri", "tissue_ct"),
))
