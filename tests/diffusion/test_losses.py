"""diffusion_loss: targets per parameterization, the Eq. 9 x0 term, masks, timestep sampling."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from medgen.diffusion import Denoiser, NoiseSchedule, diffusion_loss, linear

T = 1000


class Recorder(nn.Module):
    """Returns ``scale * x_t`` (a learnable scale) and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.x_t, self.t, self.cond = x_t, t, cond
        return self.scale * x_t


def setup(prediction: str, shape=(4, 2, 6, 6)):
    denoiser = Denoiser(Recorder(), NoiseSchedule(linear(T)), prediction=prediction, clip_x0=True)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return denoiser, x0


def drawn(x0: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (t, noise) diffusion_loss draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, T, (x0.shape[0],), generator=g), torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("shape", [(4, 2, 6, 6), (2, 1, 3, 4, 5)])
def test_target_per_parameterization(prediction: str, shape: tuple[int, ...]) -> None:
    denoiser, x0 = setup(prediction, shape)
    out = diffusion_loss(denoiser, x0, "c", generator=torch.Generator().manual_seed(3))
    t, noise = drawn(x0, 3)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    x_t = ref.add_noise(x0, noise, t)
    target = {"eps": noise, "x0": x0, "v": ref.get_velocity(x0, noise, t)}[prediction]
    net = denoiser.net
    assert torch.equal(net.t, t) and net.cond == "c"
    torch.testing.assert_close(net.x_t, x_t, atol=1e-5, rtol=1e-5)
    expected = ((0.5 * x_t - target) ** 2).mean()
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["diffusion"], expected, atol=1e-5, rtol=1e-5)
    assert not out["diffusion"].requires_grad and out["loss"].requires_grad


def test_l1_loss() -> None:
    denoiser, x0 = setup("eps")
    out = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(1), loss="l1")
    t, noise = drawn(x0, 1)
    torch.testing.assert_close(out["loss"], (denoiser.net.x_t * 0.5 - noise).abs().mean())


def test_x0_reconstruction_term_eq9() -> None:
    """L = ||eps - eps_hat||^2 + w ||x0 - (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab)||^2 (unclipped)."""
    denoiser, x0 = setup("eps")
    out = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(2), x0_weight=0.3)
    t, noise = drawn(x0, 2)
    ab = NoiseSchedule(linear(T)).alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = denoiser.net.x_t
    eps_hat = 0.5 * x_t
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()  # not clamped although clip_x0=True
    assert x0_hat.abs().max() > 1  # so clamping would have mattered
    rec = ((x0 - x0_hat) ** 2).mean()
    torch.testing.assert_close(out["x0"], rec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], ((eps_hat - noise) ** 2).mean() + 0.3 * rec, rtol=1e-5, atol=1e-6)
    without = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(without["loss"], out["diffusion"])


def test_x0_term_equals_main_term_for_x0_prediction() -> None:
    denoiser, x0 = setup("x0")
    out = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(4), x0_weight=1.0)
    torch.testing.assert_close(out["x0"], out["diffusion"])
    torch.testing.assert_close(out["loss"], 2 * out["diffusion"])


def test_mask_weights_pixels() -> None:
    denoiser, x0 = setup("v")
    mask = torch.zeros(4, 1, 6, 6)
    mask[..., :3] = 1.0  # left half only
    masked = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(5), mask=mask, x0_weight=0.5)
    t, noise = drawn(x0, 5)
    s = NoiseSchedule(linear(T))
    per_pixel = (0.5 * denoiser.net.x_t - s.v_target(x0, noise, t)) ** 2
    torch.testing.assert_close(masked["diffusion"], per_pixel[..., :3].mean())
    ones = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(5), mask=torch.ones(4, 1, 6, 6))
    plain = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ones["loss"], plain["loss"])


def test_gradient_reaches_network() -> None:
    denoiser, x0 = setup("eps")
    diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(0), x0_weight=1.0)["loss"].backward()
    assert denoiser.net.scale.grad is not None and denoiser.net.scale.grad.abs() > 0


def test_timesteps_uniform() -> None:
    denoiser, x0 = setup("eps", shape=(20000, 1, 1, 1))
    diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(0))
    t = denoiser.net.t.double()
    assert t.min() == 0 and t.max() == T - 1
    assert t.mean().item() == pytest.approx((T - 1) / 2, abs=10)  # sd of the mean ~ 2
    counts = torch.histc(t, bins=10, min=0, max=T)
    assert counts.min() > 1800 and counts.max() < 2200  # expected 2000 per decile


def test_bad_arguments_raise() -> None:
    denoiser, x0 = setup("eps")
    with pytest.raises(ValueError, match="unknown diffusion loss 'huber'"):
        diffusion_loss(denoiser, x0, loss="huber")
    with pytest.raises(ValueError, match=r"mask shape \(4, 2, 6, 6\) must be \[B, 1, \*S\]"):
        diffusion_loss(denoiser, x0, mask=torch.ones_like(x0))
