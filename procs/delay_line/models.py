"""ProcessModels of DelayLine (numpy only)."""

import typing as ty

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, OUT, VALUE, TypedProcessModel


class AbstractDelayLineModel(TypedProcessModel):
    """Ports and buffer of DelayLine. Both precisions run the same ring buffer: the slot of step
    t is sent, then overwritten with this step's input (``dynamics.delay_*``)."""

    ports: ty.ClassVar = {"s_in": IN, "a_out": OUT}
    variables: ty.ClassVar = {"buffer": VALUE}

    def run_spk(self) -> None:
        t = self.begin_step()
        self.emit("a_out", dynamics.delay_output(self.buffer, t))
        dynamics.delay_input(self.buffer, t, self.receive("s_in"))


@implements(proc=DelayLine, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDelayLineModelFloat(AbstractDelayLineModel, precision=FLOAT):
    """Float values."""


@implements(proc=DelayLine, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineModelFixed(AbstractDelayLineModel, precision=FIXED):
    """Integer payloads (24-bit)."""
