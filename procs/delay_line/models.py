"""ProcessModels of DelayLine (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics
from lava_spikedattn.procs.delay_line.process import DelayLine


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDelayLineModelFloat(PyLoihiProcessModel):
    """Ring buffer: the slot of step t is sent, then overwritten with this step's input."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    buffer: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.a_out.send(dynamics.delay_output(self.buffer, t))
        dynamics.delay_input(self.buffer, t, self.s_in.recv())


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineModelFixed(PyLoihiProcessModel):
    """Integer ring buffer (24-bit payloads), same ``dynamics`` slot functions as the float model."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    buffer: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.a_out.send(dynamics.delay_output(self.buffer, t))
        dynamics.delay_input(self.buffer, t, self.s_in.recv())
