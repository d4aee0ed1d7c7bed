"""numpy state updates of SpikedAttention's populations, shared by every floating-point model.

The leaf ProcessModels (one Process per population) and the fused block models (a whole block
in one Process) call these same functions, so each equation exists once on the Lava side. They
mirror ``lava_spikedattn.reference.stepped`` (the torch oracle) operation for operation. State
arrays are updated in place (they are the models' Vars). numpy and the numba kernels of
``spike_kernels`` only: no torch in Lava workers.
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass

import numpy as np

from lava_spikedattn.procs.neuron_kernels import phase_update, rows
from lava_spikedattn.procs.spike_kernels import gathered_spike_matmul, matmul_spikes, spike_matmul

# The membrane reaches B^W·u by W multiplications, so a value exactly at the top level (every
# calibrated maximum is) lands a few ulp either side of B^W. Saturation means "above the top
# level by more than that rounding", as the closed form (PhaseCode.saturated) decides it.
SATURATION_RTOL = 1.0 + 1e-9


@dataclass
class PhaseState:
    """Phase-neuron population: membrane, first-spike mask, sign, latched trace, fire step, and
    the decoded trace it sends."""

    v: np.ndarray
    fired: np.ndarray
    sign: np.ndarray
    latched: np.ndarray
    fire_step: np.ndarray
    saturated: np.ndarray  # value above the top level (clipped by the code): counted, never silent
    trace: np.ndarray  # trace_out, sign·scale·latched of the fired neurons (ANN units): set when they fire
    divisor: np.ndarray | None = None  # divide_free: the latched row divisor S (population shape)


@dataclass(frozen=True)
class PhaseParams:
    """Constants of a phase-neuron population (computed by the Process from its PhaseCode)."""

    scale: np.ndarray
    gain: float
    timesteps: int
    start: int
    wait: int
    thresholds: np.ndarray  # (T,): θ_k per fire step (constant except for the convert neuron)
    saturation: float  # |v| at the first fire step above which the value is clipped
    signed: bool
    normalized: bool
    divide_free: bool = False  # normalise by scaling the thresholds (v ≥ θ·S), not by dividing v

    @classmethod
    def from_proc_params(cls, p) -> PhaseParams:
        return cls(scale=p["scale"], gain=p["gain"], timesteps=p["timesteps"], start=p["start"],
                   wait=p["wait"], thresholds=p["thresholds"], saturation=p["saturation"], signed=p["signed"],
                   normalized=p["divisor_shape"] is not None, divide_free=bool(p.get("divide_free", False)))


def phase_step(s: PhaseState, p: PhaseParams, t: int, x: np.ndarray, trace: float,
               divisor: np.ndarray | None = None) -> np.ndarray | None:
    """Advance the population to step ``t`` (0-based); returns the graded spikes sign·scale, or
    None where no neuron fires (outside the fire window, or none reached its threshold).

    v ← B·v (+ x/scale in the input window); from the fire window on, a neuron not yet fired
    fires at the first step k with v ≥ θ_k (or v ≤ −θ_k, signed), latching the trace.
    Normalised neurons (``divisor`` = the WOSS spike sum S, taken at the fire-window start)
    either divide the membrane once, ``v ← v/S`` (the release's way), or, with
    ``p.divide_free``, keep ``v`` and compare it with the scaled thresholds ``θ_k·S`` (no
    divider, the Loihi way; ``s.divisor`` holds S). Both fire at the first k with
    B^(k+1)·v_W/S ≥ θ_k (v_W the membrane before the division) in exact arithmetic. In float64 the
    dividing path rounds the quotient and its k+1 gains (≤ (k+2)·u relative, u = 2^-53), the
    divide-free path its k+1 gains and θ_k·S (≤ (k+2)·u), so a decision can differ only where
    that ratio lies within (2k+4)·u ≈ 1e-14 (T = 40) of 1: the fire step is then off by one and
    the value rounds to the other neighbouring level, still within the code's (B−1)/(B+1) bound.
    Rows with S = 0 never fire either way (the dividing path clears their membrane).
    The per-neuron arithmetic is ``neuron_kernels.phase_update``'s (one compiled pass).
    """
    t_rel = t - p.start
    if not 0 <= t_rel < p.timesteps + p.wait:
        return None
    if p.normalized and t_rel == p.wait:
        if p.divide_free:
            s.divisor[...] = divisor
        else:
            safe = np.where(divisor == 0, 1.0, divisor)
            s.v[:] = np.where(divisor == 0, 0.0, s.v / safe)
    scaled = p.normalized and p.divide_free
    fire_now = t_rel >= p.wait
    spikes = np.zeros(s.v.shape)
    scale = np.ascontiguousarray(np.broadcast_to(p.scale, s.v.shape[:-1] + (np.shape(p.scale)[-1:] or (1,))))
    fired = phase_update(rows(s.v), rows(np.ascontiguousarray(x, dtype=np.float64)), rows(scale), p.gain,
                         t_rel < p.timesteps, t_rel == p.wait, p.saturation * SATURATION_RTOL, fire_now,
                         p.thresholds[t_rel - p.wait] if fire_now else 0.0, p.signed,
                         rows(s.divisor) if scaled else _NO_DIVISOR, scaled, trace, t_rel - p.wait, rows(s.fired),
                         rows(s.saturated), rows(s.latched), rows(s.sign), rows(spikes), rows(s.fire_step),
                         rows(s.trace))
    return spikes if fired else None


_NO_DIVISOR = np.zeros((1, 1))  # phase_update's divisor where thresholds are not scaled


def trace_product(a: np.ndarray | None, a_hat: np.ndarray, b: np.ndarray | None, b_hat: np.ndarray,
                  official: bool) -> np.ndarray:
    """a @ B̂ + Â @ b − Â_new @ b (b, b̂ already in right-operand layout, (..., d, M)); each term
    costs the spikes of its spike operand (a, b), not the dense product. ``a`` or ``b`` None: no
    spike this step, its terms are 0 and not computed (not both)."""
    if b is None:
        return spike_matmul(a, b_hat)
    from_b = matmul_spikes(a_hat, b)
    if a is None:
        return from_b
    a_new = np.where(a != 0, np.abs(a_hat) if official else a_hat, 0.0)
    return spike_matmul(a, b_hat) + from_b - spike_matmul(a_new, b)


def trace_matmul(p, t: int, a: np.ndarray | None, a_hat: np.ndarray, b: np.ndarray | None,
                 b_hat: np.ndarray) -> np.ndarray:
    """TraceMatMul at step ``t`` from its proc_params ``p``: factor·product (+ bias), masked keys 0.
    ``a`` / ``b`` None: that operand has no spike this step."""
    if p["transpose_b"]:
        b = None if b is None else np.swapaxes(b, -1, -2)
        b_hat = np.swapaxes(b_hat, -1, -2)
    if a is None and b is None:  # no spike this step: every term is 0
        out = np.zeros(p["shape_out"])
    else:
        out = p["factor"] * trace_product(a, a_hat, b, b_hat, p["official"])
    bias = window_bias(p["injected_bias"], t, p["bias_start"], p["timesteps"])
    out = np.broadcast_to(out if bias is None else out + bias, p["shape_out"])
    return out if p["present"] is None else np.where(p["present"], out, 0.0)


@dataclass
class WossState:
    """WOSS population plus its inhibitory state (open rows, current threshold, spike sum)."""

    v: np.ndarray
    fired: np.ndarray
    latched: np.ndarray
    fire_step: np.ndarray
    open: np.ndarray
    theta: np.ndarray
    spike_sum: np.ndarray


@dataclass(frozen=True)
class WossParams:
    base: float
    timesteps: int
    start: int
    wait: int
    slope: float
    theta0: float
    present: np.ndarray  # keys taking part (False: padding, never fires), broadcast to the shape

    @classmethod
    def from_proc_params(cls, p) -> WossParams:
        """From the proc_params of a WossNeuron or WossInhibitor."""
        return cls(base=p["base"], timesteps=p["timesteps"], start=p["start"], wait=p["wait"], slope=p["slope"],
                   theta0=p["theta0"], present=p["present"])


def woss_shift(open_rows: np.ndarray, p: WossParams, t: int, x: np.ndarray) -> np.ndarray:
    """Inhibitor: the row shift of step ``t`` (winner's value at a row's first positive spike)."""
    shift = np.zeros(open_rows.shape)
    if 0 <= t - p.start < p.timesteps:
        m = np.where(p.present, x, -np.inf).max(axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)  # rows with no key present
        shift = m * open_rows
        open_rows[m > 0] = False
    return shift


def woss_threshold(theta: np.ndarray, p: WossParams, t: int) -> float:
    """Inhibitor: the shared threshold ramp, slope·(ramp_start − k) at fire step k."""
    k = t - p.start - p.wait
    if 0 <= k < p.timesteps:
        theta[:] = p.theta0 - k * p.slope
    return float(theta[0])


def woss_neuron_step(v, fired, latched, fire_step, p: WossParams, t: int, x: np.ndarray,
                     shift: np.ndarray, theta: float, trace: float) -> np.ndarray:
    """WOSS neurons: gain and shifted input in the input window, ramp comparison in the fire window."""
    t_rel = t - p.start
    spikes = np.zeros_like(v)
    if 0 <= t_rel < p.timesteps:
        v[:] = p.base * v + (x - shift)
    if p.wait <= t_rel < p.wait + p.timesteps:
        new = (v >= theta) & ~fired & p.present
        latched[new] = trace
        fire_step[new] = t_rel - p.wait
        fired[new] = True
        spikes = new.astype(float)
    return spikes


def global_trace(t: int, phase: int, timesteps: int, base: float, trace_start: float) -> float:
    """TraceHolder: trace_start·B^-k, k = (t − phase) mod T — a 1/B decay per step, reset every T.

    Written in closed form (not as repeated division) so it is bitwise the reference's value.
    """
    return trace_start * base ** -((t - phase) % timesteps)


def token_linear(x: np.ndarray, weight_t: np.ndarray, in_index: np.ndarray | None,
                 out_index: np.ndarray | None, bias: np.ndarray | None = None) -> np.ndarray:
    """Gather the input layout, apply the weight along the last axis (+ bias), gather the output;
    one weight row per input spike (the gather happens inside the product)."""
    y = spike_matmul(x, weight_t) if in_index is None else gathered_spike_matmul(x, in_index, weight_t)
    if bias is not None:
        y += bias  # in place: y is this step's own array
    return y if out_index is None else y.reshape(-1)[out_index]


def delay_slot(t: int, delay: int) -> int:
    """DelayLine: the ring-buffer slot of step ``t``. It holds the input of step t − delay, is
    sent at step t, then overwritten with the input of step t."""
    return t % delay


def delay_output(buffer: np.ndarray | list, t: int) -> ty.Any:
    """DelayLine: what left the line at step ``t`` (its input of step t − delay), not a copy:
    send it before :func:`delay_input` overwrites the slot (Lava's send copies). ``buffer`` is the
    ring: a (delay, *shape) array (the DelayLine models' Var) or a list of arrays, None for zeros
    (the fused stepper)."""
    return buffer[delay_slot(t, len(buffer))]


def delay_input(buffer: np.ndarray | list, t: int, x: ty.Any) -> None:
    """DelayLine: store this step's input in the slot just sent."""
    buffer[delay_slot(t, len(buffer))] = x


def bias_on(t: int, start: int, timesteps: int) -> bool:
    """Whether a synapse injects its bias at step ``t``: during the T steps of its target's input
    window ``[start, start + T)`` (spec §1.4). Every synapse model, float and integer, asks here."""
    return 0 <= t - start < timesteps


def window_bias(bias: np.ndarray | None, t: int, start: int, timesteps: int) -> np.ndarray | None:
    """The per-step injected bias (already divided by the bias divisor) inside its T-step window,
    else None (nothing to add)."""
    return bias if bias is not None and bias_on(t, start, timesteps) else None
