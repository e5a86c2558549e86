"""medgen.inverse: operators (adjoints, phantom agreement), measure, Tikhonov (CG vs dense solve,
deblurring, acoustic L-BFGS), DPS with an analytic Gaussian-prior denoiser, and metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

from medgen.data.phantoms.base import Sizes
from medgen.data.phantoms.lung import CT, generate
from medgen.data.phantoms.ultrasound import NOISE_STD
from medgen.diffusion import NoiseSchedule, Prediction, cosine, linear
from medgen.inverse import (DEFAULT_LAM_GRID, InverseError, dps_reconstruct, effective_zeta, make_operator,
                            mean_sd_maps, measure, reconstruction_metrics, residual_norm, tikhonov, tikhonov_auto,
                            unguided)
from medgen.metrics.image import psnr

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lung32() -> dict[str, np.ndarray]:
    """Four lung phantom subjects at 32 px."""
    return generate(np.arange(4), seed=0, sizes=Sizes(32, 32))


def model_images(data: dict[str, np.ndarray]) -> torch.Tensor:
    """The ct modality in model range ``[n, 1, H, W]``."""
    return torch.from_numpy(CT.to_model(data["ct"]))[:, None]


# ----------------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------------
def test_unknown_operator_lists_the_valid_names() -> None:
    with pytest.raises(InverseError, match="us_linear, us_acoustic, blur, inpaint"):
        make_operator("deblur", size=16)
    with pytest.raises(InverseError, match="bad option"):
        make_operator("blur", size=16, sigmaa=1.0)
    with pytest.raises(InverseError, match=r"x must be \[B, 1, 16, 16\]"):
        make_operator("blur", size=16)(torch.zeros(1, 1, 16, 20))


@pytest.mark.parametrize("name, options", [("us_linear", {}), ("blur", {}), ("blur", {"padding": "reflect"}),
                                           ("blur", {"sigma": (0.7, 2.5)}), ("inpaint", {}),
                                           ("inpaint", {"mode": "box", "fraction": 0.3}),
                                           ("inpaint", {"mode": "random", "seed": 3})])
def test_adjoint_dot_product(name: str, options: dict) -> None:
    """<A x, y> == <x, A^T y> for random x, y (float64), non-square size."""
    op = make_operator(name, size=(16, 20), **options).double()
    assert op.linear and op.name == name
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 16, 20, generator=g, dtype=torch.float64)
    ax = op(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    lhs, rhs = (ax * y).sum((1, 2, 3)), (x * op.adjoint(y)).sum((1, 2, 3))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_operator_attributes_and_masks() -> None:
    assert make_operator("us_acoustic", size=16).linear is False
    with pytest.raises(InverseError, match="nonlinear"):
        make_operator("us_acoustic", size=16).adjoint(torch.zeros(1, 1, 16, 8))
    for name in ("us_linear", "us_acoustic"):
        op = make_operator(name, size=16)
        assert op.default_noise_std == NOISE_STD and op.n_measurements == 16 * 8
    cols = make_operator("inpaint", size=(16, 20)).measurement_mask[0, 0]
    assert (cols[:, 7:12] == 0).all() and cols.sum() == 16 * 15  # round(0.25 * 20) = 5 columns from (20 - 5) // 2
    box = make_operator("inpaint", size=16, mode="box", fraction=0.25).measurement_mask[0, 0]
    assert (box[4:12, 4:12] == 0).all() and box.sum() == 256 - 64
    rand = [make_operator("inpaint", size=32, mode="random", fraction=0.5, seed=s).measurement_mask for s in (0, 0, 1)]
    assert torch.equal(rand[0], rand[1]) and not torch.equal(rand[0], rand[2])
    assert abs(rand[0].mean().item() - 0.5) < 0.08
    # the default blur sigma scales with the image: 2 px at 64 px
    assert make_operator("blur", size=64).sigma == (2.0, 2.0) and make_operator("blur", size=32).sigma == (1.0, 1.0)


def test_ultrasound_operators_reproduce_the_phantom_measurements(lung32: dict) -> None:
    """y of the phantom's us_* modalities = operator(ct in model range) + N(0, NOISE_STD^2) noise."""
    x = model_images(lung32)
    for key in ("us_linear", "us_acoustic"):
        diff = torch.from_numpy(lung32[key])[:, None] - make_operator(key, size=32)(x)
        assert abs(diff.mean().item()) < 3e-3  # 2,048 noise values: SE of the mean 4.4e-4
        assert abs(diff.std().item() / NOISE_STD - 1) < 0.06


def test_measure_noise_statistics() -> None:
    op = make_operator("inpaint", size=16)
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    y = measure(op, x, noise_std=0.1, generator=torch.Generator().manual_seed(0))
    noise = y - op(x)
    observed = op.measurement_mask.expand_as(noise) > 0
    assert (noise[~observed] == 0).all()  # no noise on missing pixels
    n = noise[observed]  # 12,288 values: SE of the std ~0.64 %
    assert abs(n.mean().item()) < 0.004 and abs(n.std().item() / 0.1 - 1) < 0.03
    again = measure(op, x, noise_std=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    blur = make_operator("blur", size=16)  # default std
    n = measure(blur, x, generator=torch.Generator().manual_seed(1)) - blur(x)
    assert abs(n.std().item() / blur.default_noise_std - 1) < 0.03


# ----------------------------------------------------------------------------------------------
# Tikhonov
# ----------------------------------------------------------------------------------------------
def dense_matrix(op: nn.Module, size: int) -> torch.Tensor:
    """The explicit matrix ``[M, N]`` of a linear operator: A applied to each basis image."""
    basis = torch.eye(size * size, dtype=torch.float64).view(-1, 1, size, size)
    return op(basis).flatten(1).T


@pytest.mark.parametrize("name", ["blur", "us_linear", "inpaint"])
def test_tikhonov_cg_matches_dense_solve(name: str) -> None:
    op = make_operator(name, size=8, **({"sigma": 1.0} if name == "blur" else {})).double()
    a = dense_matrix(op, 8)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(3, *op(torch.zeros(1, 1, 8, 8, dtype=torch.float64)).shape[1:], generator=g, dtype=torch.float64)
    lam = 0.05
    dense = torch.linalg.solve(a.T @ a + lam * torch.eye(64, dtype=torch.float64), a.T @ y.flatten(1).T).T
    x = tikhonov(op, y, lam=lam, iters=200, tol=1e-12, clamp=False)
    torch.testing.assert_close(x.flatten(1), dense, rtol=1e-7, atol=1e-8)
    warm = tikhonov(op, y, lam=lam, iters=200, tol=1e-12, clamp=False, x_init=torch.rand(3, 1, 8, 8).double())
    torch.testing.assert_close(warm.flatten(1), dense, rtol=1e-7, atol=1e-8)  # the start does not matter
    # x_ref shifts the solution: (A^T A + lam I) x = A^T y + lam x_ref
    ref = torch.full((3, 1, 8, 8), 0.3, dtype=torch.float64)
    dense_ref = torch.linalg.solve(a.T @ a + lam * torch.eye(64, dtype=torch.float64),
                                   a.T @ y.flatten(1).T + lam * ref.flatten(1).T).T
    x_ref = tikhonov(op, y, lam=lam, iters=200, tol=1e-12, clamp=False, x_ref=ref)
    torch.testing.assert_close(x_ref.flatten(1), dense_ref, rtol=1e-7, atol=1e-8)


def test_tikhonov_deblurs_lung_sections(lung32: dict) -> None:
    """Tiny noise: the discrepancy-principle solution fits y to the noise level and beats the blurred input."""
    truth = model_images(lung32)
    op = make_operator("blur", size=32, sigma=1.5)
    sigma = 1e-3
    y = measure(op, truth, noise_std=sigma, generator=torch.Generator().manual_seed(0))
    raw, lam = tikhonov_auto(op, y, sigma, iters=300, clamp=False)
    rms = residual_norm(op, y, raw) / op.n_measurements**0.5
    assert (rms <= sigma).all()
    x, lam_clamped = tikhonov_auto(op, y, sigma, iters=300)
    assert torch.equal(lam, lam_clamped) and torch.equal(x, raw.clamp(-1, 1))
    assert (lam > DEFAULT_LAM_GRID[0]).all()  # regularised: a lam above the grid's smallest fits the data
    gain = psnr(x, truth, data_range=2.0) - psnr(y, truth, data_range=2.0)
    assert (gain > 1.0).all(), gain
    # the next larger lam on the grid no longer fits the noise level (the discrepancy choice is the largest)
    grid = sorted(DEFAULT_LAM_GRID)
    for i, lam_i in enumerate(lam.tolist()):
        if lam_i < grid[-1]:
            bigger = tikhonov(op, y[i:i + 1], lam=grid[grid.index(lam_i) + 1], iters=300, clamp=False)
            assert residual_norm(op, y[i:i + 1], bigger).item() ** 2 > op.n_measurements * sigma**2


def test_tikhonov_on_the_acoustic_operator_lowers_the_residual(lung32: dict) -> None:
    truth = model_images(generate(np.arange(2), seed=0, sizes=Sizes(16, 16)))
    op = make_operator("us_acoustic", size=16)
    y = measure(op, truth, generator=torch.Generator().manual_seed(0))
    start = torch.zeros_like(truth)
    x = tikhonov(op, y, lam=1e-3, iters=15, x_init=start)
    before, after = residual_norm(op, y, start), residual_norm(op, y, x)
    assert (after < 0.5 * before).all(), (before, after)
    assert x.abs().max() <= 1.0


# ----------------------------------------------------------------------------------------------
# DPS with an analytic denoiser
# ----------------------------------------------------------------------------------------------
class GaussianPrior(nn.Module):
    """Exact posterior-mean denoiser of the prior x0 ~ N(0, s^2 I): with x_t = a x0 + sig eps,
    E[x0 | x_t] = a s^2 / (a^2 s^2 + sig^2) x_t, and eps_hat = (x_t - a x0_hat) / sig."""

    clip_x0 = False

    def __init__(self, schedule: NoiseSchedule, s: float = 0.5) -> None:
        super().__init__()
        self.schedule, self.s = schedule, s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> Prediction:
        a, sig = self.schedule.coefficients(t, x_t)
        x0 = a * self.s**2 / (a * a * self.s**2 + sig * sig) * x_t
        return Prediction(x0=x0, eps=(x_t - a * x0) / sig)


def test_gaussian_prior_denoiser_samples_the_prior() -> None:
    """Sanity check of the analytic denoiser: unguided samples have the prior's std s."""
    prior = GaussianPrior(NoiseSchedule(cosine(1000)), s=0.5)
    x = unguided(prior, (2, 1, 16, 16), steps=50, n_samples=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 1, 16, 16)
    assert abs(x.std().item() - 0.5) < 0.05


def test_dps_inpainting_fits_the_measurement() -> None:
    prior = GaussianPrior(NoiseSchedule(cosine(1000)), s=0.5)
    op = make_operator("inpaint", size=16, mode="box", fraction=0.25)
    truth = 0.5 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    y = measure(op, truth, noise_std=0.01, generator=torch.Generator().manual_seed(6))
    kw = dict(steps=20, n_samples=3)
    seen = []
    guided = dps_reconstruct(prior, op, y, scale=100.0, generator=torch.Generator().manual_seed(0),
                             callback=lambda d: seen.append(d["x0"].shape), **kw)
    plain = dps_reconstruct(prior, op, y, scale=0.0, generator=torch.Generator().manual_seed(0), **kw)
    assert guided.shape == (3, 2, 1, 16, 16) and seen == [(3, 2, 1, 16, 16)] * 20

    def rms(x: torch.Tensor) -> torch.Tensor:  # [n, B] residual per sample and image
        return torch.stack([residual_norm(op, y, xs) for xs in x]) / op.n_measurements**0.5

    ratio = rms(guided).mean() / rms(plain).mean()
    assert ratio < 0.1, ratio  # measured 0.03 (unguided RMS 0.64 ~ sqrt(2) s, guided 0.019)
    # sample s of image b was driven by y[b]: each image's samples fit their own measurement
    swapped = torch.stack([residual_norm(op, y.flip(0), xs) for xs in guided])
    assert (swapped > 3 * rms(guided) * op.n_measurements**0.5).all()
    _, sd = mean_sd_maps(guided)
    assert (sd.flatten(1).mean(1) > 0.05).all()  # samples differ (missing pixels are free)
    again = dps_reconstruct(prior, op, y, scale=100.0, generator=torch.Generator().manual_seed(0), **kw)
    other = dps_reconstruct(prior, op, y, scale=100.0, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(guided, again) and not torch.allclose(guided, other)


def test_unguided_equals_zero_scale_and_ddim_runs() -> None:
    prior = GaussianPrior(NoiseSchedule(cosine(1000)))
    op = make_operator("blur", size=16)
    y = torch.zeros(2, 1, 16, 16)
    a = unguided(prior, (2, 1, 16, 16), steps=5, n_samples=2, generator=torch.Generator().manual_seed(3))
    b = dps_reconstruct(prior, op, y, scale=0.0, steps=5, n_samples=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = dps_reconstruct(prior, op, y, scale=5.0, steps=5, sampler="ddim", eta=0.0)
    assert c.shape == (1, 2, 1, 16, 16) and torch.isfinite(c).all()
    with pytest.raises(InverseError, match=r"y must be \[B, 1, 16, 16\]"):
        dps_reconstruct(prior, op, y[..., :8], scale=5.0, steps=5)


def test_dps_through_a_tiny_unet_and_the_acoustic_operator() -> None:
    """Integration: guidance gradients flow through a real (untrained) UNet and the nonlinear operator."""
    from medgen.config import UNetConfig
    from medgen.diffusion import Denoiser
    from medgen.nn import UNet

    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4, num_heads=2))
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # the zero-initialised output layer would hide x_t
    denoiser = Denoiser(net, NoiseSchedule(cosine(1000)), prediction="eps", clip_x0=True)
    op = make_operator("us_acoustic", size=16)
    y = measure(op, torch.zeros(2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=3, n_samples=2)
    guided = dps_reconstruct(denoiser, op, y, scale=50.0, generator=torch.Generator().manual_seed(1), **kw)
    plain = dps_reconstruct(denoiser, op, y, scale=0.0, generator=torch.Generator().manual_seed(1), **kw)
    assert guided.shape == (2, 2, 1, 16, 16) and torch.isfinite(guided).all() and guided.abs().max() <= 1
    assert (guided - plain).abs().max() > 1e-3  # the measurement changed the samples


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_effective_zeta_is_the_measured_guidance_step(sampler: str) -> None:
    """The guided sample moves by -zeta_t grad_{x_t} ||y - A(x0_hat)|| relative to the unguided one."""
    prior = GaussianPrior(NoiseSchedule(linear(1000)))
    op = make_operator("blur", size=8, sigma=1.0).double()
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps, scale, eta = 4, 3.0, 0.5
    first: dict[str, torch.Tensor] = {}
    for k in (0.0, scale):
        def grab(d: dict, k: float = k) -> None:
            if d["i"] == 0:
                first[str(k)] = d["x"].clone()
        dps_reconstruct(prior, op, y, scale=k, steps=steps, sampler=sampler, eta=eta, callback=grab,
                        generator=torch.Generator().manual_seed(1))
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    t = torch.full((2,), 999)
    loss = (y - op(prior(x_t, t).x0)).flatten(1).norm(dim=1).sum()
    (g,) = torch.autograd.grad(loss, x_t)
    zeta = effective_zeta(prior, steps, scale, sampler=sampler, eta=eta)
    torch.testing.assert_close(first[str(scale)] - first["0.0"], -zeta[0] * g[None], rtol=1e-6, atol=1e-9)
    # at eta = 1 DDIM is DDPM: the two derivations agree
    np.testing.assert_allclose(effective_zeta(prior, 10, 2.0, sampler="ddim", eta=1.0),
                               effective_zeta(prior, 10, 2.0, sampler="ddpm"), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def test_reconstruction_metrics_against_direct_computation(lung32: dict) -> None:
    truth = model_images(lung32)
    op = make_operator("us_linear", size=32)
    y = measure(op, truth, generator=torch.Generator().manual_seed(0))
    noisy = (truth + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    recon = torch.stack([noisy, truth])  # [2, B, 1, H, W]: sample 1 is the truth itself
    df = reconstruction_metrics(recon, truth, y, op, lung_mask=lung32["lung_mask"])
    assert len(df) == 8 and list(df["sample"]) == [0] * 4 + [1] * 4 and list(df["image"]) == [0, 1, 2, 3] * 2
    first, exact = df[df["sample"] == 0], df[df["sample"] == 1]
    expected = [peak_signal_noise_ratio(t[0].numpy(), r[0].numpy(), data_range=2) for t, r in zip(truth, noisy)]
    np.testing.assert_allclose(first["psnr"], expected, rtol=1e-6)
    assert np.isinf(exact["psnr"]).all() and np.allclose(exact["ssim"], 1.0)
    direct = [((y[i] - op(noisy[i:i + 1])[0]).pow(2).mean().sqrt().item()) for i in range(4)]
    np.testing.assert_allclose(first["residual"], direct, rtol=1e-5)
    # the truth's residual is the noise: RMS ~ NOISE_STD
    assert np.allclose(exact["residual"], NOISE_STD, rtol=0.15)
    # with the truth's lung mask, the truth's aeration is the phantom's label
    np.testing.assert_allclose(exact["aeration_true"], lung32["aeration"], atol=2e-3)
    assert (exact["aeration_error"] < 1e-12).all()
    assert list(exact["category_true"]) == list(lung32["aeration_category"])
    np.testing.assert_allclose(first["aeration_error"], (first["aeration_recon"] - first["aeration_true"]).abs())
    # without a mask the lung is estimated per image
    est = reconstruction_metrics(truth, truth, y, op)
    assert len(est) == 4 and np.allclose(est["aeration_true"], lung32["aeration"], atol=0.06)



def test_residual_and_aeration_metrics_score_as_reconstruction_metrics(lung32: dict) -> None:
    """The lung tables score through medgen.score with the residual / aeration-error closures: same numbers."""
    from medgen.inverse import aeration_error_metric, residual_metric
    from medgen.score import score

    truth = model_images(lung32)
    op = make_operator("us_linear", size=32)
    y = measure(op, truth, generator=torch.Generator().manual_seed(0))
    noisy = (truth + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    ref = reconstruction_metrics(noisy, truth, y, op, lung_mask=lung32["lung_mask"])
    rows = score(noisy, truth, ("psnr", "ssim", residual_metric(op, y), aeration_error_metric(lung32["lung_mask"])),
                 data_range=2.0, patient_ids=[f"p{i}" for i in range(4)])
    assert list(dict.fromkeys(rows["metric"])) == ["psnr", "ssim", "residual", "aeration_error"]
    for metric in ("psnr", "ssim", "residual", "aeration_error"):
        got = rows[rows["metric"] == metric]["value"].to_numpy()
        np.testing.assert_array_equal(got, ref[metric].to_numpy(np.float64))
    with pytest.raises(InverseError, match="whole set"):
        score(noisy, truth, (residual_metric(op, y),), batch_size=2)

def test_mean_sd_maps() -> None:
    s = torch.randn(5, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, sd = mean_sd_maps(s)
    np.testing.assert_allclose(mean.numpy(), s.numpy().mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd.numpy(), s.numpy().std(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(InverseError, match=r"\[N, B, C, H, W\]"):
        mean_sd_maps(s[0])


def test_read_measurement_checks_shape_dtype_values_and_size(tmp_path):
    from medgen.inverse import InverseError, make_operator, read_measurement

    op = make_operator("us_linear", size=32)  # output 32x16
    y = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    for shape in [(32, 16), (1, 32, 16), (1, 1, 32, 16)]:
        np.save(tmp_path / "y.npy", y.reshape(shape))
        got = read_measurement(tmp_path / "y.npy", op)
        assert got.shape == (1, 1, 32, 16) and got.dtype == torch.float32 and np.array_equal(got[0, 0].numpy(), y)
    bad = y.copy()
    bad[2, 3] = np.inf
    cases = {"square.npy": (np.zeros((32, 32)), "measurement shape (32, 32) does not match the us_linear operator's "
                                                "output 32x16"),
             "inf.npy": (bad, "inf.npy: measurement contains NaN or infinite values"),
             "text.npy": (np.array(["a"] * 512).reshape(32, 16), "need a real numeric array")}
    for name, (arr, message) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(InverseError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_measurement(tmp_path / name, op)
    (tmp_path / "y.txt").write_text("1 2 3")
    with pytest.raises(InverseError, match="y.txt: a measurement must be a .npy array of shape 32x16"):
        read_measurement(tmp_path / "y.txt", op)
    with pytest.raises(InverseError, match=r"file too large \(0.0 MB; limit 0 MB\)"):
        read_measurement(tmp_path / "inf.npy", op, max_bytes=10)
