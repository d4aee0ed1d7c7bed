"""The BERT family: Hugging Face ``BertForSequenceClassification`` (its registry entry).

``network.py``: the architecture, the layer graph, norm folding and the spiking network;
``lava_builder.py``: the same network as Lava processes. This module names them, the preparation
(``ann.prepare_bert``) and what the command line builds (``bert``, ``bert-base``: random init;
``minilm``: the bundled pre-trained all-MiniLM-L6-v2), and the text data sets. transformers and
``network.py`` are imported on use: the command line reads the registry before it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
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

#: ``--model`` names: random-init BERT (``bert``, ``bert-base``) or the bundled MiniLM.
MODEL_NAMES = ("bert", "bert-base", "minilm")


class BertFamily(ModelFamily):
    """HF ``BertForSequenceClassification`` prepared with ``ann.prepare_bert``."""

    name = "bert"
    model_names = "bert, bert-base (random init) or minilm (the bundled pre-trained all-MiniLM-L6-v2)"
    datasets = ("rt-polarity", "random")
    default_code = (1.4, 16)
    model_options = ("num_classes",)

    def matches(self, model: nn.Module) -> bool:
        from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel

        return isinstance(model, (BertForSequenceClassification, BertModel))

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
        positions = architecture["max_position_embeddings"]
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
        return name in MODEL_NAMES

    def build_ann(self, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        """``minilm``: the bundled pre-trained MiniLM (kwargs: ``num_labels``); ``bert``/``bert-base``:
        a random-init ``BertForSequenceClassification`` of ``BertConfig(**kwargs)`` (BERT-base sizes
        by default). The stored kwargs are always the full config (rebuilt as ``bert``)."""
        from transformers import BertConfig, BertForSequenceClassification

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
        else:
            model = BertForSequenceClassification(BertConfig(**kwargs))
        config = model.config.to_dict()
        for key in ("transformers_version", "_name_or_path", "architectures", "_attn_implementation_autoset"):
            config.pop(key, None)
        return model, "bert", config

    def model_info(self, model: nn.Module) -> dict[str, Any]:
        config = model.config
        return {"vocab_size": config.vocab_size, "num_labels": config.num_labels,
                "max_position": config.max_position_embeddings}

    def architecture_info(self, architecture: Mapping[str, Any]) -> dict[str, Any]:
        # Key names of BertArchitecture; defaults: BERT-base.
        return {"vocab_size": architecture.get("vocab_size", 30522),
                "num_labels": architecture.get("num_labels", architecture.get("num_classes", 2)),
                "max_position": architecture.get("max_position_embeddings", 512)}

    def batches(self, data: str, split: str, *, limit: int | None, batch_size: int, info: Mapping[str, Any],
                seed: int, seq_len: int) -> Batches:
        """Tokenised Rotten-Tomatoes sentences (MiniLM's tokenizer), or random token ids (``random``),
        ``seq_len`` tokens at most."""
        seq_len = min(seq_len, info["max_position"])
        if data == "random":
            def make_random(start: int, stop: int):
                g = batch_generator(seed, split, start)
                ids = torch.randint(1000, info["vocab_size"], (stop - start, seq_len), generator=g)
                ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP] of the bert-base-uncased vocabulary
                return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids),
                        "labels": torch.randint(0, info["num_labels"], (stop - start,), generator=g)}

            return Batches(RANDOM_SAMPLES if limit is None else limit, batch_size, make_random)
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
