"""ProcessModels of WossNeuron (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs.woss_neuron.process import WossNeuron


@implements(proc=WossNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossNeuronModelFloat(PyLoihiProcessModel):
    """Mirrors the neuron part of ``reference.stepped.WOSSSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    shift_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    theta_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    trace_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    fired: np.ndarray = LavaPyType(np.ndarray, bool)
    fire_step: np.ndarray = LavaPyType(np.ndarray, int)
    latched: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        p = self.proc_params
        x, shift = self.a_in.recv(), self.shift_in.recv()
        theta, trace = self.theta_in.recv()[0], self.trace_in.recv()[0]
        t_rel = self.time_step - 1 - p["start"]
        spikes = np.zeros_like(self.v)
        if 0 <= t_rel < p["timesteps"]:
            self.v[:] = p["base"] * self.v + (x - shift)
        if p["wait"] <= t_rel < p["wait"] + p["timesteps"]:
            new = (self.v >= theta) & ~self.fired
            self.latched[new] = trace
            self.fire_step[new] = t_rel - p["wait"]
            self.fired[new] = True
            spikes = new.astype(float)
        self.s_out.send(spikes)
        self.trace_out.send(self.latched.copy())
        self.v_out.send(self.v.copy())
