"""ProcessModels of WossInhibitor (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor


@implements(proc=WossInhibitor, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossInhibitorModelFloat(PyLoihiProcessModel):
    """Row shift, threshold ramp and spike sum of ``reference.stepped.WOSSSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    shift_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    theta_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    norm_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    open: np.ndarray = LavaPyType(np.ndarray, bool)
    theta: np.ndarray = LavaPyType(np.ndarray, float)
    spike_sum: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        p = self.proc_params
        x = self.a_in.recv()
        t_rel = self.time_step - 1 - p["start"]
        shift = np.zeros(self.open.shape)
        if 0 <= t_rel < p["timesteps"]:
            m = x.max(axis=-1, keepdims=True)
            shift = m * self.open
            self.open[m > 0] = False
        self.shift_out.send(shift)
        k = t_rel - p["wait"]
        if 0 <= k < p["timesteps"]:
            self.theta[:] = p["theta0"] - k * p["slope"]
        self.theta_out.send(self.theta.copy())
        self.spike_sum[:] = self.trace_in.recv().sum(axis=-1, keepdims=True)
        self.norm_out.send(self.spike_sum.copy())
