"""The BERT family: Hugging Face ``BertForSequenceClassification`` and its relatives
``RobertaForSequenceClassification``, ``DistilBertForSequenceClassification`` and
``ElectraForSequenceClassification`` (its registry entry).

``variants.py``: where each of the four keeps its modules (and how they differ: RoBERTa's
padding-offset positions, ELECTRA's embedding projection, DistilBERT's missing token types, the
heads); ``network.py``: the architecture, the layer graph, norm folding and the spiking network,
one for all four; ``lava_builder.py``: the same network as Lava processes. This module names them,
the preparation (``ann.prepare_bert``) and what the command line builds (random init at the HF
default sizes of the architecture: ``bert``/``bert-base``, ``roberta``, ``distilbert``/
``distilbert-base-uncased``, ``electra``; ``minilm``: the bundled pre-trained all-MiniLM-L6-v2; or
a local Hugging Face checkpoint folder of one of the four), and the text data sets.
transformers and ``network.py`` are imported on use: the command line reads the registry before
it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lava_spikedattn.data import RANDOM_SAMPLES, Batches, batch_generator
from lava_spikedattn.models import ModelFamily, register_family

if TYPE_CHECKING:
    from lava_spikedattn.coding import PhaseCode
    from lava_spikedattn.layers import LayerSpec
    from lava_spikedattn.models.bert.network import SpikingBert

__all__ = ["BertFamily"]

#: ``--model`` names of random-init models → the architecture they build (HF default sizes).
RANDOM_INIT = {"bert": "bert", "bert-base": "bert", "roberta": "roberta", "distilbert": "distilbert",
               "distilbert-base-uncased": "distilbert", "electra": "electra"}
#: ``--model`` names: the random-init ones and the bundled MiniLM (or a checkpoint folder).
MODEL_NAMES = (*RANDOM_INIT, "minilm")
# Keys of a HF config dict that are not constructor arguments (build_ann drops them).
_NOT_CONFIG = ("transformers_version", "_name_or_path", "architectures", "_attn_implementation_autoset")
# Vocabulary of MiniLM's (BERT uncased) tokenizer, which tokenises the rt-polarity sentences.
_MINILM_VOCAB = 30522


class BertFamily(ModelFamily):
    """HF BERT, RoBERTa, DistilBERT and ELECTRA sequence classifiers prepared with
    ``ann.prepare_bert``."""

    name = "bert"
    model_names = ("bert, bert-base, roberta, distilbert (distilbert-base-uncased), electra (random init), "
                   "minilm (the bundled pre-trained all-MiniLM-L6-v2) or a local Hugging Face checkpoint folder "
                   "of one of these architectures")
    datasets = ("rt-polarity", "random")
    default_code = (1.4, 16)
    model_options = ("num_classes",)

    def matches(self, model: nn.Module) -> bool:
        from lava_spikedattn.ann import BERT_FAMILY_MODELS

        return isinstance(model, BERT_FAMILY_MODELS)

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        from lava_spikedattn.models.bert import network

        return network.BertArchitecture.from_model(model).to_json()

    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        from lava_spikedattn.models.bert import network

        network.BertArchitecture.from_json(architecture)

    def layer_graph(self, architecture: Mapping[str, Any], convention: str) -> list[LayerSpec]:
        from lava_spikedattn.models.bert import network

        return network.bert_layer_graph(network.BertArchitecture.from_json(architecture), convention)

    def weight_shapes(self, architecture: Mapping[str, Any], convention: str) -> dict[str, tuple[int, ...]]:
        from lava_spikedattn.models.bert import network

        return network.bert_weight_shapes(network.BertArchitecture.from_json(architecture), convention)

    def fold(self, model: nn.Module, convention: str) -> dict[str, torch.Tensor]:
        from lava_spikedattn.models.bert import network

        return network.fold_bert(model, convention)

    def network(self, architecture: Mapping[str, Any], convention: str, weights: Mapping[str, torch.Tensor],
                code: PhaseCode | None = None, engine: str = "ann") -> SpikingBert:
        from lava_spikedattn.models.bert import network

        return network.SpikingBert(network.BertArchitecture.from_json(architecture), convention, weights, code,
                                   engine)

    def model_input(self, batch: Any) -> dict[str, torch.Tensor]:
        """The tokenizer tensors of a batch (a dict, or a tuple whose first item is one); labels and
        other keys are dropped."""
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError(f"a BERT batch must be a dict with 'input_ids' (as HF tokenizers return), got "
                             f"{type(batch).__name__}")
        from lava_spikedattn.models.bert.network import INPUT_KEYS

        return {key: batch[key] for key in INPUT_KEYS if batch.get(key) is not None}

    def ann_output(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(**{key: value.to(device) for key, value in inputs.items()}).logits

    def example_input(self, architecture: Mapping[str, Any], *, seq_len: int | None = None) -> dict[str, Any]:
        """A sentence of ``seq_len`` blank tokens: a BERT's size depends on the sequence length."""
        if seq_len is None:
            raise ValueError("a bert model's size depends on its input (the sequence length); pass one batch of "
                             "model inputs or a sequence length")
        positions = self.architecture_info(architecture)["max_position"]
        if seq_len > positions:
            raise ValueError(f"a sequence of {seq_len} tokens is longer than the model's {positions} positions")
        return {"input_ids": torch.zeros(1, seq_len, dtype=torch.long)}

    def prepare(self, model: nn.Module) -> nn.Module:
        from lava_spikedattn.ann import prepare_bert

        return prepare_bert(model)

    def lava_builder(self) -> type:
        from lava_spikedattn.models.bert.lava_builder import BertBuilder

        return BertBuilder

    def owns_model_name(self, name: str) -> bool:
        """A name of :data:`MODEL_NAMES`, or a folder holding a Hugging Face ``config.json``."""
        return name in MODEL_NAMES or (Path(name) / "config.json").is_file()

    def build_ann(self, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        """``minilm``: the bundled pre-trained MiniLM (kwargs: ``num_labels``); a random-init name:
        the architecture's ``*ForSequenceClassification`` of ``<Arch>Config(**kwargs)`` (HF default
        sizes); a folder: its checkpoint (``from_pretrained``, local files only, kwargs override the
        config), which must be one of the four classifiers. ``num_classes`` is ``num_labels``. The
        stored (name, kwargs) are the architecture (``bert``, ``roberta``, ``distilbert``,
        ``electra``) and its full config, which rebuild the model (with random weights)."""
        from lava_spikedattn.models.bert.variants import CLASSIFIERS, classifier_name

        kwargs = dict(kwargs)
        if "num_classes" in kwargs:
            kwargs["num_labels"] = kwargs.pop("num_classes")
        if name == "minilm":
            from lava_spikedattn.data import load_minilm_classifier

            unknown = set(kwargs) - {"num_labels"}
            if unknown:
                raise ValueError(f"the minilm model takes no options but --num-classes; got "
                                 f"{', '.join(sorted(unknown))}")
            model, _ = load_minilm_classifier(kwargs.get("num_labels", 2))
        elif name in RANDOM_INIT:
            cls = next(cls for cls, arch in CLASSIFIERS.items() if arch == RANDOM_INIT[name])
            model = cls(cls.config_class(**kwargs))
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=True, **kwargs)
            if classifier_name(model) is None:
                raise ValueError(f"{name}: {type(model).__name__} is not a model of the bert family, which "
                                 f"converts {', '.join(cls.__name__ for cls in CLASSIFIERS)}")
        config = model.config.to_dict()
        for key in _NOT_CONFIG:
            config.pop(key, None)
        return model, classifier_name(model), config

    def model_info(self, model: nn.Module) -> dict[str, Any]:
        return self.architecture_info(self.architecture(model))

    def architecture_info(self, architecture: Mapping[str, Any]) -> dict[str, Any]:
        # Key names of BertArchitecture; defaults: BERT-base. RoBERTa's positions start after its padding id.
        padding = architecture.get("position_padding_idx")
        positions = architecture.get("max_position_embeddings", 512)
        return {"vocab_size": architecture.get("vocab_size", 30522),
                "num_labels": architecture.get("num_labels", architecture.get("num_classes", 2)),
                "max_position": positions if padding is None else positions - padding - 1}

    def batches(self, data: str, split: str, *, limit: int | None, batch_size: int, info: Mapping[str, Any],
                seed: int, seq_len: int) -> Batches:
        """Tokenised Rotten-Tomatoes sentences, or random token ids (``random``, inside the model's
        vocabulary), ``seq_len`` tokens at most.

        The sentences are tokenised with MiniLM's (BERT uncased) tokenizer: its ids mean the same
        words to BERT, DistilBERT and ELECTRA checkpoints with that vocabulary, to a random-init
        model they are just ids; a model with a smaller vocabulary is refused.
        """
        seq_len = min(seq_len, info["max_position"])
        vocab = info["vocab_size"]
        if data == "random":
            def make_random(start: int, stop: int):
                g = batch_generator(seed, split, start)
                low = 1000 if vocab > 1000 else vocab // 2  # past bert-base-uncased's special tokens
                ids = torch.randint(low, vocab, (stop - start, seq_len), generator=g)
                if vocab > 102:
                    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP] of the bert-base-uncased vocabulary
                return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids),
                        "labels": torch.randint(0, info["num_labels"], (stop - start,), generator=g)}

            return Batches(RANDOM_SAMPLES if limit is None else limit, batch_size, make_random)
        if vocab < _MINILM_VOCAB:
            raise ValueError(f"the {data} sentences are tokenised with MiniLM's BERT tokenizer ({_MINILM_VOCAB} "
                             f"ids), but the model's vocabulary has {vocab}; use --data random or a model with a "
                             f"BERT vocabulary")
        from transformers import AutoTokenizer

        from lava_spikedattn.data import minilm_path, split_rt_polarity

        texts, labels = split_rt_polarity()[0 if split == "train" else 1]
        texts, labels = texts[:limit], labels[:limit]
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)

        def make(start: int, stop: int):
            batch = tokenizer(texts[start:stop], padding="longest", truncation=True, max_length=seq_len,
                              return_tensors="pt")
            return {**batch, "labels": torch.tensor(labels[start:stop])}

        return Batches(len(texts), batch_size, make)


register_family(BertFamily())
