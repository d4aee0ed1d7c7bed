"""ProcessModels of PhaseNeuron (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLAG, FLOAT, IN, OUT, SIGN, STEP, VALUE, TypedProcessModel
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron


class AbstractPhaseNeuronModel(TypedProcessModel):
    """Ports, Vars and step of PhaseNeuron; the models differ in the arithmetic of ``_step``."""

    ports: ty.ClassVar = {"a_in": IN, "trace_in": IN, "div_in": IN, "s_out": OUT, "trace_out": OUT, "v_out": OUT}
    variables: ty.ClassVar = {"v": VALUE, "fired": FLAG, "fire_step": STEP, "sign": SIGN, "latched": VALUE}
    transient = ("_divisor",)

    def _step(self, t: int, x: np.ndarray, trace: np.generic, divisor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance the Vars to step ``t`` (0-based); returns (spikes, decoded trace)."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        spikes, decoded = self._step(t, self.receive("a_in"), self.receive("trace_in")[0],
                                     self.receive("div_in"))
        self.proc_params["fire_record"][...] = self.fire_step
        self.emit("s_out", spikes)
        self.emit("trace_out", decoded)
        self.emit("v_out", self.v.copy)


@implements(proc=PhaseNeuron, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPhaseNeuronModelFloat(AbstractPhaseNeuronModel, precision=FLOAT):
    """float64 phase neurons: ``dynamics.phase_step`` (mirrors ``reference.stepped.PhaseNeuronSim``)."""

    transient = ("_divisor", "_trace")

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics.PhaseParams.from_proc_params(proc_params)
        # divide_free: the row divisor latched at the fire-window start (a model attribute, not a Var)
        self._divisor = np.zeros(proc_params["shape"]) if self.params.divide_free else None
        self._trace = np.zeros(proc_params["shape"])  # the decoded trace, kept by phase_step

    def _step(self, t: int, x: np.ndarray, trace: np.generic, divisor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = dynamics.PhaseState(self.v, self.fired, self.sign, self.latched, self.fire_step,
                                    self.proc_params["saturation_record"], self._trace, self._divisor)
        spikes = dynamics.phase_step(state, self.params, t, x, trace, divisor)
        return (self._zeros(self.s_out) if spikes is None else spikes), self._trace


@implements(proc=PhaseNeuron, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPhaseNeuronModelFixed(AbstractPhaseNeuronModel, precision=FIXED):
    """Integer phase neurons: ``dynamics_fixed.phase_step_fixed`` (mirrors
    ``reference.fixed.FixedPhaseNeuronSim``): 24-bit state, decaying integer thresholds, payload
    spikes, thresholds scaled by the integer spike sum for normalised neurons (no divider)."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        if proc_params["clip_record"] is None:
            raise ValueError("PhaseNeuron fixed_pt: build the Process with fixed_format (or current_exp)")
        self.params = dynamics_fixed.FixedPhaseParams.from_proc_params(proc_params)
        self._divisor = np.zeros(proc_params["shape"], np.int64)

    def _step(self, t: int, x: np.ndarray, trace: np.generic, divisor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = dynamics_fixed.FixedPhaseState(self.v, self.fired, self.sign, self.latched, self.fire_step,
                                               self.proc_params["saturation_record"],
                                               self.proc_params["clip_record"], self._divisor)
        spikes = dynamics_fixed.phase_step_fixed(state, self.params, t, x, int(trace), divisor)
        return spikes, dynamics_fixed.decoded_fixed(state, self.params)
