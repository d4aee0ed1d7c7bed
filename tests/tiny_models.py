"""Tiny models shared by the test modules: timm Swin and Hugging Face BERT-family configurations small
enough for the reference engines and Lava, their preparation and brief training, and the tiny
Swin of the command-line tests. The fixtures built from them are in conftest.py, the data they
train on in synthetic.py.

Each factory seeds torch's global generator itself (``torch.manual_seed(seed)`` right before the
model is built), so a model depends on its arguments only, not on what ran before.
"""

import json
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer

from lava_spikedattn.ann import prepare_bert, prepare_swin
from lava_spikedattn.coding import PhaseCode

PAPER_CODE = PhaseCode(1.15, 40)  # the paper's Swin setting, exact convention
PAPER_CODE_OFFICIAL = PhaseCode(1.15, 40, "official")

# The tiny Swin of the command-line tests (tests/test_cli.py, tests/test_cli_inputs.py): the
# Swin-T name with overrides, tiny_swin_config()'s architecture (16x16 images, 2 stages, 10 classes).
SWIN = ["--model", "swin_tiny_patch4_window7_224", "--num-classes", "10", "--img-size", "16", "--model-kwargs",
        json.dumps({"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4]})]


def tiny_swin_config(img_size: int = 16, embed_dim: int = 16, in_chans: int = 3, num_heads: tuple = (2, 4),
                     num_classes: int = 10) -> dict:
    """Keyword arguments of a timm ``SwinTransformer`` with two stages of two blocks (patch 2,
    4x4 windows, the second block of each stage shifted, patch merging between the stages)."""
    return dict(img_size=img_size, patch_size=2, in_chans=in_chans, window_size=4, embed_dim=embed_dim,
                depths=(2, 2), num_heads=num_heads, num_classes=num_classes)


def prepared_swin(config: dict, seed: int = 0) -> torch.nn.Module:
    """``prepare_swin`` of a random ``SwinTransformer(**config)`` (weights drawn after
    ``torch.manual_seed(seed)``), in the mode ``prepare_swin`` leaves it."""
    torch.manual_seed(seed)
    return prepare_swin(SwinTransformer(**config))


def train_tiny_swin(config: dict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float) -> torch.nn.Module:
    """``prepared_swin(config)`` trained one AdamW step (cross entropy) per ``(x, y)`` batch, in
    eval mode. A few steps give the random Swin real decision margins, and train mode sets the
    BatchNorm statistics. ``batches`` may be lazy; it must not draw from torch's global generator
    (the training's drop path does)."""
    return _train(prepared_swin(config), batches, lr)


def _train(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float) -> torch.nn.Module:
    """``model`` trained (train mode) one AdamW step of cross entropy per ``(x, y)`` batch; eval mode."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def tiny_bert_config(vocab_size: int = 50, hidden_size: int = 32, num_hidden_layers: int = 2,
                     num_attention_heads: int = 2, max_position_embeddings: int = 16, num_labels: int = 2) -> dict:
    """Keyword arguments of a Hugging Face ``BertConfig``; the MLP is twice the hidden size."""
    return dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads, intermediate_size=2 * hidden_size,
                max_position_embeddings=max_position_embeddings, num_labels=num_labels)


def prepared_bert(config: dict, seed: int = 0) -> torch.nn.Module:
    """``prepare_bert`` of a random ``BertForSequenceClassification(BertConfig(**config))``
    (weights drawn after ``torch.manual_seed(seed)``), in the mode ``prepare_bert`` leaves it."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return prepare_bert(BertForSequenceClassification(BertConfig(**config)))


# --- the rest of the BERT family: RoBERTa, DistilBERT, ELECTRA ------------------------------------------
def tiny_roberta_config(vocab_size: int = 60, hidden_size: int = 32, num_hidden_layers: int = 2,
                        num_attention_heads: int = 2, max_position_embeddings: int = 16, num_labels: int = 2,
                        pad_token_id: int = 1) -> dict:
    """Keyword arguments of a Hugging Face ``RobertaConfig`` (as tiny_bert_config, one token type
    as roberta-base; positions count from ``pad_token_id`` + 1, so 16 positions hold 14 tokens)."""
    return dict(tiny_bert_config(vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
                                 max_position_embeddings, num_labels), type_vocab_size=1, pad_token_id=pad_token_id)


def tiny_distilbert_config(vocab_size: int = 60, hidden_size: int = 32, num_hidden_layers: int = 2,
                           num_attention_heads: int = 2, max_position_embeddings: int = 16,
                           num_labels: int = 2) -> dict:
    """Keyword arguments of a Hugging Face ``DistilBertConfig`` (its names: dim, n_layers, ...)."""
    return dict(vocab_size=vocab_size, dim=hidden_size, n_layers=num_hidden_layers, n_heads=num_attention_heads,
                hidden_dim=2 * hidden_size, max_position_embeddings=max_position_embeddings, num_labels=num_labels)


def tiny_electra_config(vocab_size: int = 60, hidden_size: int = 32, num_hidden_layers: int = 2,
                        num_attention_heads: int = 2, max_position_embeddings: int = 16, num_labels: int = 2,
                        embedding_size: int = 16) -> dict:
    """Keyword arguments of a Hugging Face ``ElectraConfig``; ``embedding_size`` ≠ ``hidden_size``
    gives the model its ``embeddings_project`` Linear."""
    return dict(tiny_bert_config(vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
                                 max_position_embeddings, num_labels), embedding_size=embedding_size)


#: Architecture → (tiny config factory, transformers classifier class name).
TINY_BERT_VARIANTS = {"roberta": (tiny_roberta_config, "RobertaForSequenceClassification"),
                      "distilbert": (tiny_distilbert_config, "DistilBertForSequenceClassification"),
                      "electra": (tiny_electra_config, "ElectraForSequenceClassification")}


def bert_variant(arch: str, config: dict | None = None, seed: int = 0) -> torch.nn.Module:
    """A random (unprepared) ``arch`` classifier (a key of TINY_BERT_VARIANTS) of ``config``
    (default: the tiny one), weights drawn after ``torch.manual_seed(seed)``, in eval mode."""
    import transformers

    factory, class_name = TINY_BERT_VARIANTS[arch]
    cls = getattr(transformers, class_name)
    torch.manual_seed(seed)
    return cls(cls.config_class(**(factory() if config is None else config))).eval()


def prepared_bert_variant(arch: str, config: dict | None = None, seed: int = 0) -> torch.nn.Module:
    """``prepare_bert`` of ``bert_variant(arch, config, seed)``."""
    return prepare_bert(bert_variant(arch, config, seed))


def tiny_vit_config() -> dict:
    """Keyword arguments of a timm ViT/DeiT for 16x16 grey images, 4 classes: 4x4 patches (16
    tokens + the prefix), width 16, 2 blocks of 2 heads."""
    return dict(img_size=16, patch_size=4, in_chans=1, num_classes=4, embed_dim=16, depth=2, num_heads=2)


def prepared_vit(name: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """``prepare_vit`` of a random ``timm.create_model(name, **config)`` (weights drawn after
    ``torch.manual_seed(seed)``), in the mode ``prepare_vit`` leaves it."""
    import timm

    from lava_spikedattn.ann import prepare_vit

    torch.manual_seed(seed)
    return prepare_vit(timm.create_model(name, pretrained=False, **config))


def train_tiny_vit(config: dict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float) -> torch.nn.Module:
    """``prepared_vit("vit_tiny_patch16_224", config)`` trained one AdamW step (cross entropy) per
    ``(x, y)`` batch, in eval mode (train mode sets the BatchNorm statistics)."""
    return _train(prepared_vit("vit_tiny_patch16_224", config), batches, lr)
