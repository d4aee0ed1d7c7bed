"""Tiny models shared by the test modules: timm Swin and Hugging Face BERT configurations small
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
    model = prepared_swin(config).train()
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
