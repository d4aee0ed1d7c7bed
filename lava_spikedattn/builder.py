"""Lava network builder: a converted model → SpikedAttention Lava processes → logits.

The shared part lives here: :class:`Graph` (populations, synapses, delays, blocks as Circuits,
fixed-point units), the attention core every family wires, and :class:`LavaNetwork` (build, run,
simulate, statistics). Each family names its own :class:`FamilyBuilder` (``ModelFamily.lava_builder``,
e.g. ``models/swin/lava_builder.py``): the block diagram of its ``SpikingNetwork.run``.

The network is pipelined in time exactly as the spec describes (§1.5, W = T): the layer with
pipeline index n integrates in ``[n·T, (n+1)·T)`` and fires in ``[(n+1)·T, (n+2)·T)``; Lava
delivers a message within the step it is sent, so a layer's spikes reach the next layer's input
window directly, and a stream that skips layers (residuals, V) waits in a DelayLine for
``(n_destination − n_source − 1)·T`` steps. Every population is inside a block (a
:class:`Circuit`): the stem, each transformer block or encoder layer, each patch merging, and the
read-out head; each block has its own TraceHolder (the trace is a function of the step; a message
carrying it to every block every step would cost more than the block's spikes).

Populations are tensor-shaped (batch, windows, heads, tokens, dims), so the process count grows
with depth, not width. Layouts (window partition with the cyclic shift, head split/merge, window
reverse, patch merging, pooling) are gathers inside the TokenLinear synapses.

Fixed point (``fixed_format``, the Loihi 2 port, ``reference.fixed``): every Process gets its
integer units: a neuron layer its payload and current exponents (``loihi.neuron_units``, from
its whole calibrated scale, as ``loihi.quantize_for_loihi`` reports them), a synapse the payload
unit of its source and the current unit of its target. What float wiring does with units for
free becomes explicit: a residual is an identity TokenLinear (weight 1 = 64·2^-6, exact) that
moves the source's payload unit to the target's current unit; the input bits are payloads ±1
and the first layer's weights absorb the full scale; the read-out current has a unit that holds
its largest possible value. Runs select the ``fixed_pt`` ProcessModels.
"""

from __future__ import annotations

import gc
import time
import typing as ty
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from lava_spikedattn.coding import PhaseCode, check_finite
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.layers import LayerSpec, LayerStats, fit_scale
from lava_spikedattn.loihi import neuron_units
from lava_spikedattn.procs import fused, windows
from lava_spikedattn.procs import graph as procs_graph
from lava_spikedattn.procs.circuit.process import Circuit
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.runtime import LavaSession, created_processes, forget_processes
from lava_spikedattn.wiring import connect, probe, wire_scores, wire_values

#: Largest graph the builder accepts. Every Lava process is a forked OS process (~7.5 MB, plus its
#: weights) with a message channel per connection: 400 processes take ~3 GB.
MAX_PROCESSES = 400
#: Widest integer state a Lava network accepts: fixed_pt ports are int32 and an InPort adds up
#: to 3 currents (a residual, a synapse, a bias), which must not wrap.
MAX_STATE_BITS = 30
RESIDUAL = ".residual"  # name suffix of the fixed-point residuals' identity synapses
MODES = ("fused", "decomposed")


class LavaBuildError(ValueError):
    """The converted model or the input cannot be built into a Lava network."""


class _Boundary:
    """The input of a block under construction: connections to it become the Circuit's feeds."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.feeds: list = []

    @property
    def s_out(self) -> _Boundary:
        return self


@dataclass
class Stream:
    """A population's output as the next layers see it: spikes, decoded traces, its pipeline
    index, and in fixed point the unit exponent of its payloads."""

    s_out: ty.Any
    trace_out: ty.Any
    index: int
    shape: tuple[int, ...]
    payload_exp: int | None = None


@dataclass
class Graph:
    """Processes of one run, created and connected in block-diagram order."""

    cm: ConvertedModel
    batch: int
    fmt: FixedFormat | None = None  # fixed point: the integer format; None: floating point
    processes: list = field(default_factory=list)
    populations: dict[str, ty.Any] = field(default_factory=dict)
    trace: TraceHolder | None = None  # created with the graph's first population (:meth:`trace_holder`)
    head: TokenLinear | None = None  # the classifier read-out synapse, once built
    source: SpikeSource | None = None  # the input, once built
    input_stats: LayerStats | None = None  # spikes of the input code (None: the input enters as values)
    created: list = field(default_factory=list)  # every Lava Process of the graph, for forget_processes

    def __post_init__(self) -> None:
        self.code: PhaseCode = self.cm.code
        self.T = self.code.timesteps
        self.layers: dict[str, LayerSpec] = {layer.name: layer for layer in self.cm.layers}

    def trace_holder(self) -> TraceHolder:
        """The global trace of this graph's populations (one TraceHolder per block)."""
        if self.trace is None:
            self.trace = self.add(TraceHolder(code=self.code, fixed_format=self.fmt))
        return self.trace

    def fixed(self, **exponents) -> dict[str, ty.Any]:
        """Fixed-point keyword arguments of a synapse (its unit exponents), {} in floating point."""
        return {} if self.fmt is None else dict(fixed_format=self.fmt, **exponents)

    def add(self, process):
        self.processes.append(process)
        return process

    def input(self, data: np.ndarray) -> SpikeSource:
        """The graph's input: a SpikeSource playing ``data`` (a compiled graph loads the next input into it)."""
        self.source = self.add(SpikeSource(data=data))
        return self.source

    def block(self) -> Graph:
        """A graph for one block's members: same model and populations, its own TraceHolder
        (the trace is a function of the step: each block generates it, as each chip core would,
        instead of receiving a message every step)."""
        return Graph(self.cm, self.batch, self.fmt, populations=self.populations)

    def circuit(self, x: Stream, name: str,
                build: ty.Callable[[Graph, Stream], PhaseNeuron]) -> Stream:
        """A block built by ``build(graph, input stream) → output neuron`` as one :class:`Circuit`."""
        circuit, final = self._circuit(x, name, build, lambda final: final.s_out)
        return Stream(circuit.s_out, None, self.layers[final.name].index, tuple(final.s_out.shape), final.payload_exp)

    def head_circuit(self, x: Stream,
                     build: ty.Callable[[Graph, Stream], tuple[TokenLinear, int]]) -> tuple[ty.Any, int]:
        """The read-out block (pooling, the classifier synapse) built by ``build(graph, input stream)
        → (classifier synapse, pipeline index)`` (:meth:`readout`'s) as one :class:`Circuit`;
        returns the port whose current the host integrates, and the index."""
        circuit, (self.head, index) = self._circuit(x, "readout", build, lambda built: built[0].a_out)
        return circuit.s_out, index

    def _circuit(self, x: Stream, name: str, build: ty.Callable[[Graph, Stream], ty.Any],
                 output: ty.Callable[[ty.Any], ty.Any]) -> tuple[Circuit, ty.Any]:
        """A Circuit of what ``build`` creates in a block graph fed by ``x``; its output port is
        ``output(what build returned)``."""
        g, boundary = self.block(), _Boundary(x.shape)
        built = build(g, Stream(boundary, None, x.index, x.shape, x.payload_exp))
        port = output(built)
        circuit = self.add(Circuit(members=g.processes, shape_in=x.shape, shape_out=tuple(port.shape),
                                   feeds=boundary.feeds, trace_feeds=[], output=port, name=name))
        self.link(x.s_out, circuit.s_in)
        return circuit, built

    def link(self, source, destination) -> None:
        """Connect, or record a block-boundary feed."""
        if isinstance(source, _Boundary):
            source.feeds.append(destination)
        else:
            connect(source, destination)

    def product(self, matmul: TraceMatMul, a, b) -> None:
        """Feed two streams' spikes and decoded traces into a TraceMatMul."""
        for source, destination in ((a.s_out, matmul.a_in), (a.trace_out, matmul.a_trace_in),
                                    (b.s_out, matmul.b_in), (b.trace_out, matmul.b_trace_in)):
            self.link(source, destination)

    def weight(self, key: str) -> np.ndarray:
        return self.cm.weights[key].double().numpy()

    def synaptic_weight(self, key: str) -> np.ndarray:
        """Synapse ``key``'s weight matrix in its stored dtype: TokenLinear keeps float32 weights
        (they widen exactly to float64 in each product), half the bytes of float64."""
        return self.cm.weights[f"{key}.weight"].numpy()

    def scale(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Scale of layer ``name`` for a population of ``shape`` (batch axis first; per-position
        scales cut to the sequence length)."""
        scale = fit_scale(self.layers[name], self.cm.weights[f"scale.{name}"], shape)
        return scale.double().numpy()[None]

    def neuron(self, name: str, shape: tuple[int, ...], **kwargs) -> PhaseNeuron:
        """The population of layer ``name`` (scale, sign, start from the converted model)."""
        spec = self.layers[name]
        if self.fmt is not None:
            units = neuron_units(spec, self.cm.weights[f"scale.{name}"], self.fmt)
            kwargs.update(fixed_format=self.fmt, payload_exp=units[0], current_exp=units[1])
        population = self.add(PhaseNeuron(shape=shape, scale=self.scale(name, shape), code=self.code,
                                          signed=spec.signed, start=spec.index * self.T, name=name, **kwargs))
        self.link(self.trace_holder().s_out, population.trace_in)
        self.populations[name] = population
        return population

    def stream(self, population, name: str | None = None) -> Stream:
        index = self.layers[name or population.name].index
        return Stream(population.s_out, population.trace_out, index, tuple(population.s_out.shape),
                       population.payload_exp)

    def arrive(self, port, source_index: int, destination_index: int):
        """``port`` delayed so that spikes fired by layer ``source_index`` land in the input window
        of layer ``destination_index``."""
        delay = (destination_index - source_index - 1) * self.T
        if delay < 0:
            raise LavaBuildError(f"layer {destination_index} cannot read layer {source_index}: it is not later")
        if delay == 0:
            return port
        line = self.add(DelayLine(shape=tuple(port.shape), delay=delay))
        self.link(port, line.s_in)
        return line.a_out

    def linear(self, key: str, source: Stream, destination, *, in_index=None, out_index=None,
               bias_divisor: float | None = None, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> None:
        """TokenLinear ``key`` from ``source`` spikes into ``destination``'s input (bias injected
        over its input window)."""
        start = self.layers[destination.name].index * self.T
        weight = self.synaptic_weight(key) if weight is None else weight
        bias = self.weight(f"{key}.bias") if bias is None else bias
        synapse = self.add(TokenLinear(shape_in=source.shape, weight=weight, bias=bias, code=self.code,
                                       bias_start=start, bias_divisor=bias_divisor, in_index=in_index,
                                       out_index=out_index, name=key,
                                       **self.fixed(payload_exp=source.payload_exp,
                                                    current_exp=destination.current_exp)))
        self.link(self.arrive(source.s_out, source.index, self.layers[destination.name].index), synapse.s_in)
        self.link(synapse.a_out, destination.a_in)

    def readout(self, key: str, source: Stream, in_index: np.ndarray | None = None) -> tuple[TokenLinear, int]:
        """The classifier synapse ``key`` whose current the host integrates (no neuron, spec §6),
        and its pipeline index; ``in_index``: the input layout it reads (a class token).
        Fixed point: its current unit holds the largest current possible,
        Σ_i |w_oi|·scale_i + |b_o|/bias_divisor."""
        index = next(layer.index for layer in self.cm.layers if layer.kind == "readout")
        weight, bias = self.synaptic_weight(key), self.weight(f"{key}.bias")
        units = {}
        if self.fmt is not None:
            layer = next(layer.name for layer in self.cm.layers if layer.index == source.index)
            scale = np.broadcast_to(self.scale(layer, source.shape), source.shape)
            if in_index is not None:
                scale = scale.reshape(-1)[in_index]
            largest = (np.abs(scale.reshape(-1, scale.shape[-1])).max(0) @ np.abs(weight).T
                       + np.abs(bias) / self.code.bias_divisor).max()
            units = self.fixed(payload_exp=source.payload_exp, current_exp=self.fmt.current_exponent(largest))
        head = self.add(TokenLinear(shape_in=source.shape, weight=weight, bias=bias, code=self.code,
                                    bias_start=index * self.T, in_index=in_index, name=key, **units))
        self.link(self.arrive(source.s_out, source.index, index), head.s_in)
        return head, index

    def residual(self, source: Stream, destination) -> None:
        """Identity synapse: raw spikes (±scale) integrate to the decoded value (spec §3.4).

        Fixed point: an identity TokenLinear, which moves the payload unit to the current unit.
        """
        if self.fmt is not None:
            channels = source.shape[-1]
            self.linear(f"{destination.name}{RESIDUAL}", source, destination, weight=np.eye(channels),
                        bias=np.zeros(channels))
            return
        self.link(self.arrive(source.s_out, source.index, self.layers[destination.name].index), destination.a_in)


def index_positions(shape: ty.Sequence[int]) -> torch.Tensor:
    """Flat positions of a tensor of ``shape``: push it through a layout to get a gather index."""
    return torch.arange(int(np.prod(shape))).reshape(*shape)


class FamilyBuilder(ABC):
    """Builds one family's converted model into a :class:`Graph`: the block diagram of its
    ``SpikingNetwork.run``, one method per layer type (as lava-dl's netx has one ``create_*``)."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph

    @classmethod
    @abstractmethod
    def check_input(cls, cm: ConvertedModel, x: ty.Any) -> tuple[ty.Any, int]:
        """The input in the builder's format and its batch size; :class:`LavaBuildError` if it is
        malformed, :class:`~lava_spikedattn.coding.NonFiniteInputError` if it holds NaN or inf.
        Runs before anything is built."""

    @abstractmethod
    def build(self, x: ty.Any) -> tuple[ty.Any, int]:
        """Every process for the input ``x`` (from :meth:`check_input`), every population inside a
        block; returns the read-out port and its pipeline index (:meth:`Graph.head_circuit`). The
        input enters through ``graph.input(self.encode(x))``."""

    @abstractmethod
    def encode(self, x: ty.Any) -> np.ndarray:
        """The data of the graph's SpikeSource for ``x`` (steps, *shape); sets ``graph.input_stats``
        if the input is spike-coded. A compiled graph calls it for each new input of its layout."""

    @classmethod
    def layout(cls, cm: ConvertedModel, x: ty.Any) -> ty.Hashable:
        """What of the input (from :meth:`check_input`), besides its values, the graph depends on:
        a compiled graph runs every input of the same layout. Default: the shapes."""
        return tuple(x.shape)


def attention_core(g: Graph, p: str, qkv: dict[str, PhaseNeuron], bias: np.ndarray | None = None,
                   key_mask: np.ndarray | None = None) -> PhaseNeuron:
    """q/k/v neurons of block ``p`` → QKᵀ (×d^-1/2, + bias) → logits → WOSS → attention×V → output,
    wired by :func:`~lava_spikedattn.wiring.wire_scores` / ``wire_values`` like the standalone core.

    ``key_mask`` (bool, broadcastable to the logits, True = key present) silences padded keys.
    Returns the attention×V output neuron (..., N, d).
    """
    head_shape = tuple(qkv["q_if"].s_out.shape)
    logit_shape = head_shape[:-1] + (head_shape[-2],)
    logits = g.neuron(f"{p}.stdp_qk", logit_shape)
    woss, inhibitor = wire_scores(g.add, g.link, g.code, qkv["q_if"], qkv["k_if"], logits, g.trace_holder(), prefix=p,
                                  woss_start=g.layers[f"{p}.softmax_if"].index * g.T,
                                  bias_start=g.layers[f"{p}.stdp_qk"].index * g.T, bias=bias, key_mask=key_mask,
                                  fmt=g.fmt)
    g.populations[f"{p}.softmax_if"] = woss
    out = g.neuron(f"{p}.stdp_av", head_shape, divisor_shape=head_shape[:-1] + (1,))
    av_index, v_index = g.layers[f"{p}.stdp_av"].index, g.layers[f"{p}.v_if"].index
    v = Stream(g.arrive(qkv["v_if"].s_out, v_index, av_index), g.arrive(qkv["v_if"].trace_out, v_index, av_index),
               v_index, head_shape)
    wire_values(g.add, g.link, g.code, woss, inhibitor, v, qkv["v_if"].payload_exp, out, prefix=p, fmt=g.fmt)
    return out


class LavaNetwork:
    """A converted model as a Lava network on ``Loihi2SimCfg``, compiled once per input layout.

    ``run(x)`` phase-encodes the input, runs exactly ``steps_per_sample`` steps and decodes the
    classifier read-out (the integrated membrane of ``last_fc``, spec §6); the workers stay up
    for the next input until :meth:`close` (or the end of a ``with`` block).
    Every block is a :class:`Circuit`: ``mode="fused"`` runs each block in one OS process (fast
    simulation), ``mode="decomposed"`` runs every population and synapse as its own Lava process
    (the porting path); both produce identical spikes.

    ``fixed_format`` (a ``reference.fixed.FixedFormat``): build the integer network and run the
    ``fixed_pt`` ProcessModels (module docstring); None: floating point.
    ``simulate(x)`` steps the same graph inside this Python process (``procs.fused``, no Lava
    runtime, no worker processes) and returns the logits ``run(x)`` returns, bit for bit: the way
    to evaluate a whole data set.
    """

    def __init__(self, cm: ConvertedModel, mode: str = "fused", fixed_format: FixedFormat | None = None) -> None:
        if mode not in MODES:
            raise LavaBuildError(f"mode must be one of {MODES}, got {mode!r}")
        if fixed_format is not None and not isinstance(fixed_format, FixedFormat):
            raise LavaBuildError(f"fixed_format must be a reference.fixed.FixedFormat or None, "
                                 f"got {type(fixed_format).__name__}")
        if fixed_format is not None and fixed_format.state_bits > MAX_STATE_BITS:
            raise LavaBuildError(f"fixed_format.state_bits must be <= {MAX_STATE_BITS} in a Lava network (its "
                                 f"int32 ports add up to 3 currents), got {fixed_format.state_bits}")
        self.cm = cm
        self.mode = mode
        self.fixed_format = fixed_format
        self.code = cm.code
        self.family = cm.family
        self.builder_class: type[FamilyBuilder] = cm.family.lava_builder()
        self.last_graph: Graph | None = None  # the graph of the last build (run, simulate), for inspection
        self._compiled: _Compiled | None = None  # the graph whose workers are up

    @property
    def steps_per_sample(self) -> int:
        return self.cm.steps_per_inference

    def build(self, x: ty.Any) -> tuple[Graph, SpikeSink, int]:
        """Processes for one batch; raises :class:`LavaBuildError` before any worker starts."""
        graph, sink, readout_index, _ = self._build(*self.builder_class.check_input(self.cm, x))
        return graph, sink, readout_index

    def _build(self, x: ty.Any, batch: int) -> tuple[Graph, SpikeSink, int, FamilyBuilder]:
        with created_processes() as created:
            graph = Graph(self.cm, batch=batch, fmt=self.fixed_format)
            family_builder = self.builder_class(graph)
            readout, readout_index = family_builder.build(x)
            sink = probe(readout, self.steps_per_sample)
            graph.processes.append(sink)
        graph.created = created
        count = self._os_processes(graph)
        if count > MAX_PROCESSES:
            forget_processes(created)
            raise LavaBuildError(f"the graph has {count} Lava processes in {self.mode} mode, more than the simulator "
                                 f"limit of {MAX_PROCESSES} (each is a forked OS process)")
        self._release(self.last_graph)
        self.last_graph = graph
        return graph, sink, readout_index, family_builder

    def run(self, x: ty.Any, timings: dict | None = None) -> torch.Tensor:
        """Logits (batch, classes) of images (batch, C, H, W) (or one image (C, H, W)) for Swin,
        of a tokenizer dict (input_ids, attention_mask, token_type_ids) for BERT.

        The first input compiles the graph and starts its workers; they stay up for every later
        input of the same layout (batch size; for BERT the padding), which only loads the new
        input and runs (the models reset their state between inputs). Another layout closes
        them and compiles anew. :meth:`close` (or ``with``) stops them.

        ``timings``, if given, gets build_s (building, or encoding the input into a compiled
        graph) and run_s; compile_s and init_s when this input compiled the graph (stop_s when
        that graph is closed).
        """
        start = time.perf_counter()
        x, batch = self.builder_class.check_input(self.cm, x)
        layout = self.builder_class.layout(self.cm, x)
        if self._compiled is not None and self._compiled.layout == layout:
            graph = self.last_graph = self._compiled.graph
            graph.source.load(self._compiled.builder.encode(x))
        else:
            self.close()
            graph, sink, readout_index, family_builder = self._build(x, batch)
            windows.assign_windows(graph.processes)
            for process in (*graph.processes, *_leaves(graph.processes)):
                process.proc_params.overwrite("period", self.steps_per_sample)
        if timings is not None:
            timings["build_s"] = time.perf_counter() - start
        if self._compiled is None:  # built above: compile it and start its workers
            tag = "floating_pt" if self.fixed_format is None else "fixed_pt"
            session = LavaSession({"readout": sink}, select_tag=tag, timings=timings,
                                  select_sub_proc_model=self.mode == "decomposed")
            self._compiled = _Compiled(layout, graph, readout_index, family_builder, session)
        current = self._compiled.session.run(self.steps_per_sample, timings=timings)["readout"]
        return self._logits(current, graph, self._compiled.readout_index)

    def close(self) -> None:
        """Stop the workers of the compiled graph, if any (idempotent)."""
        compiled, self._compiled = self._compiled, None
        if compiled is not None:
            compiled.session.close()
            if compiled.graph is not self.last_graph:
                self._release(compiled.graph)

    def _release(self, graph: Graph | None) -> None:
        """Let a graph be freed (Lava's ProcessServer keeps every Process), unless its workers run.
        Its processes and ports reference each other: only the cyclic collector frees them, and their
        shared-memory records are invisible to its thresholds, so collect now."""
        if graph is not None and (self._compiled is None or graph is not self._compiled.graph):
            forget_processes(graph.created)
            gc.collect()

    def __enter__(self) -> LavaNetwork:
        return self

    def __exit__(self, exc_type: ty.Any, exc: ty.Any, tb: ty.Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_compiled", None) is not None:
            self.close()

    def simulate(self, x: ty.Any) -> torch.Tensor:
        """The logits of :meth:`run` (bit for bit), computed by stepping the same graph in this
        process (``procs.fused.Stepper``): no Lava runtime and no worker processes, so whole
        batches of a data set go through in one graph. :meth:`stats` then describes this run."""
        graph, sink, readout_index = self.build(x)
        leaves, sources = procs_graph.flatten(graph.processes)
        stepper = fused.Stepper(leaves, sources, self.fixed_format is not None)
        for t in range(self.steps_per_sample):
            stepper.step(t)
        return self._logits(sink.proc_params["record"], graph, readout_index)

    def _logits(self, current: np.ndarray, graph: Graph, readout_index: int) -> torch.Tensor:
        """Decode the read-out: the integrated membrane u = Σ_τ B^-τ x_τ of the head's current
        over its window, in ANN units (÷ unit_gain; fixed point: × its current unit)."""
        window = current[readout_index * graph.T:(readout_index + 1) * graph.T]
        if self.fixed_format is not None:
            window = window * 2.0 ** graph.head.proc_params["current_exp"]
        weights = self.code.base ** -np.arange(graph.T, dtype=np.float64)
        membrane = np.tensordot(weights, window, axes=1)
        return torch.from_numpy(membrane / self.code.unit_gain)

    def run_batch(self, xs: ty.Any, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
        """Logits of many inputs (an image tensor, or a tokenizer dict of tensors), ``batch_size``
        per Lava run, with a progress bar. Non-finite inputs are refused before the first run."""
        try:
            xs = self.family.model_input(xs)  # a tensor, or the family's input keys of a dict
        except ValueError as error:
            raise LavaBuildError(str(error)) from None
        check_finite("input", xs)
        if isinstance(xs, ty.Mapping):
            keys = list(xs)
            parts = [torch.split(torch.as_tensor(xs[key]), batch_size) for key in keys]
            chunks = [dict(zip(keys, values)) for values in zip(*parts)]
        else:
            chunks = list(torch.split(xs, batch_size))
        return torch.cat([self.run(chunk) for chunk in tqdm(chunks, desc="Lava", disable=not progress)])

    def fire_steps(self) -> dict[str, np.ndarray]:
        """Fire step of every neuron of the last run, per layer (−1: silent), batch axis first.

        Steps count from the layer's own fire window; the window of layer n opens at step
        (n + 1)·T of the run (its input window is [n·T, (n+1)·T), spec §1.5).
        """
        if self.last_graph is None:
            raise RuntimeError("run the network first")
        return {name: population.recorded_fire_steps()
                for name, population in self.last_graph.populations.items()}

    def stats(self) -> dict[str, ty.Any]:
        """Graph size and activity of the last run.

        Keys: processes, neurons, synapses (token-wise weights), steps_per_sample, layers (per
        layer :class:`LayerStats`, summed over the batch, plus ``input``: bits of the input code),
        fire_histograms (per layer, neurons that fired at each fire step k = 0..T−1); fixed point
        also ``clips``: per Process name, how many integer values were clipped to the state range
        (saturated, never wrapped), only Processes that clipped.
        """
        if self.last_graph is None:
            raise RuntimeError("run the network first")
        graph = self.last_graph
        layers, histograms = {}, {}
        for name, fire_steps in self.fire_steps().items():
            population = graph.populations[name]
            saturated = population.recorded_saturation().sum() if isinstance(population, PhaseNeuron) else 0
            layers[name] = LayerStats.from_fire_steps(torch.from_numpy(fire_steps), graph.T, int(saturated))
            histograms[name] = np.bincount(fire_steps[fire_steps >= 0], minlength=graph.T)
        if graph.input_stats is not None:
            layers["input"] = graph.input_stats
        stats = {**self.graph_size(graph), "steps_per_sample": self.steps_per_sample, "layers": layers,
                 "fire_histograms": histograms}
        if self.fixed_format is not None:
            clips: dict[str, int] = {}
            for leaf in _leaves(graph.processes):  # the three qkv synapses share a name: summed
                record = leaf.proc_params.get("clip_record")
                count = 0 if record is None else int(np.sum(record))
                if count:
                    clips[leaf.name] = clips.get(leaf.name, 0) + count
            stats["clips"] = clips
        return stats

    def graph_size(self, graph: Graph) -> dict[str, int]:
        """OS processes, neurons and token-wise weights of a graph from :meth:`build` (no run
        needed). The fixed-point residuals' identity matrices are one-to-one connections, not
        weights: not counted."""
        neurons = sum(int(np.prod(p.s_out.shape)) for p in graph.populations.values())
        synapses = sum(int(np.prod(p.proc_params["weight_t"].shape)) for p in _leaves(graph.processes)
                       if isinstance(p, TokenLinear) and not p.name.endswith(RESIDUAL))
        return {"processes": self._os_processes(graph), "neurons": neurons, "synapses": synapses}


    def _os_processes(self, graph: Graph) -> int:
        """OS processes of the run: a fused Circuit is one, a decomposed one is its members."""
        if self.mode == "fused":
            return len(graph.processes)
        return len(_leaves(graph.processes))


@dataclass
class _Compiled:
    """A graph running in a :class:`LavaSession`, for inputs of one layout."""

    layout: ty.Hashable
    graph: Graph
    readout_index: int
    builder: FamilyBuilder  # encodes the next input
    session: LavaSession


def _leaves(processes: list) -> list:
    """Leaf processes, Circuits expanded into their members."""
    return [leaf for p in processes for leaf in (p.members if isinstance(p, Circuit) else [p])]


def build_lava_network(cm: ConvertedModel, *, mode: str = "fused",
                       fixed_format: FixedFormat | None = None) -> LavaNetwork:
    """A :class:`LavaNetwork` for a converted model (``ConvertedModel.load(folder)``).

    ``mode``: ``"fused"`` (one OS process per block, fast) or ``"decomposed"`` (one per
    population and synapse: the porting path). ``fixed_format``: the integer network
    (``fixed_pt`` models, the Loihi 2 port); None: floating point.
    """
    if not isinstance(cm, ConvertedModel):
        raise LavaBuildError(f"expected a ConvertedModel, got {type(cm).__name__}")
    return LavaNetwork(cm, mode, fixed_format)
