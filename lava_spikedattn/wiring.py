"""Small connection helpers that wire ``procs`` into SpikedAttention circuits (lava-dnf style).

The circuits here follow the time-stepped reference exactly: Lava delivers a message sent in
step t to a receiver's ``recv()`` in the same step t, so a layer's fire window is the next
layer's input window, as in ``reference.stepped``.
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass, field

import numpy as np
import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat, round_half_up
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron
from lava_spikedattn.runtime import run_processes


def one_shot(x: ty.Any, code: PhaseCode, num_steps: int, step: int = 0,
             neuron: PhaseNeuron | None = None) -> np.ndarray:
    """Playback array (num_steps, *x.shape) injecting ``unit_gain·x`` at ``step`` only.

    A :class:`PhaseNeuron` whose input window contains ``step`` then integrates exactly
    ``u = unit_gain·x/scale``: it fires as if ``x`` had arrived as spikes. For a fixed-point
    ``neuron`` the current is integer, ``round(unit_gain·x/2^current_exp)``, clipped to the state
    range (a clipped value is above the top level: the neuron records it as saturated).
    """
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64).numpy())
    data = np.zeros((num_steps,) + x.shape)
    data[step] = code.unit_gain * x
    fmt = None if neuron is None else neuron.proc_params["fixed_format"]
    if fmt is not None:
        data = np.clip(round_half_up(data / 2.0**neuron.current_exp), fmt.state_min, fmt.state_max)
    return data


def inject(x: ty.Any, code: PhaseCode, num_steps: int, step: int = 0, neuron: PhaseNeuron | None = None) -> SpikeSource:
    """A :class:`SpikeSource` that injects ``x`` one-shot (see :func:`one_shot`)."""
    return SpikeSource(data=one_shot(x, code, num_steps, step, neuron))


def connect(source, destination) -> None:
    """``source.connect(destination)`` with a ValueError naming both ports on a shape mismatch.

    (Lava 0.10.0 raises a bare AssertionError that names neither port.)
    """
    if tuple(source.shape) != tuple(destination.shape):
        raise ValueError(f"cannot connect {_port_name(source)} of shape {tuple(source.shape)} to "
                         f"{_port_name(destination)} of shape {tuple(destination.shape)}")
    source.connect(destination)


def connect_trace(holder: TraceHolder, *populations) -> None:
    """Feed the global trace to populations that latch it (PhaseNeuron, WossNeuron)."""
    for population in populations:
        connect(holder.s_out, population.trace_in)


def connect_product(product: TraceMatMul, a, b, link: ty.Callable = connect) -> None:
    """Feed two populations' spikes and decoded traces into a :class:`TraceMatMul`."""
    for source, destination in ((a.s_out, product.a_in), (a.trace_out, product.a_trace_in),
                                (b.s_out, product.b_in), (b.trace_out, product.b_trace_in)):
        link(source, destination)


def _fixed(fmt: FixedFormat | None, **exponents) -> dict[str, ty.Any]:
    """Fixed-point keyword arguments of a Process (its unit exponents); {} in floating point."""
    return {} if fmt is None else dict(fixed_format=fmt, **exponents)


def wire_scores(add: ty.Callable, link: ty.Callable, code: PhaseCode, q, k, logits: PhaseNeuron, trace, *,
                prefix: str, woss_start: int, bias_start: int, bias: np.ndarray | None = None,
                key_mask: np.ndarray | None = None, ramp_start: float | None = None,
                fmt: FixedFormat | None = None) -> tuple[WossNeuron, WossInhibitor]:
    """First half of the attention core: QKᵀ (×d^-1/2, + bias) into ``logits``, then WOSS.

    ``add(process)`` registers a process, ``link(source, destination)`` connects two ports (the
    builder's or :func:`connect`). ``q``/``k``: populations (..., N, d) / (..., M, d). Returns the
    WOSS neurons (..., N, M) and their inhibitor; the builder and the standalone
    :func:`attention_core` both wire the core through this function and :func:`wire_values`.
    """
    logit_shape = tuple(logits.s_out.shape)
    qk = add(TraceMatMul(shape_a=tuple(q.s_out.shape), shape_b=tuple(k.s_out.shape), code=code, transpose_b=True,
                         factor=q.s_out.shape[-1] ** -0.5, bias=bias, bias_start=bias_start, key_mask=key_mask,
                         name=f"{prefix}.qk", **_fixed(fmt, payload_exp_a=q.payload_exp, payload_exp_b=k.payload_exp,
                                                       current_exp=logits.current_exp)))
    connect_product(qk, q, k, link)
    link(qk.a_out, logits.a_in)
    units = _fixed(fmt, current_exp=logits.payload_exp)
    woss = add(WossNeuron(shape=logit_shape, code=code, start=woss_start, ramp_start=ramp_start, key_mask=key_mask,
                          name=f"{prefix}.softmax_if", **units))
    inhibitor = add(WossInhibitor(shape=logit_shape, code=code, start=woss_start, ramp_start=ramp_start,
                                  key_mask=key_mask, name=f"{prefix}.softmax_inhibitor", **units))
    link(trace.s_out, woss.trace_in)
    for source, destination in ((logits.s_out, woss.a_in), (logits.s_out, inhibitor.a_in),
                                (inhibitor.shift_out, woss.shift_in), (inhibitor.theta_out, woss.theta_in),
                                (woss.trace_out, inhibitor.trace_in)):
        link(source, destination)
    return woss, inhibitor


def wire_values(add: ty.Callable, link: ty.Callable, code: PhaseCode, woss: WossNeuron, inhibitor: WossInhibitor,
                v, v_payload_exp: int | None, out: PhaseNeuron, *, prefix: str,
                fmt: FixedFormat | None = None) -> TraceMatMul:
    """Second half of the attention core: WOSS × V into ``out``, divided by the spike sum.

    ``v``: V's spikes and decoded traces (``s_out``, ``trace_out``) delayed to arrive in ``out``'s
    input window; ``v_payload_exp``: V's payload unit (fixed point)."""
    av = add(TraceMatMul(shape_a=tuple(woss.s_out.shape), shape_b=tuple(v.s_out.shape), code=code, transpose_b=False,
                         name=f"{prefix}.av", **_fixed(fmt, payload_exp_a=None if fmt is None else fmt.woss_payload_exp,
                                                       payload_exp_b=v_payload_exp, current_exp=out.current_exp)))
    connect_product(av, woss, v, link)
    link(av.a_out, out.a_in)
    link(inhibitor.norm_out, out.div_in)
    return av


def probe(port, num_steps: int) -> SpikeSink:
    """A sink that records an OutPort every step."""
    sink = SpikeSink(shape=tuple(port.shape), num_steps=num_steps)
    connect(port, sink.a_in)
    return sink


def _port_name(port) -> str:
    process = getattr(port, "process", None)
    owner = f"{type(process).__name__}({process.name})" if process is not None else "?"
    return f"{owner}.{port.name}"


@dataclass
class AttentionCore:
    """The Lava processes of one attention core and the sinks that record it (``fixed``: the
    integer core, run with the fixed_pt models)."""

    code: PhaseCode
    processes: dict[str, ty.Any]
    sinks: dict[str, SpikeSink] = field(default_factory=dict)
    fixed: bool = False

    @property
    def num_steps(self) -> int:
        return self.processes["out"].end

    @property
    def process_count(self) -> int:
        return len(self.processes) + len(self.sinks)

    def run(self) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Run the 5T steps; returns the decoded output (..., N, dv) in ANN units and every
        probe's record (fixed point: integer payloads and membranes)."""
        out = self.processes["out"]
        records = run_processes(self.sinks, self.num_steps, select_tag="fixed_pt" if self.fixed else "floating_pt")
        spikes = records["out"] * 2.0**out.payload_exp if self.fixed else records["out"]
        return self.code.decode_spike_train(spikes, out.fire_start), records


def attention_core(q, k, v, code: PhaseCode, scale_q, scale_k, scale_v, scale_logits, scale_out, *,
                   bias=None, ramp_start: float | None = None, key_mask=None,
                   probes: ty.Iterable[str] = (), fixed_format: FixedFormat | None = None) -> AttentionCore:
    """Build the SpikedAttention core as Lava processes, timed like ``stepped.AttentionCoreSim``.

    q, k, v: (..., N, d), (..., M, d), (..., M, dv) values injected one-shot into the q/k/v
    neurons at step 0. ``key_mask`` (bool, True = key present) silences padded keys as in the
    reference. ``probes`` names populations (q, k, v, logits, woss, out) whose spikes
    (``NAME``) and membranes (``NAME.v``) are recorded besides the output's spikes.
    ``fixed_format``: the integer core (the Loihi 2 port, ``reference.fixed``): every population
    gets its default units (the output neuron ``FixedFormat.attention_output_exponent``), the
    products their operands' payload units, and the run selects the fixed_pt models.
    Processes: 3 sources, 1 trace holder, 3 q/k/v neurons, QKᵀ product, logits neuron, WOSS
    neurons + inhibitor, 2 delay lines (V spikes and traces), attention×V product, output neuron.
    """
    T = code.timesteps
    q, k, v = (torch.as_tensor(x, dtype=torch.float64) for x in (q, k, v))
    key_mask = None if key_mask is None else torch.as_tensor(key_mask).numpy()
    logit_shape = tuple(torch.broadcast_shapes(q[..., :1].shape, k[..., :1].transpose(-1, -2).shape))
    out_shape = logit_shape[:-1] + (v.shape[-1],)
    steps = 5 * T
    fmt = fixed_format
    out_units = {} if fmt is None else {
        "current_exp": fmt.attention_output_exponent(_np(scale_out), logit_shape[-1])}
    p: dict[str, ty.Any] = {
        "trace": TraceHolder(code=code, fixed_format=fmt),
        "q": PhaseNeuron(shape=tuple(q.shape), scale=_np(scale_q), code=code, fixed_format=fmt),
        "k": PhaseNeuron(shape=tuple(k.shape), scale=_np(scale_k), code=code, fixed_format=fmt),
        "v": PhaseNeuron(shape=tuple(v.shape), scale=_np(scale_v), code=code, fixed_format=fmt),
        "logits": PhaseNeuron(shape=logit_shape, scale=_np(scale_logits), code=code, start=T, fixed_format=fmt),
        "out": PhaseNeuron(shape=out_shape, scale=_np(scale_out), code=code, start=3 * T,
                           divisor_shape=out_shape[:-1] + (1,), fixed_format=fmt, **out_units),
    }

    roles = {"qk": "qk", "softmax_if": "woss", "softmax_inhibitor": "inhibitor", "av": "av"}

    def add(process):  # keep the wired processes under their roles
        p[roles[process.name.rsplit(".", 1)[-1]]] = process
        return process

    for name in ("q", "k", "v"):
        p[f"{name}_source"] = inject({"q": q, "k": k, "v": v}[name], code, steps, neuron=p[name])
        connect(p[f"{name}_source"].s_out, p[name].a_in)
    connect_trace(p["trace"], p["q"], p["k"], p["v"])
    wire_scores(
        add, connect, code, p["q"], p["k"], p["logits"], p["trace"], prefix="attention", woss_start=2 * T,
        bias_start=T, bias=None if bias is None else _np(bias), key_mask=key_mask, ramp_start=ramp_start, fmt=fmt)
    p["v_delay"] = DelayLine(shape=tuple(v.shape), delay=2 * T)
    p["v_trace_delay"] = DelayLine(shape=tuple(v.shape), delay=2 * T)
    connect(p["v"].s_out, p["v_delay"].s_in)
    connect(p["v"].trace_out, p["v_trace_delay"].s_in)
    wire_values(add, connect, code, p["woss"], p["inhibitor"], _Stream(p["v_delay"].a_out, p["v_trace_delay"].a_out),
                p["v"].payload_exp, p["out"], prefix="attention", fmt=fmt)
    core = AttentionCore(code=code, processes=p, fixed=fmt is not None)
    core.sinks["out"] = probe(p["out"].s_out, steps)
    for name in probes:
        if name not in ("q", "k", "v", "logits", "woss", "out"):
            raise ValueError(f"unknown probe {name!r}: choose from q, k, v, logits, woss, out")
        if name != "out":
            core.sinks[name] = probe(p[name].s_out, steps)
        core.sinks[f"{name}.v"] = probe(p[name].v_out, steps)
    return core


@dataclass(frozen=True)
class _Stream:
    """A (spikes, decoded traces) pair of OutPorts, e.g. the two outputs of V's delay lines."""

    s_out: ty.Any
    trace_out: ty.Any


def _np(x) -> np.ndarray:
    return np.asarray(torch.as_tensor(x, dtype=torch.float64).numpy())
