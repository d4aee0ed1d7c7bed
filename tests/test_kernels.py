"""The compiled kernels: the closed form's equal the torch path bit for bit (values, fire steps,
counts); the Lava models' event-driven products equal matmul and read only what spiked."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lava_spikedattn.coding import NonFiniteInputError, PhaseCode
from lava_spikedattn.layers import LayerStats
from lava_spikedattn.procs.spike_kernels import gathered_spike_matmul, matmul_spikes, spike_matmul
from lava_spikedattn.reference import closed

CODES = [PhaseCode(b, t, c) for b, t, c in itertools.product((1.15, 1.4, 2.0, 1.001), (1, 8, 40),
                                                              ("exact", "official"))]
SHAPE = (2, 3, 5, 41)  # batch, heads, rows, columns (more columns than steps)


def hard_values(code: PhaseCode, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random values over eight decades, with every threshold, its neighbours one ulp away, zeros,
    −0.0 and values above the top level planted in the first rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=dtype) * torch.logspace(-6, 2, SHAPE[-1], dtype=dtype)
    thresholds = code.fire_thresholds.to(dtype)
    steps = code.timesteps
    x[0, 0, 0, :steps] = thresholds
    x[0, 0, 1, :steps] = -thresholds
    x[0, 0, 2, :steps] = torch.nextafter(thresholds, torch.zeros_like(thresholds))
    x[0, 0, 3, :steps] = torch.nextafter(thresholds, 2 * thresholds)
    x[0, 0, 4, :4] = torch.tensor([0.0, -0.0, 1e30, -1e30], dtype=dtype)
    return x


def scales(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Every scale layout the engines use, and one that needs expanding (varies over heads only)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(shape, generator=g, dtype=dtype) + 0.1  # noqa: E731
    # scale 1 keeps the planted thresholds and their one-ulp neighbours as the ratios: at B = 2 the
    # thresholds are float32 bucket starts, and a float64 ratio one ulp below rounds up into them
    return {"unit": torch.tensor(1.0, dtype=dtype), "scalar": torch.tensor(0.7, dtype=dtype),
            "per channel": rand(SHAPE[-1]), "per row": rand(SHAPE[-2], 1), "per element": rand(*SHAPE[-2:]),
            "batch and rows": rand(*SHAPE[:-1], 1), "per head": rand(SHAPE[1], 1, 1)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("code", CODES, ids=str)
def test_kernel_quantiser_equals_the_torch_path(code, dtype):
    x = hard_values(code, dtype, seed=code.timesteps)
    for (layout, scale), signed in itertools.product(scales(dtype, seed=1).items(), (True, False)):
        decoded, counts = code.quantize_counted(x, scale, signed)
        encoding = code.encode(x, scale, signed)
        expected = LayerStats.from_fire_steps(encoding.fire_step, code.timesteps, int(encoding.saturated().sum()))
        assert torch.equal(decoded, encoding.decoded()), (layout, signed)
        assert torch.equal(decoded.signbit(), encoding.decoded().signbit()), (layout, signed)
        assert LayerStats.from_counts(counts, code.timesteps) == expected, (layout, signed)


def test_kernel_takes_non_contiguous_values():
    code = PhaseCode(1.15, 40)
    x = hard_values(code, torch.float32, seed=3).transpose(1, 2)  # (2, 5, 3, 41), not contiguous
    scale = torch.rand(41) + 0.1
    assert torch.equal(code.quantize(x, scale), code.encode(x, scale).decoded())


def test_scale_larger_than_the_values_takes_the_torch_path():
    code = PhaseCode(1.15, 8)
    x, scale = torch.randn(4), torch.rand(3, 4) + 0.1  # broadcasts to (3, 4)
    decoded, counts = code.quantize_counted(x, scale)
    assert decoded.shape == (3, 4) and counts.neurons == 12
    assert torch.equal(decoded, code.encode(x, scale).decoded())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_kernel_refuses_non_finite_values(bad):
    x = torch.randn(3, 8)
    x[1, 2] = bad
    with pytest.raises(NonFiniteInputError, match="1 NaN/inf value"):
        PhaseCode(1.15, 8).quantize_counted(x, torch.ones(8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_woss_equals_the_torch_path(monkeypatch, dtype, masked):
    code = PhaseCode(1.15, 16)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 9, generator=g, dtype=dtype) * 3
    logits[0, 0, 0] = -1.0  # a row all the same negative value: shifted by it
    key_mask = (torch.rand(3, 1, 1, 9, generator=g) > 0.3) if masked else None
    scale = torch.rand(3, 4, 9, 1, generator=g, dtype=dtype) * 4 + 1
    fast = closed.woss(logits, code, scale, key_mask=key_mask)
    monkeypatch.setattr(closed, "kernel_applies", lambda tensor: False)
    slow = closed.woss(logits, code, scale, key_mask=key_mask)
    assert torch.equal(fast.fire_step, slow.fire_step)
    assert torch.equal(fast.decoded, slow.decoded) and torch.equal(fast.spike_sum, slow.spike_sum)
    present = key_mask[0, 0, 0] if masked else torch.ones(9, dtype=torch.bool)
    assert (fast.fire_step[0, 0, 0][present] == 0).all()  # the shifted row fires at once
    assert (fast.fire_step[0, 0, 0][~present] == -1).all()


# --- event-driven synapses (the Lava models' products) ----------------------------------------------
def sparse_spikes(shape: tuple[int, ...], seed: int, integer: bool = False) -> np.ndarray:
    """One entry in ten nonzero, as a step's spikes at T = 10."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-500, 500, shape) if integer else rng.standard_normal(shape)
    return np.where(rng.random(shape) < 0.1, values, 0)


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize(("spike_shape", "weight_shape"), [
    ((7,), (7, 5)), ((2, 3, 7), (7, 5)),  # a shared weight (TokenLinear), any leading axes
    ((2, 3, 4, 7), (2, 3, 7, 5)), ((2, 3, 4, 7), (3, 7, 5)), ((1, 3, 4, 7), (2, 1, 7, 5)),  # batched, broadcast
])
def test_spike_matmul_equals_matmul(spike_shape, weight_shape, integer):
    spikes = sparse_spikes(spike_shape, seed=0, integer=integer)
    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 128, weight_shape) if integer else rng.standard_normal(weight_shape)
    expected = spikes @ weight
    got = spike_matmul(spikes, weight)
    assert got.shape == expected.shape and got.dtype == (np.int64 if integer else np.float64)
    if integer:
        assert np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    dense = rng.standard_normal(spike_shape[:-1] + weight_shape[-2:-1]) if len(spike_shape) > 1 else None
    if dense is not None and not integer:  # the right operand spiking: dense @ spikes
        right = sparse_spikes(weight_shape, seed=2)
        np.testing.assert_allclose(matmul_spikes(dense, right), dense @ right, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("integer", [False, True])
def test_gathered_spike_matmul_equals_gather_then_matmul(integer):
    """TokenLinear's input layout (window partition, patch merging) gathered inside the product;
    any index array, repeated positions included."""
    spikes = sparse_spikes((2, 6, 7), seed=6, integer=integer)
    rng = np.random.default_rng(7)
    index = rng.integers(0, spikes.size, (3, 4, 5))
    weight = rng.integers(-127, 128, (5, 9)) if integer else rng.standard_normal((5, 9))
    expected = spikes.reshape(-1)[index] @ weight
    got = gathered_spike_matmul(spikes, index, weight)
    assert got.shape == expected.shape == (3, 4, 9)
    if integer:
        assert np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_spike_matmul_takes_non_contiguous_operands():
    spikes, weight = sparse_spikes((3, 5, 8), seed=3), np.random.default_rng(4).standard_normal((3, 6, 5))
    left, right = np.swapaxes(spikes, -1, -2), np.swapaxes(weight, -1, -2)  # (3, 8, 5) @ (3, 5, 6)
    np.testing.assert_allclose(spike_matmul(left, right), left @ right, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gathered", [False, True])
def test_float32_weights_give_the_float64_products_bit_for_bit(gathered):
    """TokenLinear keeps float32 weights (a converted model stores them so): each widens exactly to
    float64 in its product, so the outputs equal those of the widened copy to the last bit, and the
    weights are not widened first (float64 spikes, float64 result)."""
    spikes = sparse_spikes((3, 4, 7), seed=8)
    weight = np.random.default_rng(9).standard_normal((7, 5)).astype(np.float32)
    index = np.random.default_rng(10).integers(0, spikes.size, (6, 7))
    product = (lambda w: gathered_spike_matmul(spikes, index, w)) if gathered else (lambda w: spike_matmul(spikes, w))
    got, widened = product(weight), product(weight.astype(np.float64))
    assert got.dtype == np.float64 and np.array_equal(got, widened)
    assert not np.array_equal(got, product(weight.astype(np.float64) * (1 + 2**-40)))  # exact: a 2^-40 change shows


def test_spike_matmul_reads_only_the_weight_rows_of_spiking_inputs():
    """Event-driven: an input that did not spike costs nothing, so its weight row is never read (a
    dense product would turn a NaN there into NaN outputs)."""
    spikes = np.zeros((4, 6))
    spikes[1, 2], spikes[3, 4] = 0.5, -2.0
    weight = np.random.default_rng(5).standard_normal((6, 3))
    weight[[0, 1, 3, 5]] = np.nan
    got = spike_matmul(spikes, weight)
    assert np.isfinite(got).all() and np.isnan(spikes @ weight).all()
    np.testing.assert_array_equal(got[1], 0.5 * weight[2])
    np.testing.assert_array_equal(got[3], -2.0 * weight[4])


def test_kernels_leave_torchs_thread_count_alone():
    """numba's OpenMP layer would set torch's thread count on a parallel launch (2 for 1 here)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        PhaseCode(1.3, 8).quantize(torch.randn(50_000), torch.tensor(2.0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
