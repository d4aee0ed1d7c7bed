"""Step many leaf Processes inside one Python process, floating or fixed point (numpy only).

Used by the fused :class:`~lava_spikedattn.procs.circuit.process.Circuit` models (a block in one
OS process) and by ``builder.LavaNetwork.simulate`` (a whole network, no Lava runtime). Each
leaf's update is split into stages that call the same ``dynamics`` (floating_pt) or
``dynamics_fixed`` (fixed_pt) functions as the leaf's own ProcessModel; the stages run in an
order where each follows the stages producing its inputs, which is Lava's same-step delivery,
and an input port reads the sum of its sources, as a Lava InPort sums its connections. So a
fused or in-process run produces the spikes of the Lava run, bit for bit (tested).

Kept beside (not inside) the process folders: Lava's compiler executes every module inside a
process folder while it searches for ProcessModels.
"""

from __future__ import annotations

import typing as ty

import numpy as np

from lava_spikedattn.procs import dynamics, dynamics_fixed, windows
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.model_types import RECORDS
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


class Stage(ty.NamedTuple):
    """One computation of a leaf within a step: reads ``inputs`` ports, writes ``outputs``.

    ``run(t, read)`` returns {OutPort: array or None}; None means all zeros (a quiet port: a
    population outside its window, a synapse without input), so that quiet parts of a network
    cost nothing. Returned arrays are never mutated afterwards, except a membrane (v_out).
    """

    inputs: tuple
    outputs: tuple
    run: ty.Callable[[int, Reader], dict]
    runs: str = "outputs"  # in the steps its outputs can change, or its "inputs" can, or "always" (Stepper)


def stages(member, fixed: bool) -> list[Stage]:
    """The leaf's update as stages (``fixed``: its fixed_pt equations, else floating_pt), its
    records (shared with the parent) set to their initial values: new stages start a new input."""
    builders = _FIXED if fixed else _FLOAT
    for kind, build in builders.items():
        if isinstance(member, kind):
            _initial_records(member.proc_params)
            return build(member, member.proc_params)
    raise ValueError(f"no fused update for {type(member).__name__} {member.name!r}")


def _initial_records(p) -> None:
    """The records back to their start values (``model_types.RECORDS``, as the Processes create them)."""
    for key, initial in RECORDS.items():
        if p.get(key) is not None:
            p[key].fill(initial)


# --- stages shared by both precisions --------------------------------------------------------------------
def _population(member, start: int, end: int, advance: ty.Callable, decode: ty.Callable[[], np.ndarray],
                membrane: np.ndarray) -> list[Stage]:
    """A spiking population (PhaseNeuron, WossNeuron) active in steps [start, end).

    ``advance(t, read)`` runs its update and returns the spikes, None when no neuron fires;
    ``decode()`` its trace_out, recomputed only in a step with spikes (it changes only when a
    neuron fires). Outside the window nothing changes: no update runs, and the outputs are the
    held values.
    """
    held: dict[str, np.ndarray | None] = {"trace": None}

    def run(t, read):
        if t < start:
            return {member.s_out: None, member.trace_out: None, member.v_out: None}
        spikes = advance(t, read) if t < end else None
        if spikes is not None:
            held["trace"] = decode()
        return {member.s_out: spikes, member.trace_out: held["trace"], member.v_out: membrane}
    inputs = tuple(port for port in member.in_ports)
    return [Stage(inputs, (member.s_out, member.trace_out, member.v_out), run)]


def _any(spikes: np.ndarray) -> np.ndarray | None:
    """A population's spikes as ``_population`` takes them: None when no neuron fired."""
    return spikes if spikes.any() else None


def _inhibitor(member: WossInhibitor, shift: ty.Callable, ramp: ty.Callable, total: ty.Callable,
               clip_record: np.ndarray | None) -> list[Stage]:
    """WossInhibitor: the row shift (input window only), the ramp, and the spike sum, recomputed
    only when the WOSS trace changes (its clip count, if any, repeats every step as in Lava)."""
    p = member.proc_params
    start, timesteps = p["start"], p["timesteps"]
    last: dict[str, ty.Any] = {"in": None, "out": None, "clips": 0}

    def shift_and_ramp(t, read):
        row_shift = shift(t, read(member.a_in)) if start <= t < start + timesteps else None
        return {member.shift_out: row_shift, member.theta_out: np.array([ramp(t)])}

    def normaliser(t, read):
        if read.quiet(member.trace_in):
            return {member.norm_out: None}
        trace = read(member.trace_in)
        if trace is not last["in"]:
            before = 0 if clip_record is None else int(clip_record[0])
            last["in"], last["out"] = trace, total(trace)
            last["clips"] = 0 if clip_record is None else int(clip_record[0]) - before
        elif last["clips"]:
            clip_record[0] += last["clips"]
        return {member.norm_out: last["out"]}
    return [Stage((member.a_in,), (member.shift_out, member.theta_out), shift_and_ramp),
            Stage((member.trace_in,), (member.norm_out,), normaliser, runs="always")]


def _synapse(member, p, inputs: tuple, output, compute: ty.Callable, drive: tuple) -> list[Stage]:
    """A synapse (TokenLinear, TraceMatMul): quiet when its ``drive`` ports are quiet (no spike)
    and its bias is off; otherwise ``compute(t, read)``."""
    has_bias = p["injected_bias"] is not None

    def run(t, read):
        bias_on = has_bias and dynamics.bias_on(t, p["bias_start"], p["timesteps"])
        if not bias_on and all(read.quiet(port) for port in drive):
            return {output: None}
        return {output: compute(t, read)}
    return [Stage(inputs, (output,), run)]


def _delay(member: DelayLine, p) -> list[Stage]:
    """Ring buffer of references, None = zeros. No copy: what a DelayLine carries (spikes,
    decoded traces) is never mutated after it is sent; a membrane probe (v_out, a live array)
    must not be routed into one."""
    slots: list[np.ndarray | None] = [None] * p["delay"]

    def send(t, read):
        return {member.a_out: dynamics.delay_output(slots, t)}

    def store(t, read):
        dynamics.delay_input(slots, t, None if read.quiet(member.s_in) else read(member.s_in))
        return {}
    return [Stage((), (member.a_out,), send), Stage((member.s_in,), (), store, runs="inputs")]


def _source(member: SpikeSource, data: np.ndarray) -> list[Stage]:
    def run(t, read):
        return {member.s_out: data[t] if t < data.shape[0] else None}
    return [Stage((), (member.s_out,), run)]


def _sink(member: SpikeSink, p) -> list[Stage]:
    record = p["record"]

    def run(t, read):
        if t >= record.shape[0]:
            raise RuntimeError(f"SpikeSink: step {t} exceeds num_steps={record.shape[0]}")
        record[t] = read(member.a_in)
        return {}
    return [Stage((member.a_in,), (), run, runs="always")]


# --- floating point -----------------------------------------------------------------------------------
def _phase(member: PhaseNeuron, p) -> list[Stage]:
    params, shape = dynamics.PhaseParams.from_proc_params(p), p["shape"]
    state = dynamics.PhaseState(np.zeros(shape), np.zeros(shape, bool), np.zeros(shape), np.zeros(shape),
                                p["fire_record"], p["saturation_record"], np.zeros(shape),
                                np.zeros(shape) if params.divide_free else None)

    def advance(t, read):
        return dynamics.phase_step(state, params, t, read(member.a_in), read(member.trace_in)[0], read(member.div_in))
    return _population(member, member.start, member.end, advance, state.trace.copy, state.v)


def _woss(member: WossNeuron, p) -> list[Stage]:
    params, shape = dynamics.WossParams.from_proc_params(p), p["shape"]
    v, fired, latched = np.zeros(shape), np.zeros(shape, bool), np.zeros(shape)

    def advance(t, read):
        return _any(dynamics.woss_neuron_step(v, fired, latched, p["fire_record"], params, t, read(member.a_in),
                                              read(member.shift_in), read(member.theta_in)[0],
                                              read(member.trace_in)[0]))
    return _population(member, p["start"], p["start"] + p["wait"] + p["timesteps"], advance, latched.copy, v)


def _inhibitor_float(member: WossInhibitor, p) -> list[Stage]:
    params, row_shape = dynamics.WossParams.from_proc_params(p), p["shape"][:-1] + (1,)
    open_rows, theta = np.ones(row_shape, bool), np.array([p["theta0"]])
    return _inhibitor(member, lambda t, x: dynamics.woss_shift(open_rows, params, t, x),
                      lambda t: dynamics.woss_threshold(theta, params, t),
                      lambda trace: trace.sum(axis=-1, keepdims=True), None)


def _matmul(member: TraceMatMul, p) -> list[Stage]:
    def compute(t, read):
        return dynamics.trace_matmul(p, t, read.spikes(member.a_in), read(member.a_trace_in),
                                     read.spikes(member.b_in), read(member.b_trace_in))
    return _synapse(member, p, (member.a_in, member.a_trace_in, member.b_in, member.b_trace_in), member.a_out,
                    compute, (member.a_in, member.b_in))


def _linear(member: TokenLinear, p) -> list[Stage]:
    def compute(t, read):
        bias = dynamics.window_bias(p["injected_bias"], t, p["bias_start"], p["timesteps"])
        return dynamics.token_linear(read(member.s_in), p["weight_t"], p["in_index"], p["out_index"], bias)
    return _synapse(member, p, (member.s_in,), member.a_out, compute, (member.s_in,))


def _trace(member: TraceHolder, p) -> list[Stage]:
    def run(t, read):
        return {member.s_out: np.array([dynamics.global_trace(t, p["phase"], p["timesteps"], p["base"],
                                                              p["trace_start"])])}
    return [Stage((), (member.s_out,), run)]


_FLOAT: dict[type, ty.Callable[..., list[Stage]]] = {
    PhaseNeuron: _phase, WossNeuron: _woss, WossInhibitor: _inhibitor_float, TraceMatMul: _matmul,
    TokenLinear: _linear, DelayLine: _delay, TraceHolder: _trace, SpikeSink: _sink,
    SpikeSource: lambda member, p: _source(member, p["data"])}


# --- fixed point ---------------------------------------------------------------------------------------
def _phase_fixed(member: PhaseNeuron, p) -> list[Stage]:
    if p["clip_record"] is None:
        raise ValueError(f"PhaseNeuron {member.name!r} fixed_pt: build the Process with fixed_format "
                         f"(or current_exp)")
    params, shape = dynamics_fixed.FixedPhaseParams.from_proc_params(p), p["shape"]
    state = dynamics_fixed.FixedPhaseState(
        np.zeros(shape, np.int64), np.zeros(shape, bool), np.zeros(shape, np.int64), np.zeros(shape, np.int64),
        p["fire_record"], p["saturation_record"], p["clip_record"], np.zeros(shape, np.int64))

    def advance(t, read):
        return _any(dynamics_fixed.phase_step_fixed(state, params, t, read(member.a_in),
                                                    int(read(member.trace_in)[0]), read(member.div_in)))
    return _population(member, member.start, member.end, advance,
                       lambda: dynamics_fixed.decoded_fixed(state, params), state.v)


def _woss_fixed(member: WossNeuron, p) -> list[Stage]:
    params, shape = dynamics_fixed.FixedWossParams.from_proc_params(p), p["shape"]
    v, fired, latched = np.zeros(shape, np.int64), np.zeros(shape, bool), np.zeros(shape, np.int64)
    clips = np.zeros(shape, np.int64)

    def advance(t, read):
        spikes = dynamics_fixed.woss_neuron_step_fixed(v, fired, latched, p["fire_record"], clips, params, t,
                                                       read(member.a_in), read(member.shift_in),
                                                       int(read(member.theta_in)[0]), int(read(member.trace_in)[0]))
        p["clip_record"][0] = clips.sum()
        return _any(spikes)
    return _population(member, p["start"], p["start"] + p["wait"] + p["timesteps"], advance, latched.copy, v)


def _inhibitor_fixed(member: WossInhibitor, p) -> list[Stage]:
    params, row_shape = dynamics_fixed.FixedWossParams.from_proc_params(p), p["shape"][:-1] + (1,)
    open_rows, theta = np.ones(row_shape, bool), np.array([int(p["theta0"])])  # as the int32 Var's init
    return _inhibitor(member, lambda t, x: dynamics_fixed.woss_shift_fixed(open_rows, params, t, x),
                      lambda t: dynamics_fixed.woss_threshold_fixed(theta, params, t),
                      lambda trace: dynamics_fixed.woss_spike_sum_fixed(trace, params, p["clip_record"]),
                      p["clip_record"])


def _matmul_fixed(member: TraceMatMul, p) -> list[Stage]:
    params = dynamics_fixed.FixedMatMulParams.from_proc_params(p)
    p["clip_record"][0] += params.bias_clips

    def compute(t, read):
        return dynamics_fixed.trace_matmul_fixed(p, params, t, read(member.a_in), read(member.a_trace_in),
                                                 read(member.b_in), read(member.b_trace_in), p["clip_record"])
    return _synapse(member, p, (member.a_in, member.a_trace_in, member.b_in, member.b_trace_in), member.a_out,
                    compute, (member.a_in, member.b_in))


def _linear_fixed(member: TokenLinear, p) -> list[Stage]:
    params = dynamics_fixed.FixedLinearParams.from_proc_params(p)
    p["clip_record"][0] += params.bias_clips

    def compute(t, read):
        bias_on = dynamics.bias_on(t, p["bias_start"], p["timesteps"])
        return dynamics_fixed.token_linear_fixed(read(member.s_in), params, p["in_index"], p["out_index"], bias_on,
                                                 p["clip_record"])
    return _synapse(member, p, (member.s_in,), member.a_out, compute, (member.s_in,))


def _trace_fixed(member: TraceHolder, p) -> list[Stage]:
    def run(t, read):
        return {member.s_out: np.array([dynamics_fixed.trace_value(p["trace_table"], t, p["phase"])])}
    return [Stage((), (member.s_out,), run)]


_FIXED: dict[type, ty.Callable[..., list[Stage]]] = {
    PhaseNeuron: _phase_fixed, WossNeuron: _woss_fixed, WossInhibitor: _inhibitor_fixed,
    TraceMatMul: _matmul_fixed, TokenLinear: _linear_fixed, TraceHolder: _trace_fixed, SpikeSink: _sink,
    DelayLine: _delay, SpikeSource: lambda member, p: _source(member, dynamics_fixed.integer_payloads(p["data"])),
}


# --- stepping -----------------------------------------------------------------------------------------
class Stepper:
    """Steps ``members`` (leaf Processes) in one Python process.

    ``sources`` (``procs.graph``) maps ``id(InPort)`` of a member to the keys of what feeds it:
    ``id(OutPort)`` of a member, or an external key whose value :meth:`step` is given (its
    window in ``external_windows``, default every step). Ports absent from it read zeros (an
    unconnected Lava InPort).

    A stage runs only in the steps where one of its outputs can change (``procs.windows``):
    before them its outputs are zeros, after them zeros or, for a latched output (a decoded
    trace, a membrane), the value of its last step; outside its windows a pipelined network is
    mostly silent, so most stages of a step cost nothing. A DelayLine stores only the steps its
    input can carry something (the others are never sent); a sink records, and the WOSS
    normaliser recounts its clips, every step, as their Lava models do.
    """

    def __init__(self, members: ty.Sequence, sources: ty.Mapping[int, ty.Sequence[ty.Hashable]],
                 fixed: bool, external_windows: ty.Mapping[ty.Hashable, windows.Window] | None = None) -> None:
        self.sources = {port: list(keys) for port, keys in sources.items()}
        self.dtype = np.int64 if fixed else np.float64
        self._zeros: dict[tuple, np.ndarray] = {}
        natural = windows.natural_windows(members, self.sources, external_windows)
        self._plan = []
        for stage in _schedule([stage for member in members for stage in stages(member, fixed)], self.sources):
            keys = {"outputs": [id(port) for port in stage.outputs],
                    "inputs": [key for port in stage.inputs for key in self.sources.get(id(port), ())]}
            active = windows.ALWAYS if stage.runs == "always" else windows.EMPTY
            for key in keys.get(stage.runs, ()):
                active = active.hull(natural[key])
            latched = tuple(key for key in keys["outputs"] if natural[key].latched)
            self._plan.append((stage, active.first, active.end, latched))
        self._held: dict[int, np.ndarray | None] = {}  # latched outputs of stages past their window

    def step(self, t: int, external: ty.Mapping[ty.Hashable, np.ndarray] | None = None) -> dict:
        """Run the stages of step ``t`` (0-based); returns the outputs by ``id(OutPort)`` (absent
        or None: all zeros)."""
        values: dict[ty.Hashable, np.ndarray | None] = {**self._held, **(external or {})}
        read = Reader(self, values)
        for stage, first, end, latched in self._plan:
            if first <= t < end:
                for port, value in stage.run(t, read).items():
                    values[id(port)] = value
                if t == end - 1:
                    self._held.update((key, values[key]) for key in latched)
        return values

    def zeros(self, port) -> np.ndarray:
        """A read-only zero array of the port's shape (what a quiet port reads)."""
        key = (tuple(port.shape), self.dtype)
        if key not in self._zeros:
            self._zeros[key] = np.zeros(port.shape, self.dtype)
            self._zeros[key].setflags(write=False)
        return self._zeros[key]


class Reader:
    """What a stage reads: an InPort's value, the sum of its sources' outputs this step (as
    Lava's InPort.recv sums its connections), a shared zero array if all are quiet."""

    def __init__(self, stepper: Stepper, values: dict) -> None:
        self.stepper, self.values = stepper, values

    def _present(self, port) -> list[np.ndarray]:
        values = self.values
        return [values[key] for key in self.stepper.sources.get(id(port), ()) if values.get(key) is not None]

    def quiet(self, port) -> bool:
        """No source of ``port`` sent anything non-zero this step."""
        return not self._present(port)

    def spikes(self, port) -> np.ndarray | None:
        """What ``port`` reads, None where it is quiet (a spike port: no spike, no work)."""
        return None if self.quiet(port) else self(port)

    def __call__(self, port) -> np.ndarray:
        present = self._present(port)
        if not present:
            return self.stepper.zeros(port)
        total = present[0]
        for value in present[1:]:
            total = total + value
        return total


def _schedule(all_stages: list[Stage], sources: ty.Mapping[int, list]) -> list[Stage]:
    """Stages in an order where each runs after the stages producing its inputs (within a step)."""
    producer = {id(port): i for i, stage in enumerate(all_stages) for port in stage.outputs}
    needs = [{producer[key] for port in stage.inputs for key in sources.get(id(port), ()) if key in producer}
             for stage in all_stages]
    order, done = [], set()
    while len(order) < len(all_stages):
        ready = [i for i in range(len(all_stages)) if i not in done and needs[i] <= done]
        if not ready:
            raise ValueError("the processes form a cycle that no stage order resolves")
        order.extend(ready)
        done.update(ready)
    return [all_stages[i] for i in order]
