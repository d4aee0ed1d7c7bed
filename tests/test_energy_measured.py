"""Energy from measured activity: fire-step statistics, synapse lists and evaluate's energy report."""

import json

import pytest
import torch
from synthetic import synthetic_task
from tiny_models import prepared_bert, prepared_swin, tiny_bert_config, tiny_swin_config
from torch.utils.flop_counter import FlopCounterMode

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.energy import Synapse, energy_report, layer_activity, synapse_sums
from lava_spikedattn.evaluate import EvaluationReport, evaluate
from lava_spikedattn.layers import LayerStats

SWIN = tiny_swin_config()
BERT = tiny_bert_config(vocab_size=100, num_attention_heads=4)
CODE = PhaseCode(1.25, 12)
# Rows that are matrix products (what torch's FLOP counter sees); the others are diagonal
# synapses (norms, residuals), the logit → WOSS connection and the average pool.
PRODUCTS = ("patch_embed", "downsample", "qkv", "qk", "av", "proj", "fc1", "fc2", "head", "attention.output",
            "intermediate", "output", "pooler", "classifier")


def test_layer_stats_from_fire_steps():
    stats = LayerStats.from_fire_steps(torch.tensor([[-1, 0], [3, -1]]), timesteps=5, saturated=1)
    # silent neurons are updated for the whole window (5 each), a neuron firing at step k for k + 1
    assert stats == LayerStats(neurons=4, spikes=2, saturated=1, active_steps=5 + 1 + 4 + 5)


def test_synapse_sums_and_layer_activity():
    stats = {"q": LayerStats(10, 5, 0, 0), "k": LayerStats(10, 2, 0, 0), "out": LayerStats(4, 4, 0, 24)}
    synapse = Synapse("qk", macs=40, fan_in=10, sources=("q", "k"), targets=("out",))
    sums = synapse_sums(synapse, stats, {"q": 0.5}, samples=2, timesteps=8)
    # r = 0.5·0.2 (product of the sources' rates), s = 0.5·1 (k unobserved: dense), p = 24/4
    assert sums == pytest.approx({"macs": 80, "neurons": 8, "synops": 8, "ann_macs": 40, "neuron_steps": 48})
    batch2 = synapse_sums(synapse, {**stats, "q": LayerStats(10, 10, 0, 0)}, {}, samples=2, timesteps=8)
    totals = {key: sums[key] + batch2[key] for key in sums}
    activity = layer_activity(synapse, totals, samples=4)
    assert (activity.macs, activity.fan_in, activity.active_steps) == (40, 10, 6)
    assert activity.spike_rate == pytest.approx((0.1 + 0.2) / 2) and activity.ann_density == pytest.approx(0.75)
    # a target without statistics (the membrane read-out) integrates over the whole window
    readout = synapse_sums(Synapse("head", 6, 3, ("q",), ("logits",)), stats, {}, samples=1, timesteps=8)
    assert readout["neuron_steps"] == 2 * 8
    with pytest.raises(KeyError, match="source 'v'"):
        synapse_sums(Synapse("av", 4, 2, ("v",), ("out",)), stats, {}, samples=1, timesteps=8)
    with pytest.raises(ValueError, match="no activity"):
        layer_activity(synapse, dict.fromkeys(totals, 0.0), samples=0)


def _matmul_macs(model, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_swin_synapses_count_the_models_products(convention):
    model = prepared_swin(SWIN).eval()
    x = synthetic_task(4, torch.Generator().manual_seed(1), SWIN["img_size"])[0]
    snn = convert(model, [x], PhaseCode(1.25, 12, convention)).to_reference("closed")
    rows = snn.synapses(x)
    assert sum(r.macs for r in rows if r.name.split(".")[-1] in PRODUCTS) == _matmul_macs(model, x[:1])
    assert len({r.name for r in rows}) == len(rows)
    layers = {layer.name for layer in snn.layers} | {"input"}
    assert all(set(r.sources) <= layers and set(r.targets) <= layers for r in rows)
    # every neuron layer is fed by some synapse, every spiking one drives some synapse
    assert {t for r in rows for t in r.targets} == layers - {"input"}
    assert {s for r in rows for s in r.sources} == layers - {"last_fc"}
    left_out = {r.name.split(".")[-1] for r in rows if not r.official}
    assert left_out == {"fc2", "residual1", "residual2"}


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_bert_synapses_count_the_models_products(convention):
    model = prepared_bert(BERT).eval()
    ids = torch.randint(1, BERT["vocab_size"], (3, 11))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    snn = convert(model, [inputs], PhaseCode(1.4, 16, convention)).to_reference("closed")
    rows = snn.synapses(inputs)
    # the HF model also computes the embedding sum on the host and nothing else outside these rows
    assert sum(r.macs for r in rows if r.name.split(".")[-1] in PRODUCTS) == _matmul_macs(
        model, **{k: v[:1] for k, v in inputs.items()})
    layers = {layer.name for layer in snn.layers}
    assert {t for r in rows for t in r.targets} == layers - {"embeddings_if"}
    assert {s for r in rows for s in r.sources} == layers - {"classifier"}
    shorter = snn.synapses({"input_ids": ids[:, :5]})
    assert next(r for r in shorter if r.name == "layers.0.av").fan_in == 5  # attention over 5 keys


@pytest.fixture(scope="module")
def swin_reports():
    model = prepared_swin(SWIN).eval()
    generator = torch.Generator().manual_seed(2)
    cm = convert(model, [synthetic_task(16, generator, SWIN["img_size"])[0]], CODE)
    x, y = synthetic_task(4, generator, SWIN["img_size"])
    batches = [(x[:2].double(), y[:2]), (x[2:].double(), y[2:])]
    return {engine: evaluate(None, cm.to_reference(engine).double(), batches, progress=False)
            for engine in ("closed", "stepped")}


def test_evaluate_measures_activity_on_both_engines(swin_reports):
    closed, stepped = swin_reports["closed"], swin_reports["stepped"]
    assert closed.activity == stepped.activity  # the same fire steps
    for layer in closed.layers:
        assert layer.active_steps == stepped.layer(layer.name).active_steps
        if layer.kind in ("phase", "logits", "attention_out", "woss", "convert"):
            # each neuron is updated until it fires: between 1 and T steps
            assert layer.neurons <= layer.active_steps <= CODE.timesteps * layer.neurons, layer.name
    qkv = next(a for a in closed.activity if a.name == "layers.0.blocks.0.qkv")
    q, k, v = (closed.layer(f"layers.0.blocks.0.{n}_if") for n in "qkv")
    assert qkv.active_steps == pytest.approx((q.active_steps + k.active_steps + v.active_steps)
                                             / (q.neurons + k.neurons + v.neurons))
    qk = next(a for a in closed.activity if a.name == "layers.0.blocks.0.qk")
    assert qk.spike_rate == pytest.approx(q.spike_rate * k.spike_rate, rel=0.05)  # product per batch, averaged
    patch = closed.activity[0]
    assert patch.name == "patch_embed" and patch.spike_rate == closed.layer("input").spike_rate > 1  # bits/pixel


def test_energy_counting_and_json(swin_reports, tmp_path):
    report = swin_reports["closed"]
    complete, official = report.energy("complete"), report.energy("official")
    left_out = [a for a in report.activity if not a.included_in_official]
    assert len(complete.layers) == len(official.layers) + len(left_out) > len(left_out) > 0
    assert complete.snn_total_pj > official.snn_total_pj and complete.ann_total_pj > official.ann_total_pj
    assert complete.snn_total_pj == pytest.approx(energy_report(report.activity).snn_total_pj)
    again = EvaluationReport.load(report.save(tmp_path / "report.json"))
    assert again.activity == report.activity and again.energy().ratio == complete.ratio
    assert json.loads((tmp_path / "report.json").read_text())["activity"][0]["name"] == "patch_embed"


def test_ann_engine_reports_no_energy():
    model = prepared_swin(SWIN).eval()
    x = synthetic_task(2, torch.Generator().manual_seed(1), SWIN["img_size"])[0]
    report = evaluate(None, convert(model, [x], CODE).to_reference("ann"), [x], progress=False)
    assert report.activity == []
    with pytest.raises(ValueError, match="no measured activity"):
        report.energy()
