"""ProcessModels of WossNeuron (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLAG, FLOAT, IN, OUT, STEP, VALUE, TypedProcessModel
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


class AbstractWossNeuronModel(TypedProcessModel):
    """Ports and Vars of WossNeuron; the models differ in arithmetic only."""

    ports: ty.ClassVar = {"a_in": IN, "shift_in": IN, "theta_in": IN, "trace_in": IN,
                          "s_out": OUT, "trace_out": OUT, "v_out": OUT}
    variables: ty.ClassVar = {"v": VALUE, "fired": FLAG, "fire_step": STEP, "latched": VALUE}


@implements(proc=WossNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossNeuronModelFloat(AbstractWossNeuronModel, precision=FLOAT):
    """``dynamics.woss_neuron_step``: the neuron part of ``reference.stepped.WOSSSim``."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics.WossParams.from_proc_params(proc_params)

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
class PyWossNeuronModelFixed(AbstractWossNeuronModel, precision=FIXED):
    """``dynamics_fixed.woss_neuron_step_fixed``: the neuron part of ``reference.fixed.FixedWossSim``."""

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
