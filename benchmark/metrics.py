"""Speed and agreement of medgen's FID, SSIM and MS-SSIM against the reference implementations.

Run ``python -m benchmark.metrics [--quick]``; it writes ``reports/benchmark/metrics.csv`` and
``metrics.md`` (columns ``measure,value,unit,goal,holds``, as every benchmark: ``benchmark/harness.py``) and prints
the table. Not a timed test: the goals are recorded, nothing fails on them.

Method
------
Each comparison times medgen and the reference on the same inputs as alternating arms
(``benchmark.harness.interleave``: forward order on even rounds, reversed on odd ones), after
one untimed warm-up call per arm (FID: a warm-up on 8 images, which builds both extractors;
a full-size warm-up would double the run; none when N <= 8). The goal row is the median of the per-round
ratios medgen / reference (goal ``<= 1.5``), beside it the IQR of those ratios and the ratio
of the fastest rounds (``benchmark.harness.ratio_rows``); seconds are medians over rounds.
Values: the largest absolute difference between the two implementations' results
(goal ``<= 1e-2`` FID units, ``<= 1e-4`` SSIM / MS-SSIM).

* **FID** (one round by default: each call is ~2N Inception forwards, minutes on 2 cores,
  so it averages out short disturbances; the full run takes roughly an hour on 2 cores),
  at 64x64 and 256x256, ``N`` real vs ``N`` fake grayscale images in [-1, 1]
  (``N = 2048``; ``--quick``: 256). medgen: :func:`medgen.metrics.distribution.fid`
  (``batch_size=64``). Reference: ``torch_fidelity.calculate_metrics(fid=True)`` on the same
  images through a ``Dataset`` that returns the uint8 RGB tensors of
  :func:`medgen.metrics.inception.to_uint8` (the conversion medgen applies), with
  ``feature_extractor="inception-v3-compat"``,
  ``feature_extractor_weights_path=inception_weights_path()``, ``batch_size=64``, CPU, no
  cache, ``save_cpu_ram=True`` (no DataLoader worker processes, so both arms run in this
  process on the same threads). torch-fidelity builds its extractor on every call; medgen
  caches it per process, which is part of what is compared. "Real" images are smooth random
  fields (bilinear upsampling of 8x8 noise) plus a disc; "fake" ones are the same kind with
  added pixel noise, so the FID is far from 0.
* **SSIM** on a batch of ``B = 64`` (``--quick``: 8) 256x256 image pairs (structured target,
  noisy prediction), ``data_range=2``: :func:`medgen.metrics.image.ssim` (uniform 7x7
  window) against ``skimage.metrics.structural_similarity(win_size=7,
  use_sample_covariance=False, data_range=2)`` looped over the batch (the settings that make
  them equal; see ``medgen.metrics.image``) on float64 arrays (skimage computes in the input's
  float type; medgen computes in float64). A report-only row repeats it on float32 arrays,
  the cost of that precision.
* **MS-SSIM** on the same batch: :func:`medgen.metrics.structure.ms_ssim` against MONAI's
  ``MultiScaleSSIMMetric`` with the same settings (the implementation medgen wraps and is
  tested to equal; goal rows) and against torchmetrics'
  ``multiscale_structural_similarity_index_measure`` (report rows only: it reflect-pads, a
  documented ~1e-3 difference). The references get the float32 images as a user would pass
  them; medgen converts to float64 itself.

torch runs with ``--threads`` threads (default 2, the target machine's cores).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmark.harness import Row, add_output_options, goal_row, interleave, logger, ratio_rows, write_report
from medgen.reports import resolve_reports_root

TIME_GOAL = 1.5        # medgen may take at most this many times the reference's time
FID_TOLERANCE = 1e-2   # max |FID_medgen - FID_reference|
SSIM_TOLERANCE = 1e-4  # max |SSIM_medgen - SSIM_reference| per sample
FID_BATCH = 64         # Inception batch size of both FID arms
SSIM_SIZE = 256        # side of the SSIM / MS-SSIM images
WARMUP_IMAGES = 8      # FID warm-up call size (builds / loads both extractors)


log = logger("metrics")  # progress lines on stdout


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def smooth_images(n: int, size: int, noise: float, seed: int) -> torch.Tensor:
    """``[n, 1, size, size]`` float32 in [-1, 1]: upsampled 8x8 noise + a disc + pixel noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 8, 8, generator=g)
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 0.4
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = torch.rand(n, 2, 1, 1, generator=g) - 0.5
    disc = ((yy - centre[:, :1]) ** 2 + (xx - centre[:, 1:]) ** 2 < 0.3 ** 2).float()  # [n, 1, S, S]
    x = field + 0.5 * disc - 0.2 + noise * torch.randn(n, 1, size, size, generator=g)
    return x.clamp(-1.0, 1.0)


class Uint8Images(Dataset):
    """torch-fidelity input: item ``i`` is the uint8 ``[3, H, W]`` tensor of image ``i``."""

    def __init__(self, images: torch.Tensor) -> None:
        from medgen.metrics.inception import to_uint8
        self.u8 = to_uint8(images).contiguous()  # [N, 3, H, W]: medgen's own conversion

    def __len__(self) -> int:
        return self.u8.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.u8[i]


# --------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------
def medgen_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """medgen FID (small-sample warning silenced: the benchmark states its sample count)."""
    from medgen.metrics.distribution import fid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fid(real, fake, batch_size=FID_BATCH).value


def torch_fidelity_fid(real: Uint8Images, fake: Uint8Images) -> float:
    """torch-fidelity's own FID path on the same uint8 images and the same local weights."""
    import torch_fidelity
    from medgen.metrics.inception import EXTRACTOR_NAME, inception_weights_path
    out = torch_fidelity.calculate_metrics(
        input1=real, input2=fake, fid=True, cuda=False, batch_size=FID_BATCH, verbose=False, cache=False,
        save_cpu_ram=True, feature_extractor=EXTRACTOR_NAME,
        feature_extractor_weights_path=str(inception_weights_path()))
    return float(out["frechet_inception_distance"])


def measure_fid(n: int, size: int, rounds: int) -> list[Row]:
    """Rows for FID of ``n`` vs ``n`` images at ``size`` x ``size``."""
    real, fake = smooth_images(n, size, 0.0, seed=1), smooth_images(n, size, 0.15, seed=2)
    real_ds, fake_ds = Uint8Images(real), Uint8Images(fake)
    if n > WARMUP_IMAGES:  # else the warm-up would cost as much as the measurement (smoke runs)
        medgen_fid(real[:WARMUP_IMAGES], fake[:WARMUP_IMAGES])
        torch_fidelity_fid(Uint8Images(real[:WARMUP_IMAGES]), Uint8Images(fake[:WARMUP_IMAGES]))
    values: dict[str, float] = {}
    arms = {"medgen": lambda: values.__setitem__("medgen", medgen_fid(real, fake)),
            "torch-fidelity": lambda: values.__setitem__("torch-fidelity", torch_fidelity_fid(real_ds, fake_ds))}
    times = interleave(arms, rounds, f"FID {size}px", warmup=0, log=log)
    tag = f"FID {size}x{size} ({n} vs {n} images)"
    return [
        Row(f"{tag}: medgen time", statistics.median(times["medgen"]), "s"),
        Row(f"{tag}: torch-fidelity time", statistics.median(times["torch-fidelity"]), "s"),
        *ratio_rows(f"{tag}: medgen / torch-fidelity time", times["medgen"], times["torch-fidelity"], "<=", TIME_GOAL),
        Row(f"{tag}: medgen FID", values["medgen"], "FID"),
        Row(f"{tag}: torch-fidelity FID", values["torch-fidelity"], "FID"),
        goal_row(f"{tag}: |medgen - torch-fidelity| FID", abs(values["medgen"] - values["torch-fidelity"]), "FID",
                 "<=", FID_TOLERANCE),
    ]


# --------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# --------------------------------------------------------------------------------------
def skimage_ssim(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """skimage SSIM per sample of ``[B, 1, H, W]``, settings equal to medgen's default.

    skimage computes in the input's float type: float64 matches medgen's precision.
    """
    from skimage.metrics import structural_similarity
    p, t = pred.to(dtype).numpy(), target.to(dtype).numpy()
    return torch.tensor([structural_similarity(t[i, 0], p[i, 0], win_size=7, use_sample_covariance=False,
                                               data_range=2.0) for i in range(p.shape[0])], dtype=torch.float64)


def monai_ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI MultiScaleSSIMMetric per sample, medgen's settings (Gaussian 11, sigma 1.5, 5 weights)."""
    from monai.metrics import MultiScaleSSIMMetric
    from medgen.metrics.structure import MS_SSIM_KERNEL, MS_SSIM_SIGMA, MS_SSIM_WEIGHTS
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=2.0, kernel_type="gaussian", kernel_size=MS_SSIM_KERNEL,
                                  kernel_sigma=MS_SSIM_SIGMA, weights=MS_SSIM_WEIGHTS, reduction="none")
    return metric(pred, target).flatten(1).mean(1).double()


def torchmetrics_ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torchmetrics MS-SSIM per sample (Gaussian 11, sigma 1.5, default 5 betas = Wang et al.)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm
    return tm(pred, target, data_range=2.0, kernel_size=11, sigma=1.5, reduction="none").double()


def compare(tag: str, medgen_fn, references: dict[str, tuple[object, str | None]], rounds: int) -> list[Row]:
    """Time ``medgen_fn`` against each reference; rows of times, ratio and max abs difference.

    ``references``: name -> (callable returning ``[B]``, ``None`` for goal rows or a note that
    makes its rows report-only).
    """
    rows: list[Row] = []
    for name, (ref_fn, note) in references.items():
        out: dict[str, torch.Tensor] = {}
        arms = {"medgen": lambda: out.__setitem__("medgen", medgen_fn()),
                name: lambda f=ref_fn, n=name: out.__setitem__(n, f())}
        times = interleave(arms, rounds, f"{tag} vs {name}", warmup=1, log=log)
        diff = float((out["medgen"].double() - out[name].double()).abs().max())
        label = f"{tag} vs {name}"
        rows += [Row(f"{label}: medgen time", statistics.median(times["medgen"]), "s"),
                 Row(f"{label}: {name} time", statistics.median(times[name]), "s")]
        if note is None:
            rows += ratio_rows(f"{label}: medgen / {name} time", times["medgen"], times[name], "<=", TIME_GOAL)
            rows.append(goal_row(f"{label}: max |medgen - {name}|", diff, "SSIM", "<=", SSIM_TOLERANCE))
        else:
            ratio = statistics.median(a / b for a, b in zip(times["medgen"], times[name]))
            rows += [Row(f"{label}: medgen / {name} time ({note})", ratio, "x"),
                     Row(f"{label}: max |medgen - {name}| ({note})", diff, "SSIM")]
    return rows


def measure_ssim(batch: int, rounds: int) -> list[Row]:
    """SSIM and MS-SSIM rows on ``batch`` 256x256 pairs."""
    from medgen.metrics.image import ssim
    from medgen.metrics.structure import ms_ssim
    target = smooth_images(batch, SSIM_SIZE, 0.0, seed=3)
    pred = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(4))).clamp(-1, 1)
    tag = f"{{}} {SSIM_SIZE}x{SSIM_SIZE}, batch {batch}"
    rows = compare(tag.format("SSIM"), lambda: ssim(pred, target, data_range=2.0),
                   {"skimage": (lambda: skimage_ssim(pred, target), None),
                    "skimage float32": (lambda: skimage_ssim(pred, target, torch.float32),
                                        "report: float32 input")}, rounds)
    rows += compare(tag.format("MS-SSIM"), lambda: ms_ssim(pred, target, data_range=2.0),
                    {"MONAI": (lambda: monai_ms_ssim(pred, target), None),
                     "torchmetrics": (lambda: torchmetrics_ms_ssim(pred, target),
                                      "report: reflect padding, known gap")}, rounds)
    return rows


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.metrics", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="256 FID images, SSIM batch 8: a smoke run")
    p.add_argument("--fid-images", type=int, default=None, help="images per FID set (default 2048; --quick 256)")
    p.add_argument("--fid-sizes", default="64,256", help="comma-separated FID image sides (default 64,256)")
    p.add_argument("--ssim-batch", type=int, default=None, help="SSIM / MS-SSIM batch (default 64; --quick 8)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default: FID 1, SSIM 5)")
    return add_output_options(p).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.fid_images or (256 if args.quick else 2048)
    batch = args.ssim_batch or (8 if args.quick else 64)
    fid_rounds = args.rounds or 1  # one FID call is minutes of Inception forwards: it averages itself
    ssim_rounds = args.rounds or 5  # seconds even at batch 64; one round is all noise on a shared machine
    t0 = time.perf_counter()
    rows: list[Row] = []
    log(f"SSIM / MS-SSIM, batch {batch}")
    rows += measure_ssim(batch, ssim_rounds)
    for size in [int(s) for s in args.fid_sizes.split(",") if s]:
        log(f"FID {n} vs {n} at {size}px")
        rows += measure_fid(n, size, fid_rounds)
    import monai
    import skimage
    import torch_fidelity
    import torchmetrics
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"`python -m benchmark.metrics {cmd}` ({time.perf_counter() - t0:.0f} s, {args.threads} threads, "
              f"rounds FID {fid_rounds} / SSIM {ssim_rounds}; {platform.processor() or platform.machine()}; "
              f"torch {torch.__version__}, torch-fidelity {torch_fidelity.__version__}, scikit-image "
              f"{skimage.__version__}, MONAI {monai.__version__}, torchmetrics {torchmetrics.__version__}). "
              f"Ratios are medgen / reference time (goal <= {TIME_GOAL:g}); see the module docstring "
              f"for the method.")
    if any(math.isnan(r.value) for r in rows):
        log("warning: some values are NaN")
    _, md = write_report(rows, Path(resolve_reports_root(args.out)), header, name="metrics",
                         title="Metrics benchmark")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
