"""Samplers against diffusers' schedulers, step by step, plus a pinned DDIM result.

The reference loops feed diffusers the raw output of the same deterministic network and the
same noise (a generator seeded identically; both draw one x-shaped tensor per stochastic step).

Precision: diffusers keeps ``alphas_cumprod`` in float32, which loses digits in
``1 - alpha_bar`` near t = 0 (about 1e-5 absolute at t = 0). To compare the *update math*
rather than table precision, the comparisons give diffusers medgen's float64 table and run in
float64 (the tables themselves are compared in test_schedules.py). DPM-Solver still casts its
sigma table to float32, so it is compared to 1e-5, not 1e-9, and not with eps-prediction at
t = 999 of the cosine schedule, where float32 sigmas are ill-conditioned (sqrt(alpha_bar) ~ 5e-5
divides a 1e-7 rounding error). A separate test uses unmodified diffusers in float32.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from medgen.diffusion import (
    SCHEDULES,
    Denoiser,
    NoiseSchedule,
    ddim_sample,
    ddpm_sample,
    dpmpp_sample,
    linear,
    respace,
    sample,
)

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
T = 1000
# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array(tensor), which numpy 2 flags
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


class ToyNet(nn.Module):
    """Deterministic seeded "network" for any number of spatial dims.

    Its clean estimate is the Gaussian posterior mean ``a x / (a^2 + s^2)`` plus a seeded
    channel-mixing / spatial-shift perturbation of size up to 0.6 (so clipping is active);
    it outputs that estimate in the requested parameterization.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str, channels: int = 2, dtype=torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(channels, channels, generator=g, dtype=dtype) * 0.5)
        self.schedule, self.prediction, self.calls = schedule, prediction, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls += 1
        a, s = self.schedule.coefficients(t, x)
        mix = torch.einsum("oc,bc...->bo...", self.w, x) + 0.3 * torch.roll(x, 1, dims=-1)
        x0 = a * x / (a**2 + s**2) + 0.6 * torch.tanh(mix)
        if self.prediction == "x0":
            return x0
        eps = (x - a * x0) / s
        return eps if self.prediction == "eps" else a * eps - s * x0


def make(prediction: str, clip: bool, schedule: str = "linear", dtype=torch.float64, shape=(2, 2, 8, 8)):
    sched = NoiseSchedule(SCHEDULES[schedule](T))
    denoiser = Denoiser(ToyNet(sched, prediction, shape[1], dtype), sched, prediction=prediction, clip_x0=clip)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return denoiser, x_T


def medgen_trajectory(fn, denoiser, x_T, timesteps, **kwargs) -> list[torch.Tensor]:
    steps = []
    fn(denoiser, x_T, timesteps, None, generator=torch.Generator().manual_seed(5), callback=steps.append, **kwargs)
    return steps


@torch.no_grad()
def diffusers_trajectory(scheduler, net, x_T, **step_kwargs) -> list[torch.Tensor]:
    generator, x, xs = torch.Generator().manual_seed(5), x_T, []
    for t in scheduler.timesteps:
        out = net(x, t.expand(x.shape[0]), None)
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
        xs.append(x)
    return xs


def assert_trajectories_equal(ours: list[dict], ref: list[torch.Tensor], timesteps: torch.Tensor, atol: float) -> None:
    assert len(ours) == len(ref) == len(timesteps)
    for i, (step, x_ref) in enumerate(zip(ours, ref)):
        assert step["i"] == i and step["n"] == len(timesteps) and step["t"] == int(timesteps[i])
        torch.testing.assert_close(step["x"], x_ref, atol=atol, rtol=0, msg=f"step {i}")


PARAMS = [(p, c) for p in ("eps", "x0", "v") for c in (False, True)]


@pytest.mark.parametrize("prediction,clip", PARAMS)
@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("leading", 10), ("linspace", 7)])
def test_ddpm_matches_diffusers(prediction: str, clip: bool, spacing: str, steps: int) -> None:
    denoiser, x_T = make(prediction, clip)
    ref_sched = DDPMScheduler(num_train_timesteps=T, trained_betas=linear(T).numpy(), variance_type="fixed_small",
                              prediction_type=DIFFUSERS_PREDICTION[prediction], clip_sample=clip,
                              timestep_spacing=spacing)
    ref_sched.alphas_cumprod = denoiser.schedule.alphas_cumprod  # same float64 table (module docstring)
    ref_sched.set_timesteps(steps)
    timesteps = respace(T, steps, spacing)
    assert torch.equal(ref_sched.timesteps, timesteps)
    ours = medgen_trajectory(ddpm_sample, denoiser, x_T, timesteps)
    ref = diffusers_trajectory(ref_sched, denoiser.net, x_T)
    # 1e-9: diffusers adds noise of std sqrt(1e-20) on a final step with t > 0 (trailing); medgen adds none
    assert_trajectories_equal(ours, ref, timesteps, atol=1e-9)


def test_ddpm_large_variance_matches_diffusers_fixed_large() -> None:
    denoiser, x_T = make("eps", False)
    ref_sched = DDPMScheduler(num_train_timesteps=T, trained_betas=linear(T).numpy(), variance_type="fixed_large",
                              clip_sample=False, timestep_spacing="leading")  # ends at t = 0: no final noise
    ref_sched.alphas_cumprod = denoiser.schedule.alphas_cumprod
    ref_sched.set_timesteps(10)
    ours = medgen_trajectory(ddpm_sample, denoiser, x_T, ref_sched.timesteps, variance="large")
    assert_trajectories_equal(ours, diffusers_trajectory(ref_sched, denoiser.net, x_T), ref_sched.timesteps, 1e-9)


@pytest.mark.parametrize("prediction,clip", PARAMS)
@pytest.mark.parametrize("spacing,eta", [("trailing", 0.0), ("leading", 0.0), ("trailing", 0.7)])
def test_ddim_matches_diffusers(prediction: str, clip: bool, spacing: str, eta: float) -> None:
    denoiser, x_T = make(prediction, clip)
    ref_sched = DDIMScheduler(num_train_timesteps=T, trained_betas=linear(T).numpy(),
                              prediction_type=DIFFUSERS_PREDICTION[prediction], clip_sample=clip,
                              timestep_spacing=spacing)
    ref_sched.alphas_cumprod = denoiser.schedule.alphas_cumprod
    ref_sched.set_timesteps(10)  # T % 10 == 0: diffusers' "t - T // n" predecessor is the next listed step
    timesteps = respace(T, 10, spacing)
    assert torch.equal(ref_sched.timesteps, timesteps)
    ours = medgen_trajectory(ddim_sample, denoiser, x_T, timesteps, eta=eta)
    ref = diffusers_trajectory(ref_sched, denoiser.net, x_T, eta=eta)
    assert_trajectories_equal(ours, ref, timesteps, atol=1e-9)


@pytest.mark.parametrize("prediction,clip", PARAMS)
@pytest.mark.parametrize(
    "schedule,spacing", [("linear", "trailing"), ("cosine", "leading"), ("scaled_linear", "linspace")]
)
def test_dpmpp_matches_diffusers(prediction: str, clip: bool, schedule: str, spacing: str) -> None:
    denoiser, x_T = make(prediction, clip, schedule)
    ref_sched = DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=SCHEDULES[schedule](T).numpy(),
                                            prediction_type=DIFFUSERS_PREDICTION[prediction],
                                            thresholding=clip, sample_max_value=1.0)  # == clamp to [-1, 1]
    ref_sched.alphas_cumprod = denoiser.schedule.alphas_cumprod
    timesteps = respace(T, 10, spacing)
    ref_sched.set_timesteps(timesteps=timesteps.tolist())  # its own "linspace" differs from DDIM's
    ours = medgen_trajectory(dpmpp_sample, denoiser, x_T, timesteps)
    ref = diffusers_trajectory(ref_sched, denoiser.net, x_T)
    assert_trajectories_equal(ours, ref, timesteps, atol=1e-5)
    torch.testing.assert_close(ours[-1]["x"], ours[-1]["x0"], atol=0, rtol=0)  # final step returns x0_hat


def test_dpmpp_trailing_timesteps_equal_diffusers_own() -> None:
    ref_sched = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref_sched.set_timesteps(20)
    assert torch.equal(ref_sched.timesteps, respace(T, 20, "trailing"))


def test_clipping_is_active_in_these_comparisons() -> None:
    """The clip=True cases above only test something if clamping changes the result."""
    clipped, x_T = make("eps", True)
    free, _ = make("eps", False)
    ts = respace(T, 10)
    assert (ddim_sample(clipped, x_T, ts) - ddim_sample(free, x_T, ts)).abs().max() > 0.1


def test_unmodified_diffusers_float32_ddim() -> None:
    """Real-world agreement: diffusers' own float32 tables and medgen's float64 ones, float32 data."""
    denoiser, x_T = make("v", True, dtype=torch.float32)
    ref_sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", prediction_type="v_prediction",
                              clip_sample=True, timestep_spacing="trailing")
    ref_sched.set_timesteps(20)
    ours = medgen_trajectory(ddim_sample, denoiser, x_T, respace(T, 20))
    assert_trajectories_equal(ours, diffusers_trajectory(ref_sched, denoiser.net, x_T), ref_sched.timesteps, 1e-5)


def test_ddim_matches_diffusers_in_3d() -> None:
    denoiser, x_T = make("eps", True, shape=(1, 2, 4, 4, 4))
    ref_sched = DDIMScheduler(num_train_timesteps=T, trained_betas=linear(T).numpy(), timestep_spacing="trailing")
    ref_sched.alphas_cumprod = denoiser.schedule.alphas_cumprod
    ref_sched.set_timesteps(5)
    ours = medgen_trajectory(ddim_sample, denoiser, x_T, respace(T, 5))
    assert_trajectories_equal(ours, diffusers_trajectory(ref_sched, denoiser.net, x_T), ref_sched.timesteps, 1e-9)


def test_ddim_eta_one_equals_ddpm_for_uneven_spacing() -> None:
    """DDIM(eta=1) is ancestral DDPM with respaced betas (clip off), for any spacing."""
    denoiser, x_T = make("v", False)
    ts = respace(T, 7, "linspace")  # uneven gaps: diffusers' DDIMScheduler cannot do these
    ddim = medgen_trajectory(ddim_sample, denoiser, x_T, ts, eta=1.0)
    ddpm = medgen_trajectory(ddpm_sample, denoiser, x_T, ts)
    for a, b in zip(ddim, ddpm):
        torch.testing.assert_close(a["x"], b["x"], atol=1e-12, rtol=1e-12)


def test_pinned_ddim_result() -> None:
    """A full seeded DDIM loop; the numbers were computed by this implementation when it was
    committed (like diffusers' scheduler tests) and guard against silent changes."""
    sched = NoiseSchedule(SCHEDULES["cosine"](T))
    denoiser = Denoiser(ToyNet(sched, "v"), sched, prediction="v", clip_x0=True)
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    x = ddim_sample(denoiser, x_T, respace(T, 20), None, eta=0.0)
    assert x.dtype == torch.float32 and x.shape == x_T.shape
    assert x.sum().item() == pytest.approx(PINNED_SUM, abs=1e-4)
    assert x.abs().mean().item() == pytest.approx(PINNED_ABS_MEAN, abs=1e-6)
    torch.testing.assert_close(x[1, 1, 2, :4], torch.tensor(PINNED_ROW), atol=1e-5, rtol=0)


# Computed by medgen's ddim_sample at commit time (float32, 2 CPU threads).
PINNED_SUM = 3.250844955444336
PINNED_ABS_MEAN = 0.9061031341552734
PINNED_ROW = [1.0, 0.9714144468307495, 0.9542270302772522, -0.4795053005218506]


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp"])
@pytest.mark.parametrize("shape", [(2, 1, 6, 6), (1, 2, 3, 4, 5)])
def test_shapes_forward_count_and_no_grad(name: str, shape: tuple[int, ...]) -> None:
    denoiser, x_T = make("v", True, dtype=torch.float32, shape=shape)
    x = sample(name, denoiser, x_T, 6, generator=torch.Generator().manual_seed(0))
    assert x.shape == x_T.shape and torch.isfinite(x).all()
    assert denoiser.net.calls == 6  # one network evaluation per step
    assert not x.requires_grad  # the net has parameters, but samplers run under no_grad


def test_sample_dispatches_with_respacing() -> None:
    denoiser, x_T = make("eps", True)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample("ddim", denoiser, x_T, 8, spacing="leading", eta=0.5, generator=g1)
    b = ddim_sample(denoiser, x_T, respace(T, 8, "leading"), None, eta=0.5, generator=g2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_ddpm_generator_controls_noise() -> None:
    denoiser, x_T = make("eps", True)
    ts = respace(T, 5)
    run = lambda seed: ddpm_sample(denoiser, x_T, ts, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    torch.testing.assert_close(run(0), run(0), atol=0, rtol=0)
    assert (run(0) - run(1)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "timesteps,message",
    [([5, 7, 3], "strictly descending"), ([T, 3], r"\[0, 1000\)"), ([3.0, 1.0], "integer"), ([], "non-empty")],
)
def test_bad_timesteps_raise(timesteps, message: str) -> None:
    denoiser, x_T = make("eps", True)
    with pytest.raises(ValueError, match=message):
        ddim_sample(denoiser, x_T, torch.tensor(timesteps), None)


def test_bad_arguments_raise() -> None:
    denoiser, x_T = make("eps", True)
    with pytest.raises(ValueError, match="unknown sampler 'dpmp'.*did you mean 'dpmpp'"):
        sample("dpmp", denoiser, x_T, 4)
    with pytest.raises(ValueError, match="eta=1.0 applies only to the ddim sampler"):
        sample("ddpm", denoiser, x_T, 4, eta=1.0)
    with pytest.raises(ValueError, match="negative direction variance"):
        ddim_sample(denoiser, x_T, respace(T, 4), eta=3.0)
    with pytest.raises(ValueError, match="no .schedule"):
        ddim_sample(lambda x, t, c: None, x_T, respace(T, 4))
