"""Integer state updates of the ``fixed_pt`` ProcessModels (numpy int64 arithmetic only).

The fixed-point counterpart of ``dynamics.py``: every ``fixed_pt`` model calls these functions,
so each integer equation exists once on the Lava side. They mirror
``lava_spikedattn.reference.fixed`` (the integer oracle, whose module docstring documents the
formulation, bit widths, rounding and error bounds) operation for operation; the build-time
tables (powers, divisions, rounding of float constants) come from there too. Run time uses only
integer add, multiply, round-half-up shift, compare and clip (saturate, count, never wrap): every
stored value to the state width, every synaptic sum to ``accumulator_bits`` and every multiply
before its shift to ``product_bits`` (``FixedFormat``), each clip counted in the Process's clips.
State arrays are updated in place (they are the models' Vars).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lava_spikedattn.fixed_point import FixedFormat, quantize_weights, round_half_up
from lava_spikedattn.procs import dynamics
from lava_spikedattn.procs.spike_kernels import gathered_spike_matmul, matmul_spikes, spike_matmul


def rshift_round(x: np.ndarray, shift: int) -> np.ndarray:
    """x·2^-shift rounded half up (arithmetic shift); shift ≤ 0 is an exact left shift."""
    if shift > 0:
        return (x + (1 << (shift - 1))) >> shift
    return x << -shift if shift < 0 else x


def integer_payloads(data: np.ndarray) -> np.ndarray:
    """``data`` as int64 if it holds integers in [−2^23, 2^23 − 1] (24-bit graded payloads);
    a ValueError otherwise (no silent rounding)."""
    if not (np.all(data == np.rint(data)) and np.all(data >= -2**23) and np.all(data <= 2**23 - 1)):
        raise ValueError("SpikeSource fixed_pt: data must hold integers in [-2^23, 2^23 - 1] (24-bit graded payloads)")
    return data.astype(np.int64)


def saturate(x: np.ndarray, lo: int, hi: int, clips: np.ndarray | None = None) -> np.ndarray:
    """Clip to [lo, hi]; adds 1 to ``clips`` (per element, in place) where a value was clipped."""
    out = np.clip(x, lo, hi)
    if clips is not None:
        clips += out != x
    return out


def fit_width(x: np.ndarray, bits: int, clips: np.ndarray) -> np.ndarray:
    """``x`` saturated to a signed ``bits``-wide register; ``clips`` (per element of ``x``, or one
    total in ``clips[0]``) counts the values that did not fit."""
    out, overflow = FixedFormat.fit(x, bits)
    if clips.shape == out.shape:
        clips += overflow
    else:
        clips[0] += int(overflow.sum())
    return out


@dataclass
class FixedPhaseState:
    """Integer phase-neuron population (all int64 / bool arrays of the population shape)."""

    v: np.ndarray
    fired: np.ndarray
    sign: np.ndarray
    latched: np.ndarray
    fire_step: np.ndarray
    saturated: np.ndarray
    clips: np.ndarray  # per-element count of clipped values (membrane updates, scaled thresholds)
    divisor: np.ndarray  # latched integer spike sum S (normalised neurons), population shape


@dataclass(frozen=True)
class FixedPhaseParams:
    """Integer constants of a phase-neuron population (built once from its proc_params)."""

    payload: np.ndarray  # P, population shape
    input_weight: np.ndarray  # G_τ = round(2^F·B^-τ), (T,)
    thresholds: np.ndarray  # Θ_k, (T, ...) broadcasting to (T, *population shape)
    top: np.ndarray  # |V| above the top level, population shape
    trace_bits: int
    product_bits: int
    lo: int
    hi: int
    timesteps: int
    start: int
    wait: int
    signed: bool
    normalized: bool

    @classmethod
    def from_proc_params(cls, p) -> FixedPhaseParams:
        code, fmt, shape = p["code"], p["fixed_format"], p["shape"]
        bcast = lambda a: np.ascontiguousarray(np.broadcast_to(a, shape))  # noqa: E731
        theta = fmt.thresholds(code, p["scale"], p["current_exp"])  # (T, *scale.shape): broadcasts per k
        theta = theta.reshape((code.timesteps,) + (1,) * (len(shape) + 1 - theta.ndim) + theta.shape[1:])
        return cls(payload=bcast(fmt.payload(p["scale"], p["payload_exp"])),
                   input_weight=fmt.input_weights(code, p["bit_serial_input"]),
                   thresholds=theta,
                   top=bcast(fmt.top_membrane(code, p["scale"], p["current_exp"])), trace_bits=fmt.trace_bits,
                   product_bits=fmt.product_bits, lo=fmt.state_min, hi=fmt.state_max, timesteps=code.timesteps,
                   start=p["start"], wait=p["wait"], signed=p["signed"], normalized=p["divisor_shape"] is not None)


def phase_step_fixed(s: FixedPhaseState, p: FixedPhaseParams, t: int, x: np.ndarray, trace: int,
                     divisor: np.ndarray | None = None) -> np.ndarray:
    """Advance the integer population to step ``t`` (0-based); returns the payload spikes sign·P."""
    t_rel = t - p.start
    spikes = np.zeros(s.v.shape, np.int64)
    if not 0 <= t_rel < p.timesteps + p.wait:
        return spikes
    if p.normalized and t_rel == p.wait:
        s.divisor[...] = divisor
    if t_rel < p.timesteps:
        weighted = fit_width(x.astype(np.int64) * p.input_weight[t_rel], p.product_bits, s.clips)
        v = s.v.astype(np.int64) + rshift_round(weighted, p.trace_bits)
        s.v[...] = saturate(v, p.lo, p.hi, s.clips)
    if t_rel < p.wait:
        return spikes
    v = s.v.astype(np.int64)
    if t_rel == p.wait:
        top = p.top
        if p.normalized:
            top = saturate(rshift_round(fit_width(top * s.divisor, p.product_bits, s.clips), p.trace_bits), p.lo,
                           p.hi, s.clips)
        s.saturated[...] = (np.abs(v) if p.signed else v) > top
        if p.normalized:
            s.saturated[s.divisor == 0] = False  # rows that never fire
    theta = p.thresholds[t_rel - p.wait]
    blocked = s.fired.copy()
    if p.normalized:  # V ≥ Θ_k·S instead of V/S ≥ Θ_k: no divider
        scaled = fit_width(theta * s.divisor, p.product_bits, s.clips)
        theta = np.maximum(1, saturate(rshift_round(scaled, p.trace_bits), p.lo, p.hi, s.clips))
        blocked |= s.divisor == 0
    fire = (v >= theta).astype(np.int64)
    if p.signed:
        fire -= v <= -theta
    fire[blocked] = 0
    new = fire != 0
    s.latched[new] = trace
    s.sign[new] = fire[new]
    s.fire_step[new] = t_rel - p.wait
    s.fired[new] = True
    return fire * p.payload


def decoded_fixed(s: FixedPhaseState, p: FixedPhaseParams) -> np.ndarray:
    """trace_v in payload units: (sign·P·latched + 2^(F-1)) >> F, 0 before the spike."""
    return rshift_round(s.sign.astype(np.int64) * p.payload * s.latched, p.trace_bits)


def trace_value(table: np.ndarray, t: int, phase: int) -> int:
    """TraceHolder (fixed): the integer trace table[(t − phase) mod T]."""
    return int(table[(t - phase) % table.shape[0]])


@dataclass(frozen=True)
class FixedLinearParams:
    """Integer constants of a TokenLinear: 8-bit mantissas (in, out), shift, integer bias."""

    mantissa_t: np.ndarray
    shift: int
    bias: np.ndarray | None
    accumulator_bits: int
    lo: int
    hi: int
    bias_clips: int  # bias entries clipped to the state range (counted once, at build)

    @classmethod
    def from_proc_params(cls, p) -> FixedLinearParams:
        fmt: FixedFormat = p["fixed_format"]
        if p["payload_exp"] is None or p["current_exp"] is None:
            raise ValueError("TokenLinear fixed_pt: build the Process with payload_exp and current_exp")
        mantissa, weight_exp = quantize_weights(p["weight_t"].T, fmt.weight_bits)
        bias, bias_clips = _integer_bias(p, fmt)
        return cls(mantissa_t=np.ascontiguousarray(mantissa.T), shift=p["current_exp"] - weight_exp - p["payload_exp"],
                   bias=bias, accumulator_bits=fmt.accumulator_bits, lo=fmt.state_min, hi=fmt.state_max,
                   bias_clips=bias_clips)


def _integer_bias(p, fmt: FixedFormat) -> tuple[np.ndarray | None, int]:
    """round(injected bias / 2^current_exp), clipped to the state; (bias, clipped entries)."""
    if p["injected_bias"] is None:
        return None, 0
    bias = round_half_up(p["injected_bias"] / 2.0 ** p["current_exp"])
    clipped = np.clip(bias, fmt.state_min, fmt.state_max)
    return clipped, int((clipped != bias).sum())


def token_linear_fixed(x: np.ndarray, p: FixedLinearParams, in_index: np.ndarray | None,
                       out_index: np.ndarray | None, bias_on: bool, clips: np.ndarray) -> np.ndarray:
    """Integer synapse: gather, accumulate (saturated to ``accumulator_bits``), round-shift to the
    current unit, + bias, saturate (``clips[0]`` counts both clips), gather the output layout."""
    x = x.astype(np.int64)
    if in_index is None:
        total = spike_matmul(x, p.mantissa_t)
    else:
        total = gathered_spike_matmul(x, in_index, p.mantissa_t)
    y = rshift_round(fit_width(total, p.accumulator_bits, clips), p.shift)
    if bias_on and p.bias is not None:
        y = y + p.bias
    out = np.clip(y, p.lo, p.hi)
    clips[0] += int((out != y).sum())
    return out if out_index is None else out.reshape(-1)[out_index]


@dataclass(frozen=True)
class FixedMatMulParams:
    """Integer constants of a TraceMatMul: factor mantissa, shift, integer bias."""

    factor_mantissa: int
    shift: int
    bias: np.ndarray | None
    accumulator_bits: int
    product_bits: int
    lo: int
    hi: int
    bias_clips: int

    @classmethod
    def from_proc_params(cls, p) -> FixedMatMulParams:
        fmt: FixedFormat = p["fixed_format"]
        if fmt is None:
            raise ValueError("TraceMatMul fixed_pt: build the Process with payload_exp_a, payload_exp_b and "
                             "current_exp")
        (mantissa,), factor_exp = quantize_weights(np.array([p["factor"]]), fmt.weight_bits)
        bias, bias_clips = _integer_bias(p, fmt)
        return cls(factor_mantissa=int(mantissa),
                   shift=p["current_exp"] - p["payload_exp_a"] - p["payload_exp_b"] - factor_exp,
                   bias=bias, accumulator_bits=fmt.accumulator_bits, product_bits=fmt.product_bits,
                   lo=fmt.state_min, hi=fmt.state_max, bias_clips=bias_clips)


def trace_matmul_fixed(p, q: FixedMatMulParams, t: int, a, a_hat, b, b_hat, clips: np.ndarray) -> np.ndarray:
    """Integer three-term product (payload units, saturated to ``accumulator_bits``), × factor
    mantissa (saturated to ``product_bits``), round-shift to the current unit, + bias in its
    window, saturate (``clips[0]`` counts every clip), absent keys 0."""
    a, a_hat, b, b_hat = (v.astype(np.int64) for v in (a, a_hat, b, b_hat))
    if p["transpose_b"]:
        b, b_hat = np.swapaxes(b, -1, -2), np.swapaxes(b_hat, -1, -2)
    if a.any() or b.any():
        a_new = np.where(a != 0, np.abs(a_hat) if p["official"] else a_hat, 0)
        product = spike_matmul(a, b_hat) + matmul_spikes(a_hat, b) - spike_matmul(a_new, b)
    else:  # no spike this step: every term is 0
        product = np.zeros(p["shape_out"], np.int64)
    product = fit_width(product, q.accumulator_bits, clips)
    y = rshift_round(fit_width(product * q.factor_mantissa, q.product_bits, clips), q.shift)
    if q.bias is not None and dynamics.bias_on(t, p["bias_start"], p["timesteps"]):
        y = y + q.bias
    out = np.clip(y, q.lo, q.hi)
    clips[0] += int((out != y).sum())
    out = np.ascontiguousarray(np.broadcast_to(out, p["shape_out"]))
    return out if p["present"] is None else np.where(p["present"], out, 0)


@dataclass(frozen=True)
class FixedWossParams:
    """Integer constants of a WOSS population (neuron and inhibitor share them)."""

    timesteps: int
    start: int
    wait: int
    present: np.ndarray
    input_weight: np.ndarray  # G_τ, (T,)
    thresholds: np.ndarray  # the ramp Θ_k, (T,)
    payload: int  # 2^F
    trace_bits: int
    product_bits: int
    lo: int
    hi: int

    @classmethod
    def from_proc_params(cls, p) -> FixedWossParams:
        fmt: FixedFormat = p["fixed_format"]
        if fmt is None:
            raise ValueError("WOSS fixed_pt: build the Processes with current_exp (the logits' payload_exp)")
        code = p["code"]
        return cls(timesteps=code.timesteps, start=p["start"], wait=p["wait"], present=p["present"],
                   input_weight=fmt.input_weights(code),
                   thresholds=fmt.woss_thresholds(code, p["ramp_start"], p["current_exp"]),
                   payload=2**fmt.trace_bits, trace_bits=fmt.trace_bits, product_bits=fmt.product_bits,
                   lo=fmt.state_min, hi=fmt.state_max)


def woss_shift_fixed(open_rows: np.ndarray, p: FixedWossParams, t: int, x: np.ndarray) -> np.ndarray:
    """Inhibitor: integer row shift (the present row maximum at a row's first positive spike)."""
    shift = np.zeros(open_rows.shape, np.int64)
    if 0 <= t - p.start < p.timesteps:
        x = x.astype(np.int64)
        m = np.where(p.present, x, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
        m = np.where(p.present.any(axis=-1, keepdims=True), m, 0)  # rows with no key present
        shift = m * open_rows
        open_rows[m > 0] = False
    return shift


def woss_threshold_fixed(theta: np.ndarray, p: FixedWossParams, t: int) -> int:
    """Inhibitor: the integer ramp Θ_k at fire step k (held outside the fire window)."""
    k = t - p.start - p.wait
    if 0 <= k < p.timesteps:
        theta[:] = p.thresholds[k]
    return int(theta[0])


def woss_neuron_step_fixed(v, fired, latched, fire_step, clips, p: FixedWossParams, t: int, x: np.ndarray,
                           shift: np.ndarray, theta: int, trace: int) -> np.ndarray:
    """WOSS neurons: weighted shifted input (no gain) in the input window, ramp comparison in the
    fire window; spikes carry 2^F."""
    t_rel = t - p.start
    spikes = np.zeros(v.shape, np.int64)
    if 0 <= t_rel < p.timesteps:
        weighted = fit_width((x.astype(np.int64) - shift) * p.input_weight[t_rel], p.product_bits, clips)
        add = rshift_round(weighted, p.trace_bits)
        v[...] = saturate(v.astype(np.int64) + add, p.lo, p.hi, clips)
    if p.wait <= t_rel < p.wait + p.timesteps:
        new = (v >= theta) & ~fired & p.present
        latched[new] = trace
        fire_step[new] = t_rel - p.wait
        fired[new] = True
        spikes = new * p.payload
    return spikes


def woss_spike_sum_fixed(trace: np.ndarray, p: FixedWossParams, clips: np.ndarray) -> np.ndarray:
    """Inhibitor: Σ_row latched (2^-F units), clipped to the state (``clips[0]`` counts)."""
    total = trace.astype(np.int64).sum(axis=-1, keepdims=True)
    out = np.clip(total, p.lo, p.hi)
    clips[0] += int((out != total).sum())
    return out
