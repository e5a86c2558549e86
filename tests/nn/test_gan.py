"""medgen.nn.gan: generator / discriminator shapes (2D, 3D, single channel), size errors,
architecture by hand-counted parameters, CUT layer indices, PatchGAN receptive field, losses."""
import copy
import math

import numpy as np
import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs
from skimage.metrics import structural_similarity
from torch import nn

from medgen.config import ConfigError, GANConfig, UNetConfig
from medgen.nn.gan import (GANShapeError, PatchDiscriminator, ResnetGenerator, SAUNetGenerator, UNetGenerator,
                           build_discriminator, build_generator, gan_loss, patch_receptive_field, ssim_loss)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: see conftest.one_thread


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---- pix2pix UNet ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 1, 32, 16), (1, 3, 16, 16)])
def test_unet_generator_2d_shapes_and_tanh_range(shape):
    g = UNetGenerator(shape[1], 2, channels=8, downs=4, dropout=0.2)
    out = g(_rand(*shape) * 5)
    assert out.shape == (shape[0], 2, *shape[2:])
    assert out.abs().max() < 1


def test_unet_generator_3d_and_single_channel():
    g = UNetGenerator(1, 1, channels=4, downs=2, dropout=0.0, spatial_dims=3)
    assert g(_rand(2, 1, 4, 8, 12)).shape == (2, 1, 4, 8, 12)
    assert isinstance(g.down[0][0], nn.Conv3d) and isinstance(g.up[0][1], nn.ConvTranspose3d)


def test_unet_generator_parameter_count_by_hand():
    # in 1, out 1, ngf 4, 2 downs: down0 Conv(1->4, k4) + down1 Conv(4->8) + up1 ConvT(8->4) +
    # up0 ConvT(Concat(4, 4) = 8 -> 1); k4 in 2D is 16 weights per channel pair, plus biases.
    expected = (1 * 4 * 16 + 4) + (4 * 8 * 16 + 8) + (8 * 4 * 16 + 4) + (8 * 1 * 16 + 1)
    assert _n_params(UNetGenerator(1, 1, channels=4, downs=2)) == expected
    # channel widths double up to 8 * ngf and stay there
    g = UNetGenerator(1, 1, channels=2, downs=6)
    assert [blk[-1].out_channels if isinstance(blk[-1], nn.Conv2d) else blk[-2].out_channels
            for blk in g.down] == [2, 4, 8, 16, 16, 16]


def test_unet_generator_norm_and_dropout_placement():
    g = UNetGenerator(1, 1, channels=4, downs=4, dropout=0.3)
    has = lambda blk, cls: any(isinstance(m, cls) for m in blk)  # noqa: E731
    assert [has(b, nn.InstanceNorm2d) for b in g.down] == [False, True, True, False]  # not outermost / bottleneck
    assert [has(b, nn.InstanceNorm2d) for b in g.up] == [False, True, True, True]
    assert [has(b, nn.Dropout) for b in g.up] == [False, True, True, True]
    assert isinstance(g.up[0][-1], nn.Tanh)
    assert not any(isinstance(m, nn.Dropout) for m in UNetGenerator(1, 1, 4, 4, dropout=0.0).modules())


def test_unet_generator_dropout_is_stochastic_in_train_and_off_in_eval():
    g = UNetGenerator(1, 1, channels=4, downs=3, dropout=0.5)
    x = _rand(1, 1, 16, 16)
    torch.manual_seed(0)
    a = g(x)
    b = g(x)
    assert not torch.equal(a, b)
    g.eval()
    assert torch.equal(g(x), g(x))


def test_unet_generator_uses_its_skip_connections():
    # a change of one input pixel changes the output near it far more than far away (skip path)
    g = UNetGenerator(1, 1, channels=4, downs=3).eval()
    x = _rand(1, 1, 32, 32)
    y = x.clone()
    y[0, 0, 4, 4] += 1.0
    diff = (g(y) - g(x)).abs()[0, 0]
    assert diff[2:7, 2:7].max() > 10 * diff[20:, 20:].max()


@pytest.mark.parametrize("shape,match", [((1, 1, 20, 16), "multiple of 8"), ((1, 2, 16, 16), "1 input channels"),
                                         ((1, 1, 8, 8, 8), r"\[B, C, H, W\]")])
def test_unet_generator_shape_errors_are_one_line(shape, match):
    g = UNetGenerator(1, 1, channels=4, downs=3)
    with pytest.raises(GANShapeError, match=match) as err:
        g(torch.zeros(shape))
    assert "\n" not in str(err.value)


# ---- ResNet generator --------------------------------------------------------------------------
def test_resnet_generator_single_channel_2d_and_3d():
    g = ResnetGenerator(1, 1, channels=4, downs=1, blocks=2)
    out = g(_rand(2, 1, 16, 16) * 4)
    assert out.shape == (2, 1, 16, 16) and out.abs().max() < 1
    g3 = ResnetGenerator(1, 2, channels=4, downs=1, blocks=1, spatial_dims=3)
    assert g3(_rand(1, 1, 8, 8, 12)).shape == (1, 2, 8, 8, 12)


def test_resnet_generator_layer_indices_match_the_papers_nce_layers():
    # one down conv, 8 residual blocks (the paper's CUT): layers 0,4,8,12,16 are the padded input,
    # the down conv, residual blocks 2 and 6 and the up conv's InstanceNorm
    g = ResnetGenerator(1, 1, channels=4, downs=1, blocks=8)
    assert len(g.layers) == 4 + 3 + 8 + 3 + 3
    names = [type(g.layers[k]).__name__ for k in (0, 4, 8, 12, 16)]
    assert names == ["ReflectionPad2d", "Conv2d", "_ResidualBlock", "_ResidualBlock", "InstanceNorm2d"]
    x = _rand(2, 1, 32, 32)
    out, feats = g.features(x, [0, 4, 8, 12, 16])
    assert [tuple(f.shape) for f in feats] == [(2, 1, 38, 38), (2, 8, 16, 16), (2, 8, 16, 16), (2, 8, 16, 16),
                                               (2, 4, 32, 32)]
    assert torch.equal(feats[0][:, :, 3:-3, 3:-3], x)  # layer 0 is the reflection-padded input
    assert torch.allclose(out, g(x))
    _, again = g.features(x, [16, 0])
    assert torch.equal(again[0], feats[4]) and torch.equal(again[1], feats[0])
    with pytest.raises(ValueError, match="layers 0..20, asked for layer 21"):
        g.features(x, [21])


def test_resnet_generator_parameter_count_by_hand():
    # ngf 2, 1 down, 1 block, in 1, out 1 (2D): conv7 1->2, conv3 s2 2->4, block 2 x conv3 4->4,
    # convT3 4->2, conv7 2->1
    expected = (49 * 1 * 2 + 2) + (9 * 2 * 4 + 4) + 2 * (9 * 4 * 4 + 4) + (9 * 4 * 2 + 2) + (49 * 2 * 1 + 1)
    assert _n_params(ResnetGenerator(1, 1, channels=2, downs=1, blocks=1)) == expected


def test_resnet_generator_size_errors():
    g = ResnetGenerator(1, 1, channels=2, downs=2, blocks=1)
    with pytest.raises(GANShapeError, match="multiple of 4"):
        g(torch.zeros(1, 1, 18, 16))


# ---- SA-UNet adapter ----------------------------------------------------------------------------
def test_sa_unet_generator_is_the_model_unet_at_t0_without_condition():
    cfg = UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_groups=4, num_heads=2,
                     cond_image_channels=1, out_channels=1)
    g = SAUNetGenerator(cfg, in_channels=2)
    assert g.net.config.in_channels == 2 and g.net.config.cond_image_channels == 0
    with torch.no_grad():
        for p in g.net.conv_out.parameters():
            p.normal_(0, 0.1)
    x = _rand(2, 2, 16, 16)
    out = g(x)
    assert out.shape == (2, 1, 16, 16)
    assert torch.equal(out, g.net(x, torch.zeros(2, dtype=torch.long)))
    assert not torch.allclose(out, g.net(x, torch.full((2,), 50)))  # t really is fixed to 0


# ---- PatchGAN ------------------------------------------------------------------------------------
def test_patch_discriminator_output_shapes_2d_3d():
    d = PatchDiscriminator(2, channels=4, layers=3)
    assert d.output_shape((256, 256)) == (30, 30)  # the 70x70 PatchGAN's 30x30 map (pix2pix paper)
    assert d(torch.zeros(2, 2, 32, 48)).shape == (2, 1, 2, 4)
    d3 = PatchDiscriminator(2, channels=4, layers=2, spatial_dims=3)
    assert d3(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 1, 2, 2, 2)
    with pytest.raises(GANShapeError, match="needs larger inputs"):
        d(torch.zeros(1, 2, 16, 16))


def test_patch_discriminator_channels_and_parameter_count():
    # ndf 2, 1 layer, input 3: conv s2 3->2, conv s1 2->4 (+IN), conv s1 4->1; k4 = 16 weights
    expected = (16 * 3 * 2 + 2) + (16 * 2 * 4 + 4) + (16 * 4 * 1 + 1)
    assert _n_params(PatchDiscriminator(3, channels=2, layers=1)) == expected


@pytest.mark.parametrize("layers", [1, 3])
def test_patch_receptive_field_measured_by_gradient(layers):
    """The input region one output logit depends on, measured with the norms removed (InstanceNorm
    mixes every position): 70x70 at 3 layers, 16x16 at 1."""
    torch.manual_seed(0)
    d = copy.deepcopy(PatchDiscriminator(1, channels=2, layers=layers)).double()
    for i, m in enumerate(d.model):
        if isinstance(m, nn.InstanceNorm2d):
            d.model[i] = nn.Identity()
    x = torch.zeros(1, 1, 128, 128, dtype=torch.float64, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    measured = (rows.max() - rows.min() + 1).item(), (cols.max() - cols.min() + 1).item()
    assert measured == (patch_receptive_field(layers),) * 2
    assert patch_receptive_field(3) == 70


# ---- factories -------------------------------------------------------------------------------------
def test_build_generator_and_discriminator_from_config():
    g = build_generator(GANConfig(generator="unet", gen_channels=4, gen_downs=3, dropout=0.2), in_channels=1,
                        out_channels=1, spatial_dims=2)
    assert isinstance(g, UNetGenerator) and g.downs == 3
    w = g.down[1][1].weight
    assert abs(w.std().item() - 0.02) < 0.005 and g.down[1][1].bias.abs().max() == 0  # pix2pix normal init
    r = build_generator(GANConfig(generator="resnet", gen_channels=4, gen_downs=1, res_blocks=3), in_channels=1,
                        out_channels=1, spatial_dims=3)
    assert isinstance(r, ResnetGenerator) and sum(isinstance(m, nn.Conv3d) for m in r.modules()) == 2 + 1 + 2 * 3
    s = build_generator(GANConfig(generator="sa_unet"), in_channels=2, out_channels=1, spatial_dims=2,
                        model=UNetConfig(channels=(8,), attention_levels=(True,), norm_groups=4, num_heads=2))
    assert isinstance(s, SAUNetGenerator) and s.net.config.out_channels == 1
    with pytest.raises(ConfigError, match="unknown gan.generator 'resnt'"):
        build_generator(GANConfig(generator="resnt"), in_channels=1, out_channels=1, spatial_dims=2)
    d = build_discriminator(GANConfig(disc_channels=4, disc_layers=2), in_channels=2, spatial_dims=2)
    assert isinstance(d, PatchDiscriminator) and d.n_layers == 2


# ---- losses -------------------------------------------------------------------------------------------
def test_gan_loss_values_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5]])
    values = [2.0, -1.0, 0.0, 0.5]
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert gan_loss(logits, True, "vanilla").item() == pytest.approx(np.mean([softplus(-v) for v in values]))
    assert gan_loss(logits, False, "vanilla").item() == pytest.approx(np.mean([softplus(v) for v in values]))
    assert gan_loss(logits, True, "lsgan").item() == pytest.approx(np.mean([(v - 1) ** 2 for v in values]))
    assert gan_loss(logits, False, "lsgan").item() == pytest.approx(np.mean([v ** 2 for v in values]))
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        gan_loss(logits, True, "wgan")


def test_ssim_loss_matches_skimage_on_shifted_images():
    a, b = _rand(2, 1, 32, 24, seed=1), _rand(2, 1, 32, 24, seed=2)
    b = 0.6 * a + 0.4 * b
    ref = np.mean([structural_similarity(a[i, 0].numpy() + 1, b[i, 0].numpy() + 1, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=2.0) for i in range(2)])
    assert ssim_loss(b, a).item() == pytest.approx(1 - ref, abs=1e-5)
    assert ssim_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_loss_weight_restricts_where_it_looks_and_has_gradients():
    target = _rand(1, 1, 32, 32, seed=3)
    pred = target.clone()
    pred[..., :8] = -pred[..., :8]  # differs only in columns 0..7
    right = torch.zeros(1, 1, 32, 32)
    right[..., 16:] = 1  # windows centred at column >= 16 reach column 11 at the least
    assert ssim_loss(pred, target).item() > 0.05
    assert ssim_loss(pred, target, right).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(pred, target, torch.ones(1, 1, 32, 32)).item() == pytest.approx(ssim_loss(pred, target).item(),
                                                                                      abs=1e-6)
    p = pred.clone().requires_grad_(True)
    ssim_loss(p, target).backward()
    assert p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all()
    with pytest.raises(GANShapeError, match="weight"):
        ssim_loss(pred, target, torch.ones(1, 32, 32))


def test_ssim_loss_small_3d_volume_shrinks_the_window():
    a = _rand(1, 1, 4, 16, 16, seed=4)
    loss = ssim_loss(0.5 * a, a)
    assert 0 < loss.item() < 1
    assert ssim_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # the mean of SSIM is invariant to a flip of every axis (the window is symmetric)
    flipped = ssim_loss(0.5 * a.flip(2, 3, 4), a.flip(2, 3, 4))
    assert flipped.item() == pytest.approx(loss.item(), abs=1e-6)


def test_ssim_loss_is_float32_under_bf16_autocast():
    a = _rand(2, 1, 32, 32, seed=5)
    b = 0.9 * a + 0.1 * _rand(2, 1, 32, 32, seed=6)
    exact = ssim_loss(b, a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ssim_loss(b.bfloat16(), a)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ssim_loss(b.bfloat16().float(), a).item(), abs=1e-6)
    assert low.item() == pytest.approx(exact.item(), abs=5e-3)


@pytest.mark.parametrize("shape", [(2, 2, 24, 20), (1, 1, 12, 16, 14)])
def test_ssim_loss_equals_monais_dense_kernel_ssim(shape):
    a, b = _rand(*shape, seed=7), _rand(*shape, seed=8)
    b = 0.5 * a + 0.5 * b
    dims = len(shape) - 2
    ref, _ = compute_ssim_and_cs(b + 1, a + 1, dims, kernel_size=[11] * dims, kernel_sigma=[1.5] * dims,
                                 data_range=2.0)
    assert ssim_loss(b, a).item() == pytest.approx(1 - ref.mean().item(), abs=1e-5)
