"""RoBERTa, DistilBERT and ELECTRA through the BERT family's path: preparation, conversion into the
same stored tensors (RoBERTa's padding-offset positions, ELECTRA's folded embedding projection,
DistilBERT's zero token-type table), the reference engines, Lava, the integer network, the
converted-model file, the command line's model names and the refusals
(lava_spikedattn.ann, lava_spikedattn.models.bert).

Every module fixture is built once per architecture (``arch``), on padded synthetic sentences.
"""

import copy
import json
import re

import pytest
import torch
import transformers
from synthetic import sentences
from tiny_models import TINY_BERT_VARIANTS, bert_variant, prepared_bert_variant, tiny_bert_config
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

from lava_spikedattn.ann import (
    ReluClassificationHead,
    UnsupportedModuleError,
    check_prepared,
    finetune,
    prepare_bert,
)
from lava_spikedattn.builder import MODES, build_lava_network
from lava_spikedattn.checkpoint import load_ann_checkpoint, save_ann_checkpoint
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.models import family_for_model_name, family_of, get_family
from lava_spikedattn.models.bert.network import BertArchitecture

ARCHS = sorted(TINY_BERT_VARIANTS)
CODE = PhaseCode(1.25, 12)  # short windows (as tests/test_builder.py): Lava runs 17·12 steps
SAME = 1e-9  # float64, the same function or dynamics: only summation order differs (measured ~1e-16)
AGREEMENT = 0.9  # the integer network's class vs the float network's (the bar)


def padded(n: int, seed: int, pad_id: int) -> dict:
    """synthetic.sentences (8 positions, 3..8 tokens) with the model's pad id in the padding, and
    labels of a task the head can learn from token 0 (as conftest's tiny_bert)."""
    batch = sentences(n, seed)
    batch["input_ids"] = torch.where(batch["attention_mask"] == 1, batch["input_ids"], pad_id)
    batch["labels"] = (batch["input_ids"][:, 0] < 25).long()
    return batch


def inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def tiny(arch):
    """The tiny prepared ``arch`` classifier (tiny_models), 20 fine-tuning steps on padded
    sentences (train mode also sets the norms' running statistics), float64, eval mode."""
    model = prepared_bert_variant(arch)
    pad = model.config.pad_token_id
    return finetune(model, [padded(16, seed, pad) for seed in range(20)], lr=3e-3, progress=False).double()


@pytest.fixture(scope="module")
def pad_id(tiny):
    return tiny.config.pad_token_id


@pytest.fixture(scope="module")
def cm(tiny, pad_id):
    return convert(tiny, [padded(16, 100 + i, pad_id) for i in range(3)], CODE)


@pytest.fixture(scope="module")
def test_batch(pad_id):
    return padded(16, 300, pad_id)


# --- preparation -----------------------------------------------------------------------------------
def test_prepared_model_has_relu_heads_and_running_norms(arch, tiny, test_batch):
    assert family_of(tiny).name == "bert"
    assert tiny.config._attn_implementation == "eager"
    if arch == "distilbert":  # pre_classifier -> ReLU -> classifier already
        assert all(type(layer.ffn.activation) is torch.nn.ReLU for layer in tiny.distilbert.transformer.layer)
    else:
        assert isinstance(tiny.classifier, ReluClassificationHead)
        encoder = getattr(tiny, arch).encoder
        assert all(type(layer.intermediate.intermediate_act_fn) is torch.nn.ReLU for layer in encoder.layer)
    assert not any(isinstance(module, torch.nn.LayerNorm) for module in tiny.modules())
    # padded batches, and training gave the model real margins
    lengths = test_batch["attention_mask"].sum(1)
    assert int(lengths.min()) < int(lengths.max())
    with torch.no_grad():
        logits = tiny(**inputs(test_batch)).logits
    assert float((logits.argmax(1) == test_batch["labels"]).float().mean()) >= 0.9


def test_relu_head_keeps_the_original_weights_and_state_dict_keys():
    model = bert_variant("roberta")
    prepared = prepare_bert(model)
    head_keys = {key for key in prepared.state_dict() if key.startswith("classifier.")}
    assert head_keys == {key for key in model.state_dict() if key.startswith("classifier.")} != set()
    torch.testing.assert_close(prepared.classifier.out_proj.weight, model.classifier.out_proj.weight)
    features = torch.randn(3, 5, 32)
    dense = model.classifier.dense(features[:, 0])
    expected = model.classifier.out_proj(torch.relu(dense))  # the head with tanh replaced by ReLU
    torch.testing.assert_close(prepared.classifier(features), expected)
    assert not torch.allclose(model.classifier(features), expected)  # tanh really was replaced


# --- conversion and the engines -------------------------------------------------------------------
def test_architecture_records_each_variant(arch, cm):
    architecture = cm.config["architecture"]
    assert architecture["hidden_size"] == 32 and architecture["num_hidden_layers"] == 2
    assert architecture.get("position_padding_idx") == (1 if arch == "roberta" else None)
    assert architecture["type_vocab_size"] == (2 if arch == "electra" else 1)  # DistilBERT: the zero row
    assert cm.weights["embeddings.word_embeddings"].shape == (60, 32)  # ELECTRA: projected from 16
    if arch == "distilbert":
        assert not cm.weights["embeddings.token_type_embeddings"].any()
    if arch == "electra":  # the projection's norm folded away: weight 1
        assert torch.equal(cm.weights["embeddings.norm.weight"], torch.ones(32, dtype=torch.float64))
    # RoBERTa: 16 positions less the padding offset hold 14 tokens, the per-position scales too
    assert cm.weights["scale.embeddings_if"].shape == ((14 if arch == "roberta" else 16), 32)


def test_ann_engine_equals_the_prepared_model(cm, tiny, test_batch):
    x = inputs(test_batch)
    with torch.no_grad():
        expected = tiny(**x).logits
    torch.testing.assert_close(cm.to_reference("ann").double()(x), expected, atol=SAME, rtol=SAME)
    assert cm.config["calibration"]["folding_error"] < SAME


def test_roberta_positions_are_hf_positions():
    ids = torch.tensor([[0, 5, 1, 7, 2, 1, 1], [0, 9, 9, 2, 1, 1, 1]])  # a pad id (1) inside the first sentence
    cm = convert(prepare_bert(bert_variant("roberta")), [{"input_ids": ids}], CODE, verify=False)
    positions = cm.to_reference("ann").positions(ids)
    # By hand: non-pad tokens count from 2 (= pad + 1), the pad inside skipped; pads get 1.
    assert positions.tolist() == [[2, 3, 1, 4, 5, 1, 1], [2, 3, 4, 5, 1, 1, 1]]
    assert torch.equal(positions, RobertaEmbeddings.create_position_ids_from_input_ids(ids, 1))


def test_stepped_engine_equals_closed_form(cm, test_batch):
    x = {key: value[:3] for key, value in inputs(test_batch).items()}
    assert bool((x["attention_mask"] == 0).any())  # padded keys included
    closed, stepped = cm.to_reference("closed").double(), cm.to_reference("stepped").double()
    expected = closed(x)
    assert expected.abs().max() > 0.1  # real logits
    torch.testing.assert_close(stepped(x), expected, atol=SAME, rtol=0)
    assert stepped.stats == closed.stats


def test_lava_fused_and_decomposed_equal_the_stepped_reference(cm, test_batch):
    x = {key: value[:2] for key, value in inputs(test_batch).items()}
    assert bool((x["attention_mask"] == 0).any())
    reference = cm.to_reference("stepped").double()
    expected = reference(x)
    for mode in MODES:
        with build_lava_network(cm, mode=mode) as net:
            logits = net.run(x)
            assert ((logits - expected).norm() / expected.norm()).item() < SAME, mode
            assert net.stats()["layers"] == reference.stats, mode


def test_integer_network_predicts_the_float_class(cm, test_batch):
    x = inputs(test_batch)
    float_logits = build_lava_network(cm).simulate(x)
    fixed_logits = build_lava_network(cm, fixed_format=FixedFormat()).simulate(x)
    same = (fixed_logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
    assert same >= AGREEMENT, same


def test_converted_model_round_trips(arch, cm, test_batch, tmp_path):
    loaded = ConvertedModel.load(cm.save(tmp_path / arch))
    assert loaded.config["architecture"] == cm.config["architecture"]  # RoBERTa's padding idx included
    x = inputs(test_batch)
    assert torch.equal(loaded.to_reference("closed")(x), cm.to_reference("closed")(x))


# --- refusals --------------------------------------------------------------------------------------
SUPPORTED = r".*RobertaForSequenceClassification.*ElectraForSequenceClassification"


def test_unsupported_architectures_are_refused_by_name():
    albert = transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
        vocab_size=60, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16))
    masked = transformers.BertForMaskedLM(transformers.BertConfig(**tiny_bert_config()))
    for model in (albert, masked):
        name = type(model).__name__
        with pytest.raises(TypeError, match=f"got {name}"):
            prepare_bert(model)
        with pytest.raises(TypeError, match=f"{name} is not a supported model family; supported: {SUPPORTED}"):
            check_prepared(model)
    with pytest.raises(TypeError, match="AlbertForSequenceClassification"):
        convert(albert, [{"input_ids": torch.ones(1, 4, dtype=torch.long)}], CODE)


@pytest.mark.parametrize("variant", ARCHS)
def test_unprepared_heads_and_activations_are_refused(variant):
    model = bert_variant(variant)
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        check_prepared(model)
    prepared = prepare_bert(model)
    if variant == "distilbert":
        prepared.distilbert.transformer.layer[1].ffn.activation = torch.nn.GELU()
        message = r"model\.distilbert\.transformer\.layer\.1\.ffn\.activation: GELU"
    else:
        prepared.classifier = copy.deepcopy(model.classifier)  # tanh (RoBERTa, a function call) / GELU
        message = r"model\.classifier: \w+ClassificationHead applies tanh/GELU"
    with pytest.raises(UnsupportedModuleError, match=message):
        check_prepared(prepared)


def test_roberta_sequences_longer_than_its_positions_are_refused():
    model = prepare_bert(bert_variant("roberta")).double().train()
    x = padded(4, 7, 1)
    with torch.no_grad():
        model(**inputs(x))  # sets the running statistics
    cm = convert(model.eval(), [x], CODE)
    snn = cm.to_reference("ann").double()
    longest = {"input_ids": torch.randint(2, 60, (1, 14))}  # 16 positions - padding idx 1 - 1
    with torch.no_grad():
        torch.testing.assert_close(snn(longest), model(**longest).logits, atol=SAME, rtol=SAME)
    with pytest.raises(ValueError, match=re.escape("a sequence of 15 tokens is longer than the 14 tokens that "
                                                   "RoBERTa positions allow")):
        snn({"input_ids": torch.randint(2, 60, (1, 15))})


@pytest.mark.parametrize("value, message", [
    (-1, "'position_padding_idx' must be a non-negative integer or absent, got -1"),
    (True, "'position_padding_idx' must be a non-negative integer or absent, got True"),
    (15, "'position_padding_idx' (15) leaves no position of the 16 'max_position_embeddings'"),
])
def test_position_padding_idx_is_validated(value, message):
    arch = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=16, type_vocab_size=1, num_labels=2)
    assert BertArchitecture.from_json(arch).max_length == 16  # absent: BERT's positions (files before it)
    assert BertArchitecture.from_json(dict(arch, position_padding_idx=1)).max_length == 14
    with pytest.raises(ValueError, match=re.escape(message)):
        BertArchitecture.from_json(dict(arch, position_padding_idx=value))


# --- the command line's model names ----------------------------------------------------------------
@pytest.mark.parametrize("name, arch_name", [("roberta", "roberta"), ("distilbert", "distilbert"),
                                             ("distilbert-base-uncased", "distilbert"), ("electra", "electra")])
def test_model_names_build_and_their_checkpoints_rebuild(name, arch_name, tmp_path):
    family = family_for_model_name(name)
    assert family.name == "bert"
    factory, class_name = TINY_BERT_VARIANTS[arch_name]
    config = {key: value for key, value in factory().items() if key != "num_labels"}
    torch.manual_seed(0)
    model, stored_name, stored = family.build_ann(name, {**config, "num_classes": 3})
    assert type(model).__name__ == class_name and stored_name == arch_name and len(stored["id2label"]) == 3
    prepared = family.prepare(model).eval()
    path = save_ann_checkpoint(prepared, tmp_path / "ann.safetensors", family="bert", model_name=stored_name,
                               model_kwargs=stored)
    loaded, metadata = load_ann_checkpoint(path)
    assert type(loaded) is type(prepared) and metadata["model"] == arch_name
    x = inputs(padded(4, 9, model.config.pad_token_id))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, prepared(**x).logits, atol=0, rtol=0)
    info = family.model_info(prepared)
    assert info == {"vocab_size": 60, "num_labels": 3, "max_position": 14 if arch_name == "roberta" else 16}
    batch = family.batches("random", "train", limit=4, batch_size=4, info=info, seed=0, seq_len=32)[0]
    assert batch["input_ids"].shape == (4, info["max_position"]) and int(batch["input_ids"].max()) < 60
    with pytest.raises(ValueError, match="MiniLM's BERT tokenizer"):
        family.batches("rt-polarity", "train", limit=4, batch_size=4, info=info, seed=0, seq_len=32)


def test_default_sizes_are_hugging_faces():
    family = get_family("bert")
    for name, config_class in (("roberta", transformers.RobertaConfig), ("electra", transformers.ElectraConfig),
                               ("distilbert", transformers.DistilBertConfig)):
        assert family.owns_model_name(name)
        layers = "n_layers" if name == "distilbert" else "num_hidden_layers"
        model, _, stored = family.build_ann(name, {layers: 1})  # one layer: quick to build
        assert type(model.config) is config_class
        defaults = config_class().to_dict()  # e.g. ELECTRA: hidden 256, embeddings 128; RoBERTa: vocab 50265
        assert {key for key, value in defaults.items() if key in stored and stored[key] != value} == {layers}, name


def test_a_local_checkpoint_folder_is_loaded(tmp_path):
    family = get_family("bert")
    model = bert_variant("electra")
    model.save_pretrained(tmp_path / "electra")
    assert family.owns_model_name(str(tmp_path / "electra")) and not family.owns_model_name(str(tmp_path))
    loaded, name, stored = family.build_ann(str(tmp_path / "electra"), {})
    assert type(loaded) is type(model) and name == "electra" and stored["embedding_size"] == 16
    x = inputs(padded(4, 9, 0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**x).logits, model(**x).logits, atol=0, rtol=0)
    transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
        vocab_size=60, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64)).save_pretrained(tmp_path / "albert")
    with pytest.raises(ValueError, match=f"AlbertForSequenceClassification is not a model of the bert family, "
                                         f"which converts BertForSequenceClassification{SUPPORTED}"):
        family.build_ann(str(tmp_path / "albert"), {})


def test_roberta_converts_and_evaluates_on_the_command_line(tmp_path, capsys):
    from lava_spikedattn.cli import main

    config = {key: value for key, value in TINY_BERT_VARIANTS["roberta"][0]().items() if key != "num_labels"}
    argv = ["convert", "--model", "roberta", "--num-classes", "3", "--model-kwargs", json.dumps(config), "--data",
            "random", "--seq-len", "32", "--calib-batches", "2", "--batch-size", "4", "--out", tmp_path / "snn",
            "--save-ann", tmp_path / "ann.safetensors", "--no-progress"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "converted bert (roberta" in capsys.readouterr().out
    assert ConvertedModel.load(tmp_path / "snn").config["architecture"]["position_padding_idx"] == 1
    argv = ["evaluate", tmp_path / "snn", "--data", "random", "--seq-len", "32", "--limit", "4", "--ann",
            tmp_path / "ann.safetensors", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    assert "4 samples (4 labeled)" in capsys.readouterr().out
