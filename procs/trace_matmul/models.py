"""ProcessModels of TraceMatMul (numpy only)."""

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics
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
