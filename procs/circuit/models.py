"""ProcessModels of Circuit: decomposed (SubProcessModel) and fused (one process, numpy only)."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikedattn.procs import dynamics
from lava_spikedattn.procs.circuit.process import Circuit
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.models import woss_params
from lava_spikedattn.procs.woss_neuron.process import WossNeuron


@implements(proc=Circuit, protocol=LoihiProtocol)
@tag("floating_pt")
class SubCircuitModel(AbstractSubProcessModel):
    """Decomposed: the members run as their own Lava processes (the porting path)."""

    def __init__(self, proc: Circuit) -> None:
        p = proc.proc_params
        for i, member in enumerate(p["members"]):  # Lava finds sub-processes among attributes
            setattr(self, f"member_{i}", member)
        for port in p["feeds"]:
            proc.in_ports.s_in.connect(port)
        for port in p["trace_feeds"]:
            proc.in_ports.trace_in.connect(port)
        p["output"].connect(proc.out_ports.s_out)


class _Stage(ty.NamedTuple):
    """One computation of a member within a step: reads ``inputs`` ports, writes ``outputs``."""

    inputs: tuple
    outputs: tuple
    run: ty.Callable[[int, ty.Callable], dict]


def _stages(member) -> list[_Stage]:
    """The member's update as stages, calling the same ``dynamics`` functions as its leaf model."""
    p = member.proc_params
    if isinstance(member, PhaseNeuron):
        params = dynamics.PhaseParams.from_proc_params(p)
        shape = p["shape"]
        state = dynamics.PhaseState(np.zeros(shape), np.zeros(shape, bool), np.zeros(shape), np.zeros(shape),
                                    p["fire_record"], p["saturation_record"],
                                    np.zeros(shape) if params.divide_free else None)

        def phase(t, read):
            spikes = dynamics.phase_step(state, params, t, read(member.a_in), read(member.trace_in)[0],
                                         read(member.div_in))
            return {member.s_out: spikes, member.trace_out: state.decoded(params.scale), member.v_out: state.v}
        return [_Stage((member.a_in, member.trace_in, member.div_in), (member.s_out, member.trace_out, member.v_out),
                       phase)]
    if isinstance(member, WossNeuron):
        params, shape = woss_params(p), p["shape"]
        v, fired, latched = np.zeros(shape), np.zeros(shape, bool), np.zeros(shape)

        def woss(t, read):
            spikes = dynamics.woss_neuron_step(v, fired, latched, p["fire_record"], params, t, read(member.a_in),
                                               read(member.shift_in), read(member.theta_in)[0],
                                               read(member.trace_in)[0])
            return {member.s_out: spikes, member.trace_out: latched.copy(), member.v_out: v}
        return [_Stage((member.a_in, member.shift_in, member.theta_in, member.trace_in),
                       (member.s_out, member.trace_out, member.v_out), woss)]
    if isinstance(member, WossInhibitor):
        params, row_shape = woss_params(p), p["shape"][:-1] + (1,)
        open_rows, theta = np.ones(row_shape, bool), np.array([p["theta0"]])

        def shift_and_ramp(t, read):
            return {member.shift_out: dynamics.woss_shift(open_rows, params, t, read(member.a_in)),
                    member.theta_out: np.array([dynamics.woss_threshold(theta, params, t)])}

        def normaliser(t, read):
            return {member.norm_out: read(member.trace_in).sum(axis=-1, keepdims=True)}
        return [_Stage((member.a_in,), (member.shift_out, member.theta_out), shift_and_ramp),
                _Stage((member.trace_in,), (member.norm_out,), normaliser)]
    if isinstance(member, TraceMatMul):
        def product(t, read):
            return {member.a_out: dynamics.trace_matmul(p, t, read(member.a_in), read(member.a_trace_in),
                                                        read(member.b_in), read(member.b_trace_in))}
        return [_Stage((member.a_in, member.a_trace_in, member.b_in, member.b_trace_in), (member.a_out,), product)]
    if isinstance(member, TokenLinear):
        def linear(t, read):
            bias = dynamics.window_bias(p["injected_bias"], t, p["bias_start"], p["timesteps"])
            return {member.a_out: dynamics.token_linear(read(member.s_in), p["weight_t"], p["in_index"],
                                                        p["out_index"], bias)}
        return [_Stage((member.s_in,), (member.a_out,), linear)]
    if isinstance(member, DelayLine):
        buffer = np.zeros((p["delay"],) + p["shape"])

        def send(t, read):
            return {member.a_out: dynamics.delay_output(buffer, t)}

        def store(t, read):
            dynamics.delay_input(buffer, t, read(member.s_in))
            return {}
        return [_Stage((), (member.a_out,), send), _Stage((member.s_in,), (), store)]
    raise ValueError(f"Circuit: no fused update for member {type(member).__name__} {member.name!r}")


def _schedule(stages: list[_Stage], members: list) -> list[_Stage]:
    """Stages in an order where each runs after the stages producing its inputs (within a step)."""
    producer = {id(port): i for i, stage in enumerate(stages) for port in stage.outputs}
    needs = []
    for stage in stages:
        sources = {producer[id(src)] for port in stage.inputs for src in port.in_connections
                   if id(src) in producer}
        needs.append(sources)
    order, done = [], set()
    while len(order) < len(stages):
        ready = [i for i in range(len(stages)) if i not in done and needs[i] <= done]
        if not ready:
            raise ValueError("Circuit: the members form a cycle that no stage order resolves")
        order.extend(ready)
        done.update(ready)
    return [stages[i] for i in order]


@implements(proc=Circuit, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyCircuitModelFused(PyLoihiProcessModel):
    """Fused: every member stepped in this one process, in dependency order (numpy only)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    trace_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        members = proc_params["members"]
        self.feeds = {id(port) for port in proc_params["feeds"]}
        self.trace_feeds = {id(port) for port in proc_params["trace_feeds"]}
        self.output = proc_params["output"]
        self.stages = _schedule([stage for member in members for stage in _stages(member)], members)

    def run_spk(self) -> None:
        t = self.time_step - 1
        external = {"s_in": self.s_in.recv(), "trace_in": self.trace_in.recv()}
        values: dict[int, np.ndarray] = {}

        def read(port) -> np.ndarray:
            total = np.zeros(port.shape)
            if id(port) in self.feeds:
                total = total + external["s_in"]
            if id(port) in self.trace_feeds:
                total = total + external["trace_in"]
            for source in port.in_connections:
                if id(source) in values:
                    total = total + values[id(source)]
            return total

        for stage in self.stages:
            for port, value in stage.run(t, read).items():
                values[id(port)] = value
        self.s_out.send(values[id(self.output)])
