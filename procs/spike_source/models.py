"""CPU ProcessModels of SpikeSource (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol

from lava_spikedattn.procs import dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, OUT, TypedProcessModel
from lava_spikedattn.procs.spike_source.process import SpikeSource


class AbstractSpikeSourceModel(TypedProcessModel):
    """Sends ``data[t]`` at step ``t`` of each input, zeros after the data ends; the models
    differ in the payload type. The data lives in memory shared with the parent and is read
    (and checked) at build and at the start of each input, so ``SpikeSource.load`` changes the
    input of the next run."""

    ports: ty.ClassVar = {"s_out": OUT}

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._data: np.ndarray = proc_params["data"]
        self._zeros = np.zeros(self._data.shape[1:], dtype=self.precision.value)
        self._rows = self._payloads(self._data)  # checked at build, as each new input is

    def _payloads(self, data: np.ndarray) -> np.ndarray:
        """The payloads of every step of the data."""
        raise NotImplementedError

    def run_spk(self) -> None:
        t = self.begin_step()
        if t == 0 and self.time_step > 1:  # a new input (SpikeSource.load) in the shared data
            self._rows = self._payloads(self._data)
        self.emit("s_out", self._rows[t] if t < self._rows.shape[0] else self._zeros)


@implements(proc=SpikeSource, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSourceModelFloat(AbstractSpikeSourceModel, precision=FLOAT):
    """The data as float64."""

    def _payloads(self, data: np.ndarray) -> np.ndarray:
        return data


@implements(proc=SpikeSource, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceModelFixed(AbstractSpikeSourceModel, precision=FIXED):
    """Integer payloads as int32 (24-bit). The data must hold integers in [−2^23, 2^23 − 1];
    anything else raises (no silent rounding)."""

    def _payloads(self, data: np.ndarray) -> np.ndarray:
        return dynamics_fixed.integer_payloads(data).astype(np.int32)
