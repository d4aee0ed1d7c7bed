"""Lava network builder: a converted Swin or BERT → SpikedAttention Lava processes → logits.

The network is pipelined in time exactly as the spec describes (§1.5, W = T): the layer with
pipeline index n integrates in ``[n·T, (n+1)·T)`` and fires in ``[(n+1)·T, (n+2)·T)``; Lava
delivers a message within the step it is sent, so a layer's spikes reach the next layer's input
window directly, and a stream that skips layers (residuals, V) waits in a DelayLine for
``(n_destination − n_source − 1)·T`` steps. One TraceHolder serves every population.

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

import time
import typing as ty
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from lava_spikedattn.coding import PhaseCode, check_finite
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.layers import LayerSpec, LayerStats, fit_scale
from lava_spikedattn.runtime import run_processes
from lava_spikedattn.loihi import neuron_units
from lava_spikedattn.models import bert, swin
from lava_spikedattn.procs import fused
from lava_spikedattn.procs.circuit.process import Circuit
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.reference.stepped import BitSerialEncoderSim
from lava_spikedattn.wiring import connect, one_shot, probe

#: Largest graph the builder accepts. Every Lava process is a forked OS process (~7.5 MB, plus its
#: weights) synchronised on every step (~0.1–0.3 ms per process per step on 2 cores): 400 processes
#: take ~3 GB and ≥ 40 ms per step.
MAX_PROCESSES = 400
FAMILIES = ("swin", "bert")
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
    def s_out(self) -> "_Boundary":
        return self


@dataclass
class _Stream:
    """A population's output as the next layers see it: spikes, decoded traces, its pipeline
    index, and in fixed point the unit exponent of its payloads."""

    s_out: ty.Any
    trace_out: ty.Any
    index: int
    shape: tuple[int, ...]
    payload_exp: int | None = None


@dataclass
class _Graph:
    """Processes of one run, created and connected in block-diagram order."""

    cm: ConvertedModel
    batch: int
    fmt: FixedFormat | None = None  # fixed point: the integer format; None: floating point
    processes: list = field(default_factory=list)
    populations: dict[str, ty.Any] = field(default_factory=dict)
    trace: ty.Any = None

    def __post_init__(self) -> None:
        self.code: PhaseCode = self.cm.code
        self.T = self.code.timesteps
        self.layers: dict[str, LayerSpec] = {layer.name: layer for layer in self.cm.layers}
        if self.trace is None:
            self.trace = self.add(TraceHolder(code=self.code, fixed_format=self.fmt))

    def fixed(self, **exponents) -> dict[str, ty.Any]:
        """Fixed-point keyword arguments of a synapse (its unit exponents), {} in floating point."""
        return {} if self.fmt is None else dict(fixed_format=self.fmt, **exponents)

    def add(self, process):
        self.processes.append(process)
        return process

    def block(self) -> "_Graph":
        """A graph for one block's members: same model and populations, the trace a boundary."""
        return _Graph(self.cm, self.batch, self.fmt, populations=self.populations, trace=_Boundary((1,)))

    def circuit(self, x: _Stream, name: str,
                build: ty.Callable[["_Graph", _Stream], PhaseNeuron]) -> _Stream:
        """A block built by ``build(graph, input stream) → output neuron`` as one :class:`Circuit`."""
        g, boundary = self.block(), _Boundary(x.shape)
        final = build(g, _Stream(boundary, None, x.index, x.shape, x.payload_exp))
        shape = tuple(final.s_out.shape)
        circuit = self.add(Circuit(members=g.processes, shape_in=x.shape, shape_out=shape, feeds=boundary.feeds,
                                   trace_feeds=g.trace.feeds, output=final.s_out, name=name))
        self.link(x.s_out, circuit.s_in)
        self.link(self.trace.s_out, circuit.trace_in)
        return _Stream(circuit.s_out, None, self.layers[final.name].index, shape, final.payload_exp)

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
        population = self.add(PhaseNeuron(shape=shape, scale=self.scale(name, shape), code=self.code, signed=spec.signed,
                                          start=spec.index * self.T, name=name, **kwargs))
        self.link(self.trace.s_out, population.trace_in)
        self.populations[name] = population
        return population

    def stream(self, population, name: str | None = None) -> _Stream:
        index = self.layers[name or population.name].index
        return _Stream(population.s_out, population.trace_out, index, tuple(population.s_out.shape),
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

    def linear(self, key: str, source: _Stream, destination, *, in_index=None, out_index=None,
               bias_divisor: float | None = None, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> None:
        """TokenLinear ``key`` from ``source`` spikes into ``destination``'s input (bias injected
        over its input window)."""
        start = self.layers[destination.name].index * self.T
        weight = self.weight(f"{key}.weight") if weight is None else weight
        bias = self.weight(f"{key}.bias") if bias is None else bias
        synapse = self.add(TokenLinear(shape_in=source.shape, weight=weight, bias=bias, code=self.code,
                                       bias_start=start, bias_divisor=bias_divisor, in_index=in_index,
                                       out_index=out_index, name=key,
                                       **self.fixed(payload_exp=source.payload_exp,
                                                    current_exp=destination.current_exp)))
        self.link(self.arrive(source.s_out, source.index, self.layers[destination.name].index), synapse.s_in)
        self.link(synapse.a_out, destination.a_in)

    def readout(self, key: str, source: _Stream) -> tuple[TokenLinear, int]:
        """The classifier synapse ``key`` whose current the host integrates (no neuron, spec §6),
        and its pipeline index. Fixed point: its current unit holds the largest current
        possible, Σ_i |w_oi|·scale_i + |b_o|/bias_divisor."""
        index = next(layer.index for layer in self.cm.layers if layer.kind == "readout")
        weight, bias = self.weight(f"{key}.weight"), self.weight(f"{key}.bias")
        units = {}
        if self.fmt is not None:
            scale = np.broadcast_to(source.s_out.process.proc_params["scale"], source.shape)
            largest = (np.abs(scale.reshape(-1, scale.shape[-1])).max(0) @ np.abs(weight).T
                       + np.abs(bias) / self.code.bias_divisor).max()
            units = self.fixed(payload_exp=source.payload_exp, current_exp=self.fmt.current_exponent(largest))
        head = self.add(TokenLinear(shape_in=source.shape, weight=weight, bias=bias, code=self.code,
                                    bias_start=index * self.T, name=key, **units))
        connect(self.arrive(source.s_out, source.index, index), head.s_in)
        return head, index

    def residual(self, source: _Stream, destination) -> None:
        """Identity synapse: raw spikes (±scale) integrate to the decoded value (spec §3.4).

        Fixed point: an identity TokenLinear, which moves the payload unit to the current unit.
        """
        if self.fmt is not None:
            channels = source.shape[-1]
            self.linear(f"{destination.name}{RESIDUAL}", source, destination, weight=np.eye(channels),
                        bias=np.zeros(channels))
            return
        self.link(self.arrive(source.s_out, source.index, self.layers[destination.name].index), destination.a_in)


def _index(shape: ty.Sequence[int]) -> torch.Tensor:
    """Flat positions of a tensor of ``shape``: push it through a layout to get a gather index."""
    return torch.arange(int(np.prod(shape))).reshape(*shape)


class _SwinBuilder:
    """Block diagram of a converted Swin (mirrors ``models.swin.SpikingSwin.run``)."""

    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.config = swin.SwinConfig.from_json(graph.cm.config["architecture"])
        self.official = graph.code.official

    def build(self, images: torch.Tensor) -> tuple[TokenLinear, int]:
        """All processes for ``images``; returns the classifier synapse and its pipeline index."""
        x = self._patch_embed(images)
        for stage in self.config.stages():
            if stage.merge:
                x = self._patch_merging(x, stage.index)
            for block in stage.blocks:
                x = self._block(x, block)
        return self._head(x)

    def _patch_embed(self, images: torch.Tensor) -> _Stream:
        g, cfg, b = self.g, self.config, self.g.batch
        full_scale = float(g.cm.weights["input_max"])
        encoder = BitSerialEncoderSim(images.double(), g.T, full_scale)
        bits = np.stack([encoder.step().numpy() for _ in range(g.T)])  # (T, batch, C, H, W): ±full scale
        self.input_stats = LayerStats(images.numel(), int(encoder.bits.sum()), encoder.saturated)
        weight = g.weight("patch_embed.weight").reshape(cfg.embed_dim, -1)
        if g.fmt is not None:  # integer payloads ±1; the weights absorb the full scale
            bits, weight = bits / full_scale, weight * full_scale
        source = g.add(SpikeSource(data=bits))
        rows, cols = cfg.img_size[0] // cfg.patch_size[0], cfg.img_size[1] // cfg.patch_size[1]
        neuron = g.neuron("patch_embed_if", (b, rows, cols, cfg.embed_dim), bit_serial_input=True)
        in_index = swin.patchify(_index(images.shape), cfg.patch_size).numpy()
        # The first bias is added undivided on every input step (spec §1.4).
        g.linear("patch_embed", _Stream(source.s_out, None, -1, tuple(images.shape), 0), neuron, in_index=in_index,
                 weight=weight, bias_divisor=1.0)
        return g.stream(neuron)

    def _patch_merging(self, x: _Stream, stage: int) -> _Stream:
        g, (b, height, width, _) = self.g, x.shape
        name = f"layers.{stage}.patch_merging_if"
        out_dim = g.weight(f"layers.{stage}.downsample.weight").shape[0]
        neuron = g.neuron(name, (b, height // 2, width // 2, out_dim))
        g.linear(f"layers.{stage}.downsample", x, neuron, in_index=swin.merge_patches(_index(x.shape)).numpy())
        return g.stream(neuron)

    def _norm_neuron(self, g: _Graph, norm: str, name: str, x: _Stream) -> _Stream:
        """Official convention: a BatchNorm as a diagonal synapse, then a neuron."""
        neuron = g.neuron(name, x.shape)
        g.linear(norm, x, neuron, weight=np.diag(g.weight(f"{norm}.weight")))
        return g.stream(neuron)

    def _block(self, x: _Stream, geometry: swin.BlockGeometry) -> _Stream:
        """One Swin block as a :class:`Circuit` (fused or decomposed at run time)."""
        return self.g.circuit(x, geometry.prefix, lambda g, x_in: self._block_members(g, x_in, geometry))

    def _block_members(self, g: _Graph, x: _Stream, geometry: swin.BlockGeometry) -> PhaseNeuron:
        p = geometry.prefix
        h = self._norm_neuron(g, f"{p}.norm1", f"{p}.norm1_if", x) if self.official else x
        attn_if = g.neuron(f"{p}.attn_if", x.shape)
        g.residual(x, attn_if)
        self._window_attention(g, h, geometry, attn_if)
        x = g.stream(attn_if)
        h = self._norm_neuron(g, f"{p}.norm2", f"{p}.norm2_if", x) if self.official else x
        act = g.neuron(f"{p}.mlp_act", x.shape[:-1] + (geometry.hidden,))
        g.linear(f"{p}.fc1", h, act)
        h = g.stream(act)
        if self.official:
            h = self._norm_neuron(g, f"{p}.mlp_norm", f"{p}.mlp_if", h)
        final = g.neuron(f"{p}.final_if", x.shape)
        g.residual(x, final)
        g.linear(f"{p}.fc2", h, final)
        return final

    def _window_attention(self, g: _Graph, x: _Stream, geo: swin.BlockGeometry, destination: PhaseNeuron) -> None:
        """q/k/v → QKᵀ (+ relative-position bias, shift mask) → WOSS → attention×V → proj."""
        p, b = geo.prefix, g.batch
        inner = geo.heads * geo.head_dim
        head_shape = (b, geo.windows, geo.heads, geo.tokens, geo.head_dim)
        logit_shape = head_shape[:-1] + (geo.tokens,)
        windows = swin.partition_windows(_index(x.shape), geo).numpy()
        heads = swin.split_heads(_index((b, geo.windows, geo.tokens, inner)), geo).numpy()
        qkv_weight, qkv_bias = g.weight(f"{p}.qkv.weight"), g.weight(f"{p}.qkv.bias")
        qkv = {}
        for part, name in enumerate(("q_if", "k_if", "v_if")):
            qkv[name] = g.neuron(f"{p}.{name}", head_shape)
            rows = slice(part * inner, (part + 1) * inner)
            g.linear(f"{p}.qkv", x, qkv[name], in_index=windows, out_index=heads, weight=qkv_weight[rows],
                     bias=qkv_bias[rows])
        bias = g.weight(f"{p}.rel_pos_bias")
        if geo.shifted:
            bias = bias + g.weight(f"{p}.attn_mask")[:, None]
        out = attention_core(g, p, qkv, np.broadcast_to(bias, logit_shape))
        merged = swin.merge_heads(_index(head_shape)).numpy()
        reverse = swin.merge_windows(_index((b, geo.windows, geo.tokens, geo.dim)), geo).numpy()
        g.linear(f"{p}.proj", g.stream(out), destination, in_index=merged, out_index=reverse)

    def _head(self, x: _Stream) -> tuple[TokenLinear, int]:
        g, (b, height, width, channels) = self.g, x.shape
        if self.official:
            x = self._norm_neuron(g, "norm", "last_norm_if", x)
        pool = g.neuron("pool_if", (b, channels))
        tokens = _index(x.shape).reshape(b, height * width, channels).transpose(1, 2).numpy()
        g.linear("pool", x, pool, in_index=tokens, out_index=_index((b, channels)).numpy(),
                 weight=np.full((1, height * width), 1.0 / (height * width)), bias=np.zeros(1))
        return g.readout("head", g.stream(pool))


def attention_core(g: _Graph, p: str, qkv: dict[str, PhaseNeuron], bias: np.ndarray | None = None,
                   key_mask: np.ndarray | None = None) -> PhaseNeuron:
    """q/k/v neurons of block ``p`` → QKᵀ (×d^-1/2, + bias) → logits → WOSS → attention×V → output.

    ``key_mask`` (bool, broadcastable to the logits, True = key present) silences padded keys.
    Returns the attention×V output neuron (..., N, d).
    """
    head_shape = tuple(qkv["q_if"].s_out.shape)
    logit_shape = head_shape[:-1] + (head_shape[-2],)
    T = g.T
    logits = g.neuron(f"{p}.stdp_qk", logit_shape)
    qk = g.add(TraceMatMul(shape_a=head_shape, shape_b=head_shape, code=g.code, transpose_b=True,
                           factor=head_shape[-1] ** -0.5, bias=bias, bias_start=g.layers[f"{p}.stdp_qk"].index * T,
                           key_mask=key_mask, name=f"{p}.qk",
                           **g.fixed(payload_exp_a=qkv["q_if"].payload_exp, payload_exp_b=qkv["k_if"].payload_exp,
                                     current_exp=logits.current_exp)))
    g.product(qk, qkv["q_if"], qkv["k_if"])
    g.link(qk.a_out, logits.a_in)
    woss_start = g.layers[f"{p}.softmax_if"].index * T
    woss_units = g.fixed(current_exp=logits.payload_exp)
    woss = g.add(WossNeuron(shape=logit_shape, code=g.code, start=woss_start, key_mask=key_mask,
                            name=f"{p}.softmax_if", **woss_units))
    inhibitor = g.add(WossInhibitor(shape=logit_shape, code=g.code, start=woss_start, key_mask=key_mask,
                                    name=f"{p}.softmax_inhibitor", **woss_units))
    g.populations[f"{p}.softmax_if"] = woss
    g.link(g.trace.s_out, woss.trace_in)
    for source, destination in ((logits.s_out, woss.a_in), (logits.s_out, inhibitor.a_in),
                                (inhibitor.shift_out, woss.shift_in), (inhibitor.theta_out, woss.theta_in),
                                (woss.trace_out, inhibitor.trace_in)):
        g.link(source, destination)
    out = g.neuron(f"{p}.stdp_av", head_shape, divisor_shape=head_shape[:-1] + (1,))
    av_index, v_index = g.layers[f"{p}.stdp_av"].index, g.layers[f"{p}.v_if"].index
    v = _Stream(g.arrive(qkv["v_if"].s_out, v_index, av_index), g.arrive(qkv["v_if"].trace_out, v_index, av_index),
                v_index, head_shape)
    av = g.add(TraceMatMul(shape_a=logit_shape, shape_b=head_shape, code=g.code, transpose_b=False, name=f"{p}.av",
                           **g.fixed(payload_exp_a=None if g.fmt is None else g.fmt.woss_payload_exp,
                                     payload_exp_b=qkv["v_if"].payload_exp, current_exp=out.current_exp)))
    g.product(av, woss, v)
    g.link(av.a_out, out.a_in)
    g.link(inhibitor.norm_out, out.div_in)
    return out


class _BertBuilder:
    """Block diagram of a converted BERT classifier (mirrors ``models.bert.SpikingBert.run``)."""

    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.network = graph.cm.to_reference("ann").double()  # the host embedding in float64, as the network
        self.config = self.network.config
        self.official = graph.code.official

    def build(self, inputs) -> tuple[TokenLinear, int]:
        g = self.g
        try:
            x, present = self.network.embed(inputs, g.code)  # validates the tokenizer tensors
        except ValueError as error:
            raise LavaBuildError(str(error)) from None
        x = x.detach().double()
        self.key_mask = present[:, None, None, :].numpy()  # (batch, 1, 1, N)
        embeddings = g.neuron("embeddings_if", tuple(x.shape))
        source = g.add(SpikeSource(data=one_shot(x, g.code, g.cm.steps_per_inference, neuron=embeddings)))
        g.link(source.s_out, embeddings.a_in)
        self.input_stats = None  # the embeddings enter as values: no input spike code
        s = g.stream(embeddings)
        for i in range(self.config.num_hidden_layers):
            s = g.circuit(s, f"layers.{i}", lambda sub, x_in, i=i: self._layer(sub, x_in, f"layers.{i}"))
        b, n, hidden = s.shape
        pooler = g.neuron("pooler_if", (b, hidden))
        first_token = _index(s.shape)[:, 0].numpy()
        g.linear("pooler", s, pooler, in_index=first_token)
        return g.readout("classifier", g.stream(pooler))

    def _diagonal(self, g: _Graph, key: str, source: _Stream, destination: PhaseNeuron, bias: bool = True) -> None:
        """A per-channel affine synapse (folded residual, or official's norm)."""
        weight = g.weight(f"{key}.weight")
        g.linear(key, source, destination, weight=np.diag(weight),
                 bias=g.weight(f"{key}.bias") if bias else np.zeros_like(weight))

    def _layer(self, g: _Graph, s: _Stream, p: str) -> PhaseNeuron:
        b, n, hidden = s.shape
        heads, d = self.config.num_attention_heads, self.config.head_dim
        split = _index((b, n, hidden)).reshape(b, n, heads, d).transpose(1, 2).numpy()
        qkv = {}
        for name, key in (("q_if", "query"), ("k_if", "key"), ("v_if", "value")):
            qkv[name] = g.neuron(f"{p}.{name}", (b, heads, n, d))
            g.linear(f"{p}.attention.{key}", s, qkv[name], out_index=split)
        ctx = g.stream(attention_core(g, p, qkv, key_mask=self.key_mask))
        merged = _index((b, heads, n, d)).transpose(1, 2).reshape(b, n, hidden).numpy()
        if self.official:
            n1 = g.neuron(f"{p}.attention.neuron_1_if", s.shape)
            g.linear(f"{p}.attention.output", ctx, n1, in_index=merged)
            h = g.neuron(f"{p}.attention.neuron_2_if", s.shape)
            self._diagonal(g, f"{p}.attention.norm", g.stream(n1), h)
            self._diagonal(g, f"{p}.attention.norm", s, h, bias=False)
            h = g.stream(h)
            m = g.neuron(f"{p}.intermediate_if", (b, n, self.config.intermediate_size))
            g.linear(f"{p}.intermediate", h, m)
            o1 = g.neuron(f"{p}.output.neuron_1_if", s.shape)
            g.linear(f"{p}.output", g.stream(m), o1)
            out = g.neuron(f"{p}.output.neuron_2_if", s.shape)
            self._diagonal(g, f"{p}.output.norm", g.stream(o1), out)
            self._diagonal(g, f"{p}.output.norm", h, out, bias=False)
            return out
        h = g.neuron(f"{p}.attn_out_if", s.shape)
        g.linear(f"{p}.attention.output", ctx, h, in_index=merged)
        self._diagonal(g, f"{p}.attention.residual", s, h)
        h = g.stream(h)
        m = g.neuron(f"{p}.intermediate_if", (b, n, self.config.intermediate_size))
        g.linear(f"{p}.intermediate", h, m)
        out = g.neuron(f"{p}.out_if", s.shape)
        g.linear(f"{p}.output", g.stream(m), out)
        self._diagonal(g, f"{p}.output.residual", h, out)
        return out


class LavaNetwork:
    """A converted model as a Lava network on ``Loihi2SimCfg``; one graph is built per run.

    ``run(x)`` phase-encodes the input, runs exactly ``steps_per_sample`` steps, decodes the
    classifier read-out (the integrated membrane of ``last_fc``, spec §6) and stops every worker.
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
        if cm.family.name not in FAMILIES:
            raise LavaBuildError(f"no Lava builder for family {cm.family.name!r}; available: {FAMILIES}")
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
        self.family = cm.family.name
        self._last: dict[str, ty.Any] = {}

    @property
    def steps_per_sample(self) -> int:
        return self.cm.steps_per_inference

    def _check_input(self, x: ty.Any) -> tuple[ty.Any, int]:
        """The input in the builder's format and its batch size; LavaBuildError if it is malformed,
        :class:`NonFiniteInputError` (as every engine raises) if it holds NaN or inf."""
        if self.family == "bert":
            if not isinstance(x, ty.Mapping) or "input_ids" not in x:
                raise LavaBuildError(f"input must be a dict with 'input_ids' (batch, N) as HF tokenizers return, "
                                     f"got {type(x).__name__}")
            ids = torch.as_tensor(x["input_ids"])
            if ids.dim() != 2:
                raise LavaBuildError(f"input_ids must be (batch, N), got shape {tuple(ids.shape)}")
            check_finite("input", {key: x.get(key) for key in bert.INPUT_KEYS})
            return x, ids.shape[0]  # the builder's embedding validates the rest
        cfg = swin.SwinConfig.from_json(self.cm.config["architecture"])
        expected = (cfg.in_chans, *cfg.img_size)
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise LavaBuildError(f"input must be a float tensor of images (batch, {', '.join(map(str, expected))}), "
                                 f"got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise LavaBuildError(f"input must be images (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        check_finite("input", x)
        x = x.detach().cpu().double()
        return x, x.shape[0]

    def build(self, x: ty.Any) -> tuple[_Graph, SpikeSink, int]:
        """Processes for one batch; raises :class:`LavaBuildError` before any worker starts."""
        x, batch = self._check_input(x)
        graph = _Graph(self.cm, batch=batch, fmt=self.fixed_format)
        builder = (_BertBuilder if self.family == "bert" else _SwinBuilder)(graph)
        head, readout_index = builder.build(x)
        sink = probe(head.a_out, self.steps_per_sample)
        graph.processes.append(sink)
        count = self._os_processes(graph)
        if count > MAX_PROCESSES:
            raise LavaBuildError(f"the graph has {count} Lava processes in {self.mode} mode, more than the simulator "
                                 f"limit of {MAX_PROCESSES} (each is a forked OS process synchronised every step)")
        self._last = {"graph": graph, "builder": builder, "head": head}
        return graph, sink, readout_index

    def run(self, x: ty.Any, timings: dict | None = None) -> torch.Tensor:
        """Logits (batch, classes) of images (batch, C, H, W) (or one image (C, H, W)) for Swin,
        of a tokenizer dict (input_ids, attention_mask, token_type_ids) for BERT.

        ``timings``, if given, is filled with build_s and run_processes' compile/init/run/stop.
        """
        start = time.perf_counter()
        graph, sink, readout_index = self.build(x)
        if timings is not None:
            timings["build_s"] = time.perf_counter() - start
        tag = "floating_pt" if self.fixed_format is None else "fixed_pt"
        current = run_processes({"readout": sink}, self.steps_per_sample, timings=timings, select_tag=tag,
                                select_sub_proc_model=self.mode == "decomposed")["readout"]
        return self._logits(current, graph, readout_index)

    def simulate(self, x: ty.Any) -> torch.Tensor:
        """The logits of :meth:`run` (bit for bit), computed by stepping the same graph in this
        process (``procs.fused.Stepper``): no Lava runtime and no worker processes, so whole
        batches of a data set go through in one graph. :meth:`stats` then describes this run."""
        graph, sink, readout_index = self.build(x)
        leaves, sources = fused.flatten(graph.processes)
        stepper = fused.Stepper(leaves, sources, self.fixed_format is not None)
        for t in range(self.steps_per_sample):
            stepper.step(t)
        return self._logits(sink.proc_params["record"], graph, readout_index)

    def _logits(self, current: np.ndarray, graph: _Graph, readout_index: int) -> torch.Tensor:
        """Decode the read-out: the integrated membrane u = Σ_τ B^-τ x_τ of the head's current
        over its window, in ANN units (÷ unit_gain; fixed point: × its current unit)."""
        window = current[readout_index * graph.T:(readout_index + 1) * graph.T]
        if self.fixed_format is not None:
            window = window * 2.0 ** self._last["head"].proc_params["current_exp"]
        weights = self.code.base ** -np.arange(graph.T, dtype=np.float64)
        membrane = np.tensordot(weights, window, axes=1)
        return torch.from_numpy(membrane / self.code.unit_gain)

    def run_batch(self, xs: ty.Any, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
        """Logits of many inputs (an image tensor, or a tokenizer dict of tensors), ``batch_size``
        per Lava run, with a progress bar. Non-finite inputs are refused before the first run."""
        check_finite("input", {key: xs.get(key) for key in bert.INPUT_KEYS} if isinstance(xs, ty.Mapping) else xs)
        if isinstance(xs, ty.Mapping):
            keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if xs.get(key) is not None]
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
        if not self._last:
            raise RuntimeError("run the network first")
        return {name: population.recorded_fire_steps()
                for name, population in self._last["graph"].populations.items()}

    def stats(self) -> dict[str, ty.Any]:
        """Graph size and activity of the last run.

        Keys: processes, neurons, synapses (token-wise weights), steps_per_sample, layers (per
        layer :class:`LayerStats`, summed over the batch, plus ``input``: bits of the input code),
        fire_histograms (per layer, neurons that fired at each fire step k = 0..T−1); fixed point
        also ``clips``: per Process name, how many integer values were clipped to the state range
        (saturated, never wrapped), only Processes that clipped.
        """
        if not self._last:
            raise RuntimeError("run the network first")
        graph = self._last["graph"]
        layers, histograms = {}, {}
        for name, fire_steps in self.fire_steps().items():
            population = graph.populations[name]
            saturated = population.recorded_saturation().sum() if isinstance(population, PhaseNeuron) else 0
            layers[name] = LayerStats.from_fire_steps(torch.from_numpy(fire_steps), graph.T, int(saturated))
            histograms[name] = np.bincount(fire_steps[fire_steps >= 0], minlength=graph.T)
        if self._last["builder"].input_stats is not None:
            layers["input"] = self._last["builder"].input_stats
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

    def graph_size(self, graph: _Graph) -> dict[str, int]:
        """OS processes, neurons and token-wise weights of a graph from :meth:`build` (no run
        needed). The fixed-point residuals' identity matrices are one-to-one connections, not
        weights: not counted."""
        neurons = sum(int(np.prod(p.s_out.shape)) for p in graph.populations.values())
        synapses = sum(int(np.prod(p.proc_params["weight_t"].shape)) for p in _leaves(graph.processes)
                       if isinstance(p, TokenLinear) and not p.name.endswith(RESIDUAL))
        return {"processes": self._os_processes(graph), "neurons": neurons, "synapses": synapses}


    def _os_processes(self, graph: _Graph) -> int:
        """OS processes of the run: a fused Circuit is one, a decomposed one is its members."""
        if self.mode == "fused":
            return len(graph.processes)
        return len(_leaves(graph.processes))


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
