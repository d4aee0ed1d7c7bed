"""ProcessModels of PhaseNeuron (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron


@implements(proc=PhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPhaseNeuronModelFloat(PyLoihiProcessModel):
    """float64 phase neurons: ``dynamics.phase_step`` (mirrors ``reference.stepped.PhaseNeuronSim``)."""

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
        self.params = dynamics.PhaseParams.from_proc_params(proc_params)
        # divide_free: the row divisor latched at the fire-window start (a model attribute, not a Var)
        self._divisor = np.zeros(proc_params["shape"]) if self.params.divide_free else None

    def run_spk(self) -> None:
        x, trace, divisor = self.a_in.recv(), self.trace_in.recv()[0], self.div_in.recv()
        state = dynamics.PhaseState(self.v, self.fired, self.sign, self.latched, self.fire_step,
                                    self.proc_params["saturation_record"], self._divisor)
        spikes = dynamics.phase_step(state, self.params, self.time_step - 1, x, trace, divisor)
        self.proc_params["fire_record"][...] = self.fire_step
        self.s_out.send(spikes)
        self.trace_out.send(state.decoded(self.params.scale))
        self.v_out.send(self.v.copy())


@implements(proc=PhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPhaseNeuronModelFixed(PyLoihiProcessModel):
    """Integer phase neurons: ``dynamics_fixed.phase_step_fixed`` (mirrors
    ``reference.fixed.FixedPhaseNeuronSim``): 24-bit state, decaying integer thresholds, payload
    spikes, thresholds scaled by the integer spike sum for normalised neurons (no divider)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    div_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    trace_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    fired: np.ndarray = LavaPyType(np.ndarray, bool)
    fire_step: np.ndarray = LavaPyType(np.ndarray, int)
    sign: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=2)
    latched: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        if proc_params["clip_record"] is None:
            raise ValueError("PhaseNeuron fixed_pt: build the Process with fixed_format (or current_exp)")
        self.params = dynamics_fixed.FixedPhaseParams.from_proc_params(proc_params)
        self._divisor = np.zeros(proc_params["shape"], np.int64)

    def run_spk(self) -> None:
        x, trace, divisor = self.a_in.recv(), int(self.trace_in.recv()[0]), self.div_in.recv()
        state = dynamics_fixed.FixedPhaseState(self.v, self.fired, self.sign, self.latched, self.fire_step,
                                               self.proc_params["saturation_record"],
                                               self.proc_params["clip_record"], self._divisor)
        spikes = dynamics_fixed.phase_step_fixed(state, self.params, self.time_step - 1, x, trace, divisor)
        self.proc_params["fire_record"][...] = self.fire_step
        self.s_out.send(spikes)
        self.trace_out.send(dynamics_fixed.decoded_fixed(state, self.params))
        self.v_out.send(self.v.copy())
