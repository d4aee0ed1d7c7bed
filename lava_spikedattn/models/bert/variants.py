"""The BERT family's Hugging Face classifiers read into one shape (:class:`BertParts`).

BERT, RoBERTa, ELECTRA and DistilBERT (``*ForSequenceClassification``, prepared with
``ann.prepare_bert``) run the same post-norm encoder; only module names and three input/output
details differ, and ``network.py`` folds every one of them into the same stored tensors:

* **BERT** (``bert.*``): positions 0..N-1, token types; head = pooler dense on token 0 → ReLU →
  ``classifier``.
* **RoBERTa** (``roberta.*``): positions count the non-padding tokens from ``padding_idx + 1``
  (HF's ``create_position_ids_from_input_ids``; the architecture's ``position_padding_idx``);
  head = ``ReluClassificationHead`` (dense → ReLU → out_proj on token 0).
* **ELECTRA** (``electra.*``): BERT's layers; an optional ``embeddings_project`` Linear after the
  embedding norm (embedding_size ≠ hidden_size), folded by ``network.fold_bert`` into the
  embedding tables; head as RoBERTa's.
* **DistilBERT** (``distilbert.*``: ``attention.{q,k,v,out}_lin``, ``sa_layer_norm``,
  ``ffn.lin1/lin2``, ``output_layer_norm``): no token types (a one-row zero table is stored);
  head = ``pre_classifier`` → ReLU → ``classifier``.

Here the modules are only located (and the variants the converter cannot run refused); what
they compute is ``network.py``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel
from transformers.models.distilbert.modeling_distilbert import DistilBertForSequenceClassification
from transformers.models.electra.modeling_electra import ElectraForSequenceClassification
from transformers.models.roberta.modeling_roberta import RobertaForSequenceClassification

from lava_spikedattn.ann import ReluClassificationHead

__all__ = ["CLASSIFIERS", "BertParts", "EncoderLayer", "classifier_name", "read_parts"]

#: The sequence classifiers the family converts → the name its ``--model`` builds it from.
CLASSIFIERS: dict[type, str] = {BertForSequenceClassification: "bert", RobertaForSequenceClassification: "roberta",
                                DistilBertForSequenceClassification: "distilbert",
                                ElectraForSequenceClassification: "electra"}


@dataclass(frozen=True)
class EncoderLayer:
    """One post-norm encoder layer: ``h = norm_1(output(attn(query, key, value)) + x)``,
    ``y = norm_2(ffn_output(ReLU(intermediate(h))) + h)``."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    norm_1: nn.Module
    intermediate: nn.Linear
    ffn_output: nn.Linear
    norm_2: nn.Module
    heads: int
    head_dim: int


@dataclass(frozen=True)
class BertParts:
    """The modules of a BERT-family classifier, whatever the architecture calls them."""

    word: nn.Embedding
    position: nn.Embedding
    token_type: nn.Embedding | None  # None: DistilBERT
    norm: nn.Module  # the embedding norm
    project: nn.Linear | None  # ELECTRA's embeddings_project (after the norm), if any
    layers: list[EncoderLayer]
    pooler: nn.Linear  # dense on token 0, followed by ReLU
    classifier: nn.Linear
    position_padding_idx: int | None  # RoBERTa: positions counted from padding_idx + 1


def classifier_name(model: nn.Module) -> str | None:
    """The :data:`CLASSIFIERS` name of ``model`` ("bert", "roberta", ...), None for other models."""
    return next((name for cls, name in CLASSIFIERS.items() if isinstance(model, cls)), None)


def _bert_layer(layer: nn.Module) -> EncoderLayer:
    attention = layer.attention
    return EncoderLayer(attention.self.query, attention.self.key, attention.self.value, attention.output.dense,
                        attention.output.LayerNorm, layer.intermediate.dense, layer.output.dense,
                        layer.output.LayerNorm, attention.self.num_attention_heads,
                        attention.self.attention_head_size)


def _distilbert_layer(layer: nn.Module) -> EncoderLayer:
    attention = layer.attention
    return EncoderLayer(attention.q_lin, attention.k_lin, attention.v_lin, attention.out_lin, layer.sa_layer_norm,
                        layer.ffn.lin1, layer.ffn.lin2, layer.output_layer_norm, attention.n_heads,
                        attention.attention_head_size)


def _relu_head(model: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(dense, out_proj) of a RoBERTa/ELECTRA head that ``prepare_bert`` replaced."""
    if not isinstance(model.classifier, ReluClassificationHead):
        raise ValueError(f"the {type(model).__name__} head is {type(model.classifier).__name__} (tanh/GELU); "
                         f"run prepare_bert(), which replaces it by a ReluClassificationHead")
    return model.classifier.dense, model.classifier.out_proj


def read_parts(model: nn.Module) -> BertParts:
    """The modules of ``model`` (one of :data:`CLASSIFIERS`, prepared); ``ValueError`` for
    models or variants the converter cannot run (bare encoder, decoder, relative positions)."""
    if isinstance(model, BertModel):
        raise ValueError("a bare BertModel has no classifier to read out; convert a "
                         "BertForSequenceClassification (prepared with prepare_bert())")
    name = classifier_name(model)
    if name is None:
        raise ValueError(f"expected one of the transformers classifiers {', '.join(c.__name__ for c in CLASSIFIERS)}, "
                         f"got {type(model).__name__}")
    hf = model.config
    if getattr(hf, "is_decoder", False) or getattr(hf, "add_cross_attention", False):
        raise ValueError("decoder BERT (causal mask, cross-attention) is not supported: the converter runs "
                         "bidirectional encoders")
    position = getattr(hf, "position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"position_embedding_type {position!r} is not supported; only 'absolute'")
    if isinstance(model, DistilBertForSequenceClassification):
        emb = model.distilbert.embeddings
        return BertParts(emb.word_embeddings, emb.position_embeddings, None, emb.LayerNorm, None,
                         [_distilbert_layer(layer) for layer in model.distilbert.transformer.layer],
                         model.pre_classifier, model.classifier, None)
    encoder = getattr(model, name)  # model.bert / .roberta / .electra
    emb = encoder.embeddings
    layers = [_bert_layer(layer) for layer in encoder.encoder.layer]
    token_type = emb.token_type_embeddings
    if isinstance(model, BertForSequenceClassification):
        if encoder.pooler is None or not isinstance(model.classifier, nn.Linear):
            raise ValueError("the BERT classifier must have a pooler and a Linear classifier")
        return BertParts(emb.word_embeddings, emb.position_embeddings, token_type, emb.LayerNorm, None, layers,
                         encoder.pooler.dense, model.classifier, None)
    dense, out_proj = _relu_head(model)
    if isinstance(model, RobertaForSequenceClassification):
        return BertParts(emb.word_embeddings, emb.position_embeddings, token_type, emb.LayerNorm, None, layers,
                         dense, out_proj, emb.padding_idx)
    return BertParts(emb.word_embeddings, emb.position_embeddings, token_type, emb.LayerNorm,
                     getattr(encoder, "embeddings_project", None), layers, dense, out_proj, None)
