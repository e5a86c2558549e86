"""Classifier-free guidance, condition dropout and DPS measurement guidance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from medgen.diffusion import (
    CFGDenoiser,
    Denoiser,
    MeasurementGuidance,
    NoiseSchedule,
    Prediction,
    cosine,
    ddim_sample,
    ddpm_sample,
    drop_condition,
    linear,
    null_condition,
    respace,
)

T = 1000


@dataclass
class Cond:
    """Stand-in for medgen.nn.unet.Condition (same field names)."""

    image: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    skip_residuals: Any = None


class CondNet(nn.Module):
    """Output depends on x, t and the condition; records the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self.batches.append(x.shape[0])
        image = cond if isinstance(cond, torch.Tensor) else cond.image
        out = torch.tanh(1.5 * x + image + 0.3 * torch.roll(x, 1, dims=-1)) + t.view(-1, 1, 1, 1) / T
        if isinstance(cond, Cond) and cond.vector is not None:
            out = out + cond.vector.view(-1, 1, 1, 1)
        return out


def setup(prediction: str = "eps", clip: bool = False, B: int = 3):
    denoiser = Denoiser(CondNet(), NoiseSchedule(linear(T)), prediction=prediction, clip_x0=clip)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 1, 5, 5, generator=g)
    image = torch.rand(B, 1, 5, 5, generator=g) * 2 - 1
    return denoiser, x, torch.tensor([900, 500, 20][:B]), image


# --------------------------------------------------------------------------------------
# CFG
# --------------------------------------------------------------------------------------
def test_cfg_scale_zero_is_the_plain_denoiser_at_one_forward() -> None:
    denoiser, x, t, image = setup()
    plain = denoiser(x, t, image)
    denoiser.net.batches.clear()
    guided = CFGDenoiser(denoiser, 0.0)(x, t, image)
    assert denoiser.net.batches == [3]  # exactly one forward of batch B
    assert torch.equal(guided.x0, plain.x0) and torch.equal(guided.eps, plain.eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_formula_in_one_batched_forward(prediction: str) -> None:
    denoiser, x, t, image = setup(prediction)
    w = 1.5
    c = denoiser(x, t, image)
    u = denoiser(x, t, torch.full_like(image, -1.0))  # the black null image
    denoiser.net.batches.clear()
    g = CFGDenoiser(denoiser, w)(x, t, image)
    assert denoiser.net.batches == [6]  # cond and null as one 2B forward
    torch.testing.assert_close(g.eps, (w + 1) * c.eps - w * u.eps)  # paper: cond x (w+1), uncond x (-w)
    torch.testing.assert_close(g.x0, (w + 1) * c.x0 - w * u.x0)
    torch.testing.assert_close(denoiser.schedule.x0_from_eps(x, t, g.eps), g.x0, atol=1e-4, rtol=1e-4)


def test_cfg_clamps_x0_when_wrapped_denoiser_clips() -> None:
    denoiser, x, t, image = setup("v", clip=True)
    g = CFGDenoiser(denoiser, 3.0)(x, t, image)
    free = CFGDenoiser(Denoiser(denoiser.net, denoiser.schedule, "v", clip_x0=False), 3.0)(x, t, image)
    assert free.x0.abs().max() > 1 and g.x0.abs().max() <= 1
    torch.testing.assert_close(g.eps, free.eps)  # the clamp never touches eps
    # the clamp of the guided *raw* estimate (clamping the branches first differs here by 1e-3)
    torch.testing.assert_close(g.x0, free.x0.clamp(-1, 1), atol=1e-4, rtol=0)


def test_cfg_with_condition_dataclass() -> None:
    denoiser, x, t, image = setup()
    cond = Cond(image=image, vector=torch.tensor([0.1, 0.2, 0.3]))
    w = 2.0
    c = denoiser(x, t, cond)
    u = denoiser(x, t, Cond(image=torch.full_like(image, -1.0), vector=cond.vector))  # vector kept
    denoiser.net.batches.clear()
    g = CFGDenoiser(denoiser, w)(x, t, cond)
    assert denoiser.net.batches == [6]
    torch.testing.assert_close(g.eps, (w + 1) * c.eps - w * u.eps)


def test_cfg_falls_back_to_two_forwards_for_unbatchable_conditions() -> None:
    denoiser, x, t, image = setup()
    cond = Cond(image=image, skip_residuals=lambda skips: skips)  # a callable cannot be concatenated
    CFGDenoiser(denoiser, 1.0)(x, t, cond)
    assert denoiser.net.batches == [3, 3]


def test_cfg_custom_null_cond_and_sampling() -> None:
    denoiser, x, t, image = setup()
    seen = []

    def null(cond: torch.Tensor) -> torch.Tensor:
        seen.append(cond)
        return torch.zeros_like(cond)

    guided = CFGDenoiser(denoiser, 1.0, null_cond=null)
    out = ddim_sample(guided, x, respace(T, 4), image)
    assert out.shape == x.shape and len(seen) == 4 and denoiser.net.batches == [6] * 4
    assert guided.schedule is denoiser.schedule


def test_null_condition() -> None:
    image = torch.rand(2, 1, 3, 3)
    assert torch.equal(null_condition(image), torch.full_like(image, -1.0))
    vec = torch.ones(2, 4)
    null = null_condition(Cond(image=image, vector=vec), null_value=0.5)
    assert torch.equal(null.image, torch.full_like(image, 0.5)) and null.vector is vec
    with pytest.raises(ValueError, match="Cond has no .image tensor"):
        null_condition(Cond(vector=vec))


# --------------------------------------------------------------------------------------
# Condition dropout
# --------------------------------------------------------------------------------------
def test_drop_condition_rate_and_content() -> None:
    B, p = 20000, 0.3
    cond = torch.rand(B, 1, 2, 2) * 0.5  # never -1
    out = drop_condition(cond, p, generator=torch.Generator().manual_seed(0))
    dropped = (out == -1.0).all(dim=(1, 2, 3))
    kept = (out == cond).all(dim=(1, 2, 3))
    assert bool((dropped ^ kept).all())  # each sample is either intact or fully null
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.015)  # sd ~ 0.003
    again = drop_condition(cond, p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_drop_condition_dataclass_and_edge_cases() -> None:
    image, vector = torch.rand(6, 1, 2, 2), torch.rand(6, 3)
    cond = Cond(image=image, vector=vector)
    out = drop_condition(cond, 1.0, null_cond=0.0)  # float: the null value
    assert torch.equal(out.image, torch.zeros_like(image)) and out.vector is vector
    assert drop_condition(cond, 0.0) is cond
    custom = drop_condition(cond, 1.0, null_cond=lambda c: Cond(image=c.image * 0 + 7, vector=c.vector * 0))
    assert torch.equal(custom.vector, torch.zeros_like(vector)) and (custom.image == 7).all()
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        drop_condition(cond, 1.5)


# --------------------------------------------------------------------------------------
# Measurement guidance (DPS)
# --------------------------------------------------------------------------------------
class GaussianDenoiser:
    """Exact denoiser for data x0 ~ N(0, tau^2 I): x0_hat = a tau^2 / (a^2 tau^2 + s^2) x_t."""

    def __init__(self, tau: float = 0.5) -> None:
        self.schedule, self.tau, self.clip_x0 = NoiseSchedule(cosine(T)), tau, False

    def gain(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, s = self.schedule.coefficients(t, x)
        return a * self.tau**2 / (a**2 * self.tau**2 + s**2)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> Prediction:
        x0 = self.gain(t, x_t) * x_t
        return Prediction(x0, self.schedule.eps_from_x0(x_t, t, x0))


def inpainting_problem(shape=(4, 1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(shape[1:], generator=g) < 0.5).float()  # observe about half the pixels
    x_true = 0.5 * torch.randn(shape, generator=g)
    operator = lambda x: mask * x  # noqa: E731
    return operator, operator(x_true), torch.randn(shape, generator=g)


def residual(operator, y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - operator(x)).flatten(1).norm(dim=1).mean().item()


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
@pytest.mark.parametrize("normalize,scale", [(False, 10.0), (True, 20.0)])
def test_dps_reduces_measurement_residual(sampler, normalize: bool, scale: float) -> None:
    denoiser = GaussianDenoiser()
    operator, y, x_T = inpainting_problem()
    ts = respace(T, 20)
    plain = sampler(denoiser, x_T, ts, None, generator=torch.Generator().manual_seed(1))
    guided_denoiser = MeasurementGuidance(denoiser, operator, y, scale, normalize=normalize)
    guided = sampler(guided_denoiser, x_T, ts, None, generator=torch.Generator().manual_seed(1))
    assert not guided.requires_grad
    assert residual(operator, y, guided) < 0.3 * residual(operator, y, plain)


@pytest.mark.parametrize("dims", [2, 3])
def test_dps_update_is_the_score_correction(dims: int) -> None:
    """eps' = eps + s scale g and x0' = x0 - s^2/a scale g with g = grad ||y - A(x0_hat)||^2."""
    denoiser = GaussianDenoiser()
    shape = (2, 1) + (4,) * dims
    operator, y, x = inpainting_problem(shape)
    t = torch.tensor([700, 100])
    with torch.no_grad():  # as inside a sampler
        out = MeasurementGuidance(denoiser, operator, y, 0.7)(x, t)
    plain = denoiser(x, t)
    c = denoiser.gain(t, x)
    g = -2 * c * operator(y - operator(c * x))  # analytic gradient for the masked linear denoiser
    a, s = denoiser.schedule.coefficients(t, x)
    torch.testing.assert_close(out.eps, plain.eps + s * 0.7 * g)
    torch.testing.assert_close(out.x0, plain.x0 - s**2 / a * 0.7 * g)
    torch.testing.assert_close(denoiser.schedule.x0_from_eps(x, t, out.eps), out.x0, atol=1e-4, rtol=1e-4)


def test_dps_scale_zero_and_inference_mode() -> None:
    denoiser = GaussianDenoiser()
    operator, y, x_T = inpainting_problem()
    t = torch.tensor([500] * 4)
    out = MeasurementGuidance(denoiser, operator, y, 0.0)(x_T, t)
    assert torch.equal(out.x0, denoiser(x_T, t).x0)
    with torch.inference_mode():  # gradients are still available to the wrapper
        x = ddim_sample(MeasurementGuidance(denoiser, operator, y, 0.5), x_T, respace(T, 5), None)
    assert torch.isfinite(x).all()


def test_guidance_wrappers_compose() -> None:
    denoiser, x, t, image = setup("v", clip=True)
    operator = lambda z: z.mean(dim=(2, 3))  # noqa: E731  a [B, 1] "measurement"
    guided = MeasurementGuidance(CFGDenoiser(denoiser, 1.0), operator, torch.zeros(3, 1), 1.0)
    out = ddim_sample(guided, x, respace(T, 3), image)
    assert out.shape == x.shape and out.abs().max() <= 1 + 1e-6
    assert guided.clip_x0 and guided.schedule is denoiser.schedule
