"""Evaluation of converted networks and data-set-scale (torch.distributed) calibration and
evaluation (lava_spikedattn.evaluate, lava_spikedattn.distributed)."""

import contextlib
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from synthetic import synthetic_task
from timm.models.swin_transformer import SwinTransformer
from tiny_models import PAPER_CODE, tiny_swin_config, train_tiny_swin

from lava_spikedattn import distributed
from lava_spikedattn.ann import prepare_swin
from lava_spikedattn.convert import convert
from lava_spikedattn.distributed import ShardedBatchSampler, convert_distributed, shard
from lava_spikedattn.engines import AnnEngine
from lava_spikedattn.evaluate import (
    EvaluationReport,
    MetricState,
    RecordingEngine,
    evaluate,
    split_batch,
    to_device,
)

# A smaller Swin than tests/test_convert_swin.py's (16x16 images, dim 16) with the same
# structure: 8x8 tokens in 4x4 windows (shifted blocks) then a merged 4x4 stage, 32 layers.
TINY = tiny_swin_config()
CODE = PAPER_CODE  # exact convention, the paper's Swin setting
# Fidelity bound at B=1.15, T=40 (as tests/test_convert_swin.py): each layer rounds to within
# 7 % and the logits of a trained model keep cosine >= 0.99 (measured 0.996 here); the layers
# inside the network carry the error of up to 30 roundings (measured >= 0.993).
COSINE = 0.99
LAYER_COSINE = 0.98
AGREEMENT = 0.9  # measured 0.95-1.0 on 60 samples (a few low-margin samples may flip)
SAME = 1e-9  # stepped vs closed form in float64: the same dynamics, summation order only
SUMMATION = 1e-12  # a float64 sum computed in another order (relative)


@pytest.fixture(scope="module")
def tiny():
    """20 training steps give the random Swin real decision margins (and BN statistics)."""
    generator = torch.Generator().manual_seed(1)
    return train_tiny_swin(TINY, (synthetic_task(32, generator, TINY["img_size"]) for _ in range(20)), lr=2e-3)


@pytest.fixture(scope="module")
def calibration():
    generator = torch.Generator().manual_seed(2)
    return [synthetic_task(16, generator, TINY["img_size"]) for _ in range(4)]


@pytest.fixture(scope="module")
def test_batches():
    """60 samples in 5 batches of 12: an odd number of batches, so 2 ranks get 3 and 2."""
    generator = torch.Generator().manual_seed(3)
    return [synthetic_task(12, generator, TINY["img_size"]) for _ in range(5)]


# converted: tiny with calibration at B=1.15, T=40 (tests/conftest.py)


@pytest.fixture(scope="module")
def report(tiny, converted, test_batches):
    return evaluate(tiny, converted.to_reference("closed"), test_batches, progress=False)


# --- the report ------------------------------------------------------------------------------------------
def test_report_matches_direct_computation(tiny, converted, test_batches, report):
    snn = converted.to_reference("closed")
    agree = ann_correct = snn_correct = 0
    spikes: dict[str, int] = {}
    cosines = []
    with torch.no_grad():
        for x, y in test_batches:
            ann_logits, snn_logits = tiny(x), snn(x)
            agree += int((ann_logits.argmax(1) == snn_logits.argmax(1)).sum())
            ann_correct += int((ann_logits.argmax(1) == y).sum())
            snn_correct += int((snn_logits.argmax(1) == y).sum())
            for name, stats in snn.stats.items():
                spikes[name] = spikes.get(name, 0) + stats.spikes
            folded = snn.run(x, AnnEngine())
            cosines.append(F.cosine_similarity(snn_logits.double(), folded.double(), dim=1))
    # Counts are exact: evaluate runs the very same network code on the same batches.
    assert (report.samples, report.labeled) == (60, 60)
    assert (report.agree, report.ann_correct, report.snn_correct) == (agree, ann_correct, snn_correct)
    assert {layer.name: layer.spikes for layer in report.layers if layer.neurons} == spikes
    logits = report.layer("last_fc")
    assert logits.kind == "readout" and logits.compared == 60
    assert logits.cosine == pytest.approx(float(torch.cat(cosines).mean()), rel=SUMMATION)
    assert logits.cosine_min == pytest.approx(float(torch.cat(cosines).min()), rel=SUMMATION)
    assert report.output is logits


def test_report_numbers_are_consistent_and_faithful(report, converted):
    for value in (report.ann_accuracy, report.snn_accuracy, report.agreement):
        assert 0.0 <= value <= 1.0
    assert report.agreement >= AGREEMENT
    assert report.output.cosine >= COSINE, report.table()
    assert abs(report.ann_accuracy - report.snn_accuracy) <= 1.0 - report.agreement
    names = [layer.name for layer in report.layers]
    assert names == ["input"] + [layer.name for layer in converted.layers]
    observed = {layer.name for layer in report.layers if layer.compared}
    p = "layers.0.blocks.1."
    assert {"patch_embed_if", p + "stdp_av", p + "attn_if", p + "mlp_act", p + "final_if", "pool_if",
            "last_fc"} <= observed
    assert not observed & {p + "q_if", p + "k_if", p + "v_if", p + "stdp_qk", p + "softmax_if"}  # inside the core
    for layer in report.layers:
        if layer.compared:
            assert layer.compared == 60
            assert LAYER_COSINE <= layer.cosine <= 1.0 and layer.cosine_min <= layer.cosine, layer
            assert 0.0 <= layer.rel_error < 0.25, layer
        else:
            assert layer.cosine is layer.cosine_min is layer.rel_error is None
        if layer.name not in ("input", "last_fc"):
            assert 0 < layer.spikes <= layer.neurons and 0 <= layer.saturated <= layer.neurons, layer
    assert report.layer("last_fc").neurons == 0  # a membrane read-out: no spikes
    assert report.layer(p + "mlp_act").neurons == 60 * 8 * 8 * 64
    assert report.spikes == sum(layer.spikes for layer in report.layers[1:])
    table = report.table()
    assert "prediction agreement" in table and f"{p}mlp_act" in table
    assert report.meta["engine"] == "closed" and report.meta["world_size"] == 1 and report.meta["batches"] == 5


def test_json_round_trip(report, tmp_path):
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["format"] == "lava-spikedattn-evaluation" and data["agreement"] == report.agreement
    assert EvaluationReport.from_json(data) == report
    assert EvaluationReport.load(report.save(tmp_path / "report.json")) == report
    with pytest.raises(ValueError, match="not a lava-spikedattn-evaluation"):
        EvaluationReport.from_json({"format": "other"})


def test_without_ann_the_folded_network_is_the_reference(tiny, converted, test_batches, report):
    folded = evaluate(None, converted, test_batches[:2], progress=False)  # a ConvertedModel runs closed form
    assert "folded ANN" in folded.meta["ann"]
    snn = converted.to_reference("closed")
    with torch.no_grad():
        expected = sum(int((snn.run(x, AnnEngine()).argmax(1) == snn(x).argmax(1)).sum()) for x, _ in test_batches[:2])
    assert folded.agree == expected and folded.samples == 24


def test_unlabeled_batches_and_no_layer_comparison(converted, test_batches):
    unlabeled = [x for x, _ in test_batches[:2]]
    result = evaluate(None, converted.to_reference("closed"), unlabeled, progress=False, compare_layers=False)
    assert result.labeled == 0 and result.ann_accuracy is None and result.snn_accuracy is None
    assert result.samples == 24 and result.agreement is not None
    assert all(layer.compared == 0 for layer in result.layers)
    assert result.layer("layers.0.blocks.0.mlp_act").spikes > 0
    assert "ANN accuracy -" in result.table()


def test_stepped_engine_gives_the_closed_form_report(converted, test_batches):
    x = test_batches[0][0][:2].double()
    labels = test_batches[0][1][:2]
    closed = evaluate(None, converted.to_reference("closed").double(), [(x, labels)], progress=False)
    stepped = evaluate(None, converted.to_reference("stepped").double(), [(x, labels)], progress=False)
    assert stepped.meta["engine"] == "stepped"
    for a, b in zip(closed.layers, stepped.layers):
        assert (a.neurons, a.spikes, a.saturated, a.compared) == (b.neurons, b.spikes, b.saturated, b.compared)
        if a.compared:
            assert b.cosine == pytest.approx(a.cosine, abs=SAME) and b.rel_error == pytest.approx(a.rel_error, abs=SAME)
    assert (closed.agree, closed.snn_correct) == (stepped.agree, stepped.snn_correct)


def test_cuda_request_without_a_gpu_is_refused(converted, test_batches):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda"):
        evaluate(None, converted, test_batches[:1], device="cuda", progress=False)


# --- batch handling and recording --------------------------------------------------------------------------------
def test_split_batch_accepts_tuples_tensors_and_dicts():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_batch((x, y)) == (x, y) and split_batch([x]) == (x, None) and split_batch(x) == (x, None)
    inputs, labels = split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and labels is y
    assert split_batch({"input_ids": x})[1] is None
    with pytest.raises(TypeError, match="batch tuple"):
        split_batch((x, y, y))
    moved = to_device({"a": [x, (y,)], "b": "text"}, "cpu")
    assert moved["b"] == "text" and torch.equal(moved["a"][1][0], y)


def test_recording_engine_passes_every_argument_through():
    calls = []

    class Inner(AnnEngine):
        def neuron(self, name, x, signed=True, mask=None):
            calls.append(("neuron", name, signed, mask))
            return super().neuron(name, x, signed)

        def attention(self, prefix, q, k, v, bias, key_mask=None, query_mask=None):
            calls.append(("attention", prefix, key_mask, query_mask))
            return super().attention(prefix, q, k, v, bias)

    seen = {}
    engine = RecordingEngine(Inner(), seen.__setitem__)
    x = torch.randn(2, 4, 3)
    engine.neuron("a", x, False, mask="m")
    engine.attention("blk", x, x, x, None, key_mask="k", query_mask="q")
    assert calls == [("neuron", "a", False, "m"), ("attention", "blk", "k", "q")]
    assert set(seen) == {"a", "blk.stdp_av"} and torch.equal(seen["a"], x.clamp(min=0))
    assert engine.stats is engine.inner.stats and engine.bias_gain == 1.0


def test_metric_state_merges_exactly_in_any_order():
    values = [1e16, 1.0, -1e16, 3.5, 1e-3]
    a, b = MetricState(), MetricState()
    for i, value in enumerate(values):
        (a if i % 2 else b).add_sum(("x", "s"), value)
        (a if i % 2 else b).add(("x", "n"), 1)
        (a if i % 2 else b).add_min(("x", "m"), value)
    for merged in (MetricState.merge([a, b]), MetricState.merge([b, a])):
        assert merged.total(("x", "s")) == math.fsum(values) == 4.501  # plain left-to-right sum gives 3.501
        assert merged.count(("x", "n")) == 5 and merged.mins[("x", "m")] == -1e16


# --- sharding -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_batches,world_size", [(5, 2), (4, 2), (2, 3), (7, 4)])
def test_shards_partition_the_batches(n_batches, world_size):
    batches = list(range(n_batches))
    shards = [list(shard(batches, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for s in shards for i in s) == batches
    assert [len(shard(batches, rank, world_size)) for rank in range(world_size)] == [len(s) for s in shards]
    assert list(shard(iter(batches), 1, world_size)) == shards[1]  # a plain iterator is skipped through
    assert shard(batches) is batches  # one process: the batches themselves
    samplers = [ShardedBatchSampler(n_batches * 3 - 1, 3, rank, world_size) for rank in range(world_size)]
    indices = sorted(i for sampler in samplers for batch in sampler for i in batch)
    assert indices == list(range(n_batches * 3 - 1))
    assert [len(s) for s in samplers] == [len(list(s)) for s in samplers] == [len(s) for s in shards]
    with pytest.raises(ValueError, match="rank"):
        shard(batches, 2, 2)


def test_convert_distributed_in_one_process_is_convert(tiny, calibration, converted):
    result = convert_distributed(tiny, iter(calibration), CODE)  # a one-shot iterator is fine
    assert result.config == converted.config
    assert all(torch.equal(result.weights[key], converted.weights[key]) for key in converted.weights)
    assert result.weights.keys() == converted.weights.keys()
    with pytest.raises(ValueError, match="empty"):
        convert_distributed(tiny, [], CODE)


# --- two ranks with gloo == one process ------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    """Matmul results can depend on the thread count; the ranks and the reference use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(model, calibration, test_batches):
    """What each rank (or the one process) computes: both calibration methods and a report."""
    cm = convert_distributed(model, shard(calibration), CODE)
    percentile = convert_distributed(model, shard(calibration), CODE, method="percentile", percentile=99.0,
                                     verify=False)
    report = evaluate(model, cm.to_reference("closed"), shard(test_batches), progress=False)
    return {"config": cm.config, "weights": cm.weights, "percentile": percentile.weights,
            "percentile_config": percentile.config, "report": report.to_json()}


def _rank_worker(rank: int, world_size: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        assert distributed.world() == (rank, world_size) and distributed.is_distributed()
        data = torch.load(f"{folder}/inputs.pt")
        model = prepare_swin(SwinTransformer(**TINY))
        model.load_state_dict(data["state"])
        torch.save(_run(model.eval(), data["calibration"], data["test"]), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tiny, calibration, test_batches, tmp_path):
    torch.save({"state": tiny.state_dict(), "calibration": calibration, "test": test_batches}, tmp_path / "inputs.pt")
    mp.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    with one_thread():
        expected = _run(tiny, calibration, test_batches)
    assert expected["report"]["meta"]["world_size"] == 1
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # Scales: the MAX all-reduce (and the gathered percentile samples) is exact, bitwise.
        assert got["config"] == expected["config"]
        assert got["percentile_config"] == expected["percentile_config"]
        for key in ("weights", "percentile"):
            assert got[key].keys() == expected[key].keys()
            different = [k for k in expected[key] if not torch.equal(got[key][k], expected[key][k])]
            assert not different, f"{key}: {different[:3]}"
        # Metrics: integer counts, and float sums combined with math.fsum: bitwise equal too.
        report, reference = dict(got["report"]), dict(expected["report"])
        assert report.pop("meta")["world_size"] == 2
        reference.pop("meta")
        assert report == reference
    assert expected["config"]["calibration"]["batches"] == 4 and expected["report"]["samples"] == 60


def test_the_release_per_rank_calibration_would_differ(tiny, calibration, converted):
    # Why the all-reduce matters: each rank's own shard gives other scales (spec §5.2).
    own_shard = convert(tiny, list(shard(calibration, 1, 2)), CODE)
    key = "scale.layers.0.blocks.0.mlp_act"
    assert not torch.equal(own_shard.weights[key], converted.weights[key])
