"""Integer (fixed-point) per-step reference: the porting path to Loihi 2 (numpy int64 only).

Loihi 2 computes in integers: 24-bit signed neuron state, 8-bit synaptic weight mantissas with a
shared exponent, graded spikes with an integer payload, no divider. This module is the integer
oracle of the ``fixed_pt`` ProcessModels (``procs/dynamics_fixed.py`` re-implements the same
updates in place, the way ``procs/dynamics.py`` mirrors ``reference.stepped``). It holds

* the build-time integer constants (:class:`FixedFormat` and its table builders): every power,
  logarithm and division of the method is evaluated here, once, in float64, and rounded;
* per-step integer simulations: :class:`FixedPhaseNeuronSim`, :func:`fixed_trace`,
  :class:`FixedTokenLinearSim`, :class:`FixedTraceMatMulSim`, :class:`FixedWossSim`, each
  ``step`` using only integer add, multiply, shift, compare, max and clip.

Formulation: decaying threshold, not growing membrane
------------------------------------------------------
The float neuron (spec §1.1) multiplies its membrane by B every step and compares it with a
constant θ = B^W·(1+1/B)/2, so the membrane reaches B^(W+k)·u: with B = 1.15, T = W = 40 up
to B^(T+W) ≈ 7.2e4 times the integrated value, 16 of the 24 bits spent on growth. The integer
neuron uses the equivalent form of spec §1.2 (fire at the first k with |u| ≥ B^-k·(1+1/B)/2)::

    input step τ (t_rel = τ < T):  V ← clip24(V + ((I_τ·G_τ + 2^(F-1)) >> F)),  G_τ = round(2^F·B^-τ)
    fire step k (t_rel = W + k):  s = [V ≥ Θ_k] − [V ≤ −Θ_k],  Θ_k = max(1, round(mid·B^-k·scale/Δ_I))

``I_τ`` is the integer input current (units Δ_I = 2^current_exp ANN units per LSB), G the
neuron's integer input-weight table (its local copy of the decaying trace), F = ``trace_bits``,
mid = (1+1/B)/2. The membrane ``V ≈ Σ_τ B^-τ·I_τ`` stays at the scale of the inputs (top level
= scale/Δ_I LSB, ``current_exponent`` puts it 2 bits below the limit), never grows, and does
nothing between the input and fire windows (W only shifts timing). The threshold table (T
entries per distinct scale) is built once: no run-time power or division. The gain form
(B ≈ m/2^s multiply-shift every step) was rejected: its rounding compounds over T+W steps, the
membrane still grows by B^(T+W), and m/2^s ≠ B biases every level; here each constant is
rounded once. Spikes carry ``sign·P``, ``P = round(scale/Δ_p)``; the decoded value (trace_v,
what trace_out sends) is ``(sign·P·latched + 2^(F-1)) >> F`` in payload units, latched = the
integer global trace ``round(2^F·trace_start·B^-k)`` (:func:`fixed_trace`, a T-entry table).

Synapses: TokenLinear ``I = clip24(((Σ_i m_i·p_i) >> shift) + b)`` (8-bit mantissas m, one
exponent, shift = current_exp − e_w − payload_exp). TraceMatMul: the three-term product on
payloads and payload-unit traces, exact in int64, times the factor's 8-bit mantissa, shifted to
the receiving neuron's current unit. WOSS: the same input weighting (no gain), the ramp
``Θ_k = round(ln B·(ramp − k)/Δ_in)`` (the float B^(T−1) factor dropped), the integer row max
as the shift; its spikes carry 2^F so its trace (latched, 2^-F units) is also its payload-unit
value, and the spike sum S (Σ latched, 2^-F units) is the attention×V neuron's divisor.

Normalisation without a divider (spec §4.5): the attention×V neuron compares ``V ≥ Θ_k^S``,
``Θ_k^S = clip24(max(1, (Θ_k·S + 2^(F-1)) >> F))``, instead of ``V/S ≥ Θ_k``; a row with S = 0
never fires (the float engines clear its membrane). In exact arithmetic the two decisions are
identical; the integer one differs only by the rounding of Θ_k·S (≤ 1/2 LSB + S/2^(F+1) LSB
from Θ_k's own rounding). The float models offer the same option (``divide_free``), identical
to the dividing form up to float64 rounding (``procs.dynamics.phase_step``).

Rounding: every run-time ``>> s`` is round-half-up, ``(x + 2^(s-1)) >> s`` with an arithmetic
(floor) shift; build-time constants are ``floor(x + 1/2)``. Saturation: every stored state,
threshold, current and spike sum is clipped to ``[−2^23, 2^23 − 1]`` (``state_bits`` = 24),
never wrapped, and each clip is counted (``clips``). Separately ``saturated`` marks values
above the code's top level (as the float engines record), allowing T LSB of rounding.

Bit widths (``FixedFormat`` defaults)
-------------------------------------
* state (membrane V, thresholds, currents, spike sums): 24-bit signed, clipped and counted;
* traces and input weights G: F = 16 fraction bits, round(2^F·B^-k) ≤ 2^16 (17 bits unsigned);
* weights and the TraceMatMul factor: 8-bit signed mantissa in [−127, 127], one exponent each;
* graded spike payload: ``sign·P``, P in [1, 2^15 − 1] (``payload_bits`` = 16, one
  power-of-two unit Δ_p = 2^payload_exp per population); WOSS spikes carry 2^F (F + 2 bits);
* accumulators (Σ m·p, the three-term product): exact (int64 here); Σ m·p needs at most
  weight_bits + payload_bits + ceil(log2(fan_in)) − 1 bits
  (:meth:`FixedTokenLinearSim.accumulator_bits`, 29 for fan-in 64), the three-term product
  2·payload_bits + ceil(log2(d)) + 1; whether Loihi 2's dendritic accumulators hold these is not
  checked here (no hardware): reduce ``payload_bits`` if not;
* products before a shift: I·G up to 24 + F + 1 bits, Θ·S up to 48 bits (int64 here).

Error against float (derived; each bound is asserted in tests/test_fixed_pt.py)
--------------------------------------------------------------------------------
Membrane: each input step adds at most 1/2 LSB of shift rounding and |I_τ|·2^-(F+1) of
input-weight rounding, so ``|V − Σ_τ B^-τ I_τ| ≤ T/2 + 2^-(F+1)·Σ_τ|I_τ|``; each threshold is
within 1/2 LSB of its exact value. The integer neuron fires at the float neuron's step (same
inputs, x_τ = I_τ·Δ_I) except where the exact membrane lies within ``T/2 + 1/2 +
2^-(F+1)·Σ|I|`` LSB of a threshold; there the fire step differs by one and the value rounds to
the other neighbouring level (decoded error ≤ (B−1)/(B+1)·|a| + that margin). The relative
margin is (T/2 + 1)/Θ_k: ≈ 2.5e-3 at the lowest level of B = 1.15, T = 40 (Θ_39 ≈ 8e3 LSB
for the largest scale), far less at the top. Decoded values add ≤ Δ_p (payload rounding of P
and of P·latched/2^F) + 2^-(F+1)·scale (trace rounding). Synapse:
``|Δ_I·I − Σ_i w_i·x_i| ≤ Δ_I/2 + 2^(e_w−1)·Σ_i|x_i| + 2^(e_w)·Σ_i|m_i|·Δ_p/2`` (+ Δ_I/2 for a
bias). TraceMatMul: ≤ Δ_I/2 + |factor − m_f·2^e_f|·|product| (+ Δ_I/2 for a bias). WOSS: fire
steps as the neuron, margin T/2 + 1/2 + 2^-(F+1)·Σ|x − shift| LSB of the ramp.

Whole networks
--------------
``builder.build_lava_network(cm, fixed_format=FixedFormat())`` wires these populations into a
converted Swin or BERT (units from ``loihi.neuron_units``, residuals as exact identity synapses,
the bit-serial input as ±1 payloads into the convert neuron, whose input weights are
``unit_gain·2^-(τ+1)``); ``LavaNetwork.simulate`` steps that integer graph in process with the
fixed_pt models' own update functions, equal to the Lava run bit for bit (tests/test_fixed_network.py).

Measured (``FixedFormat()``, scales U(0.5, 2), numpy; see tests/test_fixed_pt.py)
--------------------------------------------------------------------------------
* neuron, 20 000 random one-shot values vs ``PhaseCode.quantize``: fire step differs for
  1.5e-4 of them at B = 1.15, T = 40 (both conventions), 0 at B = 1.4, T = 16 and B = 1.3,
  T = 8; mean relative error 3.497 % (float 3.495 %); max relative error in range 8.6 % (exact)
  / 8.9 % (official) vs the float code's 6.98 %, the excess from the payload-unit rounding of
  the lowest levels (P·B^-39 ≈ 35 units at scale 0.5) and the one-step flips; 17.4 % vs
  16.7 % at B = 1.4, T = 16; identical (13.04 %) at B = 1.3, T = 8;
* inputs spread over the T steps with sign-changing noise: 3.2e-3 (B = 1.15, T = 40), 6.5e-4
  (B = 1.4, T = 16), 0 (B = 1.3, T = 8) of the fire steps differ, all inside the margin;
* TokenLinear (8-bit weights, fan-in 64) + neuron vs the float chain: 9 % (B = 1.15, T = 40) /
  4 % (B = 1.4, T = 16) of fire steps differ, the weight quantisation dominating, yet the rms
  error against the exact ANN value is 0.0165 vs 0.0163 (float) × scale (0.0386 vs 0.0385);
* WOSS, 300 rows × 32 keys: 0.09 % (exact) / 0.19 % (official) / 0.03 % (B = 1.4, T = 16) of
  fire steps differ; max |p_fixed − p_float| 1.3e-3 / 1.4e-2 / 2.0e-3;
* the whole attention core (2 × 3 heads × 8 tokens, d = 4, B = 1.15, T = 12), every Process
  fixed_pt: output fire steps equal float's (exact) / 0.5 % differ (official); relative error
  against softmax·V 0.2260 (float 0.2260) / 0.3171 (float 0.3169).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from lava_spikedattn.coding import PhaseCode

__all__ = ["FixedFormat", "FixedPhaseNeuronSim", "FixedTokenLinearSim", "FixedTraceMatMulSim", "FixedWossSim",
           "fixed_trace", "round_half_up",
           "shift_round", "quantize_weights", "unit_exponent"]


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
    """

    trace_bits: int = 16
    state_bits: int = 24
    weight_bits: int = 8
    payload_bits: int = 16

    def __post_init__(self) -> None:
        for name in ("trace_bits", "state_bits", "weight_bits", "payload_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 2:
                raise ValueError(f"FixedFormat: {name} must be an integer >= 2, got {value!r}")
        if self.state_bits > 32:
            raise ValueError(f"FixedFormat: state_bits must be <= 32, got {self.state_bits}")
        if self.trace_bits > self.state_bits - 2:
            raise ValueError(f"FixedFormat: trace_bits must be <= state_bits - 2 (2^F must fit), got {self.trace_bits}")
        if self.payload_bits > self.state_bits:
            raise ValueError(f"FixedFormat: payload_bits must be <= state_bits, got {self.payload_bits}")

    @property
    def state_max(self) -> int:
        return 2 ** (self.state_bits - 1) - 1

    @property
    def state_min(self) -> int:
        return -(2 ** (self.state_bits - 1))

    def clip(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x clipped to the state range, 1 where it was clipped else 0): saturate, never wrap."""
        x = np.asarray(x, dtype=np.int64)
        clipped = np.clip(x, self.state_min, self.state_max)
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


def fixed_trace(code: PhaseCode, fmt: FixedFormat, t: int, phase: int = 0) -> int:
    """Integer global trace at step ``t``: table[(t − phase) mod T] (TraceHolder, fixed point)."""
    return int(fmt.trace_table(code)[(t - phase) % code.timesteps])


class FixedPhaseNeuronSim:
    """Integer one-spike phase neurons (module docstring), one :meth:`step` per time step.

    Window timing equals ``reference.stepped.PhaseNeuronSim``: input window t_rel ∈ [0, T), fire
    window t_rel ∈ [W, W+T), first spike only, latched trace from the caller. Outputs: spikes
    ``sign·P`` (payload) and ``decoded``, the decoded value in payload units.

    ``normalized``: the attention×V neuron; :meth:`set_divisor` gives the integer spike sum S
    (2^-F units), latched at t_rel = W and multiplied into the thresholds (no division).
    ``bit_serial_input``: the first layer's convert neuron (:meth:`FixedFormat.input_weights`).
    """

    def __init__(self, code: PhaseCode, scale, shape, *, current_exp: int, payload_exp: int | None = None,
                 fmt: FixedFormat = FixedFormat(), signed: bool = True, start: int = 0, wait: int | None = None,
                 normalized: bool = False, bit_serial_input: bool = False, record: bool = False) -> None:
        self.code, self.fmt, self.shape = code, fmt, tuple(shape)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.signed, self.start = signed, int(start)
        self.wait = code.timesteps if wait is None else int(wait)
        self.current_exp = int(current_exp)
        self.payload_exp = fmt.payload_exponent(self.scale) if payload_exp is None else int(payload_exp)
        self.payload = np.broadcast_to(fmt.payload(self.scale, self.payload_exp), self.shape)
        self.G = fmt.input_weights(code, bit_serial_input)
        self.theta = fmt.thresholds(code, self.scale, self.current_exp)
        self.top = fmt.top_membrane(code, self.scale, self.current_exp)
        self.normalized = normalized
        self.divisor_value: np.ndarray | None = None
        self.divisor: np.ndarray | None = None
        self.t = 0
        self.v = np.zeros(self.shape, np.int64)
        self.fired = np.zeros(self.shape, bool)
        self.sign = np.zeros(self.shape, np.int64)
        self.latched = np.zeros(self.shape, np.int64)
        self.fire_step = np.full(self.shape, -1, np.int64)
        self.clips = np.zeros(self.shape, np.int64)
        self.saturated = np.zeros(self.shape, bool)
        self.record = record
        self.history: dict[str, list] = {"spikes": [], "membrane": [], "decoded": []}

    @property
    def end(self) -> int:
        return self.start + self.wait + self.code.timesteps

    @property
    def decoded(self) -> np.ndarray:
        """Decoded value in payload units, ``(sign·P·latched + 2^(F-1)) >> F`` (0 before the
        spike): what trace_out sends, the integer trace_v (≤ payload_bits wide)."""
        return shift_round(self.sign * self.payload * self.latched, self.fmt.trace_bits)

    def decoded_value(self) -> np.ndarray:
        """Decoded value in ANN units, decoded·2^payload_exp (for error measurements)."""
        return self.decoded * 2.0**self.payload_exp

    def set_divisor(self, divisor) -> None:
        """Integer spike sum S per row (2^-F units), applied from the fire-window start."""
        self.divisor_value = np.asarray(divisor, dtype=np.int64)

    def _scaled(self, value: np.ndarray) -> np.ndarray:
        """value·S/2^F, rounded, clipped and counted (the division-free normalisation)."""
        scaled, clipped = self.fmt.clip(shift_round(value * self.divisor, self.fmt.trace_bits))
        self.clips += clipped
        return scaled

    def step(self, x=None, trace: int = 0) -> np.ndarray:
        """Advance one step with integer current ``x`` (or None) and the integer global trace."""
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        spikes = np.zeros(self.shape, np.int64)
        if 0 <= t_rel < T + W:
            if self.normalized and t_rel == W:
                self.divisor = np.broadcast_to(self.divisor_value, self.shape)
            if t_rel < T and x is not None:
                contribution = shift_round(np.asarray(x, dtype=np.int64) * self.G[t_rel], self.fmt.trace_bits)
                self.v, clipped = self.fmt.clip(self.v + contribution)
                self.clips += clipped
            if t_rel == W:
                top = self._scaled(self.top) if self.normalized else self.top
                self.saturated = (np.abs(self.v) if self.signed else self.v) > top
                if self.normalized:
                    self.saturated &= self.divisor != 0  # rows that never fire
            if t_rel >= W:
                k = t_rel - W
                theta = np.broadcast_to(self.theta[k], self.shape)
                live = np.ones(self.shape, bool)
                if self.normalized:
                    theta = np.maximum(1, self._scaled(theta))
                    live = self.divisor != 0
                fire = (self.v >= theta).astype(np.int64)
                if self.signed:
                    fire -= (self.v <= -theta).astype(np.int64)
                fire[self.fired | ~live] = 0
                new = fire != 0
                self.latched[new] = trace
                self.sign[new] = fire[new]
                self.fire_step[new] = k
                self.fired |= new
                spikes = fire * self.payload
        if self.record:
            self.history["spikes"].append(spikes.copy())
            self.history["membrane"].append(self.v.copy())
            self.history["decoded"].append(self.decoded.copy())
        self.t += 1
        return spikes

    def stacked(self) -> dict[str, np.ndarray]:
        return {name: np.stack(values) for name, values in self.history.items()}


class FixedTokenLinearSim:
    """Integer token-wise synapse: ``I = clip24(((Σ_i m[o,i]·p_i) >> shift) + b)``.

    ``p`` is the integer payload (units 2^payload_exp), ``m·2^e_w`` the 8-bit weights, I the
    current in units 2^current_exp: shift = current_exp − e_w − payload_exp (rounded half up; a
    negative shift is an exact left shift). The bias ``round(bias/bias_divisor/2^current_exp)``
    is added on the T steps from ``bias_start``. Layouts (in_index/out_index) are the float
    TokenLinear's gathers.
    """

    def __init__(self, weight, *, payload_exp: int, current_exp: int, fmt: FixedFormat = FixedFormat(),
                 bias=None, code: PhaseCode | None = None, bias_start: int = 0, bias_divisor: float | None = None,
                 in_index=None, out_index=None) -> None:
        self.fmt = fmt
        self.mantissa, self.weight_exp = quantize_weights(weight, fmt.weight_bits)
        self.shift = int(current_exp) - self.weight_exp - int(payload_exp)
        self.in_index, self.out_index = in_index, out_index
        self.bias, self.timesteps, self.bias_start = None, 0, int(bias_start)
        self.t, self.clips = 0, 0  # clips: clipped bias entries (once) + clipped currents (per step)
        if bias is not None:
            divisor = code.bias_divisor if bias_divisor is None else float(bias_divisor)
            self.bias, clipped = fmt.clip(round_half_up(np.asarray(bias, dtype=np.float64) / divisor
                                                        / 2.0**current_exp))
            self.clips += int(clipped.sum())
            self.timesteps = code.timesteps

    def accumulator_bits(self, fan_in: int | None = None) -> int:
        """Signed width that holds Σ m·p for any payload: weight + payload + log2(fan_in) − 1."""
        fan_in = self.mantissa.shape[1] if fan_in is None else fan_in
        return self.fmt.weight_bits + self.fmt.payload_bits + math.ceil(math.log2(max(fan_in, 1))) - 1

    def step(self, p) -> np.ndarray:
        x = np.asarray(p, dtype=np.int64)
        if self.in_index is not None:
            x = x.reshape(-1)[self.in_index]
        acc = np.einsum("...i,oi->...o", x, self.mantissa)
        current = shift_round(acc, self.shift)
        if self.bias is not None and 0 <= self.t - self.bias_start < self.timesteps:
            current = current + self.bias
        current, clipped = self.fmt.clip(current)
        self.clips += int(clipped.sum())
        if self.out_index is not None:
            current = current.reshape(-1)[self.out_index]
        self.t += 1
        return current


class FixedTraceMatMulSim:
    """Integer trace-driven product (spec §3.1, §3.3)::

        prod = a @ B̂ + Â @ b − Â_new @ b          (exact int64, units 2^(payload_exp_a + payload_exp_b))
        I    = clip24(((prod·m_f) >> shift) [+ bias]) ,  factor ≈ m_f·2^e_f (weight_bits mantissa)

    a, b: payload spikes; Â, B̂: decoded traces in payload units (PhaseNeuron fixed trace_out);
    Â_new = Â where a fired now (|Â| in the official convention). shift = current_exp −
    payload_exp_a − payload_exp_b − e_f. Bias ``round(bias/bias_divisor/2^current_exp)`` on the
    T steps from bias_start; absent keys (``present`` False) get 0.
    Error vs the float product of the same integer inputs: ≤ 2^current_exp/2 (output rounding)
    + |factor − m_f·2^e_f|·|prod|·2^(payload_exp_a + payload_exp_b) (+ 2^current_exp/2, bias).
    """

    def __init__(self, code: PhaseCode, *, transpose_b: bool, payload_exp_a: int, payload_exp_b: int,
                 current_exp: int, fmt: FixedFormat = FixedFormat(), factor: float = 1.0, bias=None,
                 bias_start: int = 0, present=None) -> None:
        self.code, self.fmt, self.transpose_b = code, fmt, transpose_b
        (m,), self.factor_exp = quantize_weights(np.array([factor]), fmt.weight_bits)
        self.factor_mantissa = int(m)
        self.shift = int(current_exp) - int(payload_exp_a) - int(payload_exp_b) - self.factor_exp
        self.bias, self.t, self.clips = None, 0, 0  # clips: clipped bias entries + clipped currents
        if bias is not None:
            self.bias, clipped = fmt.clip(round_half_up(np.asarray(bias, dtype=np.float64) / code.bias_divisor
                                                        / 2.0**current_exp))
            self.clips += int(clipped.sum())
        self.bias_start, self.present = int(bias_start), present

    def step(self, a, a_hat, b, b_hat) -> np.ndarray:
        a, a_hat, b, b_hat = (np.asarray(v, dtype=np.int64) for v in (a, a_hat, b, b_hat))
        if self.transpose_b:
            b, b_hat = np.swapaxes(b, -1, -2), np.swapaxes(b_hat, -1, -2)
        a_new = np.where(a != 0, np.abs(a_hat) if self.code.official else a_hat, 0)
        prod = a @ b_hat + a_hat @ b - a_new @ b
        current = shift_round(prod * self.factor_mantissa, self.shift)
        if self.bias is not None and 0 <= self.t - self.bias_start < self.code.timesteps:
            current = current + self.bias
        current, clipped = self.fmt.clip(current)
        self.clips += int(clipped.sum())
        if self.present is not None:
            current = np.where(self.present, current, 0)
        self.t += 1
        return current


class FixedWossSim:
    """Integer WOSS neurons + inhibitor (spec §4.2), the counterpart of ``stepped.WOSSSim``::

        input window (t_rel < T):  m = max_row(present x); shift = m·open; open = 0 where m > 0
                                   V ← clip24(V + (((x − shift)·G_τ + 2^(F-1)) >> F))
        fire window, step k:       s = [V ≥ Θ_k] (first spike, present keys), Θ_k = woss_thresholds
                                   latched = trace; spike_sum = Σ_row latched (clipped, counted)

    x: the logit neurons' payload spikes (units 2^current_exp = their payload_exp). Spikes carry
    2^F, trace/decoded = latched (2^-F units), spike_sum in 2^-F units (the divisor the
    attention×V neuron scales its thresholds by). Fire steps equal the float WOSS's except where
    the exact Σ B^-τ(x − shift) lies within T/2 + 1/2 + 2^-(F+1)·Σ|x − shift| LSB of a threshold.
    """

    def __init__(self, code: PhaseCode, shape, *, current_exp: int, fmt: FixedFormat = FixedFormat(),
                 start: int = 0, wait: int | None = None, ramp_start: float | None = None, key_mask=None,
                 record: bool = False) -> None:
        self.code, self.fmt, self.shape = code, fmt, tuple(shape)
        self.start = int(start)
        self.wait = code.timesteps if wait is None else int(wait)
        ramp = code.woss_ramp_start if ramp_start is None else float(ramp_start)
        self.theta = fmt.woss_thresholds(code, ramp, current_exp)
        self.G = fmt.input_weights(code)
        self.present = np.ones(self.shape, bool) if key_mask is None else np.broadcast_to(key_mask, self.shape)
        self.payload = 2**fmt.trace_bits
        self.t = 0
        self.v = np.zeros(self.shape, np.int64)
        self.fired = np.zeros(self.shape, bool)
        self.latched = np.zeros(self.shape, np.int64)
        self.fire_step = np.full(self.shape, -1, np.int64)
        self.open = np.ones(self.shape[:-1] + (1,), bool)
        self.spike_sum = np.zeros(self.shape[:-1] + (1,), np.int64)
        self.clips = np.zeros(self.shape, np.int64)
        self.sum_clips = 0
        self.record = record
        self.history: dict[str, list] = {"spikes": [], "membrane": [], "spike_sum": []}

    @property
    def decoded(self) -> np.ndarray:
        return self.latched.copy()

    def step(self, x=None) -> np.ndarray:
        """One step with the logit payload spikes ``x``; the trace is the integer table value."""
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        spikes = np.zeros(self.shape, np.int64)
        x = np.zeros(self.shape, np.int64) if x is None else np.asarray(x, dtype=np.int64)
        if 0 <= t_rel < T:
            m = np.where(self.present, x, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
            m = np.where(self.present.any(axis=-1, keepdims=True), m, 0)
            shift = m * self.open
            self.open = self.open & ~(m > 0)
            contribution = shift_round((x - shift) * self.G[t_rel], self.fmt.trace_bits)
            self.v, clipped = self.fmt.clip(self.v + contribution)
            self.clips += clipped
        if W <= t_rel < W + T:
            k = t_rel - W
            new = (self.v >= self.theta[k]) & ~self.fired & self.present
            self.latched[new] = self.fmt.trace_table(self.code)[k]
            self.fire_step[new] = k
            self.fired |= new
            spikes = new * self.payload
        total, clipped = self.fmt.clip(self.latched.sum(axis=-1, keepdims=True))
        self.sum_clips += int(clipped.sum())
        self.spike_sum = total
        if self.record:
            self.history["spikes"].append(spikes.copy())
            self.history["membrane"].append(self.v.copy())
            self.history["spike_sum"].append(self.spike_sum.copy())
        self.t += 1
        return spikes

    def stacked(self) -> dict[str, np.ndarray]:
        return {name: np.stack(values) for name, values in self.history.items()}
