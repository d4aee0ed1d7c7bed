"""CPU ProcessModels of SpikeSink (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs.model_types import FIXED, FLOAT, IN, TypedProcessModel
from lava_spikedattn.procs.spike_sink.process import SpikeSink


class AbstractSpikeSinkModel(TypedProcessModel):
    """Writes the received tensor into row ``t`` (the step within the input) of the record (float64; integer
    payloads are exact below 2^53). The record is shared with the parent through the inherited
    MAP_SHARED mapping."""

    ports: ty.ClassVar = {"a_in": IN}

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._record: np.ndarray = proc_params["record"]

    def run_spk(self) -> None:
        t = self.begin_step()
        x = self.receive("a_in")
        if t >= self._record.shape[0]:
            raise RuntimeError(f"SpikeSink: step {t} exceeds num_steps={self._record.shape[0]}")
        self._record[t] = x


@implements(proc=SpikeSink, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSinkModelFloat(AbstractSpikeSinkModel, precision=FLOAT):
    """Float tensors."""


@implements(proc=SpikeSink, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSinkModelFixed(AbstractSpikeSinkModel, precision=FIXED):
    """Integer payloads (int32, 24-bit)."""
