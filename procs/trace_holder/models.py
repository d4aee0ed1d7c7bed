"""ProcessModels of TraceHolder (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs.trace_holder.process import TraceHolder


@implements(proc=TraceHolder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceHolderModelFloat(PyLoihiProcessModel):
    """Decays by 1/B per step and returns to trace_start every T steps."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    value: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        p = self.proc_params
        k = (self.time_step - 1 - p["phase"]) % p["timesteps"]
        if k == 0:
            self.value[:] = p["trace_start"]
        elif self.time_step == 1:  # first step inside a period: start from its phase
            self.value[:] = p["trace_start"] * p["base"] ** -k
        else:
            self.value[:] = self.value / p["base"]
        self.s_out.send(self.value.copy())
