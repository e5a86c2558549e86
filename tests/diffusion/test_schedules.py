"""Noise schedules, the forward process and respacing, against diffusers and pinned values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from medgen.config import DiffusionConfig
from medgen.diffusion import SCHEDULES, NoiseSchedule, cosine, linear, noise_like, respace, scaled_linear

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_betas_match_diffusers(name: str, T: int) -> None:
    betas = SCHEDULES[name](T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[name])  # float32 tables
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(NoiseSchedule(betas).alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-9)


def test_pinned_values() -> None:
    """Released schedules never change: these numbers were fixed when they were released."""
    assert linear(2000)[0].item() == 1e-4 and linear(2000)[-1].item() == 0.02
    assert linear(2000)[1].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / 1999, rel=1e-15)
    assert scaled_linear(1000)[500].item() == pytest.approx(0.005742071067688485, rel=1e-14)
    c = cosine(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  Nichol & Dhariwal Eq. 17
    assert c[0].item() == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert c[0].item() == pytest.approx(4.128422482196914e-05, rel=1e-12)
    assert c[500].item() == pytest.approx(0.003155691441585007, rel=1e-12)
    assert c[-1].item() == 0.999  # capped at max_beta
    assert NoiseSchedule(c).alphas_cumprod[-1].item() == pytest.approx(2.4287669070348567e-09, rel=1e-9)
    assert cosine(1000, max_beta=0.5).max().item() == 0.5


def test_from_config() -> None:
    s = NoiseSchedule.from_config(DiffusionConfig(schedule="linear", timesteps=2000, beta_start=1e-4, beta_end=0.02))
    assert s.T == 2000 and s.name == "linear"
    torch.testing.assert_close(s.betas, linear(2000), atol=0, rtol=0)
    c = NoiseSchedule.from_config(DiffusionConfig(schedule="cosine", timesteps=100))
    torch.testing.assert_close(c.betas, cosine(100), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'"):
        NoiseSchedule.from_config(DiffusionConfig(schedule="cosin"))


def test_bad_schedules_raise() -> None:
    with pytest.raises(ValueError, match="open interval"):
        NoiseSchedule([0.1, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.zeros(2, 2) + 0.1)
    with pytest.raises(ValueError, match="positive int"):
        linear(0)


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_process_matches_diffusers(dims: int) -> None:
    s = NoiseSchedule(cosine(1000))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    shape = (3, 2) + (5,) * dims
    x0, noise, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.tensor([0, 500, 999])
    torch.testing.assert_close(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.v_target(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-5, rtol=1e-5)
    x_t = s.add_noise(x0.double(), noise.double(), t)  # float64: the inversions are exact to rounding
    torch.testing.assert_close(s.x0_from_eps(x_t, t, noise.double()), x0.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.eps_from_x0(x_t, t, x0.double()), noise.double(), atol=1e-9, rtol=0)


def test_coefficients_shape_device_dtype() -> None:
    s = NoiseSchedule(linear(100))
    a, sig = s.coefficients(torch.tensor([0, 99]), torch.zeros(2, 1, 4, 4, 4, dtype=torch.float64))
    assert a.shape == (2, 1, 1, 1, 1) and a.dtype == torch.float64
    torch.testing.assert_close(a**2 + sig**2, torch.ones_like(a))
    assert a[0].item() == pytest.approx(math.sqrt(1 - 1e-4), rel=1e-15)


def diffusers_timesteps(T: int, steps: int, spacing: str) -> np.ndarray:
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ddpm = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ddpm.set_timesteps(steps)
    assert torch.equal(ref.timesteps, ddpm.timesteps)
    return ref.timesteps.numpy()


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T", [10, 100, 1000, 2000])
def test_respace_matches_diffusers(spacing: str, T: int) -> None:
    for steps in sorted({1, 2, 3, 7, 10, 20, 29, 50, 61, T // 3, T - 1, T} & set(range(1, T + 1))):
        ours = respace(T, steps, spacing)
        assert ours.dtype == torch.long and ours.shape == (steps,)
        assert (ours.diff() < 0).all() and ours.min() >= 0 and ours.max() < T
        ref = diffusers_timesteps(T, steps, spacing)
        if len(ref) == steps + 1:  # diffusers' float arange overshoot (see respace's docstring)
            assert spacing == "trailing" and ref[-1] == -1
            ref = ref[:-1]
        np.testing.assert_array_equal(ours.numpy(), ref, err_msg=f"T={T} steps={steps}")


def test_respace_known_values_and_errors() -> None:
    assert respace(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert respace(1000, 4, "leading").tolist() == [750, 500, 250, 0]
    assert respace(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    assert respace(1000, 61, "trailing")[-1].item() == 15  # diffusers appends a stray -1 here
    with pytest.raises(ValueError, match="steps must be an int in"):
        respace(10, 11)
    with pytest.raises(ValueError, match="unknown timestep spacing 'middle'"):
        respace(10, 2, "middle")


def test_noise_like_uses_generator() -> None:
    x = torch.zeros(2, 3, 4, dtype=torch.float64)
    n = noise_like(x, torch.Generator().manual_seed(7))
    assert n.dtype == torch.float64 and n.shape == x.shape
    torch.testing.assert_close(n, torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
