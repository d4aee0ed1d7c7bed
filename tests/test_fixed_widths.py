"""The widths ``FixedFormat`` assigns to accumulators and products, checked by the ``fixed_pt`` models.

A TokenLinear whose synaptic sum Σ m·p leaves a narrow accumulator saturates it (never wraps) and
counts each value that did not fit; the expected currents and counts are recomputed here in
numpy, independently of ``procs.dynamics_fixed``. The shipped Swin at the default widths clips
nothing (its whole test split: ``benchmarks/bench_fixed_widths.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import grey_task

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.data import fit_images, load_fashion_mnist
from lava_spikedattn.fixed_point import FixedFormat, quantize_weights
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.reference.fixed_network import simulate_fixed_graph
from lava_spikedattn.runtime import run_processes
from lava_spikedattn.wiring import probe

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "swin_fashion_mnist"
NARROW = FixedFormat(accumulator_bits=24, product_bits=40)  # the accumulator as wide as the state
STEPS, TOKENS, FAN_IN, OUT = 4, 3, 16, 5


def test_an_accumulator_overflow_is_saturated_and_counted_in_lava():
    """Payloads near 2^15 × mantissas near 127 × fan-in 16 need 27 bits: the 24-bit accumulator
    saturates at ±2^23 and counts every overflowing sum; a wrapping adder would flip signs."""
    rng = np.random.default_rng(0)
    payload = rng.integers(2**14, 2**15, size=(STEPS, TOKENS, FAN_IN)) * rng.choice([-1, 1], size=(STEPS, TOKENS,
                                                                                                   FAN_IN))
    payload[1] = 0  # a quiet step
    weight = rng.normal(size=(OUT, FAN_IN))
    weight[0] = np.abs(weight[0])  # row 0 sums |payload|-sized values of one sign per token: overflows
    current_exp, payload_exp = 2, 0
    linear = TokenLinear(shape_in=(TOKENS, FAN_IN), weight=weight, payload_exp=payload_exp, current_exp=current_exp,
                         fixed_format=NARROW)
    source = SpikeSource(data=np.abs(payload).astype(float) * np.sign(payload))
    source.s_out.connect(linear.s_in)
    records = run_processes({"a": probe(linear.a_out, STEPS)}, STEPS, select_tag="fixed_pt", timeout=120)

    mantissa, weight_exp = quantize_weights(weight, NARROW.weight_bits)
    exact = payload @ mantissa.T  # int64, exact
    limit = 2 ** (NARROW.accumulator_bits - 1)
    held = np.clip(exact, -limit, limit - 1)
    shift = current_exp - weight_exp - payload_exp
    expected = np.clip((held + (1 << (shift - 1))) >> shift, NARROW.state_min, NARROW.state_max)
    overflows = int((held != exact).sum())
    assert overflows > 0 and (np.abs(exact) < limit).any()  # some sums overflow, others fit
    np.testing.assert_array_equal(records["a"], expected)
    assert linear.recorded_clips() == overflows + int((expected != (held + (1 << (shift - 1))) >> shift).sum())
    wrapped = (exact + limit) % (2 * limit) - limit
    assert (np.sign(wrapped[held != exact]) != np.sign(exact[held != exact])).any()


def test_narrow_accumulators_count_the_same_in_lava_and_in_process(swin_cm_narrow):
    """The tiny Swin with 24-bit accumulators: its trace products overflow; Lava (fused), the
    in-process simulation and the independent integer network (``reference.fixed_network``, whose
    oracles saturate the same widths) give the same logits; Lava and the simulation count the
    same clips per Process."""
    cm, x = swin_cm_narrow
    simulated = build_lava_network(cm, fixed_format=NARROW)
    logits = simulated.simulate(x)
    clips = simulated.stats()["clips"]
    lava = build_lava_network(cm, fixed_format=NARROW)
    np.testing.assert_array_equal(lava.run(x).numpy(), logits.numpy())
    independent, _ = simulate_fixed_graph(*simulated.build(x))
    np.testing.assert_array_equal(independent.numpy(), logits.numpy())
    assert lava.stats()["clips"] == clips
    assert any(name.endswith((".qk", ".av")) for name in clips), clips


@pytest.fixture(scope="module")
def swin_cm_narrow(lava_swin):
    return convert(lava_swin, [grey_task(32, 50)[0]], PhaseCode(1.25, 12)), grey_task(2, 100)[0].double()


def test_the_shipped_swin_fits_the_default_widths():
    """20 test images of the shipped Swin in fixed point at the default widths: no value clipped
    anywhere (state, accumulator or product)."""
    cm = ConvertedModel.load(SHIPPED)
    images, _ = load_fashion_mnist("test")
    net = build_lava_network(cm, fixed_format=FixedFormat())
    net.simulate(fit_images(images[:20], (32, 32), 1).double())
    assert net.stats()["clips"] == {}
