"""ProcessModels of TokenLinear (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, OUT, TypedProcessModel
from lava_spikedattn.procs.token_linear.process import TokenLinear


class AbstractTokenLinearModel(TypedProcessModel):
    """Ports and step of TokenLinear; the models differ in the arithmetic of ``_step``."""

    ports: ty.ClassVar = {"s_in": IN, "a_out": OUT}

    def _step(self, t: int, x: np.ndarray) -> np.ndarray:
        """The output currents of step ``t`` (0-based) for the input spikes ``x``."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        self.emit("a_out", self._step(t, self.receive("s_in")))


@implements(proc=TokenLinear, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTokenLinearModelFloat(AbstractTokenLinearModel, precision=FLOAT):
    """One event-driven product per step (``dynamics.token_linear``): a weight row per input spike."""

    def _step(self, t: int, x: np.ndarray) -> np.ndarray:
        p = self.proc_params
        bias = dynamics.window_bias(p["injected_bias"], t, p["bias_start"], p["timesteps"])
        return dynamics.token_linear(x, p["weight_t"], p["in_index"], p["out_index"], bias)


@implements(proc=TokenLinear, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTokenLinearModelFixed(AbstractTokenLinearModel, precision=FIXED):
    """``dynamics_fixed.token_linear_fixed``: 8-bit weight mantissas, integer payloads in, 24-bit currents out."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedLinearParams.from_proc_params(proc_params)
        proc_params["clip_record"][0] += self.params.bias_clips

    def _step(self, t: int, x: np.ndarray) -> np.ndarray:
        p = self.proc_params
        return dynamics_fixed.token_linear_fixed(x, self.params, p["in_index"], p["out_index"],
                                                 dynamics.bias_on(t, p["bias_start"], p["timesteps"]),
                                                 p["clip_record"])
