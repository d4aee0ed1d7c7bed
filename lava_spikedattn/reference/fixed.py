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
* accumulators (Σ m·p, the three-term product): ``accumulator_bits`` = 40, saturated and
  counted; Σ m·p needs at most weight_bits + payload_bits + ceil(log2(fan_in)) − 1 bits
  (:meth:`FixedTokenLinearSim.needed_accumulator_bits`, 29 for fan-in 64), the three-term product
  2·payload_bits + ceil(log2(3·d)) − 1 (37 for d = 16): 40 bits hold both for d ≤ 128 and fan-in
  ≤ 2^16. Whether Loihi 2 has such accumulators is an assumption (``docs/loihi2_mapping.md``); a
  32-bit accumulator holds them with ``payload_bits`` = 13 (measured: benchmarks/bench_loihi_port.py);
* products before a shift (I·G, Θ·S, the product × factor mantissa): ``product_bits`` = 48,
  saturated and counted (I·G ≤ 24 + F + 1 bits; Θ·S ≤ 24 + F + log2(keys) bits).

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
``reference.fixed_network`` steps the same graph from this module's simulators instead, one per
Process (no code shared with the ProcessModels), and equals the Lava run bit for bit too.

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

import numpy as np

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat, quantize_weights, round_half_up, shift_round

__all__ = ["FixedPhaseNeuronSim", "FixedTokenLinearSim", "FixedTraceMatMulSim", "FixedWossSim", "fixed_trace"]


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
        product, overflow = self.fmt.fit(value * self.divisor, self.fmt.product_bits)
        scaled, clipped = self.fmt.clip(shift_round(product, self.fmt.trace_bits))
        self.clips += overflow + clipped
        return scaled

    def step(self, x=None, trace: int = 0) -> np.ndarray:
        """Advance one step with integer current ``x`` (or None) and the integer global trace."""
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        spikes = np.zeros(self.shape, np.int64)
        if 0 <= t_rel < T + W:
            if self.normalized and t_rel == W:
                self.divisor = np.broadcast_to(self.divisor_value, self.shape)
            if t_rel < T and x is not None:
                product, overflow = self.fmt.fit(np.asarray(x, dtype=np.int64) * self.G[t_rel], self.fmt.product_bits)
                self.v, clipped = self.fmt.clip(self.v + shift_round(product, self.fmt.trace_bits))
                self.clips += overflow + clipped
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

    def needed_accumulator_bits(self, fan_in: int | None = None) -> int:
        """Signed width that holds Σ m·p for any payload: weight + payload + log2(fan_in) − 1."""
        fan_in = self.mantissa.shape[1] if fan_in is None else fan_in
        return self.fmt.weight_bits + self.fmt.payload_bits + math.ceil(math.log2(max(fan_in, 1))) - 1

    def step(self, p) -> np.ndarray:
        x = np.asarray(p, dtype=np.int64)
        if self.in_index is not None:
            x = x.reshape(-1)[self.in_index]
        if x.any():
            acc = np.einsum("...i,oi->...o", x, self.mantissa)
        else:  # no spike: skip the product
            acc = np.zeros(x.shape[:-1] + self.mantissa.shape[:1], np.int64)
        acc, overflow = self.fmt.fit(acc, self.fmt.accumulator_bits)
        self.clips += int(overflow.sum())
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
    T steps from bias_start (bias_divisor: ``code.bias_divisor`` by default, 1 for a bias already
    divided); absent keys (``present`` False) get 0.
    Error vs the float product of the same integer inputs: ≤ 2^current_exp/2 (output rounding)
    + |factor − m_f·2^e_f|·|prod|·2^(payload_exp_a + payload_exp_b) (+ 2^current_exp/2, bias).
    """

    def __init__(self, code: PhaseCode, *, transpose_b: bool, payload_exp_a: int, payload_exp_b: int,
                 current_exp: int, fmt: FixedFormat = FixedFormat(), factor: float = 1.0, bias=None,
                 bias_start: int = 0, bias_divisor: float | None = None, present=None) -> None:
        self.code, self.fmt, self.transpose_b = code, fmt, transpose_b
        (m,), self.factor_exp = quantize_weights(np.array([factor]), fmt.weight_bits)
        self.factor_mantissa = int(m)
        self.shift = int(current_exp) - int(payload_exp_a) - int(payload_exp_b) - self.factor_exp
        self.bias, self.t, self.clips = None, 0, 0  # clips: clipped bias entries + clipped currents
        if bias is not None:
            divisor = code.bias_divisor if bias_divisor is None else float(bias_divisor)
            self.bias, clipped = fmt.clip(round_half_up(np.asarray(bias, dtype=np.float64) / divisor
                                                        / 2.0**current_exp))
            self.clips += int(clipped.sum())
        self.bias_start, self.present = int(bias_start), present

    def step(self, a, a_hat, b, b_hat) -> np.ndarray:
        a, a_hat, b, b_hat = (np.asarray(v, dtype=np.int64) for v in (a, a_hat, b, b_hat))
        if self.transpose_b:
            b, b_hat = np.swapaxes(b, -1, -2), np.swapaxes(b_hat, -1, -2)
        if a.any() or b.any():
            a_new = np.where(a != 0, np.abs(a_hat) if self.code.official else a_hat, 0)
            prod = a @ b_hat + a_hat @ b - a_new @ b
        else:  # no spike: every term has a zero spike operand
            prod = np.zeros(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), np.int64)
        prod, overflow = self.fmt.fit(prod, self.fmt.accumulator_bits)
        scaled, scaled_overflow = self.fmt.fit(prod * self.factor_mantissa, self.fmt.product_bits)
        self.clips += int(overflow.sum() + scaled_overflow.sum())
        current = shift_round(scaled, self.shift)
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

    def step(self, x=None, trace: int | None = None) -> np.ndarray:
        """One step with the logit payload spikes ``x``; a spike latches ``trace`` (the integer
        global trace of this step), by default the table value of its fire step k."""
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        spikes = np.zeros(self.shape, np.int64)
        x = np.zeros(self.shape, np.int64) if x is None else np.asarray(x, dtype=np.int64)
        if 0 <= t_rel < T:
            m = np.where(self.present, x, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
            m = np.where(self.present.any(axis=-1, keepdims=True), m, 0)
            shift = m * self.open
            self.open = self.open & ~(m > 0)
            product, overflow = self.fmt.fit((x - shift) * self.G[t_rel], self.fmt.product_bits)
            self.v, clipped = self.fmt.clip(self.v + shift_round(product, self.fmt.trace_bits))
            self.clips += overflow + clipped
        if W <= t_rel < W + T:
            k = t_rel - W
            new = (self.v >= self.theta[k]) & ~self.fired & self.present
            self.latched[new] = self.fmt.trace_table(self.code)[k] if trace is None else trace
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
