"""ProcessModels of TraceMatMul (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, OUT, TypedProcessModel
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul


class AbstractTraceMatMulModel(TypedProcessModel):
    """Ports and step of TraceMatMul; the models differ in the arithmetic of ``_step``."""

    ports: ty.ClassVar = {"a_in": IN, "a_trace_in": IN, "b_in": IN, "b_trace_in": IN, "a_out": OUT}

    def _step(self, t: int, a: np.ndarray, a_hat: np.ndarray, b: np.ndarray, b_hat: np.ndarray) -> np.ndarray:
        """The output currents of step ``t`` (0-based) for the spikes and traces of A and B."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        self.emit("a_out", self._step(t, self.receive("a_in"), self.receive("a_trace_in"),
                                      self.receive("b_in"), self.receive("b_trace_in")))


@implements(proc=TraceMatMul, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceMatMulModelFloat(AbstractTraceMatMulModel, precision=FLOAT):
    """The three-term rule (``dynamics.trace_product``) on whole tensors."""

    def _step(self, t: int, a: np.ndarray, a_hat: np.ndarray, b: np.ndarray, b_hat: np.ndarray) -> np.ndarray:
        return dynamics.trace_matmul(self.proc_params, t, a if a.any() else None, a_hat, b if b.any() else None,
                                     b_hat)


@implements(proc=TraceMatMul, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceMatMulModelFixed(AbstractTraceMatMulModel, precision=FIXED):
    """``dynamics_fixed.trace_matmul_fixed``: integer payloads and traces in, 24-bit currents out."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedMatMulParams.from_proc_params(proc_params)
        proc_params["clip_record"][0] += self.params.bias_clips

    def _step(self, t: int, a: np.ndarray, a_hat: np.ndarray, b: np.ndarray, b_hat: np.ndarray) -> np.ndarray:
        p = self.proc_params
        return dynamics_fixed.trace_matmul_fixed(p, self.params, t, a, a_hat, b, b_hat, p["clip_record"])
