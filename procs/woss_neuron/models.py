"""ProcessModels of WossNeuron (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


@implements(proc=WossNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossNeuronModelFloat(PyLoihiProcessModel):
    """``dynamics.woss_neuron_step``: the neuron part of ``reference.stepped.WOSSSim``."""

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

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = woss_params(proc_params)

    def run_spk(self) -> None:
        x, shift = self.a_in.recv(), self.shift_in.recv()
        theta, trace = self.theta_in.recv()[0], self.trace_in.recv()[0]
        spikes = dynamics.woss_neuron_step(self.v, self.fired, self.latched, self.fire_step, self.params,
                                           self.time_step - 1, x, shift, theta, trace)
        self.proc_params["fire_record"][...] = self.fire_step
        self.s_out.send(spikes)
        self.trace_out.send(self.latched.copy())
        self.v_out.send(self.v.copy())


@implements(proc=WossNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWossNeuronModelFixed(PyLoihiProcessModel):
    """``dynamics_fixed.woss_neuron_step_fixed``: the neuron part of ``reference.fixed.FixedWossSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    shift_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    theta_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    trace_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    fired: np.ndarray = LavaPyType(np.ndarray, bool)
    fire_step: np.ndarray = LavaPyType(np.ndarray, int)
    latched: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedWossParams.from_proc_params(proc_params)
        self._clips = np.zeros(proc_params["shape"], np.int64)

    def run_spk(self) -> None:
        x, shift = self.a_in.recv(), self.shift_in.recv().astype(np.int64)
        theta, trace = int(self.theta_in.recv()[0]), int(self.trace_in.recv()[0])
        spikes = dynamics_fixed.woss_neuron_step_fixed(self.v, self.fired, self.latched, self.fire_step, self._clips,
                                                       self.params, self.time_step - 1, x, shift, theta, trace)
        self.proc_params["fire_record"][...] = self.fire_step
        self.proc_params["clip_record"][0] = self._clips.sum()
        self.s_out.send(spikes)
        self.trace_out.send(self.latched.copy())
        self.v_out.send(self.v.copy())


def woss_params(p) -> dynamics.WossParams:
    """WossParams from the proc_params of a WossNeuron or WossInhibitor."""
    return dynamics.WossParams(base=p["base"], timesteps=p["timesteps"], start=p["start"], wait=p["wait"],
                               slope=p["slope"], theta0=p["theta0"], present=p["present"])
