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
from lava_spikedattn.lava import run_processes
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


def one_shot(x: ty.Any, code: PhaseCode, num_steps: int, step: int = 0) -> np.ndarray:
    """Playback array (num_steps, *x.shape) injecting ``unit_gain·x`` at ``step`` only.

    A :class:`PhaseNeuron` whose input window contains ``step`` then integrates exactly
    ``u = unit_gain·x/scale``: it fires as if ``x`` had arrived as spikes.
    """
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64).numpy())
    data = np.zeros((num_steps,) + x.shape)
    data[step] = code.unit_gain * x
    return data


def inject(x: ty.Any, code: PhaseCode, num_steps: int, step: int = 0) -> SpikeSource:
    """A :class:`SpikeSource` that injects ``x`` one-shot (see :func:`one_shot`)."""
    return SpikeSource(data=one_shot(x, code, num_steps, step))


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


def connect_product(product: TraceMatMul, a, b) -> None:
    """Feed two populations' spikes and decoded traces into a :class:`TraceMatMul`."""
    connect(a.s_out, product.a_in)
    connect(a.trace_out, product.a_trace_in)
    connect(b.s_out, product.b_in)
    connect(b.trace_out, product.b_trace_in)


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
    """The Lava processes of one attention core and the sinks that record it."""

    code: PhaseCode
    processes: dict[str, ty.Any]
    sinks: dict[str, SpikeSink] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.processes["out"].end

    @property
    def process_count(self) -> int:
        return len(self.processes) + len(self.sinks)

    def run(self) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Run the 5T steps; returns the decoded output (..., N, dv) and every probe's record."""
        records = run_processes(self.sinks, self.num_steps)
        out = self.code.decode_spike_train(records["out"], self.processes["out"].fire_start)
        return out, records


def attention_core(q, k, v, code: PhaseCode, scale_q, scale_k, scale_v, scale_logits, scale_out, *,
                   bias=None, ramp_start: float | None = None, key_mask=None,
                   probes: ty.Iterable[str] = ()) -> AttentionCore:
    """Build the SpikedAttention core as Lava processes, timed like ``stepped.AttentionCoreSim``.

    q, k, v: (..., N, d), (..., M, d), (..., M, dv) values injected one-shot into the q/k/v
    neurons at step 0. ``key_mask`` (bool, True = key present) silences padded keys as in the
    reference. ``probes`` names populations (q, k, v, logits, woss, out) whose spikes
    (``NAME``) and membranes (``NAME.v``) are recorded besides the output's spikes.
    Processes: 3 sources, 1 trace holder, 3 q/k/v neurons, QKᵀ product, logits neuron, WOSS
    neurons + inhibitor, 2 delay lines (V spikes and traces), attention×V product, output neuron.
    """
    T = code.timesteps
    q, k, v = (torch.as_tensor(x, dtype=torch.float64) for x in (q, k, v))
    key_mask = None if key_mask is None else torch.as_tensor(key_mask).numpy()
    logit_shape = tuple(torch.broadcast_shapes(q[..., :1].shape, k[..., :1].transpose(-1, -2).shape))
    out_shape = logit_shape[:-1] + (v.shape[-1],)
    steps = 5 * T
    p: dict[str, ty.Any] = {
        "trace": TraceHolder(code=code),
        "q": PhaseNeuron(shape=tuple(q.shape), scale=_np(scale_q), code=code),
        "k": PhaseNeuron(shape=tuple(k.shape), scale=_np(scale_k), code=code),
        "v": PhaseNeuron(shape=tuple(v.shape), scale=_np(scale_v), code=code),
        "qk": TraceMatMul(shape_a=tuple(q.shape), shape_b=tuple(k.shape), code=code, transpose_b=True,
                          factor=q.shape[-1] ** -0.5, bias=None if bias is None else _np(bias), bias_start=T,
                          key_mask=key_mask),
        "logits": PhaseNeuron(shape=logit_shape, scale=_np(scale_logits), code=code, start=T),
        "woss": WossNeuron(shape=logit_shape, code=code, start=2 * T, ramp_start=ramp_start, key_mask=key_mask),
        "inhibitor": WossInhibitor(shape=logit_shape, code=code, start=2 * T, ramp_start=ramp_start,
                                   key_mask=key_mask),
        "v_delay": DelayLine(shape=tuple(v.shape), delay=2 * T),
        "v_trace_delay": DelayLine(shape=tuple(v.shape), delay=2 * T),
        "av": TraceMatMul(shape_a=logit_shape, shape_b=tuple(v.shape), code=code, transpose_b=False),
        "out": PhaseNeuron(shape=out_shape, scale=_np(scale_out), code=code, start=3 * T,
                           divisor_shape=out_shape[:-1] + (1,)),
    }
    for name in ("q", "k", "v"):
        p[f"{name}_source"] = inject({"q": q, "k": k, "v": v}[name], code, steps)
        connect(p[f"{name}_source"].s_out, p[name].a_in)
    connect_trace(p["trace"], p["q"], p["k"], p["v"], p["woss"])
    connect_product(p["qk"], p["q"], p["k"])
    connect(p["qk"].a_out, p["logits"].a_in)
    connect(p["logits"].s_out, p["woss"].a_in)
    connect(p["logits"].s_out, p["inhibitor"].a_in)
    connect(p["inhibitor"].shift_out, p["woss"].shift_in)
    connect(p["inhibitor"].theta_out, p["woss"].theta_in)
    connect(p["woss"].trace_out, p["inhibitor"].trace_in)
    connect(p["v"].s_out, p["v_delay"].s_in)
    connect(p["v"].trace_out, p["v_trace_delay"].s_in)
    connect_product(p["av"], p["woss"], _Stream(p["v_delay"].a_out, p["v_trace_delay"].a_out))
    connect(p["av"].a_out, p["out"].a_in)
    connect(p["inhibitor"].norm_out, p["out"].div_in)
    core = AttentionCore(code=code, processes=p)
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
