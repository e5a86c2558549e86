"""Tests of medgen.nn.unet.UNet on tiny configs: shapes, every condition input, gradients,
validation errors, determinism, the skip-residual tuner hook and the parameter count."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from medgen.config import ConfigError, UNetConfig
from medgen.nn import Condition, UNet
from medgen.nn.unet import position_ramps

B = 2
TINY = dict(channels=(8, 16), attention_levels=(False, True), norm_groups=4, num_heads=2)
ALL_CONDS = dict(cond_image_channels=1, cond_vector_dim=3, cond_tokens_dim=5, skip_residuals=True,
                 stage_embedding_dim=4)
MODES = list(ALL_CONDS)


def spatial(dims: int) -> tuple[int, ...]:
    return (16, 16) if dims == 2 else (8, 8, 8)


def make(dims: int = 2, seed: int = 0, live: bool = True, **fields) -> UNet:
    """A tiny UNet; ``live`` replaces the zero-initialised conv_out so outputs depend on inputs."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(spatial_dims=dims, **{**TINY, **fields}))
    if live:
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


def make_cond(net: UNet, seed: int = 1, **overrides) -> Condition:
    """Random tensors for every condition the net's config enables."""
    cfg, s = net.config, spatial(net.config.spatial_dims)
    g = torch.Generator().manual_seed(seed)
    cond = Condition(
        image=torch.randn(B, cfg.cond_image_channels, *s, generator=g) if cfg.cond_image_channels else None,
        vector=torch.randn(B, cfg.cond_vector_dim, generator=g) if cfg.cond_vector_dim else None,
        tokens=torch.randn(B, 3, cfg.cond_tokens_dim, generator=g) if cfg.cond_tokens_dim else None,
        skip_residuals=[torch.randn(B, *sh, generator=g) for sh in net.skip_shapes(s)] if cfg.skip_residuals else None,
        stage=torch.randn(B, cfg.stage_embedding_dim, generator=g) if cfg.stage_embedding_dim else None,
    )
    return dataclasses.replace(cond, **overrides)


def inputs(dims: int, in_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, in_channels, *spatial(dims), generator=g), torch.tensor([3, 90])


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("dims", [2, 3])
def test_plain_output_shape_and_zero_init(dims):
    net = make(dims, live=False, in_channels=2, out_channels=3)
    x, t = inputs(dims, 2)
    y = net(x, t)
    assert y.shape == (B, 3, *spatial(dims))
    assert torch.count_nonzero(y) == 0  # zero-initialised conv_out: the untrained net predicts 0


@pytest.mark.parametrize("mode", MODES)
def test_each_condition_alone_changes_output(mode):
    net = make(2, **{mode: ALL_CONDS[mode]})
    x, t = inputs(2)
    y1 = net(x, t, make_cond(net, seed=1))
    y2 = net(x, t, make_cond(net, seed=5))
    assert y1.shape == (B, 1, 16, 16)
    assert torch.isfinite(y1).all()
    assert (y1 - y2).abs().max() > 1e-4, f"cond.{mode} has no effect on the output"


@pytest.mark.parametrize("dims", [2, 3])
def test_all_conditions_together(dims):
    net = make(dims, **ALL_CONDS)
    x, t = inputs(dims)
    y = net(x, t, make_cond(net))
    assert y.shape == (B, 1, *spatial(dims))
    assert torch.isfinite(y).all()


def test_t_long_float_and_scalar_agree():
    net = make(2)
    x, _ = inputs(2)
    y_long = net(x, torch.tensor([7, 7]))
    torch.testing.assert_close(net(x, torch.tensor([7.0, 7.0])), y_long)
    torch.testing.assert_close(net(x, torch.tensor(7)), y_long)
    assert (net(x, torch.tensor([8, 8])) - y_long).abs().max() > 1e-6


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_reaches_every_parameter(dims):
    net = make(dims, dropout=0.1, **ALL_CONDS)  # live conv_out: gradients pass through it
    x, t = inputs(dims)
    net(x, t, make_cond(net)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"no gradient reaches {dead}"


def test_zero_init_first_backward_only_reaches_conv_out():
    net = make(2, live=False)
    x, t = inputs(2)
    net(x, t).sub(1.0).square().mean().backward()
    assert net.conv_out.weight.grad.abs().max() > 0
    assert net.conv_in.weight.grad.abs().max() == 0


def test_gradient_reaches_condition_tensors():
    net = make(2, **ALL_CONDS)
    x, t = inputs(2)
    cond = make_cond(net)
    leaves = [cond.image, cond.vector, cond.tokens, cond.stage, *cond.skip_residuals]
    for leaf in leaves:
        leaf.requires_grad_(True)
    net(x, t, cond).sum().backward()
    assert all(leaf.grad is not None and leaf.grad.abs().max() > 0 for leaf in leaves)


# ------------------------------------------------------------------------------ skip residuals
@pytest.mark.parametrize("dims", [2, 3])
def test_skip_callable_receives_encoder_features_of_reported_shapes(dims):
    net = make(dims, skip_residuals=True, layers_per_block=2)
    x, t = inputs(dims)
    seen: list[list[tuple[int, ...]]] = []

    def tuner(skips):
        seen.append([tuple(s.shape) for s in skips])
        return [torch.zeros_like(s) for s in skips]

    net(x, t, Condition(skip_residuals=tuner))
    expected = [(B, *sh) for sh in net.skip_shapes(spatial(dims))]
    assert seen == [expected]
    # conv_in + 2 blocks per level x 2 levels + 1 downsample
    assert len(expected) == 1 + 2 * 2 + 1


def test_skip_residuals_list_equals_callable_and_is_additive():
    net = make(2, skip_residuals=True)
    x, t = inputs(2)
    res = make_cond(net).skip_residuals
    y_list = net(x, t, Condition(skip_residuals=res))
    y_call = net(x, t, Condition(skip_residuals=lambda skips: res))
    torch.testing.assert_close(y_list, y_call)
    # a tuner that returns -f_i removes every skip feature: the decoder sees zeros
    y_neg = net(x, t, Condition(skip_residuals=lambda skips: [-s for s in skips]))
    y_zero = net(x, t, Condition(skip_residuals=lambda skips: [torch.zeros_like(s) for s in skips]))
    assert (y_neg - y_zero).abs().max() > 1e-4


def test_skip_callable_gives_tuner_gradient_through_features():
    """A tuner T(f_i) = W f_i (Eq. 7 style) trains while the backbone is frozen."""
    net = make(2, skip_residuals=True).requires_grad_(False)
    shapes = net.skip_shapes((16, 16))
    tuner = torch.nn.ModuleList(torch.nn.Conv2d(c, c, 1) for c, *_ in shapes)
    x, t = inputs(2)
    cond = Condition(skip_residuals=lambda skips: [m(f) for m, f in zip(tuner, skips)])
    net(x, t, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in tuner.parameters())
    assert all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------------------ stage embeddings
def test_stage_pair_feeds_down_and_up_paths_separately():
    net = make(2, stage_embedding_dim=4)
    x, t = inputs(2)
    s, other = torch.randn(B, 4), torch.randn(B, 4)
    torch.testing.assert_close(net(x, t, Condition(stage=(s, s))), net(x, t, Condition(stage=s)))
    y = net(x, t, Condition(stage=(s, s)))
    assert (net(x, t, Condition(stage=(other, s))) - y).abs().max() > 1e-5  # down path uses it
    assert (net(x, t, Condition(stage=(s, other))) - y).abs().max() > 1e-5  # up path uses it


def test_stage_projections_are_separate_per_level():
    net = make(2, stage_embedding_dim=4)
    n = len(TINY["channels"])
    assert net.stage_down.proj.out_features == n * net.emb_dim
    assert net.stage_up.proj.out_features == n * net.emb_dim
    per_stage = net.stage_down(torch.randn(B, 4))
    assert per_stage.shape == (B, n, net.emb_dim)
    assert (per_stage[:, 0] - per_stage[:, 1]).abs().max() > 0


# ------------------------------------------------------------------------------ determinism / size
def test_deterministic_with_fixed_seed():
    a, b = make(2, seed=3, **ALL_CONDS), make(2, seed=3, **ALL_CONDS)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x, t = inputs(2)
    cond = make_cond(a)
    assert torch.equal(a(x, t, cond), b(x, t, cond))
    assert torch.equal(a(x, t, cond), a(x, t, cond))
    c = make(2, seed=4, **ALL_CONDS)
    assert not torch.equal(c.conv_in.weight, a.conv_in.weight)


def test_parameter_count_matches_diffusers_unet2dmodel():
    from diffusers import UNet2DModel

    ref = UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    )
    ours = UNet(UNetConfig(channels=(32, 64, 128), attention_levels=(False, False, True)))
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    assert 2.4e6 < n_ref < 3.0e6  # TOOLCHAIN.md: ~2.7 M
    assert 0.8 < n_ours / n_ref < 1.25, (n_ours, n_ref)


def test_skip_shapes_values():
    net = make(2, live=False)
    assert net.skip_shapes((16, 16)) == [(8, 16, 16), (8, 16, 16), (8, 8, 8), (16, 8, 8)]
    net3 = make(3, live=False, channels=(8, 16, 32), attention_levels=(False, False, False))
    assert net3.skip_shapes((8, 8, 8))[-1] == (32, 2, 2, 2)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(spatial_dims=1), r"UNetConfig\.spatial_dims=1 must be 2 or 3"),
        (dict(attention_levels=(False,)), r"len\(UNetConfig\.attention_levels\)=1 != len\(UNetConfig\.channels\)=2"),
        (dict(norm_groups=3), r"UNetConfig\.norm_groups=3 does not divide .*UNetConfig\.channels=\(8, 16\)"),
        (dict(num_heads=3), r"UNetConfig\.num_heads=3 does not divide UNetConfig\.channels"),
        (dict(attention_levels=(False, False), cond_tokens_dim=8),
         r"UNetConfig\.cond_tokens_dim=8 .*UNetConfig\.attention_levels=\(False, False\) has no attention level"),
        (dict(channels=()), r"UNetConfig\.channels=\(\) must be"),
        (dict(dropout=1.0), r"UNetConfig\.dropout=1\.0"),
        (dict(cond_vector_dim=-1), r"UNetConfig\.cond_vector_dim=-1 must be >= 0"),
        (dict(skip_mode="sum"), r"UNetConfig\.skip_mode='sum' must be one of concat, add"),
    ],
)
def test_config_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        UNet(UNetConfig(**{**TINY, **fields}))


@pytest.mark.parametrize("mode, arg", [("cond_image_channels", "image"), ("cond_vector_dim", "vector"),
                                       ("cond_tokens_dim", "tokens"), ("skip_residuals", "skip_residuals"),
                                       ("stage_embedding_dim", "stage")])
def test_condition_given_but_not_configured_and_missing(mode, arg):
    full = make(2, **ALL_CONDS)
    given = getattr(make_cond(full), arg)
    x, t = inputs(2)
    plain = make(2)
    with pytest.raises(ValueError, match=rf"cond\.{arg} was given but UNetConfig\.{mode}=(0|False)"):
        plain(x, t, Condition(**{arg: given}))
    one = make(2, **{mode: ALL_CONDS[mode]})
    with pytest.raises(ValueError, match=rf"UNetConfig\.{mode}={ALL_CONDS[mode]} requires cond\.{arg}"):
        one(x, t, None)


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(image=torch.randn(B, 2, 16, 16)), r"cond\.image has shape \(2, 2, 16, 16\).*UNetConfig\.cond_image_channels=1"),
        (dict(image=torch.randn(B, 1, 8, 8)), r"cond\.image has shape \(2, 1, 8, 8\), expected \[2, 1, 16, 16\]"),
        (dict(vector=torch.randn(B, 4)), r"cond\.vector has shape \(2, 4\).*UNetConfig\.cond_vector_dim=3"),
        (dict(vector=torch.randn(B + 1, 3)), r"cond\.vector has shape \(3, 3\), expected \[2, 3\]"),
        (dict(tokens=torch.randn(B, 3, 6)), r"cond\.tokens has shape \(2, 3, 6\).*UNetConfig\.cond_tokens_dim=5"),
        (dict(tokens=torch.randn(B, 5)), r"cond\.tokens has shape \(2, 5\)"),
        (dict(stage=torch.randn(B, 2)), r"cond\.stage has shape \(2, 2\).*UNetConfig\.stage_embedding_dim=4"),
        (dict(stage=(torch.randn(B, 4),) * 3), r"cond\.stage is a sequence of 3 tensors"),
        (dict(stage=[torch.randn(B, 4)]), r"cond\.stage is a sequence of 1 tensors"),
        (dict(stage=(torch.randn(B, 4), torch.randn(B, 3))), r"cond\.stage has shape \(2, 3\)"),
        (dict(skip_residuals=[torch.zeros(B, 8, 16, 16)]), r"cond\.skip_residuals has 1 tensors but the UNet has 4 skip"),
        (dict(skip_residuals=[torch.zeros(B, 8, 16, 16)] * 4),
         r"cond\.skip_residuals\[2\] has shape \(2, 8, 16, 16\) but skip 2 has shape \(2, 8, 8, 8\)"),
        (dict(skip_residuals=lambda skips: [torch.zeros(1, *s.shape[1:]) for s in skips]),
         r"cond\.skip_residuals\[0\] has shape \(1, 8, 16, 16\)"),
    ],
)
def test_condition_shape_errors(override, match):
    net = make(2, **ALL_CONDS)
    x, t = inputs(2)
    with pytest.raises(ValueError, match=match):
        net(x, t, make_cond(net, **override))


def test_input_errors():
    net = make(2)
    x, t = inputs(2)
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 8, 8, 8\) but UNetConfig\.spatial_dims=2"):
        net(torch.randn(B, 1, 8, 8, 8), t)
    with pytest.raises(ValueError, match=r"x has 3 channels but UNetConfig\.in_channels=1"):
        net(torch.randn(B, 3, 16, 16), t)
    with pytest.raises(ValueError, match=r"x spatial size \(15, 16\) is not divisible by 2\*\*\(len\(UNetConfig\.channels\)-1\)=2"):
        net(torch.randn(B, 1, 15, 16), t)
    with pytest.raises(ValueError, match=r"t has shape \(3,\) but x has batch size 2"):
        net(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"spatial_shape \(16,\) has 1 spatial dims but UNetConfig\.spatial_dims=2"):
        net.skip_shapes((16,))


# ------------------------------------------------------------------------------ 3D-paper options
@pytest.mark.parametrize("dims", [2, 3])
def test_additive_skips_shape_gradients_and_fewer_parameters(dims):
    add = make(dims, skip_mode="add", attention_levels=(False, False), cond_image_channels=1)
    cat = make(dims, skip_mode="concat", attention_levels=(False, False), cond_image_channels=1)
    x, t = inputs(dims)
    y = add(x, t, make_cond(add))
    assert y.shape == (B, 1, *spatial(dims))
    y.square().mean().backward()
    dead = [n for n, p in add.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"no gradient reaches {dead}"
    assert sum(p.numel() for p in add.parameters()) < sum(p.numel() for p in cat.parameters())


def test_additive_skip_is_a_sum_into_the_block():
    """With skip_mode='add' the first decoder block sees h + proj(skip): zero the projection and the
    skip feature no longer matters; concat would still see it."""
    net = make(2, skip_mode="add", attention_levels=(False, False))
    x, t = inputs(2)
    seen = []
    hook = net.up[0].blocks[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    net(x, t)
    hook.remove()
    assert seen == [net.config.channels[-1]]  # no concatenated channels


def test_position_ramps_values_and_input_channels():
    x = torch.zeros(2, 1, 3, 5)
    r = position_ramps(x)
    assert r.shape == (2, 2, 3, 5)
    assert torch.allclose(r[0, 0, :, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(r[1, 1, 2], torch.linspace(0, 1, 5))
    assert torch.equal(position_ramps(torch.zeros(1, 1, 1, 4))[0, 0], torch.zeros(1, 4))
    net = make(3, position_ramps=True, attention_levels=(False, False), cond_image_channels=1)
    assert net.conv_in.in_channels == 1 + 1 + 3
    x3, t = inputs(3)
    assert net(x3, t, make_cond(net)).shape == (B, 1, *spatial(3))


def test_position_ramps_make_the_net_position_aware():
    """A constant input gives a spatially constant output deep inside a net without ramps (away from
    the zero padding), but not with ramps."""
    x, t = torch.ones(1, 1, 64, 64), torch.tensor([5])
    plain = make(2, attention_levels=(False, False))(x, t)[0, 0, 30:34, 30:34]
    ramps = make(2, attention_levels=(False, False), position_ramps=True)(x, t)[0, 0, 30:34, 30:34]
    assert (plain - plain.mean()).abs().max() < 1e-5 * (1 + plain.abs().max())
    assert (ramps - ramps.mean()).abs().max() > 1e-4


@pytest.mark.parametrize("mode, expected", [("auto", 0), ("on", 1), ("off", 0)])
def test_mid_attention_option(mode: str, expected: int) -> None:
    # improved-diffusion with attention_resolutions=1 at 256 px has attention only in the middle block
    cfg = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_heads=2, norm_groups=4,
                     mid_attention=mode)
    net = UNet(cfg)
    assert len(net.mid.attns) == expected
    assert all(len(level.attns) == 0 for level in [*net.down, *net.up])
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([1, 5]))
    assert out.shape == (2, 1, 8, 8)


def test_mid_attention_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="mid_attention='always'"):
        UNet(UNetConfig(channels=(8,), attention_levels=(False,), norm_groups=4, mid_attention="always"))
    with pytest.raises(ConfigError, match="mid_attention='on'"):
        UNet(UNetConfig(channels=(6,), attention_levels=(False,), norm_groups=3, num_heads=4, mid_attention="on"))


# ------------------------------------------------------------------------------ features, no time embedding, H != W
@pytest.mark.parametrize("dims, shape", [(2, (16, 16)), (2, (16, 8)), (3, (8, 8, 8))])
def test_return_features_shapes_and_same_output(dims, shape):
    net = make(dims, layers_per_block=2, skip_residuals=True)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(B, 1, *shape, generator=g), torch.tensor([3, 90])
    res = [torch.randn(B, *sh, generator=g) for sh in net.skip_shapes(shape)]
    out, feats = net(x, t, Condition(skip_residuals=res), return_features=True)
    assert torch.equal(out, net(x, t, Condition(skip_residuals=res)))
    expected = net.feature_shapes(shape)
    assert expected["encoder"] == net.skip_shapes(shape)
    assert len(expected["decoder"]) == len(expected["encoder"])
    for key in ("encoder", "decoder"):
        assert [tuple(f.shape) for f in feats[key]] == [(B, *s) for s in expected[key]]
    # encoder features are the skips before the residuals are added (what a tuner callable receives)
    seen = []
    net(x, t, Condition(skip_residuals=lambda skips: seen.extend(skips) or res))
    assert all(torch.equal(a, b) for a, b in zip(seen, feats["encoder"]))
    # decoder feature j has the channels of the skip it consumed mirrored: the last is at full size
    assert expected["decoder"][-1] == (net.config.channels[0], *shape)


def test_feature_extractor_without_time_embedding_feeds_a_tuner():
    """A segmentation UNet (no time embedding, t=None) whose encoder features drive another UNet's
    skip residuals through a 1x1 tuner; the gradient reaches the tuner only (both nets frozen)."""
    extractor = make(2, time_embedding=False, out_channels=3).requires_grad_(False)
    assert extractor.time_embed is None and extractor.emb_dim == 0
    assert not any("emb" in name for name, _ in extractor.named_parameters())
    denoiser = make(2, skip_residuals=True).requires_grad_(False)
    x, t = inputs(2)
    logits, feats = extractor(x, None, return_features=True)
    assert logits.shape == (B, 3, 16, 16)
    tuner = torch.nn.ModuleList(torch.nn.Conv2d(c, c, 1) for c, *_ in extractor.skip_shapes((16, 16)))
    cond = Condition(skip_residuals=lambda skips: [m(f) for m, f in zip(tuner, feats["encoder"])])
    denoiser(x, t, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in tuner.parameters())
    with pytest.raises(ValueError, match="time_embedding=False"):
        extractor(x, t)
    with pytest.raises(ValueError, match="time_embedding=True requires t"):
        denoiser(x, None, make_cond(denoiser))


def test_no_time_embedding_with_vector_and_stage_conditions():
    net = make(2, time_embedding=False, cond_vector_dim=3, stage_embedding_dim=4)
    assert net.time_embed is None and net.emb_dim == 4 * TINY["channels"][0]
    x, _ = inputs(2)
    y1, y2 = net(x, cond=make_cond(net, seed=1)), net(x, cond=make_cond(net, seed=5))
    assert y1.shape == (B, 1, 16, 16) and (y1 - y2).abs().max() > 1e-4


def test_non_square_input_with_position_ramps():
    net = make(2, position_ramps=True, cond_image_channels=1)
    g = torch.Generator().manual_seed(0)
    x, img = torch.randn(B, 1, 32, 16, generator=g), torch.randn(B, 1, 32, 16, generator=g)
    assert net(x, torch.tensor([1, 2]), Condition(image=img)).shape == (B, 1, 32, 16)
    assert net.skip_shapes((32, 16))[-1] == (16, 16, 8)
    with pytest.raises(ValueError, match=r"\(32, 15\) is not divisible"):
        net(torch.randn(B, 1, 32, 15), torch.tensor([1, 2]), Condition(image=torch.randn(B, 1, 32, 15)))
