"""ProcessModels of TraceHolder (numpy only)."""

import typing as ty

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, OUT, VALUE, TypedProcessModel
from lava_spikedattn.procs.trace_holder.process import TraceHolder


class AbstractTraceHolderModel(TypedProcessModel):
    """Port and Var of TraceHolder; the models differ in arithmetic only."""

    ports: ty.ClassVar = {"s_out": OUT}
    variables: ty.ClassVar = {"value": VALUE}


@implements(proc=TraceHolder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceHolderModelFloat(AbstractTraceHolderModel, precision=FLOAT):
    """``dynamics.global_trace``: decays by 1/B per step, back to trace_start every T steps."""

    def run_spk(self) -> None:
        p = self.proc_params
        self.value[:] = dynamics.global_trace(self.time_step - 1, p["phase"], p["timesteps"], p["base"],
                                              p["trace_start"])
        self.s_out.send(self.value.copy())


@implements(proc=TraceHolder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceHolderModelFixed(AbstractTraceHolderModel, precision=FIXED):
    """``dynamics_fixed.trace_value``: the integer table round(2^F·trace_start·B^-k), k = (t − phase) mod T."""

    def run_spk(self) -> None:
        p = self.proc_params
        self.value[:] = dynamics_fixed.trace_value(p["trace_table"], self.time_step - 1, p["phase"])
        self.s_out.send(self.value.copy())
