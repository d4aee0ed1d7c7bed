"""A whole integer Lava graph stepped from the per-population oracles of :mod:`.fixed`.

``LavaNetwork.simulate`` and the fused Circuit models step a ``fixed_pt`` graph with the same
code (``procs.fused`` calling ``procs.dynamics_fixed``), so their agreement with each other
cannot fail. This module is the independent check: it reads only the graph, i.e. the leaf
Processes, their build-time ``proc_params`` and their connections (``procs.graph.flatten``),
and steps it with one :mod:`lava_spikedattn.reference.fixed` simulator per Process
(:class:`~.fixed.FixedPhaseNeuronSim`, :class:`~.fixed.FixedTokenLinearSim`,
:class:`~.fixed.FixedTraceMatMulSim`, :class:`~.fixed.FixedWossSim` for a WossNeuron and its
WossInhibitor together, :func:`~.fixed.fixed_trace`) and a few plain classes here (source,
sink, delay line). Nothing of ``procs/fused.py``, ``procs/dynamics*.py``,
``procs/spike_kernels.py`` or ``procs/windows.py`` is used, and every port is evaluated in
every step (no quiet-port windows), so a window that cut a message would show as well.

Message timing (Lava 0.10.0, the ``AsyncProtocol`` models of ``procs/*/models.py``): every
Process runs ``num_steps`` steps of receive, update, send, and the k-th ``recv`` of an InPort
returns the sum of the k-th message of each connected OutPort; so what a Process sends in step
t is what its receivers use in step t (same-step delivery). The only Process whose output does
not depend on its input of the same step is the DelayLine (it sends the slot of step t, then
stores its input), and the WOSS neuron and its inhibitor exchange messages within a step (the
inhibitor sends shift and threshold before it receives the neuron's trace), which the one
:class:`~.fixed.FixedWossSim` of the pair reproduces. A step therefore is: every delay line
sends, every other population steps in an order where its sources stepped before it, every
delay line stores its input.
"""

from __future__ import annotations

import typing as ty

import numpy as np
import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.graph import flatten
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron
from lava_spikedattn.reference.fixed import (
    FixedPhaseNeuronSim,
    FixedTokenLinearSim,
    FixedTraceMatMulSim,
    FixedWossSim,
    fixed_trace,
)

if ty.TYPE_CHECKING:
    from lava_spikedattn.builder import Graph

__all__ = ["FixedNetworkSim", "readout_logits", "simulate_fixed_graph"]

Read = ty.Callable[[ty.Any], np.ndarray]  # an InPort → the sum of its sources' messages this step


class _Node:
    """One or two leaf Processes stepped together. ``inputs``: the InPorts whose messages of
    this step :meth:`step` reads; :meth:`step` returns this step's messages by ``id(OutPort)``."""

    inputs: tuple = ()

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def after_step(self, t: int, read: Read) -> None:
        """Runs once every node has sent its step-``t`` messages."""


class _Source(_Node):
    """SpikeSource: ``data[t]`` as integer payloads, zeros after the data."""

    def __init__(self, leaf: SpikeSource) -> None:
        data = np.asarray(leaf.proc_params["data"])
        if not np.array_equal(data, np.rint(data)):
            raise ValueError(f"SpikeSource {leaf.name!r}: fixed point needs integer payloads")
        self.port, self.data = leaf.s_out, data.astype(np.int64)

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        return {id(self.port): self.data[t] if t < len(self.data) else np.zeros(self.data.shape[1:], np.int64)}


class _Sink(_Node):
    """SpikeSink: records what arrives on ``a_in`` in every step."""

    def __init__(self, leaf: SpikeSink) -> None:
        self.inputs = (leaf.a_in,)
        self.record = np.zeros((leaf.num_steps, *leaf.shape), np.int64)

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        self.record[t] = read(self.inputs[0])
        return {}


class _Delay(_Node):
    """DelayLine: sends its input of step t − delay (zeros before), then stores this step's."""

    def __init__(self, leaf: DelayLine) -> None:
        self.leaf = leaf
        self.slots = [np.zeros(leaf.proc_params["shape"], np.int64)] * leaf.proc_params["delay"]

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        return {id(self.leaf.a_out): self.slots[t % len(self.slots)]}

    def after_step(self, t: int, read: Read) -> None:
        self.slots[t % len(self.slots)] = read(self.leaf.s_in)


class _Trace(_Node):
    """TraceHolder: the integer global trace :func:`~.fixed.fixed_trace` of the step."""

    def __init__(self, leaf: TraceHolder, code: PhaseCode, fmt: FixedFormat) -> None:
        self.port, self.code, self.fmt, self.phase = leaf.s_out, code, fmt, leaf.proc_params["phase"]

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        return {id(self.port): np.array([fixed_trace(self.code, self.fmt, t, self.phase)])}


class _Phase(_Node):
    """PhaseNeuron: :class:`~.fixed.FixedPhaseNeuronSim`."""

    def __init__(self, leaf: PhaseNeuron) -> None:
        p = leaf.proc_params
        self.leaf, self.normalized = leaf, p["divisor_shape"] is not None
        self.inputs = (leaf.a_in, leaf.trace_in) + ((leaf.div_in,) if self.normalized else ())
        self.sim = FixedPhaseNeuronSim(p["code"], p["scale"], p["shape"], current_exp=p["current_exp"],
                                       payload_exp=p["payload_exp"], fmt=p["fixed_format"], signed=p["signed"],
                                       start=p["start"], wait=p["wait"], normalized=self.normalized,
                                       bit_serial_input=p["bit_serial_input"])

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        if self.normalized:
            self.sim.set_divisor(read(self.leaf.div_in))
        spikes = self.sim.step(read(self.leaf.a_in), int(read(self.leaf.trace_in)[0]))
        return {id(self.leaf.s_out): spikes, id(self.leaf.trace_out): self.sim.decoded,
                id(self.leaf.v_out): self.sim.v}


class _Linear(_Node):
    """TokenLinear: :class:`~.fixed.FixedTokenLinearSim` (its bias is stored already divided)."""

    def __init__(self, leaf: TokenLinear, code: PhaseCode) -> None:
        p = leaf.proc_params
        self.leaf, self.inputs = leaf, (leaf.s_in,)
        self.sim = FixedTokenLinearSim(p["weight_t"].T, payload_exp=p["payload_exp"], current_exp=p["current_exp"],
                                       fmt=p["fixed_format"], bias=p["injected_bias"], code=code,
                                       bias_start=p["bias_start"], bias_divisor=1.0, in_index=p["in_index"],
                                       out_index=p["out_index"])

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        return {id(self.leaf.a_out): self.sim.step(read(self.leaf.s_in))}


class _MatMul(_Node):
    """TraceMatMul: :class:`~.fixed.FixedTraceMatMulSim` (its bias is stored already divided)."""

    def __init__(self, leaf: TraceMatMul, code: PhaseCode) -> None:
        p = leaf.proc_params
        self.leaf, self.shape = leaf, p["shape_out"]
        self.inputs = (leaf.a_in, leaf.a_trace_in, leaf.b_in, leaf.b_trace_in)
        self.sim = FixedTraceMatMulSim(code, transpose_b=p["transpose_b"], payload_exp_a=p["payload_exp_a"],
                                       payload_exp_b=p["payload_exp_b"], current_exp=p["current_exp"],
                                       fmt=p["fixed_format"], factor=p["factor"], bias=p["injected_bias"],
                                       bias_start=p["bias_start"], bias_divisor=1.0, present=p["present"])

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        current = self.sim.step(*(read(port) for port in self.inputs))
        return {id(self.leaf.a_out): np.broadcast_to(current, self.shape)}


class _Woss(_Node):
    """A WossNeuron and the WossInhibitor wired to it: one :class:`~.fixed.FixedWossSim`."""

    def __init__(self, neuron: WossNeuron, inhibitor: WossInhibitor) -> None:
        p = neuron.proc_params
        self.neuron, self.inhibitor = neuron, inhibitor
        self.inputs = (neuron.a_in, neuron.trace_in, inhibitor.a_in)
        self.sim = FixedWossSim(p["code"], p["shape"], current_exp=p["current_exp"], fmt=p["fixed_format"],
                                start=p["start"], wait=p["wait"], ramp_start=p["ramp_start"], key_mask=p["present"])

    def step(self, t: int, read: Read) -> dict[int, np.ndarray]:
        spikes = self.sim.step(read(self.neuron.a_in), int(read(self.neuron.trace_in)[0]))
        return {id(self.neuron.s_out): spikes, id(self.neuron.trace_out): self.sim.decoded,
                id(self.neuron.v_out): self.sim.v, id(self.inhibitor.norm_out): self.sim.spike_sum}


def _node(leaf, code: PhaseCode, fmt: FixedFormat) -> _Node:
    """The node stepping ``leaf`` (any leaf but a WOSS pair)."""
    if isinstance(leaf, SpikeSource):
        return _Source(leaf)
    if isinstance(leaf, SpikeSink):
        return _Sink(leaf)
    if isinstance(leaf, DelayLine):
        return _Delay(leaf)
    if isinstance(leaf, TraceHolder):
        return _Trace(leaf, code, fmt)
    if isinstance(leaf, PhaseNeuron):
        return _Phase(leaf)
    if isinstance(leaf, TokenLinear):
        return _Linear(leaf, code)
    if isinstance(leaf, TraceMatMul):
        return _MatMul(leaf, code)
    raise ValueError(f"no integer oracle for {type(leaf).__name__} {leaf.name!r}")


class FixedNetworkSim:
    """The integer network of ``processes`` (leaves or Circuits of a ``fixed_pt`` graph), one
    :mod:`.fixed` simulator per Process, stepped with Lava's message timing (module docstring).
    ``code`` and ``fmt``: the network's phase code and format (the TraceHolder and TraceMatMul
    Processes do not keep them). Step it once with :meth:`run`."""

    def __init__(self, processes: ty.Sequence, code: PhaseCode, fmt: FixedFormat) -> None:
        leaves, self.sources = flatten(processes)
        self.leaves, self.stepped = leaves, False
        self.nodes: dict[int, _Node] = {}  # id(leaf) → its node
        owner = {id(port): leaf for leaf in leaves for port in leaf.out_ports}
        for leaf in leaves:
            if isinstance(leaf, (PhaseNeuron, TokenLinear, TraceMatMul, WossNeuron)) \
                    and leaf.proc_params.get("fixed_format") is None:
                raise ValueError(f"{type(leaf).__name__} {leaf.name!r} was built without a fixed-point format")
            if isinstance(leaf, WossNeuron):
                inhibitor = self._inhibitor_of(leaf, owner)
                self.nodes[id(inhibitor)] = self.nodes[id(leaf)] = _Woss(leaf, inhibitor)
            elif not isinstance(leaf, WossInhibitor):  # an inhibitor is stepped with its WossNeuron
                self.nodes[id(leaf)] = _node(leaf, code, fmt)
        self.order = self._order(leaves)
        self.zeros = {id(port): np.zeros(port.shape, np.int64) for leaf in leaves for port in leaf.in_ports}

    def _inhibitor_of(self, neuron: WossNeuron, owner: dict[int, ty.Any]) -> WossInhibitor:
        """The WossInhibitor driving ``neuron`` (``owner``: the leaf of each OutPort), checked to be
        wired and built as its pair: :class:`~.fixed.FixedWossSim` steps the two together."""
        sources = self.sources
        shift = sources[id(neuron.shift_in)]
        inhibitor = owner[shift[0]] if len(shift) == 1 else None
        if not isinstance(inhibitor, WossInhibitor):
            raise ValueError(f"WossNeuron {neuron.name!r}: shift_in is not fed by one WossInhibitor")
        internal = {id(inhibitor.shift_out), id(inhibitor.theta_out)}
        readers = {port for port, keys in sources.items() if internal & set(keys)}
        wired = (sources[id(neuron.theta_in)] == [id(inhibitor.theta_out)]
                 and sources[id(inhibitor.trace_in)] == [id(neuron.trace_out)]
                 and sorted(sources[id(inhibitor.a_in)]) == sorted(sources[id(neuron.a_in)])
                 and readers == {id(neuron.shift_in), id(neuron.theta_in)})
        p, q = neuron.proc_params, inhibitor.proc_params
        same = (all(p[key] == q[key] for key in ("start", "wait", "ramp_start", "current_exp", "fixed_format"))
                and np.array_equal(p["present"], q["present"]))
        if not (wired and same):
            raise ValueError(f"WossNeuron {neuron.name!r}: not wired to its WossInhibitor alone, or built with "
                             f"other parameters")
        return inhibitor

    def _order(self, leaves: ty.Sequence) -> list[_Node]:
        """The nodes in an order where each follows the nodes whose messages of the step it reads."""
        producer = {id(port): self.nodes[id(leaf)] for leaf in leaves for port in leaf.out_ports}
        nodes = list({id(node): node for node in self.nodes.values()}.values())
        unknown = {key for keys in self.sources.values() for key in keys} - producer.keys()
        if unknown:
            raise ValueError(f"{len(unknown)} InPort source(s) outside the graph")
        needs = {id(node): {id(producer[key]) for port in node.inputs for key in self.sources[id(port)]}
                 for node in nodes}
        order: list[_Node] = []
        while len(order) < len(nodes):
            done = {id(node) for node in order}
            ready = [node for node in nodes if id(node) not in done and needs[id(node)] <= done]
            if not ready:
                raise ValueError("the graph has a cycle without a DelayLine: no step order exists")
            order.extend(ready)
        return order

    def oracle(self, leaf) -> ty.Any:
        """The :mod:`.fixed` simulator stepping ``leaf`` (a PhaseNeuron, TokenLinear, TraceMatMul,
        WossNeuron or WossInhibitor)."""
        return self.nodes[id(leaf)].sim

    def run(self, steps: int) -> None:
        """Step the network ``steps`` times from step 0 (once: the simulators keep their state)."""
        if self.stepped:
            raise RuntimeError("FixedNetworkSim.run: already run; build a new one for another run")
        self.stepped = True
        for t in range(steps):
            sent: dict[int, np.ndarray] = {}

            def read(port, sent=sent) -> np.ndarray:
                values = [sent[key] for key in self.sources[id(port)]]
                return sum(values[1:], values[0]) if values else self.zeros[id(port)]

            for node in self.order:
                sent.update(node.step(t, read))
            for node in self.order:
                node.after_step(t, read)

    def record(self, sink: SpikeSink) -> np.ndarray:
        """What ``sink`` received, (steps, *shape) int64."""
        return self.nodes[id(sink)].record

    def fire_steps(self) -> dict[str, np.ndarray]:
        """Fire step of every neuron (−1: silent) per PhaseNeuron / WossNeuron name."""
        steps: dict[str, np.ndarray] = {}
        for leaf in self.leaves:
            if isinstance(leaf, (PhaseNeuron, WossNeuron)):
                if leaf.name in steps:
                    raise ValueError(f"two populations are named {leaf.name!r}")
                steps[leaf.name] = self.oracle(leaf).fire_step.copy()
        return steps


def readout_logits(graph: Graph, record: np.ndarray, readout_index: int) -> torch.Tensor:
    """The logits of a read-out record, decoded as ``LavaNetwork.run`` does: the head's current
    (× its unit 2^current_exp) integrated over its window, u = Σ_τ B^-τ x_τ, ÷ unit_gain."""
    window = record[readout_index * graph.T:(readout_index + 1) * graph.T].astype(np.float64)
    window = window * 2.0 ** graph.head.proc_params["current_exp"]
    membrane = np.tensordot(graph.code.base ** -np.arange(graph.T, dtype=np.float64), window, axes=1)
    return torch.from_numpy(membrane / graph.code.unit_gain)


def simulate_fixed_graph(graph: Graph, sink: SpikeSink, readout_index: int
                         ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """(logits, fire steps per population) of a fixed-point graph from ``LavaNetwork.build(x)``
    (``graph``, ``sink``, ``readout_index``), stepped by :class:`FixedNetworkSim`."""
    if graph.fmt is None:
        raise ValueError("simulate_fixed_graph: the graph is floating point (build it with fixed_format)")
    network = FixedNetworkSim(graph.processes, graph.code, graph.fmt)
    network.run(sink.num_steps)
    return readout_logits(graph, network.record(sink), readout_index), network.fire_steps()
