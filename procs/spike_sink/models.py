"""CPU ProcessModel of SpikeSink (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs.spike_sink.process import SpikeSink


@implements(proc=SpikeSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSinkModelFloat(PyLoihiProcessModel):
    """Writes the received tensor into row ``time_step - 1`` of the record."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        # Shared with the parent through the inherited MAP_SHARED mapping.
        self._record: np.ndarray = proc_params["record"]

    def run_spk(self) -> None:
        x = self.a_in.recv()
        t = self.time_step - 1
        if t >= self._record.shape[0]:
            raise RuntimeError(
                f"SpikeSink: step {t} exceeds num_steps="
                f"{self._record.shape[0]}")
        self._record[t] = x


@implements(proc=SpikeSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSinkModelFixed(PyLoihiProcessModel):
    """Integer payloads (int32, 24-bit) written into the float64 record (exact below 2^53)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._record: np.ndarray = proc_params["record"]

    def run_spk(self) -> None:
        x = self.a_in.recv()
        t = self.time_step - 1
        if t >= self._record.shape[0]:
            raise RuntimeError(f"SpikeSink: step {t} exceeds num_steps={self._record.shape[0]}")
        self._record[t] = x
