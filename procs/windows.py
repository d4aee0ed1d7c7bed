"""Quiet ports: the steps in which each port of a graph can carry anything, so that a Lava
message is sent only then.

A pipelined SpikedAttention network is mostly silent: a layer integrates in one T-step window and
fires in the next, and a port outside its window sends zeros (spikes, currents) or a value that no
longer changes (a latched trace, a membrane after its window). Sending those every step costs one
message per port and step, which dominates a Lava run at real size (a Swin-T block output is
2.4 MB). :func:`assign_windows` gives every port of a built graph a :class:`Window`, agreed by
sender and receivers: the sender sends only inside it; a receiver receives only inside it and
reads zeros before it, and after it zeros or (a latched port) the value of its last step. That is
exactly what the receiver would have read from a message every step, so the spikes are unchanged
(tested against the stepped reference and the every-step run).

Windows follow from each Process's own timing (its windows, delays, bias window) and its inputs'
windows (:data:`_RULES`); senders that share a receiving port are widened to one window (Lava's
InPort sums all its connections in one receive). Kept beside the process folders, not inside:
Lava's compiler executes every module inside a process folder.
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass

from lava_spikedattn.procs import graph
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

FOREVER = 2**62  # the end of a window that never closes


@dataclass(frozen=True)
class Window:
    """Steps [first, end) in which a port sends. Outside: zeros, except after the window of a
    ``latched`` port, which holds the value of step end − 1. Empty (first ≥ end): never sends."""

    first: int
    end: int
    latched: bool = False

    def __contains__(self, t: int) -> bool:
        return self.first <= t < self.end

    @property
    def empty(self) -> bool:
        return self.first >= self.end

    def hull(self, other: Window) -> Window:
        """The smallest window covering both (latched if either is)."""
        if self.empty or other.empty:
            return other if self.empty else self
        return Window(min(self.first, other.first), max(self.end, other.end), self.latched or other.latched)

    def shifted(self, steps: int) -> Window:
        return self if self.empty else Window(self.first + steps, self.end + steps, self.latched)


EMPTY = Window(0, 0)
ALWAYS = Window(0, FOREVER)


def _hull(windows: ty.Iterable[Window]) -> Window:
    result = EMPTY
    for window in windows:
        result = result.hull(window)
    return result


# --- where each Process's outputs can change, from its timing and its inputs' windows --------------------
def _phase(proc: PhaseNeuron, inputs: dict[str, Window]) -> dict[str, Window]:
    fire = Window(proc.fire_start, proc.end)
    return {"s_out": fire, "trace_out": Window(fire.first, fire.end, True),
            "v_out": Window(proc.start, proc.end, True)}


def _woss(proc: WossNeuron, inputs: dict[str, Window]) -> dict[str, Window]:
    p = proc.proc_params
    fire_start, fire_end = p["start"] + p["wait"], p["start"] + p["wait"] + p["timesteps"]
    return {"s_out": Window(fire_start, fire_end), "trace_out": Window(fire_start, fire_end, True),
            "v_out": Window(p["start"], fire_end, True)}


def _inhibitor(proc: WossInhibitor, inputs: dict[str, Window]) -> dict[str, Window]:
    p = proc.proc_params
    fire_end = p["start"] + p["wait"] + p["timesteps"]
    trace = inputs["trace_in"]
    # the threshold starts at theta0, not 0: sent from step 0 until its ramp ends
    return {"shift_out": Window(p["start"], p["start"] + p["timesteps"]), "theta_out": Window(0, fire_end, True),
            "norm_out": Window(trace.first, trace.end, True) if not trace.empty else EMPTY}


def _bias_window(p) -> Window:
    if p["injected_bias"] is None:
        return EMPTY
    return Window(p["bias_start"], p["bias_start"] + p["timesteps"])


def _linear(proc: TokenLinear, inputs: dict[str, Window]) -> dict[str, Window]:
    """W·x + bias: zero while x is zero and the bias is off; constant once x is (latched x)."""
    return {"a_out": inputs["s_in"].hull(_bias_window(proc.proc_params))}


def _matmul(proc: TraceMatMul, inputs: dict[str, Window]) -> dict[str, Window]:
    """Every product term has a spike operand: zero while both spike inputs are zero and the
    bias is off. A latched spike input would make it change forever."""
    spikes = inputs["a_in"].hull(inputs["b_in"])
    if spikes.latched:
        return {"a_out": ALWAYS}
    return {"a_out": spikes.hull(_bias_window(proc.proc_params))}


def _delay(proc: DelayLine, inputs: dict[str, Window]) -> dict[str, Window]:
    return {"a_out": inputs["s_in"].shifted(proc.proc_params["delay"])}


def _source(proc: SpikeSource, inputs: dict[str, Window]) -> dict[str, Window]:
    return {"s_out": Window(0, proc.proc_params["data"].shape[0])}


_RULES: dict[type, ty.Callable[[ty.Any, dict[str, Window]], dict[str, Window]]] = {
    PhaseNeuron: _phase, WossNeuron: _woss, WossInhibitor: _inhibitor, TokenLinear: _linear,
    TraceMatMul: _matmul, DelayLine: _delay, SpikeSource: _source,
    TraceHolder: lambda proc, inputs: {"s_out": ALWAYS}, SpikeSink: lambda proc, inputs: {},
}


# --- the whole graph ---------------------------------------------------------------------------------------
def assign_windows(processes: ty.Sequence) -> None:
    """Give every port of a built graph (leaves and Circuits, as ``procs.graph.flatten`` wires
    them) its window, in ``proc_params["windows"]`` ({port name: Window}), which the models
    obey (``TypedProcessModel.receive`` / ``emit``). A port connected outside ``processes``
    keeps sending every step; an OutPort nobody receives sends nothing."""
    leaves, sources = graph.flatten(processes)
    send = natural_windows(leaves, sources)
    receivers: dict[int, int] = {}
    for keys in sources.values():
        for key in keys:
            receivers[key] = receivers.get(key, 0) + 1
    inside = {id(process) for process in (*leaves, *processes)}
    for leaf in leaves:
        for port in leaf.out_ports:
            if any(id(dst.process) not in inside for dst in port.out_connections):
                send[id(port)] = ALWAYS  # someone outside this graph listens
            elif id(port) not in receivers:
                send[id(port)] = EMPTY
    _share_windows(send, sources)
    for leaf in leaves:
        windows = {port.name: send[id(port)] for port in leaf.out_ports}
        windows.update({port.name: _received(send, sources.get(id(port), ())) for port in leaf.in_ports})
        leaf.proc_params.overwrite("windows", windows)
    for circuit in (p for p in processes if isinstance(p, Circuit)):
        origin = id(circuit.proc_params["output"])
        outer = {"s_in": circuit.proc_params["feeds"], "trace_in": circuit.proc_params["trace_feeds"]}
        windows = {"s_out": send[origin]}
        windows.update({name: _received(send, sources.get(id(feeds[0]), ())) if feeds else EMPTY
                        for name, feeds in outer.items()})
        circuit.proc_params.overwrite("windows", windows)


def natural_windows(leaves: ty.Sequence, sources: ty.Mapping[int, list],
                    external: ty.Mapping[ty.Hashable, Window] | None = None) -> dict[ty.Hashable, Window]:
    """Each leaf OutPort's window (by id) from its Process's rule and its inputs' windows,
    iterated from "never" until nothing widens (the rules only widen; a WOSS neuron and its
    inhibitor feed each other). ``external``: the windows of external source keys (default
    every step)."""
    send: dict[ty.Hashable, Window] = {id(port): EMPTY for leaf in leaves for port in leaf.out_ports}
    for keys in sources.values():
        for key in keys:
            if key not in send:
                send[key] = (external or {}).get(key, ALWAYS)
    for leaf in leaves:
        if type(leaf) not in _RULES:
            raise ValueError(f"no port windows for {type(leaf).__name__} {leaf.name!r}")
    for _ in range(len(leaves) + 2):  # each pass settles at least one more leaf along any chain
        changed = False
        for leaf in leaves:
            inputs = {port.name: _hull(send[key] for key in sources.get(id(port), ())) for port in leaf.in_ports}
            for name, window in _RULES[type(leaf)](leaf, inputs).items():
                key = id(getattr(leaf, name))
                if send[key] != window:
                    send[key], changed = window, True
        if not changed:
            return send
    raise ValueError("the port windows do not settle: a cycle through a DelayLine")


def _share_windows(send: dict[int, Window], sources: ty.Mapping[int, list]) -> None:
    """Widen the senders into one InPort to one window (Lava receives all of them at once); a
    latched sender beside one that is not makes them all send every step."""
    changed = True
    while changed:
        changed = False
        for keys in sources.values():
            windows = {send[key] for key in keys}
            if len(windows) < 2:
                continue
            shared = _hull(windows)
            if len({window.latched for window in windows if not window.empty}) > 1:
                shared = ALWAYS
            for key in keys:
                if send[key] != shared:
                    send[key], changed = shared, True


def _received(send: ty.Mapping[int, Window], keys: ty.Sequence[int]) -> Window:
    """The window of an InPort: its senders' (one window after :func:`_share_windows`)."""
    return _hull(send[key] for key in keys)
