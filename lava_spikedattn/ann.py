"""ANN preparation for SpikedAttention conversion.

One-spike phase coding can only carry layers whose inference-time computation is
a fixed affine map followed by ReLU (plus the softmax attention, which the
converter handles separately). This module turns pre-trained timm Swin and ViT/DeiT
and Hugging Face BERT models into that form:

* data-dependent LayerNorms become normalisations with frozen statistics that
  fold into the neighbouring weights at inference (``ChannelBatchNorm`` for Swin and ViT,
  MA-BERT's ``RunningAffineNorm``/PowerNorm for BERT);
* GELU/Tanh become ReLU;
* the attention modules are kept as they are (only the fused/SDPA kernels are
  switched to the explicit eager path so q, k, v and the logits are visible).

After ``prepare_*`` the model must be fine-tuned briefly (``finetune``), which
also calibrates the running statistics of the new norms.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging, SwinTransformer, WindowAttention
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn
from tqdm.auto import tqdm
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertForSequenceClassification,
    BertIntermediate,
    BertModel,
    BertSelfAttention,
)

__all__ = [
    "ChannelBatchNorm",
    "RunningAffineNorm",
    "UnsupportedModuleError",
    "check_prepared",
    "finetune",
    "prepare_bert",
    "prepare_swin",
    "prepare_vit",
]

# Norms whose statistics are computed per token at inference: not foldable into weights.
_UNFOLDABLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# Modules defined in these modules are activation functions (torch, timm and HF flavours).
_ACTIVATION_MODULES = frozenset(
    {
        "torch.nn.modules.activation",
        "timm.layers.activations",
        "timm.layers.activations_me",
        "transformers.activations",
    }
)


class UnsupportedModuleError(ValueError):
    """A prepared model still contains a module that one-spike phase coding cannot convert."""


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last (channel) axis of an input of any rank.

    timm's Swin keeps activations channel-last ((B, H, W, C) in the stages,
    (B, N, C) in the blocks' MLP), so the input is viewed as (-1, C) and passed to
    ``nn.BatchNorm1d``: statistics are taken over every axis except the last.
    It subclasses ``nn.BatchNorm1d`` so the state (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``eps``) is that of an ordinary BatchNorm
    and folds into the adjacent Linear layer with the usual formula. In eval mode
    ``y = weight * (x - running_mean) / sqrt(running_var + eps) + bias``.
    The first training batch sets the running statistics outright (instead of
    blending it into the 0/1 init), so a short fine-tune calibrates them without
    a start-up bias; later batches update them with ``momentum`` as usual.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (..., C) per channel; returns the same shape."""
        flat = x.reshape(-1, x.shape[-1])
        if self.training and self.track_running_stats and self.num_batches_tracked == 0:
            with torch.no_grad():  # the momentum update below then blends the batch with itself
                self.running_mean.copy_(flat.mean(dim=0))
                self.running_var.copy_(flat.var(dim=0))
        return super().forward(flat).reshape(x.shape)


class RunningAffineNorm(nn.Module):
    """MA-BERT's PowerNorm: per-channel scaling by a running quadratic mean.

    ``y = weight * x / sqrt(phi + eps) + bias`` over the last axis, with ``phi``
    the mean of ``x**2`` over every other axis (no mean subtraction). In training
    mode ``phi`` is the batch's quadratic mean (BatchNorm-style); the first
    training batch sets ``running_phi`` (init 1) outright, later ones update it as
    ``(1 - momentum) * running_phi + momentum * phi``. In eval mode the frozen
    ``running_phi`` is used, so the layer is a fixed per-channel affine map that
    folds into the adjacent Linear layer.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_phi", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (..., C) per channel; returns the same shape."""
        if self.training:
            phi = x.reshape(-1, x.shape[-1]).pow(2).mean(dim=0)
            with torch.no_grad():
                self.running_phi.lerp_(phi, 1.0 if self.num_batches_tracked == 0 else self.momentum)
                self.num_batches_tracked += 1
        else:
            phi = self.running_phi
        return self.weight * x * torch.rsqrt(phi + self.eps) + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _affine_from(norm: nn.Module, layer_norm: nn.LayerNorm) -> nn.Module:
    """Copy the LayerNorm's affine parameters (gamma, beta) into ``norm``; nothing else."""
    with torch.no_grad():
        if layer_norm.weight is not None:
            norm.to(layer_norm.weight.device).weight.copy_(layer_norm.weight)
        if layer_norm.bias is not None:
            norm.bias.copy_(layer_norm.bias)
    return norm


def _bn_from_ln(layer_norm: nn.LayerNorm) -> ChannelBatchNorm:
    return _affine_from(ChannelBatchNorm(layer_norm.normalized_shape[-1]), layer_norm)


def prepare_swin(model: SwinTransformer) -> nn.Module:
    """Return a deep copy of a timm Swin with foldable norms and ReLU.

    Replaced: ``patch_embed.norm``, every block's ``norm1``/``norm2``, every
    ``PatchMerging`` ``downsample.norm`` (4C channels) and the final ``norm``
    (LayerNorm -> ``ChannelBatchNorm``, gamma/beta copied from the LayerNorm,
    running stats 0/1 until calibrated); ``mlp.act`` GELU -> ReLU; the empty
    ``mlp.norm`` slot (after the activation) gets a ``ChannelBatchNorm(hidden)``.
    ``WindowAttention`` (softmax, relative position bias, shifted-window mask) is
    kept; only ``fused_attn`` is set False (same math) so the explicit path runs.
    The input model is untouched (it can serve as distillation teacher).
    """
    if not isinstance(model, SwinTransformer):
        raise TypeError(f"prepare_swin() expects a timm SwinTransformer, got {type(model).__name__}")
    model = copy.deepcopy(model)
    if isinstance(model.patch_embed.norm, nn.LayerNorm):
        model.patch_embed.norm = _bn_from_ln(model.patch_embed.norm)
    for stage in model.layers:
        if isinstance(stage.downsample, PatchMerging):
            stage.downsample.norm = _bn_from_ln(stage.downsample.norm)
        for block in stage.blocks:
            block.norm1 = _bn_from_ln(block.norm1)
            block.norm2 = _bn_from_ln(block.norm2)
            block.mlp.act = nn.ReLU()
            block.mlp.norm = ChannelBatchNorm(block.mlp.fc1.out_features).to(block.mlp.fc1.weight.device)
            block.attn.fused_attn = False
    if isinstance(model.norm, nn.LayerNorm):
        model.norm = _bn_from_ln(model.norm)
    check_prepared(model)
    return model


def prepare_vit(model: VisionTransformer) -> nn.Module:
    """Return a deep copy of a timm ViT/DeiT with foldable norms and ReLU (as ``prepare_swin``).

    Replaced: every LayerNorm of the embedding (``patch_embed.norm``, ``norm_pre``), of each
    block (``norm1``/``norm2``) and of the head (``norm``, ``fc_norm``) -> ``ChannelBatchNorm``
    (gamma/beta copied, running stats 0/1 until calibrated); ``mlp.act`` GELU -> ReLU; the empty
    ``mlp.norm`` slot gets a ``ChannelBatchNorm(hidden)``, as in Swin. ``Attention`` is kept with
    ``fused_attn`` False (same math, explicit logits). Variants the converter cannot run (register
    tokens are fine; q/k norms, attention pooling, gated MLPs are not) are refused at conversion.
    The input model is untouched (it can serve as distillation teacher).
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"prepare_vit() expects a timm VisionTransformer, got {type(model).__name__}")
    model = copy.deepcopy(model)
    for owner, attr in ((model.patch_embed, "norm"), (model, "norm_pre"), (model, "norm"), (model, "fc_norm")):
        if isinstance(getattr(owner, attr), nn.LayerNorm):
            setattr(owner, attr, _bn_from_ln(getattr(owner, attr)))
    for block in model.blocks:
        block.norm1 = _bn_from_ln(block.norm1)
        block.norm2 = _bn_from_ln(block.norm2)
        block.mlp.act = nn.ReLU()
        block.mlp.norm = ChannelBatchNorm(block.mlp.fc1.out_features).to(block.mlp.fc1.weight.device)
        block.attn.fused_attn = False
    check_prepared(model)
    return model


def prepare_bert(model: BertModel | BertForSequenceClassification) -> nn.Module:
    """Return a deep copy of a HF BERT with foldable norms and ReLU (MA-BERT recipe).

    Every LayerNorm (``embeddings.LayerNorm`` and each layer's
    ``attention.output.LayerNorm`` / ``output.LayerNorm``) -> ``RunningAffineNorm``
    (gamma/beta copied, ``running_phi`` = 1 until calibrated); each
    ``intermediate.intermediate_act_fn`` GELU -> ReLU and ``config.hidden_act =
    "relu"``; ``pooler.activation`` Tanh -> ReLU. Attention and HF's padding mask
    are unchanged; the attention implementation is set to "eager" (same math as
    SDPA) so the additive mask and explicit logits are used.
    """
    if not isinstance(model, (BertModel, BertForSequenceClassification)):
        raise TypeError(
            f"prepare_bert() expects a transformers BertModel or BertForSequenceClassification, "
            f"got {type(model).__name__}"
        )
    model = copy.deepcopy(model)
    model.config.hidden_act = "relu"
    model.set_attn_implementation("eager")
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.LayerNorm):
            parent_name, _, attr = name.rpartition(".")
            norm = _affine_from(RunningAffineNorm(module.normalized_shape[-1]), module)
            setattr(model.get_submodule(parent_name), attr, norm)
        elif isinstance(module, BertIntermediate):
            module.intermediate_act_fn = nn.ReLU()
    bert = model if isinstance(model, BertModel) else model.bert
    if bert.pooler is not None:
        bert.pooler.activation = nn.ReLU()
    check_prepared(model)
    return model


@dataclass(frozen=True)
class _Preparation:
    """What ``check_prepared`` tells the user of one model family: the function that prepares it,
    the norm it uses instead of LayerNorm, and the attention modules the converter knows."""

    models: tuple[type, ...]
    prepare: str
    norm: str
    attention: tuple[type, ...]
    attention_name: str


_PREPARATIONS = (
    _Preparation((SwinTransformer,), "prepare_swin()", "ChannelBatchNorm", (WindowAttention,), "timm WindowAttention"),
    _Preparation((VisionTransformer,), "prepare_vit()", "ChannelBatchNorm", (Attention,), "timm Attention"),
    _Preparation((BertModel, BertForSequenceClassification), "prepare_bert()", "RunningAffineNorm",
                 (BertAttention, BertSelfAttention), "transformers BertSelfAttention"),
)


def check_prepared(model: nn.Module) -> None:
    """Raise if ``model`` contains anything one-spike phase coding cannot convert.

    Walks every submodule and raises ``UnsupportedModuleError`` (naming the dotted
    path, e.g. ``model.layers.0.blocks.1.mlp.act``, and the fix) on: a LayerNorm
    (or other per-token norm) left in place, an activation other than ReLU (the
    attention's own softmax excepted), an attention class the family's converter does not
    know. Raises ``TypeError`` for a model of no supported family.
    """
    family = next((entry for entry in _PREPARATIONS if isinstance(model, entry.models)), None)
    if family is None:
        supported = ", ".join(cls.__name__ for entry in _PREPARATIONS for cls in entry.models)
        raise TypeError(f"{type(model).__name__} is not a supported model family; supported: {supported}")
    attention_paths = set()
    for name, module in model.named_modules():
        path = f"model.{name}" if name else "model"
        cls = type(module).__name__
        if isinstance(module, _UNFOLDABLE_NORMS):
            raise UnsupportedModuleError(
                f"{path}: {cls} computes per-token statistics at inference, which cannot be folded into "
                f"weights for one-spike phase coding; run {family.prepare} or replace it by {family.norm}"
            )
        if isinstance(module, nn.MultiheadAttention) or "attention" in cls.lower():
            if not isinstance(module, family.attention):
                raise UnsupportedModuleError(
                    f"{path}: attention class {cls} is not supported by the SpikedAttention converter; "
                    f"this model family needs {family.attention_name}"
                )
            attention_paths.add(name)
            continue
        if isinstance(module, BertIntermediate) and not isinstance(module.intermediate_act_fn, nn.ReLU):
            act = module.intermediate_act_fn
            act_name = type(act).__name__ if isinstance(act, nn.Module) else getattr(act, "__name__", repr(act))
            raise UnsupportedModuleError(
                f"{path}.intermediate_act_fn: {act_name} is not supported by one-spike phase coding; "
                f"run {family.prepare} or replace it by nn.ReLU"
            )
        if type(module).__module__ in _ACTIVATION_MODULES and type(module) is not nn.ReLU:
            parent = name.rpartition(".")[0]
            if isinstance(module, nn.Softmax) and parent in attention_paths:
                continue  # the attention's own softmax, converted by SpikedAttention
            raise UnsupportedModuleError(
                f"{path}: {cls} is not supported by one-spike phase coding; run {family.prepare} or replace it "
                f"by nn.ReLU"
            )


def _logits(output: Any) -> torch.Tensor:
    """Logits of a timm model (a tensor) or of a HF model (an output with ``.logits``)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def _split_batch(batch: Any, device: torch.device | str) -> tuple[tuple, dict, torch.Tensor]:
    """(args, kwargs, labels) on ``device`` from an ``(x, y)`` tuple or a dict with "labels"."""
    if isinstance(batch, Mapping):
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        labels = inputs.pop("labels")
        return (), inputs, labels
    x, y = batch
    return (x.to(device),), {}, y.to(device)


def finetune(
    student: nn.Module,
    loader: Iterable,
    teacher: nn.Module | None = None,
    *,
    epochs: int = 1,
    lr: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.5,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> nn.Module:
    """Fine-tune (optionally distil) a prepared model; also calibrates its norm statistics.

    ``loader`` yields ``(x, y)`` (vision: logits = ``student(x)``, shape (B, classes))
    or dicts of tokenizer tensors plus "labels" (BERT: ``student(**inputs).logits``).
    Loss: cross-entropy to the labels without a teacher; with one,
    ``alpha * KL(softmax(t/T) || softmax(s/T)) * T**2 + (1 - alpha) * CE``, the
    teacher run in eval mode under no_grad. AdamW; runs ``epochs`` passes or stops
    after ``max_steps`` optimiser steps. Returns the student in eval mode.
    """
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    try:
        total = epochs * len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    step = 0
    with tqdm(total=total, desc="finetune", disable=not progress) as bar:
        for _ in range(epochs):
            for batch in loader:
                if max_steps is not None and step >= max_steps:
                    break
                args, kwargs, labels = _split_batch(batch, device)
                logits = _logits(student(*args, **kwargs))
                loss = F.cross_entropy(logits, labels)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = _logits(teacher(*args, **kwargs))
                    kd = F.kl_div(
                        F.log_softmax(logits / temperature, dim=-1),
                        F.log_softmax(teacher_logits / temperature, dim=-1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    loss = alpha * kd * temperature**2 + (1.0 - alpha) * loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return student.eval()
