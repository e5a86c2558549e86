"""Learned variances (improved DDPM): variance range, KL / decoder NLL, sampler, hybrid loss, guidance."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.distributions import Normal, kl_divergence

from medgen.config import DiffusionConfig, UNetConfig
from medgen.diffusion.guidance import CFGDenoiser, MeasurementGuidance
from medgen.diffusion.losses import discretized_gaussian_nll, diffusion_loss, gaussian_kl, vlb_terms
from medgen.diffusion.parameterization import Denoiser, learned_log_variance, log_variance_range
from medgen.diffusion.samplers import ddim_sample, ddpm_sample
from medgen.diffusion.schedules import NoiseSchedule, cosine, linear, respace
from medgen.nn.unet import UNet

T = 1000


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded torch while these tests run (shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# Stubs
# --------------------------------------------------------------------------------------
class ToyNet(nn.Module):
    """Deterministic eps-net ``tanh(1.3 x + roll(x)) + t / T`` (+ ``cond``); with ``var`` also
    outputs the variance interpolation: a constant, or ``tanh`` of x when var == "x"."""

    def __init__(self, var: float | str | None = None) -> None:
        super().__init__()
        self.var = var

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        eps = torch.tanh(1.3 * x + 0.4 * torch.roll(x, 1, dims=-1)) + t.view(-1, *(1,) * (x.ndim - 1)) / T
        if isinstance(cond, torch.Tensor):
            eps = eps + cond
        if self.var is None:
            return eps
        v = torch.tanh(x + (cond if isinstance(cond, torch.Tensor) else 0)) if self.var == "x" \
            else torch.full_like(x, float(self.var))
        return torch.cat([eps, v], 1)


def denoisers(var: float | str, dtype=torch.float64, clip: bool = True):
    """(learned-variance denoiser, plain denoiser with the same mean) on one linear schedule."""
    sched = NoiseSchedule(linear(T))
    learned = Denoiser(ToyNet(var), sched, prediction="eps", clip_x0=clip, learn_sigma=True)
    plain = Denoiser(ToyNet(None), sched, prediction="eps", clip_x0=clip)
    return learned, plain


def x_T(dtype=torch.float64, shape=(2, 2, 6, 6)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


# --------------------------------------------------------------------------------------
# (a) KL, (b) decoder NLL
# --------------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=torch.float64) * 2 for _ in range(4))
    ref = kl_divergence(Normal(m1, torch.exp(0.5 * lv1)), Normal(m2, torch.exp(0.5 * lv2)))
    torch.testing.assert_close(gaussian_kl(m1, lv1, m2, lv2), ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(gaussian_kl(m1, lv1, m1, lv1), torch.zeros_like(m1))


def test_discretized_gaussian_nll_matches_normal_cdf() -> None:
    k = torch.tensor([0, 1, 7, 127, 128, 200, 254, 255], dtype=torch.float64)
    x = -1 + 2 * k / 255  # bin centres, including both edge bins
    mean = torch.tensor([-0.9, -1.0, -0.93, 0.0, 0.01, 0.6, 0.95, 0.3], dtype=torch.float64)
    std = torch.tensor([0.05, 0.3, 0.01, 0.5, 0.002, 0.2, 0.1, 0.4], dtype=torch.float64)
    normal = Normal(mean, std)
    prob = normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)  # interior bins
    prob[0] = normal.cdf(x[0] + 1 / 255)[0]  # lowest bin: (-inf, -1 + 1/255]
    prob[-1] = 1 - normal.cdf(x[-1] - 1 / 255)[-1]  # highest bin: [1 - 1/255, inf)
    nll = discretized_gaussian_nll(x, mean, 2 * std.log())
    assert prob.min() > 1e-6  # no bin hits the 1e-12 clamp
    torch.testing.assert_close(nll, -prob.log(), rtol=1e-9, atol=1e-9)


def test_discretized_gaussian_probabilities_sum_to_one() -> None:
    x = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255
    for mean, std in [(0.1, 0.3), (-1.2, 0.05), (0.999, 0.5)]:
        p = torch.exp(-discretized_gaussian_nll(x, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(2 * math.log(std), dtype=torch.float64)))
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------------------
# (c) the variance range
# --------------------------------------------------------------------------------------
def test_learned_log_variance_full_grid_ends() -> None:
    """v = -1: log posterior variance (clipped at t = 0 to t = 1's); v = +1: log beta_t."""
    betas = linear(T)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    min_log, max_log = log_variance_range(ab, ab_prev)
    post = betas * (1 - ab_prev) / (1 - ab)  # Ho et al. beta_tilde, 0 at t = 0
    expected_min = post.clone()
    expected_min[0] = post[1]
    torch.testing.assert_close(learned_log_variance(torch.full((T,), -1.0, dtype=torch.float64), min_log, max_log),
                               expected_min.log(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(learned_log_variance(torch.ones(T, dtype=torch.float64), min_log, max_log),
                               betas.log(), rtol=1e-10, atol=1e-10)
    mid = learned_log_variance(torch.zeros(T, dtype=torch.float64), min_log, max_log)  # geometric mean
    torch.testing.assert_close(mid, 0.5 * (expected_min.log() + betas.log()), rtol=1e-10, atol=1e-10)


def test_learned_log_variance_respaced_matches_diffusers_learned_range() -> None:
    """Respaced chain vs DDPMScheduler(variance_type="learned_range")._get_variance on the
    non-final steps (diffusers uses log(max(beta_tilde, 1e-20)) on the final step instead of the clip)."""
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type="learned_range")
    ref.alphas_cumprod = NoiseSchedule(linear(T)).alphas_cumprod.clone()  # float64 table (see test_samplers)
    ts = respace(T, 10, "leading")
    ref.set_timesteps(timesteps=ts.tolist())
    ab = ref.alphas_cumprod[ts]
    ab_prev = torch.cat([ab[1:], torch.ones(1, dtype=torch.float64)])
    min_log, max_log = log_variance_range(ab, ab_prev)
    for v in (-1.0, 0.3, 1.0):
        for i, t in enumerate(ts.tolist()[:-1]):
            expected = ref._get_variance(t, predicted_variance=torch.tensor(v, dtype=torch.float64))
            got = learned_log_variance(torch.tensor(v, dtype=torch.float64), min_log[i], max_log[i])
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the final step (into ab = 1) has beta_tilde = 0: clipped to the previous step's
    assert min_log[-1] == min_log[-2] and torch.isfinite(max_log).all()


# --------------------------------------------------------------------------------------
# (d), (e) the DDPM sampler
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [50, 7])
@pytest.mark.parametrize("v,fixed", [(-1.0, "small"), (1.0, "large")])
def test_ddpm_learned_at_ends_equals_fixed(steps: int, v: float, fixed: str) -> None:
    learned, plain = denoisers(v)
    ts = respace(T, steps)
    got = ddpm_sample(learned, x_T(), ts, generator=torch.Generator().manual_seed(5))  # "auto" -> learned
    explicit = ddpm_sample(learned, x_T(), ts, generator=torch.Generator().manual_seed(5), variance="learned")
    ref = ddpm_sample(plain, x_T(), ts, generator=torch.Generator().manual_seed(5), variance=fixed)
    assert torch.equal(got, explicit)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)  # equal up to float64 rounding
    other = ddpm_sample(plain, x_T(), ts, generator=torch.Generator().manual_seed(5),
                        variance="large" if fixed == "small" else "small")
    assert (got - other).abs().max() > 1e-3  # the variance matters on this problem


def test_ddpm_learned_interpolates_per_pixel() -> None:
    """A pixel-varying v gives noise std exp(log_var / 2) per pixel: check one step by hand."""
    learned, _ = denoisers("x")
    x, ts = x_T(), torch.tensor([600, 300])
    got = ddpm_sample(learned, x, ts, generator=torch.Generator().manual_seed(3))
    ab = learned.schedule.alphas_cumprod
    a_t, a_p = ab[600], ab[300]
    beta, post = 1 - a_t / a_p, (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    with torch.no_grad():
        pred = learned(x, torch.tensor([600, 600]))
        frac = (pred.var_interp + 1) / 2
        std = torch.exp(0.5 * (frac * beta.log() + (1 - frac) * post.log()))
        mean = a_p.sqrt() * beta / (1 - a_t) * pred.x0 + (1 - beta).sqrt() * (1 - a_p) / (1 - a_t) * x
        x1 = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        final = learned(x1, torch.tensor([300, 300])).x0  # last step: the posterior mean at ab_prev = 1 is x0_hat
    assert std.std() > 0  # the variance really varies per pixel
    torch.testing.assert_close(got, final, rtol=1e-10, atol=1e-10)


def test_ddpm_auto_on_plain_prediction_is_small() -> None:
    _, plain = denoisers(0.0)
    ts = respace(T, 9)
    auto = ddpm_sample(plain, x_T(), ts, generator=torch.Generator().manual_seed(2))
    small = ddpm_sample(plain, x_T(), ts, generator=torch.Generator().manual_seed(2), variance="small")
    assert torch.equal(auto, small)


def test_ddpm_learned_needs_var_interp_and_others_ignore_it() -> None:
    learned, plain = denoisers(0.7)
    ts = respace(T, 5)
    with pytest.raises(ValueError, match="variance='learned' needs a denoiser whose prediction has var_interp"):
        ddpm_sample(plain, x_T(), ts, variance="learned")
    with pytest.raises(ValueError, match="unknown ddpm variance 'tiny'"):
        ddpm_sample(learned, x_T(), ts, variance="tiny")
    # fixed variances ignore v; DDIM ignores it
    assert torch.equal(ddpm_sample(learned, x_T(), ts, generator=torch.Generator().manual_seed(0), variance="small"),
                       ddpm_sample(plain, x_T(), ts, generator=torch.Generator().manual_seed(0), variance="small"))
    assert torch.equal(ddim_sample(learned, x_T(), ts, eta=0.5, generator=torch.Generator().manual_seed(0)),
                       ddim_sample(plain, x_T(), ts, eta=0.5, generator=torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------------------
# Hybrid loss: value, (f) stop-gradient, (g) training
# --------------------------------------------------------------------------------------
def test_vlb_terms_exact_mean_and_posterior_variance() -> None:
    """With v = -1: L_t = (c_x0 (x0 - x0_hat))^2 / (2 beta_tilde_t) / ln 2 for t > 0 (Ho et al.
    Eq. 7 coefficients), the decoder NLL of N(x0_hat, beta_tilde_1) at t = 0."""
    sched = NoiseSchedule(cosine(T))
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (3, 1, 4, 4), generator=g).double() * 2 / 255 - 1)
    x0_hat = x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 700])
    vb = vlb_terms(sched, x0, x_t, t, x0_hat, torch.full_like(x0, -1.0))
    betas, ab = sched.betas, sched.alphas_cumprod
    for i, ti in enumerate(t.tolist()[1:], start=1):
        c_x0 = ab[ti - 1].sqrt() * betas[ti] / (1 - ab[ti])
        post = betas[ti] * (1 - ab[ti - 1]) / (1 - ab[ti])
        torch.testing.assert_close(vb[i], (c_x0 * (x0[i] - x0_hat[i])) ** 2 / (2 * post) / math.log(2))
    std = (betas[1] * (1 - ab[0]) / (1 - ab[1])).sqrt()  # clipped: beta_tilde of t = 1
    normal = Normal(x0_hat[0], std)  # at t = 0 the posterior mean is x0_hat itself
    prob = normal.cdf(x0[0] + 1 / 255) - normal.cdf(x0[0] - 1 / 255)
    prob = torch.where(x0[0] < -0.999, normal.cdf(x0[0] + 1 / 255), prob)
    prob = torch.where(x0[0] > 0.999, 1 - normal.cdf(x0[0] - 1 / 255), prob)
    torch.testing.assert_close(vb[0], -prob.clamp_min(1e-12).log() / math.log(2), rtol=1e-9, atol=1e-9)


def test_hybrid_loss_composition_and_unchanged_without_learn_sigma() -> None:
    learned, plain = denoisers("x", dtype=torch.float32)
    x0 = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = diffusion_loss(learned, x0, generator=torch.Generator().manual_seed(7), vlb_weight=0.002)
    ref = diffusion_loss(plain, x0, generator=torch.Generator().manual_seed(7))
    assert set(ref) == {"loss", "diffusion", "x0"} and set(out) == {"loss", "diffusion", "x0", "vlb"}
    assert torch.equal(out["diffusion"], ref["diffusion"]) and torch.equal(ref["loss"], ref["diffusion"])
    torch.testing.assert_close(out["loss"], out["diffusion"] + 0.002 * T * out["vlb"])
    assert out["vlb"] > 0


def test_vlb_gradient_reaches_only_the_variance_channels() -> None:
    """(f) stop-gradient: d(vlb term)/d(eps channels) = 0, d/d(v channels) != 0."""

    class Table(nn.Module):  # raw output is a learnable tensor [B, 2C, H, W]
        def __init__(self) -> None:
            super().__init__()
            self.raw = nn.Parameter(torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.5)

        def forward(self, x, t, cond=None):
            return self.raw

    denoiser = Denoiser(Table(), NoiseSchedule(cosine(T)), prediction="v", learn_sigma=True)
    x0 = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    grads = {}
    for w in (0.0, 0.01):
        denoiser.net.raw.grad = None
        diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(2), vlb_weight=w)["loss"].backward()
        grads[w] = denoiser.net.raw.grad.clone()
    vlb_grad = grads[0.01] - grads[0.0]
    assert torch.equal(grads[0.0][:, 1], torch.zeros_like(grads[0.0][:, 1]))  # L_simple ignores v
    assert grads[0.0][:, 0].abs().max() > 0
    assert torch.equal(vlb_grad[:, 0], torch.zeros_like(vlb_grad[:, 0]))  # vlb does not train the mean
    assert (vlb_grad[:, 1].abs().flatten(1).amax(1) > 0).all()  # ... but every sample's variance


def test_hybrid_loss_trains_a_tiny_unet() -> None:
    """(g) Adam on a tiny UNet (out_channels = 2) lowers the hybrid loss and its vlb part."""
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=1, out_channels=2, channels=(16, 32), attention_levels=(False, False))
    net = UNet(cfg)
    denoiser = Denoiser.from_config(net, DiffusionConfig(schedule="cosine", timesteps=100, prediction="eps",
                                                         learn_sigma=True))
    assert denoiser.learn_sigma
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    centre = torch.rand(8, 2, 1, 1, generator=g) - 0.5
    x0 = torch.where((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < 0.25, 1.0, -1.0)[:, None]  # discs

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            outs = [diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(s)) for s in range(4)]
        return sum(o["loss"].item() for o in outs) / 4, sum(o["vlb"].item() for o in outs) / 4

    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for i in range(30):
        out = diffusion_loss(denoiser, x0, generator=torch.Generator().manual_seed(100 + i))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    after = evaluate()
    assert sum(losses[-10:]) < sum(losses[:10])
    assert after[0] < 0.5 * before[0] and after[1] < before[1]


# --------------------------------------------------------------------------------------
# (h) guidance, (i) shapes
# --------------------------------------------------------------------------------------
def test_cfg_keeps_the_conditional_variance() -> None:
    learned, _ = denoisers("x", dtype=torch.float32, clip=True)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 1, 5, 5, generator=g), torch.rand(3, 1, 5, 5, generator=g)
    t = torch.tensor([900, 400, 10])
    out = CFGDenoiser(learned, 2.0)(x, t, cond)
    conditional, null = learned(x, t, cond), learned(x, t, torch.full_like(cond, -1.0))
    torch.testing.assert_close(out.var_interp, conditional.var_interp)
    assert (out.var_interp - null.var_interp).abs().max() > 0.1  # so keeping the right one matters
    torch.testing.assert_close(out.eps, 3 * conditional.eps - 2 * null.eps)
    # a null condition that cannot be concatenated with cond: two separate passes
    two = CFGDenoiser(learned, 2.0, null_cond=lambda c: (c,))(x, t, cond)  # ToyNet ignores a tuple cond
    torch.testing.assert_close(two.var_interp, conditional.var_interp)
    assert (two.var_interp - learned(x, t, (cond,)).var_interp).abs().max() > 0.1


def test_measurement_guidance_passes_variance_through() -> None:
    learned, _ = denoisers("x", dtype=torch.float32, clip=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 5, generator=g)
    t = torch.tensor([500, 50])
    guided = MeasurementGuidance(learned, lambda z: z[..., :2], torch.zeros(2, 1, 5, 2), 1.0)
    with torch.no_grad():
        out = guided(x, t)
        plain = learned(x, t)
    assert torch.equal(out.var_interp, plain.var_interp) and not out.var_interp.requires_grad
    assert not torch.equal(out.eps, plain.eps)
    composed = MeasurementGuidance(CFGDenoiser(learned, 1.0), lambda z: z, torch.zeros_like(x), 0.5)
    sample = ddpm_sample(composed, x, respace(T, 4), x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sample).all()


def test_output_shape_errors_name_learn_sigma() -> None:
    learned, plain = denoisers(0.0, dtype=torch.float32)
    x, t = torch.randn(2, 2, 4, 4), torch.tensor([3, 4])
    with pytest.raises(ValueError, match=r"network output shape \(2, 2, 4, 4\) must have 2 x the channels of "
                                         r"x_t shape \(2, 2, 4, 4\) \(learn_sigma=True\)"):
        learned.to_prediction(torch.zeros(2, 2, 4, 4), x, t)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 4\) differs from x_t shape \(2, 2, 4, 4\) \(learn_sigma=False\)"):
        plain.to_prediction(torch.zeros(2, 4, 4, 4), x, t)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 5\) must have 2 x the channels .* \(learn_sigma=True\)"):
        learned.to_prediction(torch.zeros(2, 4, 4, 5), x, t)  # right channels, wrong size
