"""CPU ProcessModels of SpikeSource (numpy only)."""

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics_fixed
from lava_spikedattn.procs.model_types import FIXED, FLOAT, OUT, TypedProcessModel
from lava_spikedattn.procs.spike_source.process import SpikeSource


class AbstractSpikeSourceModel(TypedProcessModel):
    """Sends ``data[time_step - 1]`` each step, zeros after the data ends; the models differ in
    how they read the data."""

    ports: ty.ClassVar = {"s_out": OUT}
    _data: np.ndarray
    _zeros: np.ndarray

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.s_out.send(self._data[t] if t < self._data.shape[0] else self._zeros)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSourceModelFloat(AbstractSpikeSourceModel, precision=FLOAT):
    """The data as float64."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._data = proc_params["data"]
        self._zeros = np.zeros(self._data.shape[1:], dtype=np.float64)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceModelFixed(AbstractSpikeSourceModel, precision=FIXED):
    """Integer payloads as int32 (24-bit). The data must hold integers in [−2^23, 2^23 − 1];
    anything else raises (no silent rounding)."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        data = dynamics_fixed.integer_payloads(proc_params["data"])
        self._data = data.astype(np.int32)
        self._zeros = np.zeros(data.shape[1:], dtype=np.int32)
