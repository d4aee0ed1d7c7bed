"""ProcessModels of Circuit: decomposed (SubProcessModel) and fused (one process, numpy only)."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import fused, graph
from lava_spikedattn.procs.circuit.process import Circuit
from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, OUT, TypedProcessModel


@implements(proc=Circuit, protocol=AsyncProtocol)
@tag("floating_pt", "fixed_pt")
class SubCircuitModel(AbstractSubProcessModel):
    """Decomposed: the members run as their own Lava processes (the porting path), each with
    the model of the run's tag."""

    def __init__(self, proc: Circuit) -> None:
        p = proc.proc_params
        for i, member in enumerate(p["members"]):  # Lava finds sub-processes among attributes
            setattr(self, f"member_{i}", member)
        for port in p["feeds"]:
            proc.in_ports.s_in.connect(port)
        for port in p["trace_feeds"]:
            proc.in_ports.trace_in.connect(port)
        p["output"].connect(proc.out_ports.s_out)


class AbstractCircuitModelFused(TypedProcessModel):
    """Every member stepped in this one process by ``fused.Stepper``, in dependency order; the
    models differ in the members' arithmetic (``dynamics`` or ``dynamics_fixed``)."""

    ports: ty.ClassVar = {"s_in": IN, "trace_in": IN, "s_out": OUT}

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.stepper = self._stepper()
        self.output = id(proc_params["output"])

    def _stepper(self) -> fused.Stepper:
        members = self.proc_params["members"]
        sources = graph.member_sources(members, {"s_in": self.proc_params["feeds"],
                                                 "trace_in": self.proc_params["trace_feeds"]})
        external = {name: window for name, window in self.windows.items() if name in ("s_in", "trace_in")}
        return fused.Stepper(members, sources, fixed=self.precision == FIXED, external_windows=external)

    def _state(self) -> dict[str, np.ndarray]:
        """None besides the stepper: its members' state lives in it, their records are set back
        when it is built."""
        return {}

    def reset(self) -> None:
        """A new stepper: fresh member state and records."""
        self.stepper = self._stepper()
        super().reset()

    def run_spk(self) -> None:
        t = self.begin_step()
        external = {name: self.receive_nonzero(name) for name in ("s_in", "trace_in")}
        out = self.stepper.step(t, external).get(self.output)
        self.emit("s_out", lambda: np.zeros(self.s_out.shape) if out is None else out)


@implements(proc=Circuit, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyCircuitModelFused(AbstractCircuitModelFused, precision=FLOAT):
    """Fused, floating point: the members' ``dynamics`` updates."""


@implements(proc=Circuit, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyCircuitModelFusedFixed(AbstractCircuitModelFused, precision=FIXED):
    """Fused, fixed point: the members' ``dynamics_fixed`` updates (24-bit payloads at the ports)."""
