"""ProcessModels of TraceHolder (numpy only)."""

import typing as ty

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, OUT, VALUE, TypedProcessModel
from lava_spikedattn.procs.trace_holder.process import TraceHolder


class AbstractTraceHolderModel(TypedProcessModel):
    """Port, Var and step of TraceHolder; the models differ in the arithmetic of ``_trace``."""

    ports: ty.ClassVar = {"s_out": OUT}
    variables: ty.ClassVar = {"value": VALUE}

    def _trace(self, t: int) -> float | int:
        """The global trace at step ``t`` (0-based)."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        self.value[:] = self._trace(t)
        self.emit("s_out", self.value.copy)


@implements(proc=TraceHolder, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceHolderModelFloat(AbstractTraceHolderModel, precision=FLOAT):
    """``dynamics.global_trace``: decays by 1/B per step, back to trace_start every T steps."""

    def _trace(self, t: int) -> float:
        p = self.proc_params
        return dynamics.global_trace(t, p["phase"], p["timesteps"], p["base"], p["trace_start"])


@implements(proc=TraceHolder, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceHolderModelFixed(AbstractTraceHolderModel, precision=FIXED):
    """``dynamics_fixed.trace_value``: the integer table round(2^F·trace_start·B^-k), k = (t − phase) mod T."""

    def _trace(self, t: int) -> int:
        return dynamics_fixed.trace_value(self.proc_params["trace_table"], t, self.proc_params["phase"])
