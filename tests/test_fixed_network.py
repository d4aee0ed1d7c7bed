"""Whole networks in fixed point (the Loihi 2 port) and the in-process simulation of a Lava graph.

The tiny Swin and BERT of tests/test_builder.py (tests/conftest.py: lava_swin, tiny_bert), built
with ``fixed_format``: every Process runs its ``fixed_pt`` model. Lava (fused and decomposed)
equals the in-process simulation bit for bit; the integer network predicts the float network's
class on ≥ 90 % of the test inputs (the issue's bar; measured: the Swin 8/8 in Lava and 64/64 in
process, logits 5.4 % apart; the BERT 64/64 in both conventions, 1.0 % / 1.5 % apart).

``simulate`` and the fused models share their stepper, so their equality cannot fail; the
independent check is ``reference.fixed_network``: the same graph stepped from the per-population
integer oracles of ``reference.fixed``, which equals Lava bit for bit too (logits and every fire
step), and differs from it once one integer constant of one Process is changed.
"""

import numpy as np
import pytest
import torch
from synthetic import grey_task, sentences

from lava_spikedattn import builder
from lava_spikedattn.builder import LavaBuildError, build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.loihi import quantize_for_loihi
from lava_spikedattn.procs import fused
from lava_spikedattn.procs import graph as procs_graph
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_neuron.process import WossNeuron
from lava_spikedattn.reference.fixed_network import FixedNetworkSim, readout_logits, simulate_fixed_graph
from lava_spikedattn.wiring import attention_core

FMT = FixedFormat()


@pytest.fixture(scope="module")
def swin_cm(lava_swin):
    return convert(lava_swin, [grey_task(32, 50)[0]], PhaseCode(1.25, 12))


#: test images through Lava fixed_pt per mode (one graph each; decomposed costs ~7x more)
LAVA_IMAGES = {"fused": 8, "decomposed": 2}


@pytest.fixture(scope="module")
def fixed_swin(swin_cm):
    """64 test images through the float and the integer network in process; the first
    LAVA_IMAGES also through Lava fixed_pt in each mode, with every population's fire steps."""
    x, labels = grey_task(64, 100)
    x = x.double()
    float_logits = build_lava_network(swin_cm).simulate(x)
    net = build_lava_network(swin_cm, fixed_format=FMT)
    fixed_logits = net.simulate(x)
    runs = {}
    for mode, n in LAVA_IMAGES.items():
        alone = net.simulate(x[:n])
        lava = build_lava_network(swin_cm, mode=mode, fixed_format=FMT)
        runs[mode] = {"x": x[:n], "lava": (lava.run(x[:n]), lava.fire_steps(), lava.stats()),
                      "simulate": (alone, net.fire_steps(), net.stats())}
    return float_logits, fixed_logits, labels, runs


def test_fixed_swin_in_lava_equals_in_process_simulation_bit_for_bit(fixed_swin):
    *_, runs = fixed_swin
    for mode in builder.MODES:
        (lava_logits, lava_steps, lava_stats), (logits, fire_steps, stats) = runs[mode]["lava"], runs[mode]["simulate"]
        assert torch.equal(lava_logits, logits), mode
        assert lava_steps.keys() == fire_steps.keys()
        for name, steps in fire_steps.items():
            np.testing.assert_array_equal(lava_steps[name], steps, err_msg=f"{mode} {name}")
        assert lava_stats["layers"] == stats["layers"] and lava_stats["clips"] == stats["clips"]
    assert runs["decomposed"]["lava"][2]["processes"] > runs["fused"]["lava"][2]["processes"]


def assert_same_fire_steps(expected: dict, actual: dict, label: str) -> None:
    assert expected.keys() == actual.keys(), label
    for name, steps in expected.items():
        np.testing.assert_array_equal(actual[name], steps, err_msg=f"{label} {name}")


def test_independent_integer_swin_equals_lava_bit_for_bit(swin_cm, fixed_swin):
    """The integer oracles of every Process stepped as the graph (reference.fixed_network, no
    code shared with the fixed_pt models or the fused stepper) give Lava's logits and fire steps."""
    *_, runs = fixed_swin
    for mode in builder.MODES:
        logits, fire_steps = simulate_fixed_graph(*build_lava_network(swin_cm, fixed_format=FMT).build(runs[mode]["x"]))
        lava_logits, lava_steps, _ = runs[mode]["lava"]
        assert torch.equal(lava_logits, logits), mode
        assert_same_fire_steps(lava_steps, fire_steps, mode)


def test_independent_integer_swin_differs_from_lava_once_one_weight_changes(swin_cm, fixed_swin):
    """The check can fail: one 8-bit mantissa of the read-out (class 0, input 0) one step off
    changes class 0's logits, and only them."""
    *_, runs = fixed_swin
    graph, sink, readout_index = build_lava_network(swin_cm, fixed_format=FMT).build(runs["fused"]["x"])
    network = FixedNetworkSim(graph.processes, graph.code, graph.fmt)
    network.oracle(graph.head).mantissa[0, 0] += 1
    network.run(sink.num_steps)
    logits, lava_logits = readout_logits(graph, network.record(sink), readout_index), runs["fused"]["lava"][0]
    assert not torch.equal(logits[:, 0], lava_logits[:, 0])
    assert torch.equal(logits[:, 1:], lava_logits[:, 1:])


def test_fixed_swin_predicts_the_float_class(fixed_swin):
    """The issue's bar: the same class as the float network on ≥ 90 % of the test inputs, in
    Lava (8 images) and in process (64); the integer logits stay close (8-bit weights dominate
    their difference)."""
    float_logits, fixed_logits, labels, runs = fixed_swin
    lava_logits = runs["fused"]["lava"][0]
    lava_same = (lava_logits.argmax(-1) == float_logits[:len(lava_logits)].argmax(-1)).float().mean().item()
    same = (fixed_logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
    assert lava_same >= 0.9 and same >= 0.9, (lava_same, same)
    fixed_accuracy = (fixed_logits.argmax(-1) == labels).float().mean()
    assert fixed_accuracy >= (float_logits.argmax(-1) == labels).float().mean() - 0.05
    relative = ((fixed_logits - float_logits).norm() / float_logits.norm()).item()
    assert 0 < relative < 0.15, relative
    stats = runs["fused"]["lava"][2]
    assert stats["clips"] == {}  # the units leave headroom: nothing saturates the 24-bit state
    assert sum(layer.spikes for layer in stats["layers"].values()) > 0


def test_float_simulation_equals_lava_and_the_reference(swin_cm):
    """``simulate`` without fixed_format: the float Lava network's logits and fire steps."""
    x = grey_task(3, 7)[0].double()
    sim = build_lava_network(swin_cm)
    logits = sim.simulate(x)
    lava = build_lava_network(swin_cm)
    assert torch.equal(lava.run(x), logits)
    for name, steps in sim.fire_steps().items():
        np.testing.assert_array_equal(lava.fire_steps()[name], steps, err_msg=name)
    stepped = swin_cm.to_reference("stepped").double()(x)
    assert ((logits - stepped).norm() / stepped.norm()).item() < 1e-6
    assert "clips" not in sim.stats()


def test_fixed_swin_processes_carry_integer_units(swin_cm):
    """Every neuron has the units ``quantize_for_loihi`` reports; every synapse reads its
    source's payload unit (through delay lines and block boundaries) and writes its targets'
    current unit; a residual is an identity synapse (weight 1 exactly representable)."""
    net = build_lava_network(swin_cm, fixed_format=FMT)
    graph, _, _ = net.build(grey_task(1, 0)[0])
    leaves, sources = procs_graph.flatten(graph.processes)
    neurons = [p for p in leaves if isinstance(p, PhaseNeuron)]
    report = {row.name: (row.payload_exp, row.current_exp) for row in quantize_for_loihi(swin_cm, FMT).neurons}
    assert len(neurons) == len(report)  # the units quantize_for_loihi reports are the ones built
    assert all((p.payload_exp, p.current_exp) == report[p.name] for p in neurons)

    owner = {id(port): leaf for leaf in leaves for port in leaf.out_ports}

    def payload_exp(port) -> int:  # of what feeds ``port``, through delay lines
        (key,) = sources[id(port)]
        leaf = owner[key]
        while isinstance(leaf, DelayLine):
            (key,) = sources[id(leaf.s_in)]
            leaf = owner[key]
        return {PhaseNeuron: lambda: leaf.payload_exp, WossNeuron: lambda: FMT.woss_payload_exp,
                SpikeSource: lambda: 0}[type(leaf)]()

    checked = 0
    for leaf in leaves:
        p = leaf.proc_params
        if isinstance(leaf, TokenLinear):
            assert p["payload_exp"] == payload_exp(leaf.s_in), leaf.name
        elif isinstance(leaf, TraceMatMul):
            assert (p["payload_exp_a"], p["payload_exp_b"]) == (payload_exp(leaf.a_in), payload_exp(leaf.b_in))
        else:
            continue
        targets = [n for n in neurons if id(leaf.a_out) in sources[id(n.a_in)]]
        assert all(p["current_exp"] == n.current_exp for n in targets), leaf.name
        checked += len(targets)
    assert checked > 40
    residuals = [p for p in leaves if isinstance(p, TokenLinear) and p.name.endswith(".residual")]
    assert len(residuals) == 2 * sum(TINY_DEPTHS)  # attn_if and final_if of every block
    for p in residuals:
        np.testing.assert_array_equal(p.proc_params["weight_t"], np.eye(p.proc_params["weight_t"].shape[0]))
    assert net.graph_size(graph)["synapses"] == build_lava_network(swin_cm).graph_size(
        build_lava_network(swin_cm).build(grey_task(1, 0)[0])[0])["synapses"]  # identities are not weights


TINY_DEPTHS = (2, 2)


def test_clipping_attention_core_counts_the_same_in_lava_and_in_process():
    """An integer attention core whose logits clip (scale far below the values, 200 keys):
    Lava's fixed_pt models and the in-process stepper record the same spikes and membranes
    and count the same clips, Process by Process."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 2, 6, 4)), rng.normal(size=(1, 2, 200, 4)), rng.normal(size=(1, 2, 200, 3))
    logits = q @ np.swapaxes(k, -1, -2) * 0.5
    out = torch.softmax(torch.from_numpy(logits), -1).numpy() @ v
    scales = [np.abs(x).max(-1, keepdims=True) for x in (q, k, v)]
    scales += [0.02 * np.abs(logits).max(-1, keepdims=True), np.abs(out).max(-1, keepdims=True)]
    cores = [attention_core(q, k, v, PhaseCode(1.25, 12), *scales, probes=("logits", "woss"), fixed_format=FMT)
             for _ in range(2)]
    _, lava = cores[0].run()
    leaves, sources = procs_graph.flatten(list(cores[1].processes.values()) + list(cores[1].sinks.values()))
    stepper = fused.Stepper(leaves, sources, fixed=True)
    for t in range(cores[1].num_steps):
        stepper.step(t)
    for name, sink in cores[1].sinks.items():
        np.testing.assert_array_equal(lava[name], sink.proc_params["record"], err_msg=name)

    def clips(core) -> dict[str, int]:
        return {name: int(np.sum(p.proc_params["clip_record"])) for name, p in core.processes.items()
                if p.proc_params.get("clip_record") is not None}
    assert clips(cores[0]) == clips(cores[1])
    assert clips(cores[0])["logits"] > 0  # the case clips


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_fixed_bert_in_lava_equals_simulation_and_predicts_the_float_class(tiny_bert, convention):
    cm = convert(tiny_bert, [sentences(32, 100)], PhaseCode(1.25, 12, convention))
    x = sentences(64, 200)
    float_logits = build_lava_network(cm).simulate(x)
    net = build_lava_network(cm, fixed_format=FMT)
    fixed_logits = net.simulate(x)
    same = (fixed_logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
    assert same >= 0.9, same
    first = {key: value[:2] for key, value in x.items()}
    alone = net.simulate(first)
    lava = build_lava_network(cm, fixed_format=FMT)
    lava_logits = lava.run(first)
    assert torch.equal(lava_logits, alone)
    logits, fire_steps = simulate_fixed_graph(*net.build(first))  # the independent integer network
    assert torch.equal(lava_logits, logits)
    assert_same_fire_steps(lava.fire_steps(), fire_steps, convention)
    woss = lava.fire_steps()["layers.0.softmax_if"]  # padded keys never fire in fixed point either
    padded = (first["attention_mask"] == 0)[:, None, None, :].expand(woss.shape).numpy()
    assert (woss[padded] == -1).all()


def test_fixed_format_must_be_a_fixed_format(swin_cm):
    with pytest.raises(LavaBuildError, match="FixedFormat"):
        build_lava_network(swin_cm, fixed_format=16)
    with pytest.raises(LavaBuildError, match="state_bits must be <= 30"):
        build_lava_network(swin_cm, fixed_format=FixedFormat(state_bits=32))
