"""TraceHolder Process: the global trace that phase neurons latch at their first spike."""

from __future__ import annotations

from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import params


class TraceHolder(AbstractProcess):
    """One global trace per network (the paper's hardware picture, spec §2)::

        value[t] = trace_start·B^-((t − phase) mod T)      (decays by 1/B per step, reset every T)

    trace_start is 1 (exact) or 1/B (official). With W = T every layer's fire window starts at
    a multiple of T, so one holder with ``phase = 0`` serves the whole pipeline; a neuron whose
    fire window starts elsewhere needs a holder with ``phase = its fire_start``.

    The ``fixed_pt`` model sends the integer table ``round(2^F·trace_start·B^-k)`` instead
    (``fixed_format``: a ``reference.fixed.FixedFormat``, default 16 fraction bits).

    Ports: s_out (1,): the trace value of this step. Var: value (1,).
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(self, *, code: PhaseCode, phase: int = 0, fixed_format: FixedFormat | None = None,
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        code = params.phase_code("TraceHolder", code)
        phase = params.non_negative_int("TraceHolder", "phase", phase)
        fixed_format = FixedFormat() if fixed_format is None else fixed_format
        if not isinstance(fixed_format, FixedFormat):
            raise ValueError(f"TraceHolder: fixed_format must be a reference.fixed.FixedFormat, "
                             f"got {type(fixed_format).__name__}")
        super().__init__(base=code.base, timesteps=code.timesteps, trace_start=code.trace_start,
                         phase=phase, trace_table=fixed_format.trace_table(code), name=name, log_config=log_config)
        self.s_out = OutPort(shape=(1,))
        self.value = Var(shape=(1,), init=code.trace_start)
