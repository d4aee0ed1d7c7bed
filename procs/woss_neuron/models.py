"""ProcessModels of WossNeuron (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLAG, FLOAT, IN, OUT, STEP, VALUE, TypedProcessModel
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


class AbstractWossNeuronModel(TypedProcessModel):
    """Ports, Vars and step of WossNeuron; the models differ in the arithmetic of ``_step``."""

    ports: ty.ClassVar = {"a_in": IN, "shift_in": IN, "theta_in": IN, "trace_in": IN,
                          "s_out": OUT, "trace_out": OUT, "v_out": OUT}
    variables: ty.ClassVar = {"v": VALUE, "fired": FLAG, "fire_step": STEP, "latched": VALUE}

    def _step(self, t: int, x: np.ndarray, shift: np.ndarray, theta: np.generic, trace: np.generic) -> np.ndarray:
        """Advance the Vars to step ``t`` (0-based); returns the spikes."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        spikes = self._step(t, self.receive("a_in"), self.receive("shift_in"),
                            self.receive("theta_in")[0], self.receive("trace_in")[0])
        self.proc_params["fire_record"][...] = self.fire_step
        self.emit("s_out", spikes)
        self.emit("trace_out", self.latched.copy)
        self.emit("v_out", self.v.copy)


@implements(proc=WossNeuron, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossNeuronModelFloat(AbstractWossNeuronModel, precision=FLOAT):
    """``dynamics.woss_neuron_step``: the neuron part of ``reference.stepped.WOSSSim``."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics.WossParams.from_proc_params(proc_params)

    def _step(self, t: int, x: np.ndarray, shift: np.ndarray, theta: np.generic, trace: np.generic) -> np.ndarray:
        return dynamics.woss_neuron_step(self.v, self.fired, self.latched, self.fire_step, self.params, t, x, shift,
                                         theta, trace)


@implements(proc=WossNeuron, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWossNeuronModelFixed(AbstractWossNeuronModel, precision=FIXED):
    """``dynamics_fixed.woss_neuron_step_fixed``: the neuron part of ``reference.fixed.FixedWossSim``."""

    transient = ("_clips",)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedWossParams.from_proc_params(proc_params)
        self._clips = np.zeros(proc_params["shape"], np.int64)

    def _step(self, t: int, x: np.ndarray, shift: np.ndarray, theta: np.generic, trace: np.generic) -> np.ndarray:
        spikes = dynamics_fixed.woss_neuron_step_fixed(self.v, self.fired, self.latched, self.fire_step, self._clips,
                                                       self.params, t, x, shift.astype(np.int64), int(theta),
                                                       int(trace))
        self.proc_params["clip_record"][0] = self._clips.sum()
        return spikes
