"""KLAutoencoder (MONAI AutoencoderKL + the latent scale it owns): shapes 2D / 3D, the scale, the KL term."""
import dataclasses

import pytest
import torch

from medgen.config import UNetConfig
from medgen.nn.autoencoder import KLAutoencoder, LatentScaleError, downsampling_factor, kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4)


def _ae(model=MODEL, latent=2, seed=0):
    torch.manual_seed(seed)
    return KLAutoencoder(model, latent).eval()


@pytest.mark.parametrize("dims, spatial", [(2, (16, 12)), (3, (8, 16, 12))])
def test_encode_decode_round_trip_shapes(dims, spatial):
    model = dataclasses.replace(MODEL, spatial_dims=dims, channels=(8, 16, 16), attention_levels=(False, False, True))
    ae = _ae(model, latent=3)
    assert ae.factor == downsampling_factor(model) == 4
    x = torch.rand(2, 1, *spatial) * 2 - 1
    ae.estimate_scale([x])
    z = ae.encode(x)
    assert z.shape == ae.latent_shape(x.shape) == (2, 3, *(s // 4 for s in spatial))
    assert ae.decode(z).shape == x.shape
    x_hat, mu, sigma = ae.reconstruct(x)
    assert x_hat.shape == x.shape and mu.shape == sigma.shape == z.shape and bool((sigma > 0).all())
    # decode(encode(x)) is the posterior-mean reconstruction: the scale cancels
    torch.testing.assert_close(ae.decode(z), x_hat, rtol=1e-4, atol=1e-5)


def test_scale_is_one_over_the_latent_std_of_the_batches_used():
    ae = _ae()
    batches = [torch.rand(4, 1, 16, 16) * 2 - 1 for _ in range(3)]
    scale = ae.estimate_scale(batches)
    assert scale == pytest.approx(float(ae.scale)) and scale > 0
    z = torch.cat([ae.encode(x) for x in batches])  # the scaled latents of those batches: unit variance
    assert float(z.detach().double().var()) == pytest.approx(1.0, rel=1e-4)
    # the scale is a buffer: in the state dict, and back after a reload
    state = ae.state_dict()
    assert "scale" in state
    fresh = _ae(seed=1)
    assert float(fresh.scale) == 0.0
    fresh.load_state_dict(state)
    assert float(fresh.scale) == pytest.approx(scale)


def test_scaled_encode_before_the_scale_is_estimated_is_one_line_error():
    ae = _ae()
    x = torch.zeros(1, 1, 16, 16)
    ae.reconstruct(x)  # the training pass needs no scale
    for call in (lambda: ae.encode(x), lambda: ae.decode(torch.zeros(1, 2, 8, 8))):
        with pytest.raises(LatentScaleError, match="not estimated") as err:
            call()
        assert "\n" not in str(err.value)


def test_bad_shapes_and_configs_are_one_line_errors():
    ae = _ae()
    with pytest.raises(ValueError, match="multiple of the downsampling factor 2"):
        ae.posterior(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ValueError, match=r"\[B, 1, \*S\]"):
        ae.posterior(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="norm_groups"):
        KLAutoencoder(dataclasses.replace(MODEL, norm_groups=3), 2)
    with pytest.raises(ValueError, match="latent_channels"):
        KLAutoencoder(MODEL, 0)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    mu, sigma = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert float(kl_divergence(mu, sigma)) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_divergence(mu + 1, sigma)) == pytest.approx(0.5)  # 0.5 * mu^2 per element
    assert float(kl_divergence(mu, sigma * 2)) > 0


def test_sampled_reconstruction_uses_the_generator():
    ae = _ae()
    x = torch.rand(2, 1, 16, 16)
    a = ae.reconstruct(x, sample=True, generator=torch.Generator().manual_seed(3))[0]
    b = ae.reconstruct(x, sample=True, generator=torch.Generator().manual_seed(3))[0]
    c = ae.reconstruct(x, sample=True, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
