"""ProcessModels of WossInhibitor (numpy only)."""

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics, dynamics_fixed
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.models import woss_params


@implements(proc=WossInhibitor, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWossInhibitorModelFloat(PyLoihiProcessModel):
    """Row shift, threshold ramp and spike sum of ``reference.stepped.WOSSSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    shift_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    theta_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    norm_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    open: np.ndarray = LavaPyType(np.ndarray, bool)
    theta: np.ndarray = LavaPyType(np.ndarray, float)
    spike_sum: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = woss_params(proc_params)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.shift_out.send(dynamics.woss_shift(self.open, self.params, t, self.a_in.recv()))
        self.theta_out.send(np.array([dynamics.woss_threshold(self.theta, self.params, t)]))
        self.spike_sum[:] = self.trace_in.recv().sum(axis=-1, keepdims=True)
        self.norm_out.send(self.spike_sum.copy())


@implements(proc=WossInhibitor, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWossInhibitorModelFixed(PyLoihiProcessModel):
    """Integer row shift, ramp and spike sum of ``reference.fixed.FixedWossSim``."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    shift_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    theta_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    norm_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    open: np.ndarray = LavaPyType(np.ndarray, bool)
    theta: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    spike_sum: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.params = dynamics_fixed.FixedWossParams.from_proc_params(proc_params)

    def run_spk(self) -> None:
        t = self.time_step - 1
        self.shift_out.send(dynamics_fixed.woss_shift_fixed(self.open, self.params, t, self.a_in.recv()))
        self.theta_out.send(np.array([dynamics_fixed.woss_threshold_fixed(self.theta, self.params, t)]))
        self.spike_sum[:] = dynamics_fixed.woss_spike_sum_fixed(self.trace_in.recv(), self.params,
                                                                self.proc_params["clip_record"])
        self.norm_out.send(self.spike_sum.copy())
