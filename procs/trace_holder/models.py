"""ProcessModels of TraceHolder (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.trace_holder.process import TraceHolder


@implements(proc=TraceHolder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceHolderModelFloat(PyLoihiProcessModel):
    """``dynamics.global_trace``: decays by 1/B per step, back to trace_start every T steps."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    value: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        p = self.proc_params
        self.value[:] = dynamics.global_trace(self.time_step - 1, p["phase"], p["timesteps"], p["base"],
                                              p["trace_start"])
        self.s_out.send(self.value.copy())


@implements(proc=TraceHolder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceHolderModelFixed(PyLoihiProcessModel):
    """``dynamics_fixed.trace_value``: the integer table round(2^F·trace_start·B^-k), k = (t − phase) mod T."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    value: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        p = self.proc_params
        self.value[:] = dynamics_fixed.trace_value(p["trace_table"], self.time_step - 1, p["phase"])
        self.s_out.send(self.value.copy())
