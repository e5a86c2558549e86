"""Every ``paper`` model of the lung-ultrasound paper builds and takes one training step.

The method of each task of :data:`medgen.presets.lung_us.TASKS` is built from
``get_preset("paper", task=...)`` exactly as configured (Table 1 through improved-diffusion:
channels 96-384 over six levels, two residual blocks, middle-block attention, T = 4000,
learned variances for the prior; 61 M parameters) and fed one random model-range image of
32 x 32, the smallest the six-level UNet takes (five down-samplings to 1 x 1). Only the input
is small; ``cfg`` (including ``data.image_size = 256``) is the paper's.

One step = ``training_step`` and ``backward`` into the ``"model"`` group, as in
``test_mri_to_ct_paper_step`` (whose helpers are reused): every loss term is finite and every
parameter gets a finite, not identically zero gradient (all-zero parameter tensors -- the
zero-initialised output convolution -- are randomised first so the check covers every layer).

Runtime (2-core machine, load average ~2.7 from other jobs): build + one step 1.0-1.3 s per model
at one thread (the file ~10 s with imports); with two threads under the same load 4-11 s per
model, hence the ``one_thread`` fixture.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import get_preset
from medgen.data.batch import Batch
from medgen.presets import lung_us as presets
from medgen.registry import METHODS, lookup
from .test_mri_to_ct_paper_step import one_step, randomize_all_zero  # same package (tests/presets)

pytestmark = pytest.mark.usefixtures("one_thread")  # two threads stall when other jobs share the cores

SIZE = 32  # 256 px / 2**5 down-samplings -> 32 px is the smallest input reaching a 1 x 1 bottom


def tiny_batch(cfg, seed: int = 0) -> Batch:
    """One random image ``[1, 1, 32, 32]``: the prior's source (no target), or measurement + CT for cddpm."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, cfg.model.in_channels, SIZE, SIZE, generator=g) * 2 - 1
    if cfg.method == "ddpm":
        return Batch(image)
    source = torch.rand(1, cfg.model.cond_image_channels, SIZE, SIZE, generator=g) * 2 - 1
    return Batch(source, image)


@pytest.mark.parametrize("task", presets.TASKS)
def test_paper_model_takes_one_training_step(task: str) -> None:
    cfg = get_preset("paper", task=task)
    assert cfg.preset == "paper" and cfg.data.image_size == 256
    t0 = time.perf_counter()
    torch.manual_seed(0)
    method = lookup(METHODS, cfg.method)(cfg)
    randomize_all_zero(method)
    report = one_step(method.train(), tiny_batch(cfg))
    assert list(report) == ["model"]
    r = report["model"]
    assert "loss" in r["losses"] and all(math.isfinite(v) for v in r["losses"].values()), r["losses"]
    if cfg.diffusion.learn_sigma:
        assert "vlb" in r["losses"]  # the hybrid loss of the learned variances
    assert r["n"] > 0 and not r["bad"], f"{task}: no finite non-zero gradient for {r['bad'][:5]}"
    print(f"{task}: {sum(p.numel() for p in method.parameters()) / 1e6:.1f} M parameters, "
          f"build + step {time.perf_counter() - t0:.1f} s")
