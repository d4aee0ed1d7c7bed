"""ProcessModels of PhaseNeuron (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron


@implements(proc=PhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPhaseNeuronModelFloat(PyLoihiProcessModel):
    """float64 phase neurons; the update mirrors ``reference.stepped.PhaseNeuronSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    div_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    trace_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    fired: np.ndarray = LavaPyType(np.ndarray, bool)
    fire_step: np.ndarray = LavaPyType(np.ndarray, int)
    sign: np.ndarray = LavaPyType(np.ndarray, float)
    latched: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        p = proc_params
        self.scale = p["scale"]
        self.gain, self.timesteps = p["base"], p["timesteps"]
        self.window_start, self.wait, self.threshold = p["start"], p["wait"], p["threshold"]
        self.signed = p["signed"]
        self.normalized = p["divisor_shape"] is not None

    def run_spk(self) -> None:
        x = self.a_in.recv()
        trace = self.trace_in.recv()[0]
        divisor = self.div_in.recv()
        t_rel = self.time_step - 1 - self.window_start
        spikes = np.zeros_like(self.v)
        if 0 <= t_rel < self.timesteps + self.wait:
            if self.normalized and t_rel == self.wait:
                safe = np.where(divisor == 0, 1.0, divisor)
                self.v[:] = np.where(divisor == 0, 0.0, self.v / safe)
            self.v[:] = self.gain * self.v
            if t_rel < self.timesteps:
                self.v[:] = self.v + x / self.scale
            if t_rel >= self.wait:
                spikes = self._fire(t_rel - self.wait, trace)
        self.s_out.send(spikes)
        self.trace_out.send(self.latched * self.sign * self.scale)
        self.v_out.send(self.v.copy())

    def _fire(self, k: int, trace: float) -> np.ndarray:
        s = (self.v >= self.threshold).astype(float)
        if self.signed:
            s -= self.v <= -self.threshold
        s[self.fired] = 0.0
        new = s != 0
        self.latched[new] = trace
        self.sign[new] = s[new]
        self.fire_step[new] = k
        self.fired[new] = True
        return s * self.scale
