"""The Loihi 2 resource estimate (lava_spikedattn.loihi) on a tiny Swin and a tiny BERT."""

import json
import math
from dataclasses import asdict, replace
from functools import cache

import numpy as np
import pytest
import torch
from synthetic import sentences
from tiny_models import prepared_bert, prepared_swin, tiny_bert_config, tiny_swin_config

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.loihi import DESIGNS, OPTIMISTIC, layer_cores, resource_estimate
from lava_spikedattn.procs.graph import flatten
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor

# Two stages (patch merging between them), a shifted block in each stage's second block.
SWIN = tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4)
BERT = tiny_bert_config()
LOIHI_DICT = asdict(OPTIMISTIC)  # a dict of the right fields is not a LoihiCosts


@cache
def converted_swin(convention: str):
    model = prepared_swin(SWIN).eval()
    return convert(model, [torch.randn(4, 1, 16, 16)], PhaseCode(1.25, 12, convention))


@cache
def converted_bert(convention: str):
    model = prepared_bert(BERT).train()
    with torch.no_grad():  # running statistics for the norms
        model(**sentences(16, 0))
    return convert(model.eval(), [sentences(8, 1)], PhaseCode(1.4, 16, convention))


@pytest.fixture(params=["exact", "official"])
def swin(request):
    return converted_swin(request.param)


@pytest.fixture(params=["exact", "official"])
def bert(request):
    return converted_bert(request.param)


def dense_weight_sizes(cm) -> int:
    """Every stored weight matrix (or diagonal) except the host-side embedding tables and norm."""
    return sum(t.numel() for key, t in cm.weights.items()
               if key.endswith(".weight") and not key.startswith("embeddings."))


def lava_populations(cm, x) -> dict[str, int]:
    graph, _, _ = build_lava_network(cm).build(x)
    return {name: int(np.prod(p.s_out.shape)) for name, p in graph.populations.items()}


def test_swin_neurons_equal_the_lava_graph(swin):
    report = resource_estimate(swin)
    populations = lava_populations(swin, torch.zeros(1, 1, 16, 16, dtype=torch.float64))
    rows = {layer.name: layer.neurons for layer in report.layers}
    readout = rows.pop("last_fc")
    assert rows == populations
    assert readout == SWIN["num_classes"]  # the Lava read-out is the head synapse's output
    assert report.total("neurons") == sum(populations.values()) + readout


def test_bert_neurons_equal_the_lava_graph(bert):
    x = sentences(3, 2)
    report = resource_estimate(bert, inputs=x)
    rows = {layer.name: layer.neurons for layer in report.layers}
    assert rows.pop("classifier") == BERT["num_labels"]
    assert rows == lava_populations(bert, {key: value[:1] for key, value in x.items()})


def test_dense_weights_are_the_converted_tensors(swin, bert):
    for cm, inputs in ((swin, None), (bert, sentences(2, 3))):
        report = resource_estimate(cm, inputs=inputs)
        assert report.total("weights") == dense_weight_sizes(cm)
        network = cm.to_reference("closed")
        synapses = network.synapses(inputs)
        trace = sum(s.macs for s in synapses if len(s.sources) == 2)
        assert report.total("trace_products") == trace > 0
        assert report.total("connections") == sum(s.macs for s in synapses) - trace
        for layer in report.layers:  # 8-bit weights + one exponent byte per layer that has weights + state
            words = layer.state_words(OPTIMISTIC)
            assert layer.memory_bytes(OPTIMISTIC, "A1") == (layer.weights + 1 if layer.weights else 0) + 3 * words


def test_swin_qkv_weights_are_shared_by_q_k_and_v(swin):
    rows = {layer.name: layer for layer in resource_estimate(swin).layers}
    qkv = swin.weights["layers.0.blocks.0.qkv.weight"].numel()
    parts = [rows[f"layers.0.blocks.0.{name}"] for name in ("q_if", "k_if", "v_if")]
    assert [p.weights for p in parts] == [qkv // 3] * 3
    assert rows["layers.0.blocks.0.stdp_qk"].weights == 0 < rows["layers.0.blocks.0.stdp_qk"].trace_products
    assert rows["layers.0.blocks.0.softmax_if"].neurons == rows["layers.0.blocks.0.stdp_qk"].neurons


def test_the_designs_charge_every_trace_product_term(swin):
    """A1: a product neuron per term, 3 synapses and 3 operations, 1 spike; B: a plastic synapse
    and a weight write per term, 2 operations; the other layers are the same in both."""
    a1, b = (resource_estimate(swin, design=design) for design in DESIGNS)
    for x, y in zip(a1.layers, b.layers):
        terms = x.trace_products
        assert x.product_neurons == x.weight_writes + terms == terms == y.weight_writes
        assert (x.product_synapses, y.product_synapses, y.product_neurons) == (3 * terms, terms, 0)
        assert x.synops - y.synops == terms and x.spikes - y.spikes == terms
    assert a1.total("product_neurons") == a1.total("trace_products") > 0


def test_one_woss_inhibitor_per_row_as_in_the_lava_graph(swin, bert):
    for cm, x in ((swin, torch.zeros(1, 1, 16, 16, dtype=torch.float64)), (bert, sentences(1, 2))):
        report = resource_estimate(cm, inputs=x)
        graph, _, _ = build_lava_network(cm).build(x)
        leaves, _ = flatten(graph.processes)
        rows = {p.name: int(np.prod(p.shift_out.shape)) for p in leaves if isinstance(p, WossInhibitor)}
        woss = [layer for layer in report.layers if layer.kind == "woss"]
        assert woss and sum(layer.inhibitors for layer in woss) == sum(rows.values())
        assert all(layer.inhibitors == 0 for layer in report.layers if layer.kind != "woss")


def test_packing_rule_on_a_hand_made_layer():
    costs = replace(OPTIMISTIC, neurons_per_core=100, memory_per_core=1000, axons_in_per_core=50)
    assert layer_cores(100, 1000, costs) == 1
    assert layer_cores(101, 0, costs) == 2  # just over the neuron limit
    assert layer_cores(1, 1001, costs) == 2  # just over the memory limit
    assert layer_cores(1, 0, costs, axons=101) == 3  # design B: input axons
    floor = 100 * costs.neuron_update_idle_ns / costs.synop_ns  # synops per step of a full core's idle floor
    assert layer_cores(1, 0, costs, synops_per_step=floor) == 1 < layer_cores(1, 0, costs, synops_per_step=floor + 1)
    assert layer_cores(250, 4500, costs) == 5  # the larger of 3 (neurons) and 5 (memory)


def test_cores_and_chips_follow_the_limits():
    swin = converted_swin("exact")
    small = replace(OPTIMISTIC, neurons_per_core=64, memory_per_core=2048, cores_per_chip=8)
    report = resource_estimate(swin, bounds=(small,))
    bound = report.bounds[0]
    cores = [layer.cores(small, "A1", 12) for layer in report.layers]
    for layer, n in zip(report.layers, cores):
        assert n >= max(math.ceil(layer.all_neurons / 64), math.ceil(layer.memory_bytes(small, "A1") / 2048))
    assert bound.cores == sum(cores) > len(report.layers)
    assert bound.chips == math.ceil(bound.cores / 8)
    assert all(b.chips == 1 for b in resource_estimate(swin).bounds)


def test_steps_on_the_chip():
    """The graph's n_layers·T, one more step per layer (a synaptic hop), 2 per WOSS layer, T per
    staggered QKᵀ layer (docs/loihi2_mapping.md §4.3)."""
    swin = converted_swin("exact")
    report = resource_estimate(swin)
    kinds = [layer.kind for layer in swin.layers]
    assert report.steps_per_inference == swin.steps_per_inference == swin.n_layers * 12
    expected = swin.n_layers * 13 + 2 * kinds.count("woss") + 12 * kinds.count("logits")
    for bound in report.bounds:
        assert bound.chip_steps == expected
        assert bound.latency_us == pytest.approx(expected * bound.step_ns / 1e3)
        assert bound.throughput_per_s == pytest.approx(1e9 / (24 * bound.step_ns))


def test_step_time_and_energy_follow_the_cost_model():
    """With every time but one zero, the step is the barrier plus that term of the busiest core;
    with every energy but one zero, the energy is that count times its cost."""
    swin = converted_swin("exact")
    zero = dict(synop_ns=0.0, neuron_update_ns=0.0, neuron_update_idle_ns=0.0, spike_ns=0.0, hop_ns=0.0,
                weight_write_ns=0.0, synop_pj=0.0, neuron_update_pj=0.0, neuron_update_idle_pj=0.0, spike_pj=0.0,
                hop_pj=0.0, weight_write_pj=0.0, static_power_w_per_chip=0.0)
    costs = replace(OPTIMISTIC, **{**zero, "synop_ns": 2.0, "synop_pj": 1.0, "barrier_ns": 100.0})
    report = resource_estimate(swin, bounds=(costs,))
    bound = report.bounds[0]
    per_core = [2.0 * layer.synops / (12 * layer.cores(costs, "A1", 12)) for layer in report.layers]
    assert bound.step_ns == pytest.approx(100.0 + max(per_core))
    assert bound.energy_pj["synops"] == pytest.approx(report.total("synops")) and bound.energy_uj == pytest.approx(
        report.total("synops") / 1e6)
    idle = replace(OPTIMISTIC, **{**zero, "neuron_update_idle_pj": 1.0})  # one input alone: every neuron, every step
    alone = resource_estimate(swin, bounds=(replace(idle, pipelined=False),)).bounds[0]
    neurons = sum(layer.all_neurons for layer in report.layers)
    active = report.total("synops") + report.total("spikes")
    assert alone.energy_pj["neuron_updates"] == pytest.approx(neurons * alone.chip_steps - active)


def test_the_pessimistic_bound_is_slower_and_costlier(swin, bert):
    for cm, inputs in ((swin, None), (bert, sentences(2, 3))):
        for design in DESIGNS:
            report = resource_estimate(cm, inputs=inputs, design=design)
            fast, slow = report.bound("optimistic"), report.bound("pessimistic")
            assert fast.step_ns < slow.step_ns and fast.energy_uj < slow.energy_uj and fast.cores <= slow.cores


@pytest.mark.parametrize("bad, match", [(dict(design="C"), "design"), (dict(bounds=()), "bounds"),
                                        (dict(bounds=(LOIHI_DICT,)), "bounds")])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        resource_estimate(converted_swin("exact"), **bad)


def test_bert_needs_inputs():
    with pytest.raises(ValueError, match="inputs"):
        resource_estimate(converted_bert("exact"))


def test_json_round_trip_and_table():
    swin = converted_swin("exact")
    report = resource_estimate(swin)
    data = report.to_json()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert len(data["layers"]) == len(swin.layers)
    assert data["totals"]["neurons"] == sum(layer["neurons"] for layer in data["layers"])
    assert set(data["bounds"]) == {"optimistic", "pessimistic"}
    assert data["messages_per_step"] == pytest.approx(report.total("spikes") / 24)
    assert data["bounds"]["optimistic"]["costs"]["neurons_per_core"] == OPTIMISTIC.neurons_per_core
    table = report.table()
    total = next(line for line in table.splitlines() if line.startswith("total"))
    for key in ("neurons", "weights", "synops", "trace_products", "inhibitors"):
        assert f"{report.total(key):,}" in total
    for bound in report.bounds:
        assert f"{bound.costs.bound}: {bound.cores:,} cores, {bound.chips} chip(s)" in table


def test_quantize_for_loihi_gives_8_bit_weights_and_units_that_fit(swin, bert, tmp_path):
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.loihi import quantize_for_loihi

    for cm in (swin, bert):
        q = quantize_for_loihi(cm)
        names = {w.name for w in q.weights}
        assert names == {k for k in cm.weights if k.endswith(".weight") and not k.startswith("embeddings.")}
        for w in q.weights:
            original, quantized = cm.weights[w.name].double(), q.quantized.weights[w.name].double()
            mantissa = quantized / 2.0**w.exponent
            assert torch.equal(mantissa, mantissa.round()) and mantissa.abs().max() <= 127  # 8-bit mantissas
            assert mantissa.abs().max() >= 64  # the exponent is the smallest that covers the largest weight
            assert (quantized - original).abs().max() <= 2.0 ** (w.exponent - 1) * (1 + 1e-9)  # rounding only
            assert w.clipped == 0 and 0 <= w.rel_error < 0.05
        untouched = [k for k in cm.weights if k not in names]
        assert all(torch.equal(cm.weights[k], q.quantized.weights[k]) for k in untouched)
        scaled = [layer.name for layer in cm.layers if f"scale.{layer.name}" in cm.weights]
        assert [n.name for n in q.neurons] == scaled
        assert all(n.threshold_bits <= n.state_bits - 2 for n in q.neurons)  # 2 bits of headroom
        folder = q.quantized.save(tmp_path / cm.config["family"])  # a consistent converted model
        assert ConvertedModel.load(folder).config["weights_sha256"] == q.quantized.config["weights_sha256"]
        data = json.loads(json.dumps(q.to_json()))
        assert len(data["weights"]) == len(q.weights) and "payload exp" in q.table()
