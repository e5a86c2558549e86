"""What the "Lung ultrasound" tab (:mod:`demos.lung_us`) shows: status lines, the measurement image,
galleries and the Markdown tables. Display only.

The numbers come from medgen: :func:`medgen.inverse.reconstruction_metrics` (PSNR / SSIM, RMS
residual, aeration and category against a known truth), :func:`medgen.inverse.residual_metric`
and :func:`medgen.data.phantoms.lung.aeration_from_model` without a truth, and the memorization
readout of :func:`medgen.metrics.memorization.screen` (rows built by ``demos.lung_us``).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from demos import ui
from demos.ui import md

__all__ = ["metrics_markdown", "readout_markdown", "input_status", "done_status", "show_measurement", "galleries",
           "CATEGORY_NOTE"]

LOG = logging.getLogger(__name__)
CATEGORY_NOTE = "categories 0 (< 60 %), 1 (60-85 %), 2 (>= 85 %)"


def input_status(inp: Any, size: int) -> str:
    """Status Markdown of a ``demos.lung_us.LungInput`` (its verdict has its own box)."""
    a = f"aeration {inp.aeration:.3f}" if inp.aeration is not None else "aeration estimated from the image"
    return ui.input_status(inp.label, size, f" ({a})", inp.notes)


def done_status(m: Any, how: str, seed: int, seconds: float, model: str, max_sd_hu: float, verdict: Any) -> str:
    """The status after a reconstruction of measurement ``m`` (a ``demos.lung_us.Measurement``), with the
    truth's training-distribution ``verdict`` (:class:`medgen.ood.Verdict`) in one line."""
    where = f"Truth {md(verdict.line())}."
    return (f"Done: DPS with {m.operator.name}, {how}, seed {seed} (noise seed {seed}, sampling seed {seed + 1}), "
            f"in {seconds:.1f} s ({model}). Max SD {max_sd_hu:.0f} HU.\n\nMeasurement: {md(m.label)}.\n\n"
            + (f"**{where}**" if verdict.outside else where))


def show_measurement(y: torch.Tensor) -> np.ndarray:
    """``[1, 1, H', W']`` -> enlarged uint8 gray, scaled min..max of ``y`` (any units), square-ish."""
    a = y[0, 0].numpy().astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    return ui.enlarge(ui.to_u8((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)), stretch=True)


def galleries(images: torch.Tensor, gen: Any, scr: Any, ref: Any) -> tuple[list, list]:
    """(generated images with aeration and category, their nearest training images with the distance);
    ``gen`` / ``scr`` / ``ref`` as returned by ``demos.lung_us.memorization_readout`` / ``reference_set``."""
    shown = [(ui.show_model(images[i, 0].numpy()), f"#{i}: aeration {gen.aeration[i]:.2f}, category {c}")
             for i, c in enumerate(gen.category)]
    near = [(ui.show_model(ref.train.images[j, 0].numpy()), f"nearest to #{i}: training #{j}, d = "
             f"{scr.distance[i]:.3g}{' (flagged)' if scr.flagged[i] else ''}")
            for i, j in enumerate(scr.nearest) if j >= 0]
    return shown, near


def _category(a: float) -> str:
    from medgen.data.phantoms.lung import aeration_category

    return str(int(aeration_category(np.array([a]))[0]))


def metrics_markdown(samples: torch.Tensor, m: Any) -> str:
    """Aeration / category of the truth, the posterior mean and the samples; PSNR / SSIM against the
    truth (when known); RMS residual. ``samples`` ``[N, 1, 1, H, W]``, ``m`` a ``demos.lung_us.Measurement``.
    A failure is one line in place of the table."""
    try:
        return _metrics_markdown(samples, m)
    except Exception as exc:  # noqa: BLE001 -- the images are shown anyway
        LOG.exception("lung_us metrics failed")
        return f"Metrics unavailable: {md(ui.one_line(exc))}"


def _metrics_markdown(samples: torch.Tensor, m: Any) -> str:
    from medgen.data.phantoms.lung import aeration_from_model
    from medgen.inverse import reconstruction_metrics, residual_metric

    mean, truth = samples.mean(0), m.truth
    mask = None if truth is None or truth.lung_mask is None else truth.lung_mask[None]
    how = "phantom lung mask" if mask is not None else "lung estimated below the fitted pleural line"
    lines = ["| | aeration | category | PSNR (dB) | SSIM | residual (RMS) |", "|---|---|---|---|---|---|"]
    if truth is not None:
        a_t = truth.aeration if truth.aeration is not None else float(aeration_from_model(truth.x[None], mask)[0])
        lines.append(f"| truth | {a_t:.3f} | {_category(a_t)} | - | - | {m.noise_std:g} (noise std) |")
        x_t = torch.from_numpy(truth.x)[None, None]
        for name, recon in (("posterior mean", mean), ("samples", samples)):
            df = reconstruction_metrics(recon, x_t, m.y, m.operator, lung_mask=mask)
            if len(df) == 1 and name == "posterior mean":
                r = df.iloc[0]
                lines.append(f"| {name} | {r.aeration_recon:.3f} | {int(r.category_recon)} | {r.psnr:.2f} | "
                             f"{r.ssim:.3f} | {r.residual:.4f} |")
            elif len(df) > 1:
                def ms(col: str, f: str) -> str:
                    return f"{df[col].mean():{f}} ± {df[col].std(ddof=1):{f}}"
                cats = "/".join(str(int(c)) for c in df.category_recon)
                lines.append(f"| {len(df)} samples (mean ± SD) | {ms('aeration_recon', '.3f')} | {cats} | "
                             f"{ms('psnr', '.2f')} | {ms('ssim', '.3f')} | {ms('residual', '.4f')} |")
    else:
        residual = residual_metric(m.operator, m.y)
        for name, x in (("posterior mean", mean),) + tuple((f"sample {i}", samples[i]) for i in range(len(samples))):
            a = float(aeration_from_model(x)[0])
            lines.append(f"| {name} | {a:.3f} | {_category(a)} | - | - | {float(residual(x)[0]):.4f} |")
    lines.append(f"\nAeration: mean air fraction of the lung ({how}); {CATEGORY_NOTE}. PSNR / SSIM in model "
                 "range (data range 2). Residual: ||y - A(x)|| / sqrt(M) in measurement units -- about the noise "
                 "std when x explains y." +
                 ("" if truth is not None else " No truth for an uploaded measurement: PSNR / SSIM cannot be shown."))
    return "\n".join(lines)


def readout_markdown(gen: Any, scr: Any, ref: Any) -> str:
    """The memorization readout, one row per generated image (``gen``: its sections with aeration and
    category, ``scr``: its Screening, ``ref``: the Reference), and what the numbers mean."""
    cal = ref.calibration
    where = ("L2 distance in **pixel space** (model range [-1, 1])" if ref.space == "pixels" else
             f"L2 distance in the **`{ref.space}`** feature space (as the notebook's audit)")
    lines = ["| image | aeration | category | nearest training image | distance | held-out threshold | flagged |",
             "|---|---|---|---|---|---|---|"]
    for i, (a, c, j) in enumerate(zip(gen.aeration, gen.category, scr.nearest)):
        if j < 0:
            lines.append(f"| {i} | {a:.3f} | {c} | none: no training image of category {c} | - | - | not calibrated |")
        elif not scr.calibrated[i]:
            lines.append(f"| {i} | {a:.3f} | {c} | #{j} ({md(ref.train.patient_ids[j])}) | {scr.distance[i]:.4g} | "
                         f"none: no held-out image of category {c} | not calibrated |")
        else:
            lines.append(f"| {i} | {a:.3f} | {c} | #{j} ({md(ref.train.patient_ids[j])}) | {scr.distance[i]:.4g} | "
                         f"{scr.threshold[i]:.4g} (n = {cal.n_heldout(c)}) | {'**yes**' if scr.flagged[i] else 'no'} |")
    p = cal.percentile
    lines.append(f"\n{where} to the nearest of the prior's {len(cal.train_strata)} training images of the same "
                 f"aeration category (the paper's Eq. 2; {CATEGORY_NOTE}). Threshold: the {p:g}st percentile of "
                 f"the held-out images' nearest-training distances in that category "
                 f"(`medgen.metrics.memorization.calibrate`, the notebook's audit); a fresh sample is flagged "
                 f"about {p:g} % of the time, a copy of a training image almost always. A category without "
                 "training or held-out images cannot be calibrated: its images are not flagged.")
    return "\n".join(lines)
