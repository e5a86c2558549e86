"""Every ``paper`` model of the spine MRI -> CT paper builds and takes one training step.

For each model of :data:`medgen.presets.mri_to_ct.MODELS` (translators and measurers), the
method is built from ``get_preset("paper", task=...)`` exactly as configured (SA-UNet 64-512
channels with two residual blocks, the paper's pix2pix / CUT / SynDiff networks, the segmenter)
and fed a tiny random batch at the smallest spatial size the paper architecture accepts:

* DDIM 2D (SA-UNet, 3 down-samplings): 8 x 8; DDIM 3D (2 down-samplings): 4 x 4 x 4.
* pix2pix 2D (5-down UNet or SA-UNet) and CUT (3-layer PatchGAN needs >= 24 px): 32 x 32.
* pix2pix 3D (5 down blocks, 3-layer PatchGAN): 32 x 32 x 32.
* SynDiff: 64 x 64 (its diffusive discriminator has 6 down blocks at the paper's 256 px).
* segmenter 2D (4 strides, instance norm needs >= 2 px at the bottom): 32 x 32;
  segmenter 3D (3 strides): 16 x 16 x 16.

Batch 1 except pix2pix 2D (batch 2: its batch-normed UNet has a 1 x 1 bottleneck at 32 px).
Only the input is small; ``cfg`` (including ``data.image_size``) is the paper's.

One step = for every optimiser group in :meth:`Method.param_groups` order, ``training_step``
then ``backward`` into that group's parameters (as :mod:`medgen.train` does, without the
optimiser update). Checked: every returned loss term is finite, and every parameter of the
group received a finite, not identically zero gradient. The UNet zero-initialises its output
convolution, which would leave every layer below it without gradient on the very first step;
all-zero parameter tensors are therefore given small random values first (as
``benchmark.speed.randomize_zero_init``) so the check covers every layer.

The models are large (SynDiff 203 M parameters, the SA-UNets 63-66 M). Measured on the 2-core
machine while quiet: the whole file 15 s (SynDiff 4.8 s, every other model <= 1.3 s); while
other jobs loaded it (load average 6-7) the same file took 2-4 minutes. SynDiff, the slowest,
is marked ``slow``.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import RunConfig, get_preset
from medgen.data.batch import Batch
from medgen.methods.base import Method
from medgen.methods.segmenter import CLASS_LABELS, LABEL_KEY
from medgen.presets import mri_to_ct as presets
from medgen.registry import METHODS, lookup

# model -> (spatial size, batch) of the tiny input (module docstring)
INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "ddim_noise": ((8, 8), 1),
    "ddim_image": ((8, 8), 1),
    "ddim_noise_3d": ((4, 4, 4), 1),
    "ddim_image_3d": ((4, 4, 4), 1),
    "pix2pix_unet": ((32, 32), 2),
    "pix2pix_sa_unet": ((32, 32), 2),
    "pix2pix_3d": ((32, 32, 32), 1),
    "cut_resnet": ((32, 32), 1),
    "cut_sa_unet": ((32, 32), 1),
    "syndiff": ((64, 64), 1),
    "segmenter": ((32, 32), 1),
    "segmenter_3d": ((16, 16, 16), 1),
}
SLOW = {"syndiff"}  # 203 M parameters at 64 x 64


def test_every_model_has_a_tiny_input() -> None:
    assert set(INPUTS) == set(presets.MODELS)


def randomize_all_zero(method: nn.Module, std: float = 0.02) -> None:
    """Give every all-zero parameter tensor small random values (zero-initialised output layers)."""
    with torch.no_grad():
        for p in method.parameters():
            if not p.any():
                p.normal_(0.0, std)


def tiny_batch(cfg: RunConfig, size: tuple[int, ...], batch: int, seed: int = 0) -> Batch:
    """Random model-range batch: source ``[B, C_s, *size]``, target ``[B, C_t, *size]`` (translators)
    or the CT with a random label map in ``meta[LABEL_KEY]`` (segmenter)."""
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    if cfg.method == "segmenter":
        ct = torch.rand(batch, m.in_channels, *size, generator=g) * 2 - 1
        classes = torch.randint(0, len(CLASS_LABELS), (batch, *size), generator=g)
        return Batch(ct, None, None, {LABEL_KEY: torch.tensor(CLASS_LABELS)[classes]})
    source = torch.rand(batch, m.cond_image_channels, *size, generator=g) * 2 - 1
    target = torch.rand(batch, m.out_channels, *size, generator=g) * 2 - 1
    return Batch(source, target)


def one_step(method: Method, batch: Batch) -> dict[str, dict[str, float]]:
    """Every group's ``training_step`` + backward; per group the loss terms and the bad parameters."""
    report: dict[str, dict[str, float]] = {}
    names = {id(p): n for n, p in method.named_parameters()}
    for group, params in method.param_groups().items():
        for p in method.parameters():
            p.grad = None
        out = method.training_step(batch, group, torch.Generator().manual_seed(1))
        torch.autograd.backward(out["loss"], inputs=params)
        losses = {k: float(v.detach()) for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        missing = [names[id(p)] for p in params if p.grad is None]
        # one pass per tensor: the L2 norm is NaN / inf if any entry is, and 0 only if all are 0
        norms = torch.stack(torch._foreach_norm([p.grad for p in params if p.grad is not None])).tolist()
        bad = missing + [names[id(p)] for p, n in zip([p for p in params if p.grad is not None], norms)
                         if not math.isfinite(n) or n == 0.0]
        report[group] = {"losses": losses, "bad": bad, "n": len(params)}
    return report


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m
                                   for m in presets.MODELS])
def test_paper_model_takes_one_training_step(model: str) -> None:
    cfg = get_preset("paper", task=presets.task(model))
    assert cfg.preset == "paper"
    torch.manual_seed(0)
    method = lookup(METHODS, cfg.method)(cfg)
    randomize_all_zero(method)
    size, batch = INPUTS[model]
    assert len(size) == cfg.model.spatial_dims
    report = one_step(method.train(), tiny_batch(cfg, size, batch))
    groups = list(method.param_groups())
    assert list(report) == groups and groups  # every group stepped, in order
    for group, r in report.items():
        assert "loss" in r["losses"], group
        assert all(math.isfinite(v) for v in r["losses"].values()), (group, r["losses"])
        assert r["n"] > 0 and not r["bad"], f"{model}/{group}: no finite non-zero gradient for {r['bad'][:5]}"
