"""CPU model of the test-only Faulty Process."""

import pathlib
import time

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_faulty.process import Faulty, FaultyError, OddError


@implements(proc=Faulty, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFaultyModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._p = proc_params
        if self._p["mode"] == "init":
            raise FaultyError(self._p["message"])

    def run_spk(self) -> None:
        x = self.a_in.recv()
        if self.time_step - 1 == self._p["fail_at"]:
            if self._p["marker"]:
                pathlib.Path(self._p["marker"]).touch()
            if self._p["mode"] == "raise":
                raise FaultyError(self._p["message"])
            if self._p["mode"] == "raise_odd":
                raise OddError(self._p["message"], 7)
            if self._p["mode"] == "hang":
                while True:
                    time.sleep(1.0)
        self.s_out.send(np.asarray(x, dtype=float))

    def _stop(self) -> None:
        if self._p["mode"] == "hang_stop":
            while True:
                time.sleep(1.0)
        super()._stop()
