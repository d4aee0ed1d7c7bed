"""Conversion of Hugging Face BERT: folding of the post-norm layers, padding (key masks and
calibration masks), the converted-model file, SpikingBert on both reference engines, and the real
MiniLM (lava_spikedattn.models.bert, lava_spikedattn.convert).
"""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from tiny_models import PAPER_CODE, prepared_bert, tiny_bert_config
from transformers import BertConfig, BertForSequenceClassification, BertModel

from lava_spikedattn.ann import UnsupportedModuleError, finetune, prepare_bert
from lava_spikedattn.base_search import search_base
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel, ConvertedModelError
from lava_spikedattn.models import family_of, get_family
from lava_spikedattn.models.bert.network import quantize_embedding

TINY = tiny_bert_config(vocab_size=100, hidden_size=64, num_attention_heads=4, max_position_embeddings=32)
CODE = PAPER_CODE  # exact convention, the paper's Swin setting (as the issue asks for BERT too)
SAME = 1e-9  # stepped vs closed in float64: the same dynamics, only summation order differs
FOLDING = 1e-5  # folded ANN vs the prepared HF model in float32: norm folding is exact up to rounding
# Fidelity at B=1.15, T=40: each of the 17 layers rounds to within (B−1)/(B+1) = 7 % (≈4 % rms);
# the errors partly average out in the pooler's and classifier's sums, and the fine-tuned model
# has real margins, so the logits keep cosine ≥ 0.99 (measured: 0.9993 over the 64×2 logits,
# ≥ 0.9997 per input) and agreement 100 %. A 2-class input with tied logits (one of the 64 has
# (0.0033, 0.0038)) has no meaningful direction; the per-input cosine skips logits of norm < TIED.
COSINE = 0.99
AGREEMENT = 0.95
TIED = 0.1
MAX_LEN = 24  # longest synthetic sentence; max_position_embeddings is 32


def synthetic_task(n: int, generator: torch.Generator, min_len: int = 4, max_len: int = MAX_LEN) -> dict:
    """Token sequences of a separable 2-class task, padded to the batch's longest, as a tokenizer
    returns them (plus labels): [CLS]=1, 80 % of the words from the class's half of the vocabulary
    (5..49 or 50..99), [SEP]=2, padding 0 with attention_mask 0.

    A BERT with random weights has nearly tied logits, so agreement would measure rounding noise;
    a short fine-tune on this task gives it real decision margins.
    """
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    width = int(lengths.max())
    labels = torch.randint(0, 2, (n,), generator=generator)
    low = torch.randint(5, 50, (n, width), generator=generator)
    high = torch.randint(50, 100, (n, width), generator=generator)
    from_class = torch.rand(n, width, generator=generator) < 0.8
    ids = torch.where(from_class == labels[:, None].bool(), high, low)
    positions = torch.arange(width)[None]
    ids[:, 0] = 1
    ids = torch.where(positions == lengths[:, None] - 1, torch.full_like(ids, 2), ids)
    mask = (positions < lengths[:, None]).long()
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


@pytest.fixture(scope="module")
def tiny():
    """Tiny prepared BERT classifier, 40 fine-tuning steps (batch 32) on the synthetic task
    (train mode also sets the norms' running statistics), in eval mode."""
    model = prepared_bert(TINY)
    generator = torch.Generator().manual_seed(1)
    loader = [synthetic_task(32, generator) for _ in range(40)]
    return finetune(model, loader, lr=1e-3, progress=False)


@pytest.fixture(scope="module")
def calibration():
    generator = torch.Generator().manual_seed(2)
    return [synthetic_task(32, generator) for _ in range(4)]  # dicts with labels, as a loader yields


@pytest.fixture(scope="module")
def test_inputs():
    return synthetic_task(64, torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def ann_logits(tiny, test_inputs):
    with torch.no_grad():
        return tiny(**model_inputs(test_inputs)).logits


# converted, converted_official: tiny with calibration at B=1.15, T=40 (tests/conftest.py)


def first(batch: dict, n: int) -> dict:
    return {key: value[:n] for key, value in batch.items()}


def layer_indices(cm: ConvertedModel, prefix: str) -> int:
    return len({layer.index for layer in cm.layers if layer.name.startswith(prefix)})


# --- conversion, file round trip, fidelity -------------------------------------------------------
def test_synthetic_inputs_are_padded_and_the_ann_is_trained(test_inputs, ann_logits):
    lengths = test_inputs["attention_mask"].sum(1)
    assert int(lengths.min()) < int(lengths.max()) == test_inputs["input_ids"].shape[1]  # real padding
    assert float((ann_logits.argmax(1) == test_inputs["labels"]).float().mean()) >= 0.9
    assert float((ann_logits[:, 0] - ann_logits[:, 1]).abs().median()) > 1.0  # margins, not ties


@pytest.mark.parametrize("engine", ["closed", "stepped"])
def test_tiny_bert_round_trips_and_keeps_the_function(converted, test_inputs, ann_logits, tmp_path, engine):
    loaded = ConvertedModel.load(converted.save(tmp_path / "tiny"))
    assert loaded.config == converted.config
    assert loaded.weights.keys() == converted.weights.keys()
    assert all(torch.equal(loaded.weights[k], converted.weights[k]) for k in converted.weights)

    logits = loaded.to_reference(engine)(test_inputs)  # labels in the dict are ignored
    assert float(F.cosine_similarity(logits.flatten(), ann_logits.flatten(), dim=0)) >= COSINE
    untied = ann_logits.norm(dim=1) >= TIED
    assert int(untied.sum()) >= 60
    cosine = F.cosine_similarity(logits, ann_logits, dim=1)[untied]
    assert float(cosine.min()) >= COSINE, f"cosine {cosine.mean():.4f} (min {cosine.min():.4f})"
    agreement = (logits.argmax(1) == ann_logits.argmax(1)).float().mean()
    assert float(agreement) >= AGREEMENT


def test_layer_graph_counts_and_steps(converted, converted_official):
    # exact: 7 per encoder layer + embeddings_if, pooler_if, classifier = 2*7 + 3
    assert layer_indices(converted, "layers.0.") == 7 and converted.n_layers == 17
    # official (spec §8.4): 9 per encoder layer = 2*9 + 3
    assert layer_indices(converted_official, "layers.0.") == 9 and converted_official.n_layers == 21
    assert converted.steps_per_inference == 17 * 40
    assert "17 neuron layers, 680 steps per inference" in converted.summary()
    indices = {layer.name: layer.index for layer in converted.layers}
    p = "layers.0."
    assert indices["embeddings_if"] == 0
    assert indices[p + "q_if"] == indices[p + "k_if"] == indices[p + "v_if"] == 1
    assert [indices[p + n] for n in ("stdp_qk", "softmax_if", "stdp_av", "attn_out_if", "intermediate_if",
                                     "out_if")] == [2, 3, 4, 5, 6, 7]
    assert (indices["pooler_if"], indices["classifier"]) == (15, 16)
    official = {layer.name: layer.index for layer in converted_official.layers}
    assert [official[p + n] for n in ("attention.neuron_1_if", "attention.neuron_2_if", "intermediate_if",
                                      "output.neuron_1_if", "output.neuron_2_if")] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("layers, exact, official", [(6, 45, 57), (12, 87, 111)])  # MiniLM-L6, BERT-base
def test_layer_counts_of_real_sizes(layers, exact, official):
    family = get_family("bert")
    arch = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
    for convention, expected in (("exact", exact), ("official", official)):
        assert len({layer.index for layer in family.layer_graph(arch, convention)}) == expected
    # the release counts 110 for BERT-base (spec §6): its classifier is dense, not a pipeline stage


def test_scale_granularity_follows_spec_5_2(converted):
    shapes = {layer.name: layer.scale_shape for layer in converted.layers}
    axes = {layer.name: layer.seq_axis for layer in converted.layers}
    p = "layers.1."  # 32 positions, 4 heads, hidden 64, intermediate 128
    for name in ("q_if", "k_if", "v_if"):
        assert shapes[p + name] == (1, 32, 1) and axes[p + name] == 1  # per position
    assert shapes[p + "stdp_qk"] == (4, 32, 1)  # per (head, query row), shared over keys
    assert shapes[p + "stdp_av"] == (4, 32, 1)  # per (head, position)
    for name in ("attn_out_if", "out_if"):
        assert shapes[p + name] == (32, 64) and axes[p + name] == 0  # per element
    assert shapes[p + "intermediate_if"] == (32, 128)
    assert shapes["embeddings_if"] == (32, 64)
    assert shapes["pooler_if"] == (64,) and axes["pooler_if"] is None
    assert shapes[p + "softmax_if"] is None and shapes["classifier"] is None
    for layer in converted.layers:
        if layer.scale_shape is not None:
            assert tuple(converted.weights[f"scale.{layer.name}"].shape) == layer.scale_shape
    assert "input_max" not in converted.weights  # no bit-serial input: the embedding is injected


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_ann_engine_reproduces_the_prepared_model(converted, converted_official, test_inputs, ann_logits,
                                                  convention):
    cm = converted if convention == "exact" else converted_official
    torch.testing.assert_close(cm.to_reference("ann")(test_inputs), ann_logits, atol=FOLDING, rtol=FOLDING)
    assert cm.config["calibration"]["folding_error"] < FOLDING


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_stepped_engine_equals_closed_form(converted, converted_official, test_inputs, convention):
    cm = converted if convention == "exact" else converted_official
    x = first(test_inputs, 3)
    assert bool((x["attention_mask"] == 0).any())  # padded keys included
    closed_snn, stepped_snn = cm.to_reference("closed").double(), cm.to_reference("stepped").double()
    torch.testing.assert_close(stepped_snn(x), closed_snn(x), atol=SAME, rtol=0)
    assert stepped_snn.stats == closed_snn.stats


def test_official_convention_runs(converted_official, test_inputs, ann_logits):
    logits = converted_official.to_reference("closed")(test_inputs)
    # The release's graph: 2 more roundings per layer, top level scale/B, WOSS at temperature
    # 1/B (spec §4.4); close but not held to the exact convention's bound (measured: cosine
    # 0.979 mean, agreement 98 %).
    assert float(F.cosine_similarity(logits, ann_logits, dim=1).mean()) >= 0.9
    assert float((logits.argmax(1) == ann_logits.argmax(1)).float().mean()) >= 0.9


# --- padding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, conventions, n", [("closed", ("exact", "official"), 8), ("stepped", ("exact",), 2)])
def test_padded_positions_do_not_change_the_logits(converted, converted_official, test_inputs, engine,
                                                   conventions, n):
    x = first(test_inputs, n)
    padding = x["attention_mask"] == 0
    assert bool(padding.any())
    changed = dict(x, input_ids=torch.where(padding, torch.full_like(x["input_ids"], 77), x["input_ids"]),
                   token_type_ids=torch.where(padding, 1, x["token_type_ids"]))
    models = {"exact": converted, "official": converted_official}  # official: its T-bit embedding code too
    for convention in conventions:
        snn = models[convention].to_reference(engine)
        assert torch.equal(snn(changed), snn(x))  # bit for bit: padding never reaches a present token


def test_more_padding_gives_the_same_logits(converted):
    x = first(synthetic_task(2, torch.Generator().manual_seed(5), max_len=10), 2)
    extra = 30 - x["input_ids"].shape[1]
    padded = {key: F.pad(value, (0, extra)) for key, value in x.items() if key != "labels"}
    snn = converted.to_reference("closed").double()
    torch.testing.assert_close(snn(padded), snn(x), atol=SAME, rtol=0)


def test_padded_keys_never_fire(converted):
    n, present = 20, 6
    ids = torch.zeros(1, n, dtype=torch.long)
    ids[0, :present] = torch.tensor([1, 60, 70, 80, 90, 2])
    mask = (torch.arange(n) < present).long()[None]
    snn = converted.to_reference("closed")
    snn({"input_ids": ids, "attention_mask": mask})
    heads = TINY["num_attention_heads"]
    for i in range(TINY["num_hidden_layers"]):
        for name in ("stdp_qk", "softmax_if"):
            stats = snn.stats[f"layers.{i}.{name}"]
            assert stats.neurons == heads * n * n  # the population has every (query, key) pair
            assert 0 < stats.spikes <= heads * n * present  # only present keys fire
        assert snn.stats[f"layers.{i}.softmax_if"].spikes == heads * n * present  # each present key once


def test_calibration_ignores_padding(tiny, calibration, converted):
    garbage = []
    for batch in calibration:
        padding = batch["attention_mask"] == 0
        garbage.append(dict(batch, input_ids=torch.where(padding, torch.full_like(batch["input_ids"], 99),
                                                         batch["input_ids"])))
    cm = convert(tiny, garbage, CODE)
    for key, value in converted.weights.items():
        assert torch.equal(cm.weights[key], value), key
    # Positions 24..31 never hold a token: they take the largest scale of the same neuron.
    summary = converted.config["calibration"]
    longest = max(int(batch["attention_mask"].sum(1).max()) for batch in calibration)
    assert longest <= MAX_LEN < 32
    assert summary["layers"]["embeddings_if"]["unseen_count"] == (32 - longest) * 64
    scale = converted.weights["scale.layers.0.out_if"]
    assert torch.equal(scale[longest:], scale[:longest].amax(0, keepdim=True).expand(32 - longest, -1))


def test_percentile_calibration_with_padding(tiny, calibration):
    # Padded values are not samples: the percentile of the present ones stays below their max.
    top = convert(tiny, calibration[:2], CODE)
    cm = convert(tiny, calibration[:2], CODE, method="percentile", percentile=99.0)
    for layer in cm.layers:
        if layer.scale_shape is not None:
            key = f"scale.{layer.name}"
            assert bool(torch.isfinite(cm.weights[key]).all()) and bool((cm.weights[key] > 0).all()), key
            assert bool((cm.weights[key] <= top.weights[key] * (1 + 1e-6)).all()), key
    assert bool((cm.weights["scale.layers.0.stdp_qk"] < top.weights["scale.layers.0.stdp_qk"]).any())
    assert cm.config["calibration"]["unseen_count"] == top.config["calibration"]["unseen_count"] > 0


def test_search_base_on_a_converted_bert(converted, calibration):
    result = search_base(converted, 40, bases=[1.02, 1.15, 2.0], batches=calibration[:1], max_values=4096)
    assert result.base == 1.15


def test_official_embedding_code_uses_the_present_maximum():
    # T = 2 bits of the present maximum 0.5: grid 0.125. With the padded token's 9.0 as the
    # maximum (the release's batch max) 0.3 would round to 0.
    e = torch.tensor([[[0.5, 0.3], [3.0, 9.0]]])
    present = torch.tensor([[True, False]])
    assert quantize_embedding(e, present, 2)[0, 0].tolist() == [0.5, 0.25]
    assert torch.equal(quantize_embedding(-e.abs(), present, 2), -e.abs())  # no positive maximum: unchanged


# --- the real MiniLM ---------------------------------------------------------------------------------------
def test_minilm_converts_and_runs():
    from lava_spikedattn.data import load_minilm_classifier

    torch.manual_seed(0)
    model, tokenizer = load_minilm_classifier()
    model = prepare_bert(model)
    sentences = ["a gripping, beautifully acted film", "dull and far too long",
                 "the plot never quite comes together", "one of the year's best"]
    batches = [dict(tokenizer(sentences[:2], padding=True, return_tensors="pt")),
               dict(tokenizer(sentences[2:], padding=True, return_tensors="pt"))]
    with torch.no_grad():  # set the norms' running statistics (a fine-tune would also do it)
        model.train()(**batches[0])
    model.eval()
    cm = convert(model, batches, PhaseCode(1.4, 16))  # the release's BERT setting (spec §8.7)
    assert cm.config["architecture"]["num_hidden_layers"] == 6
    assert (cm.n_layers, cm.steps_per_inference) == (6 * 7 + 3, 45 * 16)
    snn = cm.to_reference("closed")
    logits = snn(batches[1])
    assert logits.shape == (2, 2) and bool(torch.isfinite(logits).all())
    assert snn.stats["layers.5.out_if"].neurons == 2 * batches[1]["input_ids"].shape[1] * 384


# --- errors -------------------------------------------------------------------------------------------------
def _rewrite_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _rewrite_weights(folder, change):
    import safetensors.torch

    path = folder / "weights.safetensors"
    weights = safetensors.torch.load_file(str(path))
    change(weights)
    safetensors.torch.save_file(weights, str(path))


def _drop_seq_axis(config):
    config["layers"][0].pop("seq_axis")


CORRUPTIONS = {
    "missing architecture key": (lambda c: c["architecture"].pop("num_attention_heads"),
                                 "architecture is missing 'num_attention_heads'"),
    "unknown architecture key": (lambda c: c["architecture"].update(depths=[2, 2]),
                                 "architecture has unknown key(s) 'depths'"),
    "heads do not divide": (lambda c: c["architecture"].update(num_attention_heads=5),
                            "'hidden_size' (64) is not a multiple of 'num_attention_heads' (5)"),
    "not a positive integer": (lambda c: c["architecture"].update(num_labels=0),
                               "'num_labels' must be a positive integer"),
    "swin family": (lambda c: c.update(family="swin"), "architecture is missing 'img_size'"),
    "edited seq axis": (_drop_seq_axis, "layer graph does not match"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_broken_bert_configs_raise_converted_model_error(converted, tmp_path, corruption):
    folder = converted.save(tmp_path / "cm")
    change, message = CORRUPTIONS[corruption]
    _rewrite_config(folder, change)
    with pytest.raises(ConvertedModelError, match=re.escape(message)):
        ConvertedModel.load(folder)


@pytest.mark.parametrize("key, tensor, message", [
    ("layers.1.output.residual.weight", None, "missing 1 tensor(s): layers.1.output.residual.weight"),
    ("scale.layers.0.stdp_qk", torch.ones(4, 24, 1), "has shape (4, 24, 1), the architecture needs (4, 32, 1)"),
    ("layers.0.attention.norm.weight", torch.ones(64), "unexpected tensor(s): layers.0.attention.norm.weight"),
])
def test_broken_bert_weights_raise_converted_model_error(converted, tmp_path, key, tensor, message):
    folder = converted.save(tmp_path / "cm")
    _rewrite_weights(folder, lambda w: w.pop(key) if tensor is None else w.update({key: tensor}))
    with pytest.raises(ConvertedModelError, match=re.escape(message)):
        ConvertedModel.load(folder)


def test_unsupported_berts_are_rejected(tiny, calibration):
    assert family_of(tiny).name == "bert"
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        convert(BertForSequenceClassification(BertConfig(**TINY)), calibration, CODE)  # not prepared
    with pytest.raises(ValueError, match="bare BertModel has no classifier"):
        convert(prepare_bert(BertModel(BertConfig(**TINY))).eval(), calibration, CODE)
    with pytest.raises(ValueError, match="decoder BERT"):
        convert(prepare_bert(BertForSequenceClassification(BertConfig(**TINY, is_decoder=True))).eval(),
                calibration, CODE)
    with pytest.raises(ValueError, match="dict with 'input_ids'"):
        convert(tiny, [calibration[0]["input_ids"]], CODE)


def test_wrong_inputs_are_rejected(converted):
    snn = converted.to_reference("closed")
    with pytest.raises(ValueError, match="expects a dict with 'input_ids'"):
        snn(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than max_position_embeddings"):
        snn({"input_ids": torch.ones(1, 33, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 100\)"):
        snn({"input_ids": torch.full((1, 4), 100)})
    with pytest.raises(ValueError, match="at least one token"):
        snn({"input_ids": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 0, 0]] + [[0] * 4])})
    with pytest.raises(ValueError, match="attention_mask has shape"):
        snn({"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long)})
