"""TokenLinear Process: a weight matrix applied along the last axis of a tensor-shaped input."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import params


class TokenLinear(AbstractProcess):
    """Token-wise dense synapses (Lava's ``Dense`` only takes 1-D inputs)::

        x = s_in.flat[in_index]                        (optional input layout, shape (..., in))
        y[..., o] = Σ_i weight[o, i]·x[..., i]  [+ bias[..., o]/bias_divisor for T steps from bias_start]
        a_out = y.flat[out_index]                      (optional output layout)

    The layouts are gathers that cost no extra Process: window partition with the cyclic shift,
    head split/merge, window reverse, the 2×2 gather of patch merging, a transpose for pooling.

    The bias is injected on each of the receiving neuron's T input steps divided by
    ``code.bias_divisor`` (S exact, S−1 official; spec §3.2, §5.3), so it integrates to the
    ANN's bias.

    Args (keyword-only): shape_in (the s_in shape); weight (out, in), float64, or float32 kept as
    float32 (each weight widens exactly to float64 in its product); bias (out,), or any shape that
    broadcasts to y without enlarging it (a per-token bias, e.g. ViT's position embedding), or None; code
    (needed with a bias); bias_start; bias_divisor (default ``code.bias_divisor``; 1 for the first
    layer, whose bias the release adds undivided, spec §1.4); in_index (int array (..., in) of flat s_in positions);
    out_index (int array, the a_out shape, of flat positions of y).
    fixed_pt (``reference.fixed.FixedTokenLinearSim``): ``payload_exp`` (unit of the integer
    s_in payloads, the source PhaseNeuron's ``payload_exp``) and ``current_exp`` (unit of the
    integer a_out current, the receiving PhaseNeuron's ``current_exp``) are required, with
    ``fixed_format``; weights become 8-bit mantissas with one exponent, the accumulator is
    round-shifted to the current unit, the bias rounded to it, the current clipped to 24 bits
    (counted: :meth:`recorded_clips`).
    Ports: s_in graded spikes; a_out current.
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(
        self,
        *,
        shape_in: tuple[int, ...],
        weight: ty.Any,
        bias: ty.Any = None,
        code: PhaseCode | None = None,
        bias_start: int = 0,
        bias_divisor: float | None = None,
        in_index: ty.Any = None,
        out_index: ty.Any = None,
        payload_exp: int | None = None,
        current_exp: int | None = None,
        fixed_format: FixedFormat | None = None,
        name: str | None = None,
        log_config: LogConfig | None = None,
    ) -> None:
        owner = "TokenLinear"
        shape_in = params.shape_tuple(owner, "shape_in", shape_in)
        in_index = params.index(owner, "in_index", in_index, int(np.prod(shape_in)))
        layout_in = shape_in if in_index is None else in_index.shape
        weight = np.asarray(weight)  # params.array below copies it; float32 stays float32 (exact in the product)
        weight = weight.astype(np.float32 if weight.dtype == np.float32 else np.float64, copy=False)
        if weight.ndim != 2 or weight.shape[1] != layout_in[-1]:
            raise ValueError(f"{owner}: weight must be (out, in) with in = {layout_in[-1]} (the last axis of "
                             f"{'in_index' if in_index is not None else 'shape_in'}), got {weight.shape}")
        # (in, out): a row per input spike
        weight_t = params.array(owner, "weight", weight.T, weight.T.shape, dtype=weight.dtype)
        shape_y = layout_in[:-1] + (weight.shape[0],)
        out_index = params.index(owner, "out_index", out_index, int(np.prod(shape_y)))
        shape_out = shape_y if out_index is None else out_index.shape
        timesteps = 0
        if bias is not None:
            if code is None:
                raise ValueError(f"{owner}: a bias needs the code (its per-step divisor and T)")
            code = params.phase_code(owner, code)
            divisor = code.bias_divisor if bias_divisor is None else float(bias_divisor)
            if not divisor > 0:
                raise ValueError(f"{owner}: bias_divisor must be > 0, got {bias_divisor!r}")
            bias = params.array(owner, "bias", np.asarray(bias) / divisor, shape_y)
            timesteps = code.timesteps
        fixed = params.fixed_point(owner, fixed_format, payload_exp=payload_exp, current_exp=current_exp)
        super().__init__(shape_in=shape_in, shape_out=shape_out, weight_t=weight_t,
                         in_index=in_index, out_index=out_index,
                         injected_bias=bias, timesteps=timesteps,
                         bias_start=params.non_negative_int(owner, "bias_start", bias_start),
                         **fixed, name=name, log_config=log_config)
        self.s_in = InPort(shape=shape_in)
        self.a_out = OutPort(shape=shape_out)

    def recorded_clips(self) -> int:
        """fixed_pt: how many output currents were clipped to the state range in the last run."""
        if self.proc_params["clip_record"] is None:
            raise ValueError("TokenLinear: built without a fixed-point format (no clip record)")
        return int(self.proc_params["clip_record"][0])
