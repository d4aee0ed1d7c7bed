"""ProcessModels of TraceMatMul (numpy only)."""

import numpy as np
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
        p = self.proc_params
        a, a_hat = self.a_in.recv(), self.a_trace_in.recv()
        b, b_hat = self.b_in.recv(), self.b_trace_in.recv()
        if p["transpose_b"]:
            b, b_hat = np.swapaxes(b, -1, -2), np.swapaxes(b_hat, -1, -2)
        out = p["factor"] * dynamics.trace_product(a, a_hat, b, b_hat, p["official"])
        out = out + dynamics.window_bias(p["injected_bias"], self.time_step - 1, p["bias_start"], p["timesteps"])
        out = np.broadcast_to(out, p["shape_out"])
        self.a_out.send(out if p["present"] is None else np.where(p["present"], out, 0.0))
