"""The two ultrasound forward operators of the lung phantom (medgen/data/phantoms/ultrasound.py)."""
from __future__ import annotations

import pytest
import torch

from medgen.data.phantoms.ultrasound import (HU_HIGH, HU_LOW, AcousticUltrasound, LinearUltrasound,
                                             OperatorError)


def to_model(hu: torch.Tensor) -> torch.Tensor:
    """HU -> model range with the operators' input convention, written out independently."""
    return (hu - HU_LOW) / (HU_HIGH - HU_LOW) * 2.0 - 1.0


def layered(air: float, height: int = 64, width: int = 8, pleura: float = 0.3,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """Chest wall (muscle, 50 HU) over lung of air fraction ``air`` (tissue 50 HU): model-range
    image ``[1, 1, H, W]`` and the first lung row."""
    first = int(round(pleura * height))
    hu = torch.full((1, 1, height, width), 50.0, dtype=dtype)
    hu[..., first:, :] = -1000.0 * air + (1.0 - air) * 50.0
    return to_model(hu), first


@pytest.mark.parametrize("op", [LinearUltrasound(), AcousticUltrasound(), LinearUltrasound(stride=(2, 3))])
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (32, 20)])
def test_shapes_and_output_shape(op, size):
    x = torch.rand(3, 1, *size) * 2 - 1
    y = op(x)
    expect = (-(-size[0] // op.stride[0]), -(-size[1] // op.stride[1]))  # ceil division
    assert y.shape == (3, 1, *expect) and op.output_shape(*size) == expect
    assert y.dtype == x.dtype and torch.isfinite(y).all()
    assert not list(op.parameters())


@pytest.mark.parametrize("op", [LinearUltrasound(), AcousticUltrasound()])
def test_deterministic_and_batched(op):
    x = torch.rand(4, 1, 24, 24) * 2 - 1
    y = op(x)
    assert torch.equal(y, op(x))
    singles = torch.cat([op(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(y, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride,size", [((1, 2), (16, 16)), ((2, 3), (17, 23)), ((1, 1), (20, 16))])
def test_linear_adjoint_dot_product(stride, size):
    op = LinearUltrasound(stride=stride)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *size, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, *op.output_shape(*size), generator=g, dtype=torch.float64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y, size)).sum()
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    assert op.adjoint(y, size).shape == x.shape


def test_linear_is_linear_and_attenuates_with_depth():
    op = LinearUltrasound(stride=(1, 1))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 1, 1, 20, 20, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op(2.0 * a - 3.0 * b), 2.0 * op(a) - 3.0 * op(b))
    y = op(torch.ones(1, 1, 40, 40, dtype=torch.float64))[0, 0, :, 20]  # centre column, far from edges
    assert (y[5:-5].diff() < 0).all()  # deeper rows are weaker: exp(-2 alpha z)


def test_adjoint_rejects_wrong_grid():
    op = LinearUltrasound()
    with pytest.raises(OperatorError):
        op.adjoint(torch.zeros(1, 1, 16, 8), size=(16, 20))
    with pytest.raises(OperatorError):
        op(torch.zeros(1, 16, 16))


@pytest.mark.parametrize("op", [LinearUltrasound(), AcousticUltrasound()])
def test_gradcheck_float64(op):
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_acoustic_on_lung_like_input():
    x, _ = layered(0.8, height=16, width=4, dtype=torch.float64)
    x = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert torch.autograd.gradcheck(AcousticUltrasound(), (x.requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_little_is_seen_below_an_aerated_pleura():
    op = AcousticUltrasound(reverb_orders=0)
    aerated, first = layered(0.9)
    consolidated, _ = layered(0.02)
    below = slice(first + 2, None)
    e_aer = op.echo_intensity(aerated)[..., below, :].mean()
    e_con = op.echo_intensity(consolidated)[..., below, :].mean()
    assert e_aer < 1e-3 * e_con
    # ... while the aerated pleura itself reflects far more than the consolidated one.
    pleura = slice(first - 1, first + 2)
    assert op.echo_intensity(aerated)[..., pleura, :].max() > 10 * op.echo_intensity(consolidated)[..., pleura, :].max()


def test_a_lines_repeat_an_aerated_pleura_at_twice_its_depth():
    op = AcousticUltrasound(stride=(1, 1))
    aerated, first = layered(0.9)
    consolidated, _ = layered(0.02)
    col = 4
    y_aer, y_con = op(aerated)[0, 0, :, col], op(consolidated)[0, 0, :, col]
    gap = slice(first + 3, 2 * first - 3)  # between the pleura and its first repeat
    assert y_aer[2 * first - 1:2 * first + 2].max() > 0.2 > 5 * y_aer[gap].max()
    # Airless lung: tissue echo, no repeat standing out at twice the pleural depth.
    assert y_con[2 * first - 1:2 * first + 2].max() < 1.2 * y_con[gap].mean()


def test_rib_casts_a_shadow():
    op = AcousticUltrasound(stride=(1, 1), reverb_orders=0)  # without the bone surface's own repeats
    hu = torch.full((1, 1, 64, 32), 50.0)
    hu[..., 10:16, 12:20] = 550.0  # a bony block
    intensity = op.echo_intensity(to_model(hu))[0, 0]
    assert intensity[20:, 16].mean() < 1e-3 * intensity[20:, 2].mean()


def test_measure_noise_is_seeded_by_the_generator():
    for op in (LinearUltrasound(), AcousticUltrasound()):
        x = torch.rand(2, 1, 32, 32) * 2 - 1
        a = op.measure(x, torch.Generator().manual_seed(5), 0.1)
        b = op.measure(x, torch.Generator().manual_seed(5), 0.1)
        c = op.measure(x, torch.Generator().manual_seed(6), 0.1)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert abs(float((a - op(x)).std()) - 0.1) < 0.01
        torch.testing.assert_close(op.measure(x, torch.Generator().manual_seed(5), 0.0), op(x))
