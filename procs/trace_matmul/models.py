"""ProcessModels of TraceMatMul (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul


@implements(proc=TraceMatMul, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceMatMulModelFloat(PyLoihiProcessModel):
    """The three-term rule (``dynamics.trace_product``) on whole tensors."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    b_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    b_trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self) -> None:
        out = dynamics.trace_matmul(self.proc_params, self.time_step - 1, self.a_in.recv(), self.a_trace_in.recv(),
                                    self.b_in.recv(), self.b_trace_in.recv())
        self.a_out.send(out)


@implements(proc=TraceMatMul, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceMatMulModelFixed(PyLoihiProcessModel):
    """``dynamics_fixed.trace_matmul_fixed``: integer payloads and traces in, 24-bit currents out."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    b_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    b_trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedMatMulParams.from_proc_params(proc_params)
        proc_params["clip_record"][0] += self.params.bias_clips

    def run_spk(self) -> None:
        p = self.proc_params
        out = dynamics_fixed.trace_matmul_fixed(p, self.params, self.time_step - 1, self.a_in.recv(),
                                                self.a_trace_in.recv(), self.b_in.recv(), self.b_trace_in.recv(),
                                                p["clip_record"])
        self.a_out.send(out)
