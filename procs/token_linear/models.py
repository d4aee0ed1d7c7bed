"""ProcessModels of TokenLinear (numpy only)."""

import typing as ty

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, OUT, TypedProcessModel
from lava_spikedattn.procs.token_linear.process import TokenLinear


class AbstractTokenLinearModel(TypedProcessModel):
    """Ports of TokenLinear; the models differ in arithmetic only."""

    ports: ty.ClassVar = {"s_in": IN, "a_out": OUT}


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTokenLinearModelFloat(AbstractTokenLinearModel, precision=FLOAT):
    """One matmul over the whole tensor per step (graded spikes)."""

    def run_spk(self) -> None:
        p = self.proc_params
        out = dynamics.token_linear(self.s_in.recv(), p["weight_t"], p["in_index"], p["out_index"],
                                    dynamics.window_bias(p["injected_bias"], self.time_step - 1,
                                                         p["bias_start"], p["timesteps"]))
        self.a_out.send(out)


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTokenLinearModelFixed(AbstractTokenLinearModel, precision=FIXED):
    """``dynamics_fixed.token_linear_fixed``: 8-bit weight mantissas, integer payloads in, 24-bit currents out."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedLinearParams.from_proc_params(proc_params)
        proc_params["clip_record"][0] += self.params.bias_clips

    def run_spk(self) -> None:
        p = self.proc_params
        bias_on = dynamics.bias_on(self.time_step - 1, p["bias_start"], p["timesteps"])
        out = dynamics_fixed.token_linear_fixed(self.s_in.recv(), self.params, p["in_index"], p["out_index"],
                                                bias_on, p["clip_record"])
        self.a_out.send(out)
