"""Lava Processes of SpikedAttention (imported as ``lava_spikedattn.procs``)."""

import multiprocessing as _mp

# Lava's message infrastructure calls ``multiprocessing.set_start_method("fork")`` when it is
# imported, which raises "context has already been set" if anything fixed the start method
# before (a ``get_start_method()`` call, torch's DataLoader workers). Lava needs "fork" anyway:
# un-fix it, so that importing Lava works in any order.
if _mp.get_start_method(allow_none=True) == "fork":
    _mp.set_start_method(None, force=True)


from lava_spikedattn.procs.circuit.process import Circuit  # noqa: E402 (after the start-method fix)
from lava_spikedattn.procs.delay_line.process import DelayLine  # noqa: E402
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron  # noqa: E402
from lava_spikedattn.procs.spike_sink.process import SpikeSink  # noqa: E402
from lava_spikedattn.procs.spike_source.process import SpikeSource  # noqa: E402
from lava_spikedattn.procs.token_linear.process import TokenLinear  # noqa: E402
from lava_spikedattn.procs.trace_holder.process import TraceHolder  # noqa: E402
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul  # noqa: E402
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor  # noqa: E402
from lava_spikedattn.procs.woss_neuron.process import WossNeuron  # noqa: E402

__all__ = ["Circuit", "DelayLine", "PhaseNeuron", "SpikeSink", "SpikeSource", "TokenLinear", "TraceHolder",
           "TraceMatMul", "WossInhibitor", "WossNeuron"]
