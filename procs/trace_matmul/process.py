"""TraceMatMul Process: the trace-driven product of two spike streams (QKᵀ and attention×V)."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import params


class TraceMatMul(AbstractProcess):
    """Spike×spike product from spikes and latched traces only (spec §3.1, §3.3)::

        a_out = factor·(a @ B̂ + Â @ b − Â_new @ b)  [+ bias/bias_divisor for T steps from bias_start]

    a, b are this step's spikes, Â, B̂ the decoded traces (including this step's spikes) and
    Â_new = Â where a fired this step (|Â| there in the official convention: the release's slip).
    Every pair of spikes is counted once, at the later of its two fire steps, so the receiving
    neuron integrates exactly factor·â·b̂ per pair (ANN units, scales folded in by the spikes).

    Args (keyword-only):
        shape_a: (..., N, d) of the left stream (q, or the WOSS neurons (..., N, M)).
        shape_b: (..., M, d) with ``transpose_b=True`` (k, for QKᵀ) or (..., M, dv) with
            ``transpose_b=False`` (the delayed V, for attention×V).
        code: the phase code (convention, bias divisor, T).
        factor: output factor, e.g. head_dim^-1/2 for QKᵀ.
        bias: optional additive logit bias broadcastable to the output (relative-position bias,
            shifted-window mask), injected on the receiving neuron's T input steps.
        bias_start: first step of that input window.
        key_mask: optional bool mask broadcastable to the output, True = key present; the
            product (and bias) for absent keys (padding) is not delivered, so their logit
            neurons never fire.

        payload_exp_a, payload_exp_b, current_exp, fixed_format: the ``fixed_pt`` model
            (``reference.fixed.FixedTraceMatMulSim``): payload units of the two streams (their
            PhaseNeurons' ``payload_exp``; traces in the same units), unit of the integer a_out
            (the receiving PhaseNeuron's ``current_exp``). All three exponents are required for it.

    Ports: a_in, a_trace_in (shape_a); b_in, b_trace_in (shape_b); a_out (the product's shape).
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(
        self,
        *,
        shape_a: tuple[int, ...],
        shape_b: tuple[int, ...],
        code: PhaseCode,
        transpose_b: bool,
        factor: float = 1.0,
        bias: ty.Any = None,
        bias_start: int = 0,
        key_mask: ty.Any = None,
        payload_exp_a: int | None = None,
        payload_exp_b: int | None = None,
        current_exp: int | None = None,
        fixed_format: FixedFormat | None = None,
        name: str | None = None,
        log_config: LogConfig | None = None,
    ) -> None:
        owner = "TraceMatMul"
        shape_a = params.shape_tuple(owner, "shape_a", shape_a)
        shape_b = params.shape_tuple(owner, "shape_b", shape_b)
        code = params.phase_code(owner, code)
        shape_out = _product_shape(shape_a, shape_b, transpose_b)
        if bias is not None:
            bias = params.array(owner, "bias", np.asarray(bias) / code.bias_divisor, shape_out)
        fixed = params.fixed_point(owner, fixed_format, payload_exp_a=payload_exp_a, payload_exp_b=payload_exp_b,
                                   current_exp=current_exp)
        super().__init__(
            **fixed,
            shape_a=shape_a, shape_b=shape_b, shape_out=shape_out, transpose_b=bool(transpose_b),
            factor=float(factor), official=code.official, injected_bias=bias, timesteps=code.timesteps,
            present=None if key_mask is None else params.mask(owner, key_mask, shape_out),
            bias_start=params.non_negative_int(owner, "bias_start", bias_start),
            name=name, log_config=log_config,
        )
        self.a_in = InPort(shape=shape_a)
        self.a_trace_in = InPort(shape=shape_a)
        self.b_in = InPort(shape=shape_b)
        self.b_trace_in = InPort(shape=shape_b)
        self.a_out = OutPort(shape=shape_out)

    def recorded_clips(self) -> int:
        """fixed_pt: how many output currents were clipped to the state range in the last run."""
        if self.proc_params["clip_record"] is None:
            raise ValueError("TraceMatMul: built without a fixed-point format (no clip record)")
        return int(self.proc_params["clip_record"][0])


def _product_shape(shape_a, shape_b, transpose_b: bool) -> tuple[int, ...]:
    if len(shape_a) < 2 or len(shape_b) < 2:
        raise ValueError(f"TraceMatMul: shapes must have at least 2 axes, got {shape_a} and {shape_b}")
    inner_b = shape_b[-1] if transpose_b else shape_b[-2]
    if shape_a[-1] != inner_b:
        layout = "(..., M, d) with transpose_b=True" if transpose_b else "(..., M, dv) with transpose_b=False"
        raise ValueError(
            f"TraceMatMul: shape_a {shape_a} and shape_b {shape_b} do not multiply: shape_b must be "
            f"{layout} with its contracted axis equal to shape_a[-1] = {shape_a[-1]}"
        )
    try:
        batch = np.broadcast_shapes(shape_a[:-2], shape_b[:-2])
    except ValueError:
        raise ValueError(f"TraceMatMul: batch axes of {shape_a} and {shape_b} do not broadcast") from None
    return tuple(batch) + (shape_a[-2], shape_b[-2] if transpose_b else shape_b[-1])
