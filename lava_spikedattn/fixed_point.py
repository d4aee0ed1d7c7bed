"""Integer number formats of the Loihi 2 port: :class:`FixedFormat` and the rounding helpers.

Every power, logarithm and division of the method is evaluated here once, at build time, in
float64 and rounded; the integer ProcessModels (``procs/dynamics_fixed.py``), the integer oracle
(:mod:`lava_spikedattn.reference.fixed`), the Lava builder and the resource estimate all take
their widths and tables from :class:`FixedFormat`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from lava_spikedattn.coding import PhaseCode

__all__ = ["FixedFormat", "quantize_weights", "round_half_up", "shift_round", "unit_exponent"]


def round_half_up(x) -> np.ndarray:
    """Build-time rounding of float constants to int64: floor(x + 1/2)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def shift_round(x: np.ndarray, shift: int) -> np.ndarray:
    """Run-time ``x·2^-shift`` rounded half up (arithmetic shift); a negative shift is exact."""
    x = np.asarray(x, dtype=np.int64)
    if shift > 0:
        return (x + (1 << (shift - 1))) >> shift
    return x << (-shift) if shift < 0 else x.copy()


def unit_exponent(max_abs: float, bits: int) -> int:
    """Smallest e with round(max_abs/2^e) ≤ 2^(bits−1) − 1: the power-of-two unit of a signed
    ``bits``-wide integer that covers ``max_abs``."""
    limit = 2 ** (bits - 1) - 1
    if not max_abs > 0:
        return 0
    e = math.ceil(math.log2(max_abs / limit))
    while round_half_up(max_abs / 2.0**e) > limit:
        e += 1
    while e > -1074 and round_half_up(max_abs / 2.0 ** (e - 1)) <= limit:
        e -= 1
    return int(e)


def quantize_weights(weight, bits: int = 8) -> tuple[np.ndarray, int]:
    """(mantissa int64 in [−(2^(bits−1)−1), 2^(bits−1)−1], exponent e): weight ≈ mantissa·2^e."""
    weight = np.asarray(weight, dtype=np.float64)
    e = unit_exponent(float(np.abs(weight).max()) if weight.size else 0.0, bits)
    limit = 2 ** (bits - 1) - 1
    return np.clip(round_half_up(weight / 2.0**e), -limit, limit), e


@dataclass(frozen=True)
class FixedFormat:
    """Bit widths of the integer engine.

    Args:
        trace_bits: F, fraction bits of the trace and of the input weights (round(2^F·B^-k)).
        state_bits: width of every stored signed integer (membrane, threshold, current, payload).
        weight_bits: signed mantissa width of synaptic weights (one exponent per layer).
        payload_bits: signed width of a graded spike's payload sign·P.
        accumulator_bits: signed width of a synaptic sum before its shift to the current unit
            (a TokenLinear's Σ m·p, a TraceMatMul's three-term product): the dendritic
            accumulator of ``docs/loihi2_mapping.md`` (an assumption, not a checked chip limit).
        product_bits: signed width of one multiply before its shift (I·G, Θ·S, the product ×
            factor mantissa): a multiplier's double-width result in the neuron program (assumed).

    Every value is saturated to its width and counted where it was clipped, never wrapped: the
    state by :meth:`clip`, the accumulators and products by the ``fixed_pt`` models (their
    ``recorded_clips``), so a run with no clips used no more than these widths.
    """

    trace_bits: int = 16
    state_bits: int = 24
    weight_bits: int = 8
    payload_bits: int = 16
    accumulator_bits: int = 40
    product_bits: int = 48

    def __post_init__(self) -> None:
        for name in ("trace_bits", "state_bits", "weight_bits", "payload_bits", "accumulator_bits", "product_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 2:
                raise ValueError(f"FixedFormat: {name} must be an integer >= 2, got {value!r}")
        if self.state_bits > 32:
            raise ValueError(f"FixedFormat: state_bits must be <= 32, got {self.state_bits}")
        if self.trace_bits > self.state_bits - 2:
            raise ValueError(f"FixedFormat: trace_bits must be <= state_bits - 2 (2^F must fit), got {self.trace_bits}")
        if self.payload_bits > self.state_bits:
            raise ValueError(f"FixedFormat: payload_bits must be <= state_bits, got {self.payload_bits}")
        if not self.state_bits <= self.accumulator_bits <= self.product_bits <= 63:
            raise ValueError(f"FixedFormat: need state_bits <= accumulator_bits <= product_bits <= 63 (int64 "
                             f"arithmetic), got {self.state_bits}, {self.accumulator_bits}, {self.product_bits}")

    @property
    def state_max(self) -> int:
        return 2 ** (self.state_bits - 1) - 1

    @property
    def state_min(self) -> int:
        return -(2 ** (self.state_bits - 1))

    def clip(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x clipped to the state range, 1 where it was clipped else 0): saturate, never wrap."""
        return self.fit(x, self.state_bits)

    @staticmethod
    def fit(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(x saturated to a signed ``bits``-wide register, 1 where it did not fit else 0)."""
        x = np.asarray(x, dtype=np.int64)
        limit = 1 << (bits - 1)
        clipped = np.clip(x, -limit, limit - 1)
        return clipped, (clipped != x).astype(np.int64)

    # --- build-time tables --------------------------------------------------------------------
    def trace_table(self, code: PhaseCode) -> np.ndarray:
        """Global trace per fire step k: round(2^F·trace_start·B^-k), shape (T,)."""
        k = np.arange(code.timesteps)
        return round_half_up(2.0**self.trace_bits * code.trace_start * code.base ** -k.astype(np.float64))

    def input_weights(self, code: PhaseCode, bit_serial_input: bool = False) -> np.ndarray:
        """Input weight per input step τ, shape (T,): round(2^F·B^-τ), the neuron's local trace.

        ``bit_serial_input``: the first layer's convert neuron, which integrates the radix-2
        input code (spec §1.4): round(2^F·unit_gain·2^-(τ+1)), so V ≈ unit_gain·Σ_τ 2^-(τ+1)·I_τ,
        the value the float convert neuron decides on (its gain-2 membrane and growing threshold
        are the float form of the same decision). Steps τ > F + 1 weigh 0: input bits below
        2^-(F+1) of full scale are dropped (≤ 2^-(F+1)·max|I| LSB).
        """
        tau = np.arange(code.timesteps).astype(np.float64)
        if bit_serial_input:
            return round_half_up(2.0**self.trace_bits * code.unit_gain * 2.0 ** -(tau + 1))
        return round_half_up(2.0**self.trace_bits * code.base**-tau)

    def current_exponent(self, scale, headroom_bits: int = 2) -> int:
        """Input-current unit exponent for a neuron population of calibrated ``scale``: the top
        level (scale/Δ_I LSB) sits ``headroom_bits`` below the state limit."""
        top = float(np.max(scale))
        return int(math.ceil(math.log2(top) - (self.state_bits - 1 - headroom_bits)))

    def attention_output_exponent(self, scale, keys: int) -> int:
        """Current unit of an attention×V neuron normalised without a divider: its membrane
        holds Σ_j p_j·v_j before the normalisation, up to ``keys`` times the value (S ≤ keys),
        so log2(keys) more bits of headroom than :meth:`current_exponent`."""
        return self.current_exponent(scale, headroom_bits=2 + math.ceil(math.log2(max(int(keys), 1))))

    def payload_exponent(self, scale) -> int:
        """Payload unit exponent of a population: round(max scale/Δ_p) fits ``payload_bits``."""
        return unit_exponent(float(np.max(scale)), self.payload_bits)

    def payload(self, scale, payload_exp: int) -> np.ndarray:
        """Integer magnitude P = round(scale/2^payload_exp) of a population's graded spikes."""
        p = round_half_up(np.asarray(scale, dtype=np.float64) / 2.0**payload_exp)
        if p.min() < 1 or p.max() > 2 ** (self.payload_bits - 1) - 1:
            raise ValueError(f"payload round(scale/2^{payload_exp}) spans [{p.min()}, {p.max()}], outside "
                             f"[1, {2 ** (self.payload_bits - 1) - 1}] ({self.payload_bits}-bit payload)")
        return p

    def woss_thresholds(self, code: PhaseCode, ramp_start: float, current_exp: int) -> np.ndarray:
        """WOSS ramp Θ_k = round(ln B·(ramp_start − k)/2^current_exp), shape (T,), clipped.

        The float neuron compares B^(T−1)·Σ B^-τ(x_τ − shift_τ) with B^(T−1)·ln B·(ramp − k);
        the integer one drops the common B^(T−1) (no membrane growth, spec §4.1).
        """
        k = np.arange(code.timesteps).astype(np.float64)
        theta = round_half_up(math.log(code.base) * (ramp_start - k) / 2.0**current_exp)
        return np.clip(theta, self.state_min, self.state_max)

    @property
    def woss_payload_exp(self) -> int:
        """WOSS spikes carry 2^F (value 1 in units 2^-F), so their trace_out (the latched
        trace, 2^-F units) is also their decoded value in payload units."""
        return -self.trace_bits

    def thresholds(self, code: PhaseCode, scale, current_exp: int) -> np.ndarray:
        """Θ_k = max(1, round(mid·B^-k·scale/2^current_exp)), shape (T, *scale.shape).

        Raises ValueError if Θ_0 does not fit the state: the top levels could not be reached.
        """
        scale = np.asarray(scale, dtype=np.float64)
        k = np.arange(code.timesteps).astype(np.float64).reshape((-1,) + (1,) * scale.ndim)
        theta = np.maximum(1, round_half_up(code.midpoint * code.base**-k * scale / 2.0**current_exp))
        if theta.max() > self.state_max:
            raise ValueError(f"threshold Θ_0 = {theta.max()} exceeds the {self.state_bits}-bit state: raise "
                             f"current_exp above {current_exp} (the input current unit)")
        return theta

    def top_membrane(self, code: PhaseCode, scale, current_exp: int) -> np.ndarray:
        """|V| above which a value counts as above the top level: round(scale/Δ_I) + T LSB of
        accumulated rounding, clipped to the state range."""
        top = round_half_up(np.asarray(scale, dtype=np.float64) / 2.0**current_exp) + code.timesteps
        return np.minimum(top, self.state_max)
