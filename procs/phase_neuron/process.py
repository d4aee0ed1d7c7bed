"""PhaseNeuron Process: a population of one-spike phase-coded neurons of any tensor shape."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import params


class PhaseNeuron(AbstractProcess):
    """One-spike phase neurons (spec §1.1) that latch the global trace at their spike (§2).

    With t the 0-based step, ``t_rel = t − start``, T input steps and W ≥ T wait, inside
    ``[start, start+T+W)``::

        v = v / div_in                       once at t_rel = W if ``divisor_shape`` is set (§4.5)
        v = B·v + a_in/scale                 a_in counted only in the input window t_rel < T
        s = [v ≥ θ_k] − [v ≤ −θ_k]           bipolar ([v ≥ θ_k] unipolar) at fire step k = t_rel − W,
                                             first spike only; θ_k = B^W·(1+1/B)/2, no reset
        latched = trace_in                   at the first spike

    Args (keyword-only):
        shape: population shape, e.g. (windows, heads, tokens, dims).
        scale: calibrated scale, broadcastable to ``shape`` (scalar, per channel, per row...).
        code: the :class:`PhaseCode` (B, T, convention).
        signed: bipolar (default) or unipolar (ReLU) neurons.
        start, wait: window placement; wait defaults to T.
        divisor_shape: shape of ``div_in`` (e.g. (..., N, 1)) for the attention×V neuron that
            divides its membrane by the WOSS spike sum; rows with divisor 0 are cleared (silent).
        bit_serial_input: the first layer's convert neuron (spec §1.4): membrane gain 2 and the
            growing threshold ``code.convert_threshold(W, k)``, for inputs in the radix-2 code.
        divide_free: with ``divisor_shape``, normalise without a division: keep the membrane and
            compare ``v ≥ θ_k·S`` (``v ≤ −θ_k·S``) from the fire-window start instead of dividing
            ``v`` by S (identical in exact arithmetic; see ``dynamics.phase_step``).
        fixed_format, current_exp, payload_exp: the integer (``fixed_pt``) model's format
            (``reference.fixed.FixedFormat``), the unit exponent of a_in (2^current_exp ANN units
            per LSB; default ``fixed_format.current_exponent(scale)``) and of the payload of
            s_out (default ``fixed_format.payload_exponent(scale)``). Giving any of the three
            enables the ``fixed_pt`` model (it refuses a neuron built without them); it runs
            ``dynamics_fixed.phase_step_fixed``: integer currents in, payload spikes
            ``sign·P``, ``P = round(scale/2^payload_exp)``, out, trace_out = the decoded value in
            payload units ``(sign·P·latched + 2^(F-1)) >> F``, v_out = the integer membrane;
            normalised neurons compare with the thresholds scaled by the integer spike sum
            (no divider); the convert neuron weighs its input steps by 2^-(τ+1) instead of
            B^-τ (``FixedFormat.input_weights``).

    Ports:
        a_in: input current in ANN units (several connections are summed).
        trace_in (1,): the global trace of a :class:`TraceHolder` aligned with the fire window.
        div_in: the WOSS row normaliser (``divisor_shape``; unused and (1,) without it).
        s_out: graded spikes ``sign·scale`` (ANN units), 0 when silent.
        trace_out: decoded value ``sign·scale·latched`` of fired neurons (trace_v), else 0.
        v_out: the membrane after this step (a probe; free when unconnected).

    Vars: v (membrane), fired (mask), fire_step (−1 = not yet), sign (±1 / 0), latched (trace).
    After a run, :meth:`recorded_fire_steps` and :meth:`recorded_saturation` (values above the
    top level, clipped by the code) return whole-population records written to shared memory, so
    reading them costs nothing, unlike ``fire_step.get()``.
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(
        self,
        *,
        shape: tuple[int, ...],
        scale: ty.Any,
        code: PhaseCode,
        signed: bool = True,
        start: int = 0,
        wait: int | None = None,
        divisor_shape: tuple[int, ...] | None = None,
        bit_serial_input: bool = False,
        divide_free: bool = False,
        fixed_format: FixedFormat | None = None,
        current_exp: int | None = None,
        payload_exp: int | None = None,
        name: str | None = None,
        log_config: LogConfig | None = None,
    ) -> None:
        owner = "PhaseNeuron"
        shape = params.shape_tuple(owner, "shape", shape)
        code = params.phase_code(owner, code)
        start, wait = params.window(owner, code, start, wait)
        scale = params.array(owner, "scale", scale, shape, positive=True)
        if divisor_shape is not None:
            divisor_shape = params.shape_tuple(owner, "divisor_shape", divisor_shape)
            params.array(owner, "divisor_shape", np.ones(divisor_shape), shape)
        if divide_free and divisor_shape is None:
            raise ValueError(f"{owner}: divide_free needs divisor_shape (it changes how the divisor is applied)")
        fixed = fixed_format is not None or current_exp is not None or payload_exp is not None
        clip_record = None
        if fixed:
            fixed_format = FixedFormat() if fixed_format is None else fixed_format
            if not isinstance(fixed_format, FixedFormat):
                raise ValueError(f"{owner}: fixed_format must be a reference.fixed.FixedFormat, "
                                 f"got {type(fixed_format).__name__}")
            current_exp = fixed_format.current_exponent(scale) if current_exp is None else _exponent(
                owner, "current_exp", current_exp)
            payload_exp = fixed_format.payload_exponent(scale) if payload_exp is None else _exponent(
                owner, "payload_exp", payload_exp)
            try:  # the tables must fit the format (raises ValueError naming the limit)
                fixed_format.thresholds(code, scale, current_exp)
                fixed_format.payload(scale, payload_exp)
            except ValueError as error:
                raise ValueError(f"{owner}: {error}") from None
            clip_record = params.shared_array(shape, np.int64, 0)
        if bit_serial_input:
            gain, thresholds = code.convert_gain, [code.convert_threshold(wait, k) for k in range(code.timesteps)]
        else:
            gain, thresholds = code.base, [code.neuron_threshold(wait)] * code.timesteps
        super().__init__(
            shape=shape, scale=scale, gain=gain, timesteps=code.timesteps, start=start, wait=wait,
            thresholds=np.array(thresholds), saturation=code.saturation_membrane(wait, bit_serial_input),
            signed=bool(signed), divisor_shape=divisor_shape, bit_serial_input=bool(bit_serial_input),
            fire_record=params.shared_array(shape, np.int64, -1),
            saturation_record=params.shared_array(shape, np.bool_, False), divide_free=bool(divide_free),
            code=code, fixed_format=fixed_format, current_exp=current_exp, payload_exp=payload_exp,
            clip_record=clip_record, name=name, log_config=log_config,
        )
        self.code = code
        self.a_in = InPort(shape=shape)
        self.trace_in = InPort(shape=(1,))
        self.s_out = OutPort(shape=shape)
        self.trace_out = OutPort(shape=shape)
        self.v_out = OutPort(shape=shape)
        self.div_in = InPort(shape=(1,) if divisor_shape is None else divisor_shape)
        self.v = Var(shape=shape, init=0.0)
        self.fired = Var(shape=shape, init=False)
        self.fire_step = Var(shape=shape, init=-1)
        self.sign = Var(shape=shape, init=0.0)
        self.latched = Var(shape=shape, init=0.0)

    @property
    def start(self) -> int:
        return int(self.proc_params["start"])

    @property
    def wait(self) -> int:
        return int(self.proc_params["wait"])

    @property
    def fire_start(self) -> int:
        """First step of the fire window."""
        return self.start + self.wait

    @property
    def end(self) -> int:
        """First step after the fire window."""
        return self.start + self.wait + self.code.timesteps

    def recorded_fire_steps(self) -> np.ndarray:
        """Fire step of every neuron in the last run (−1: silent), shape ``shape``."""
        return np.array(self.proc_params["fire_record"], copy=True)

    @property
    def current_exp(self) -> int | None:
        """fixed_pt: a_in carries integer currents in units of 2^current_exp (None: not configured)."""
        return self.proc_params["current_exp"]

    @property
    def payload_exp(self) -> int | None:
        """fixed_pt: s_out carries sign·round(scale/2^payload_exp) (None: not configured)."""
        return self.proc_params["payload_exp"]

    def recorded_clips(self) -> np.ndarray:
        """fixed_pt: per neuron, how many integer updates were clipped to the state range."""
        if self.proc_params["clip_record"] is None:
            raise ValueError("PhaseNeuron: built without a fixed-point format (no clip record)")
        return np.array(self.proc_params["clip_record"], copy=True)

    def recorded_saturation(self) -> np.ndarray:
        """Neurons whose value exceeded the top level in the last run (clipped), shape ``shape``."""
        return np.array(self.proc_params["saturation_record"], copy=True)


def _exponent(owner: str, name: str, value: ty.Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}: {name} must be an int (a power-of-two exponent), got {value!r}")
    return int(value)
