"""ProcessModels of TokenLinear (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.token_linear.process import TokenLinear


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTokenLinearModelFloat(PyLoihiProcessModel):
    """One matmul over the whole tensor per step (graded spikes)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self) -> None:
        p = self.proc_params
        out = dynamics.token_linear(self.s_in.recv(), p["weight_t"], p["in_index"], p["out_index"],
                                    dynamics.window_bias(p["injected_bias"], self.time_step - 1,
                                                         p["bias_start"], p["timesteps"]))
        self.a_out.send(out)


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTokenLinearModelFixed(PyLoihiProcessModel):
    """``dynamics_fixed.token_linear_fixed``: 8-bit weight mantissas, integer payloads in, 24-bit currents out."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedLinearParams.from_proc_params(proc_params)
        proc_params["clip_record"][0] += self.params.bias_clips

    def run_spk(self) -> None:
        p = self.proc_params
        bias_on = 0 <= self.time_step - 1 - p["bias_start"] < p["timesteps"]
        out = dynamics_fixed.token_linear_fixed(self.s_in.recv(), self.params, p["in_index"], p["out_index"],
                                                bias_on, p["clip_record"])
        self.a_out.send(out)
