"""The Loihi 2 resource estimate (lava_spikedattn.loihi) on a tiny Swin and a tiny BERT."""

import json
import math
from functools import cache

import numpy as np
import pytest
import torch
from synthetic import sentences
from tiny_models import prepared_bert, prepared_swin, tiny_bert_config, tiny_swin_config

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.loihi import LOIHI2, LoihiLimits, layer_cores, resource_estimate

# Two stages (patch merging between them), a shifted block in each stage's second block.
SWIN = tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4)
BERT = tiny_bert_config()


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
        for layer in report.layers:  # 8-bit weights + one exponent byte per layer that has weights
            assert layer.memory_bytes == (layer.weights + 1 if layer.weights else 0)
            assert layer.cores == layer_cores(layer.neurons, layer.memory_bytes)


def test_swin_qkv_weights_are_shared_by_q_k_and_v(swin):
    rows = {layer.name: layer for layer in resource_estimate(swin).layers}
    qkv = swin.weights["layers.0.blocks.0.qkv.weight"].numel()
    parts = [rows[f"layers.0.blocks.0.{name}"] for name in ("q_if", "k_if", "v_if")]
    assert [p.weights for p in parts] == [qkv // 3] * 3
    assert rows["layers.0.blocks.0.stdp_qk"].weights == 0 < rows["layers.0.blocks.0.stdp_qk"].trace_products
    assert rows["layers.0.blocks.0.softmax_if"].neurons == rows["layers.0.blocks.0.stdp_qk"].neurons


def test_packing_rule_on_a_hand_made_layer():
    limits = LoihiLimits(neurons_per_core=100, memory_per_core=1000)
    assert layer_cores(100, 1000, limits) == 1
    assert layer_cores(101, 0, limits) == 2  # just over the neuron limit
    assert layer_cores(1, 1001, limits) == 2  # just over the memory limit
    assert layer_cores(250, 4500, limits) == 5  # the larger of 3 (neurons) and 5 (memory)
    assert layer_cores(LOIHI2.neurons_per_core + 1, 0) == 2


def test_cores_and_chips_follow_the_limits():
    swin = converted_swin("exact")
    small = resource_estimate(swin, limits=LoihiLimits(neurons_per_core=64, memory_per_core=2048, cores_per_chip=8))
    for layer in small.layers:
        assert layer.cores == max(math.ceil(layer.neurons / 64), math.ceil(layer.memory_bytes / 2048))
    assert small.total("cores") > len(small.layers)
    assert small.chips == math.ceil(small.total("cores") / 8)
    assert resource_estimate(swin).chips == 1


def test_timing():
    swin = converted_swin("exact")
    report = resource_estimate(swin, step_time_us=2.5)
    assert report.steps_per_inference == swin.steps_per_inference == swin.n_layers * 12
    assert report.latency_us == pytest.approx(swin.steps_per_inference * 2.5)
    assert report.interval_steps == 24
    assert report.throughput_per_s == pytest.approx(1e6 / (24 * 2.5))


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "5", True, None])
def test_bad_step_time_is_refused(bad):
    with pytest.raises(ValueError, match="step_time_us"):
        resource_estimate(converted_swin("exact"), step_time_us=bad)


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
    assert data["chips"] == report.chips and data["limits"]["neurons_per_core"] == LOIHI2.neurons_per_core
    table = report.table()
    total = next(line for line in table.splitlines() if line.startswith("total"))
    for key in ("neurons", "weights", "connections", "trace_products", "memory_bytes", "cores"):
        assert f"{report.total(key):,}" in total
    assert f"chips: {report.chips}" in table and f"{report.steps_per_inference:,}" in table


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
