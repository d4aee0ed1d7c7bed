"""ProcessModels of WossInhibitor (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLAG, FLOAT, IN, OUT, VALUE, TypedProcessModel
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor


class AbstractWossInhibitorModel(TypedProcessModel):
    """Ports, Vars and step of WossInhibitor; the models differ in the arithmetic of ``_shift``,
    ``_threshold`` and ``_spike_sum``."""

    ports: ty.ClassVar = {"a_in": IN, "trace_in": IN, "shift_out": OUT, "theta_out": OUT, "norm_out": OUT}
    variables: ty.ClassVar = {"open": FLAG, "theta": VALUE, "spike_sum": VALUE}

    def _shift(self, t: int, x: np.ndarray) -> np.ndarray:
        """The row shift of step ``t`` (closes the rows that spiked)."""
        raise NotImplementedError

    def _threshold(self, t: int) -> float | int:
        """The ramp threshold of step ``t`` (updates ``theta``)."""
        raise NotImplementedError

    def _spike_sum(self, trace: np.ndarray) -> np.ndarray:
        """The row sums of the WOSS trace (the normaliser S)."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        self.emit("shift_out", self._shift(t, self.receive("a_in")))
        self.emit("theta_out", np.array([self._threshold(t)]))
        self.spike_sum[:] = self._spike_sum(self.receive("trace_in"))
        self.emit("norm_out", self.spike_sum.copy)


@implements(proc=WossInhibitor, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossInhibitorModelFloat(AbstractWossInhibitorModel, precision=FLOAT):
    """Row shift, threshold ramp and spike sum of ``reference.stepped.WOSSSim``."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics.WossParams.from_proc_params(proc_params)

    def _shift(self, t: int, x: np.ndarray) -> np.ndarray:
        return dynamics.woss_shift(self.open, self.params, t, x)

    def _threshold(self, t: int) -> float:
        return dynamics.woss_threshold(self.theta, self.params, t)

    def _spike_sum(self, trace: np.ndarray) -> np.ndarray:
        return trace.sum(axis=-1, keepdims=True)


@implements(proc=WossInhibitor, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWossInhibitorModelFixed(AbstractWossInhibitorModel, precision=FIXED):
    """Integer row shift, ramp and spike sum of ``reference.fixed.FixedWossSim``."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedWossParams.from_proc_params(proc_params)

    def _shift(self, t: int, x: np.ndarray) -> np.ndarray:
        return dynamics_fixed.woss_shift_fixed(self.open, self.params, t, x)

    def _threshold(self, t: int) -> int:
        return dynamics_fixed.woss_threshold_fixed(self.theta, self.params, t)

    def _spike_sum(self, trace: np.ndarray) -> np.ndarray:
        return dynamics_fixed.woss_spike_sum_fixed(trace, self.params, self.proc_params["clip_record"])
