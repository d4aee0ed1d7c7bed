"""PhaseCode: spec §11 T1 vectors, the exact convention's properties, validation."""

import dataclasses
import math

import pytest
import torch

from lava_spikedattn.coding import PhaseCode

T1_VALUES = [1.0, 0.95, 0.8696, 0.8, 0.5, 0.3, 0.1, 0.05, 0.01, 0.003, 0.002, 0, -0.3, -0.7]
# Tolerance 1e-6: the spec prints its vectors with 6 decimals.
SPEC_TOL = 1e-6


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_t1_official_swin_levels():
    code = PhaseCode(1.15, 40, "official")
    assert code.fire_step(t(T1_VALUES), 1.0).tolist() == [0, 0, 0, 1, 4, 8, 15, 20, 32, -1, -1, -1, 8, 2]
    expected = [0.869565, 0.869565, 0.869565, 0.756144, 0.497177, 0.284262, 0.106865, 0.053131,
                0.009931, 0, 0, 0, -0.284262, -0.657516]
    torch.testing.assert_close(code.quantize(t(T1_VALUES), 1.0), t(expected), atol=SPEC_TOL, rtol=0)


def test_t1_exact_equals_release_bert_levels():
    code = PhaseCode(1.15, 40, "exact")
    assert code.fire_step(t(T1_VALUES), 1.0).tolist() == [0, 0, 1, 2, 5, 9, 16, 21, 33, -1, -1, -1, 9, 3]
    expected = [1, 1, 0.869565, 0.756144, 0.497177, 0.284262, 0.106865, 0.053131, 0.009931, 0, 0, 0,
                -0.284262, -0.657516]
    torch.testing.assert_close(code.quantize(t(T1_VALUES), 1.0), t(expected), atol=SPEC_TOL, rtol=0)


def test_t1_bert_b14_t16():
    code = PhaseCode(1.4, 16, "exact")
    got = code.quantize(t([1, 0.9, 0.5, 0.2, 0.05, 0.01, 0.004, -0.6]), 1.0)
    expected = [1, 1, 0.510204, 0.185934, 0.048400, 0.008999, 0, -0.510204]
    torch.testing.assert_close(got, t(expected), atol=SPEC_TOL, rtol=0)


def test_constants_of_spec_section0():
    code = PhaseCode(1.15, 40, "official")
    assert code.geometric_sum == pytest.approx(7.638045, abs=1e-6)
    assert code.bias_divisor == pytest.approx(6.638045, abs=1e-6)
    assert code.woss_slope == pytest.approx(32.554, abs=1e-3)
    assert code.woss_ramp_start * code.woss_slope == pytest.approx(16.277, abs=1e-3)
    assert PhaseCode(1.15, 40).bias_divisor == pytest.approx(code.geometric_sum)
    assert PhaseCode(1.15, 40).bias_gain == pytest.approx(1.0)
    assert code.bias_gain == pytest.approx(7.638045 / (6.638045 * 1.15), abs=1e-6)


@pytest.mark.parametrize("base,steps", [(1.15, 40), (1.4, 16), (1.05, 8), (2.0, 5)])
@pytest.mark.parametrize("convention", ["exact", "official"])
def test_levels_and_bounds(base, steps, convention):
    code = PhaseCode(base, steps, convention)
    offset = 1 if convention == "official" else 0
    torch.testing.assert_close(code.levels, base ** -(torch.arange(steps, dtype=torch.float64) + offset))
    assert code.max_level == pytest.approx(base**-offset)
    assert code.min_level == pytest.approx(base ** -(steps - 1 + offset))
    assert code.relative_error_bound == pytest.approx((base - 1) / (base + 1))


@pytest.mark.parametrize("base,steps", [(1.15, 40), (1.4, 16), (1.1, 56), (1.25, 16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_relative_error_within_bound_in_range(base, steps, seed):
    code = PhaseCode(base, steps, "exact")
    scale = 3.0
    low = code.fire_thresholds[-1].item() * scale
    g = torch.Generator().manual_seed(seed)
    # Log-uniform magnitudes between the lowest threshold and the top level (= scale), both signs.
    mag = torch.exp(torch.empty(20000, dtype=torch.float64).uniform_(math.log(low), math.log(scale), generator=g))
    x = mag * torch.where(torch.rand(20000, generator=g) < 0.5, -1.0, 1.0).double()
    q = code.quantize(x, scale)
    assert code.quantize(torch.tensor([scale], dtype=torch.float64), scale).item() == pytest.approx(scale)
    rel = ((q - x).abs() / x.abs()).max().item()
    assert rel <= code.relative_error_bound + 1e-12
    assert rel > 0.9 * code.relative_error_bound  # the bound is tight, not vacuous
    assert not bool(code.saturated(x, scale).any())


def test_quantize_is_decode_of_fire_step_and_broadcasts_scale():
    code = PhaseCode(1.2, 12)
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    per_channel = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    k = code.fire_step(x, per_channel)
    torch.testing.assert_close(code.decode(k, torch.sign(x), per_channel), code.quantize(x, per_channel))
    torch.testing.assert_close(code.quantize(x, per_channel), code.quantize(x, per_channel.expand(4, 3, 5)))
    per_row = torch.rand(4, 3, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(code.quantize(x, per_row), code.quantize(x, per_row.expand(4, 3, 5)))


def test_unsigned_neuron_silences_negatives():
    code = PhaseCode(1.15, 40)
    x = t([0.5, -0.5, 0.0, -2.0])
    assert code.fire_step(x, 1.0, signed=False).tolist()[1:] == [-1, -1, -1]
    assert code.quantize(x, 1.0, signed=False)[1:].abs().sum() == 0


def test_saturation_is_counted():
    code = PhaseCode(1.15, 40, "official")
    x = t([1.0, 0.9, 0.86, -0.95, 0.1])
    assert code.saturated(x, 1.0).tolist() == [True, True, False, True, False]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(base=1.0, timesteps=4), "base"),
        (dict(base=2.5, timesteps=4), "base"),
        (dict(base=float("nan"), timesteps=4), "base"),
        (dict(base="1.2", timesteps=4), "base"),
        (dict(base=True, timesteps=4), "base"),
        (dict(base=1.2, timesteps=0), "timesteps"),
        (dict(base=1.2, timesteps=2.5), "timesteps"),
        (dict(base=1.2, timesteps=True), "timesteps"),
        (dict(base=1.2, timesteps=4, convention="corrected"), "convention"),
    ],
)
def test_validation_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhaseCode(**kwargs)


def test_code_is_frozen():
    code = PhaseCode(2, 4)
    assert isinstance(code.base, float) and code.base == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.base = 1.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_is_an_error(bad):
    with pytest.raises(ValueError, match="NaN/inf"):
        PhaseCode(1.2, 8).quantize(t([0.1, bad]), 1.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_bad_scale_is_an_error(scale):
    with pytest.raises(ValueError, match="scale"):
        PhaseCode(1.2, 8).fire_step(t([0.1, 0.2]), scale)


def test_mismatched_scale_shape_is_an_error():
    with pytest.raises(ValueError, match=r"does not broadcast"):
        PhaseCode(1.2, 8).quantize(torch.ones(4, 3), torch.ones(4))


def test_decode_rejects_out_of_range_steps():
    with pytest.raises(ValueError, match="fire steps"):
        PhaseCode(1.2, 8).decode(torch.tensor([8]), 1.0, 1.0)
