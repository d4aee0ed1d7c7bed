"""CPU ProcessModel of SpikeSource (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics_fixed
from lava_spikedattn.procs.spike_source.process import SpikeSource


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSourceModelFloat(PyLoihiProcessModel):
    """Sends ``data[time_step - 1]`` each step, zeros after the data ends."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._data: np.ndarray = proc_params["data"]
        self._zeros = np.zeros(self._data.shape[1:], dtype=np.float64)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.s_out.send(self._data[t] if t < self._data.shape[0]
                        else self._zeros)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceModelFixed(PyLoihiProcessModel):
    """Integer payloads: ``data[time_step - 1]`` as int32 (24-bit), zeros after the data ends.

    The data must hold integers in [−2^23, 2^23 − 1]; anything else raises (no silent rounding).
    """

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        data = dynamics_fixed.integer_payloads(proc_params["data"])
        self._data = data.astype(np.int32)
        self._zeros = np.zeros(data.shape[1:], dtype=np.int32)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.s_out.send(self._data[t] if t < self._data.shape[0] else self._zeros)
