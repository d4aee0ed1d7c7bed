"""ANN preparation for SpikedAttention conversion.

One-spike phase coding can only carry layers whose inference-time computation is
a fixed affine map followed by ReLU (plus the softmax attention, which the
converter handles separately). This module turns pre-trained timm Swin and ViT/DeiT
and Hugging Face BERT-family classifiers (BERT, RoBERTa, DistilBERT, ELECTRA) into that form:

* data-dependent LayerNorms become normalisations with frozen statistics that
  fold into the neighbouring weights at inference (``ChannelBatchNorm`` for Swin and ViT,
  MA-BERT's ``RunningAffineNorm``/PowerNorm for BERT);
* GELU/Tanh become ReLU (RoBERTa's and ELECTRA's sentence heads, whose activation is not a
  replaceable module, become a ``ReluClassificationHead``);
* the attention modules are kept as they are (only the fused/SDPA kernels are
  switched to the explicit eager path so q, k, v and the logits are visible).

After ``prepare_*`` the model must be fine-tuned briefly (``finetune``), which
also calibrates the running statistics of the new norms.

``finetune`` checkpoints after every epoch and resumes (the format: :mod:`lava_spikedattn.training`),
and trains data-parallel under ``torchrun`` (its docstring).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
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
from transformers.models.distilbert import modeling_distilbert
from transformers.models.distilbert.modeling_distilbert import (
    DistilBertForSequenceClassification,
    DistilBertSelfAttention,
)
from transformers.models.electra.modeling_electra import (
    ElectraAttention,
    ElectraClassificationHead,
    ElectraForSequenceClassification,
    ElectraIntermediate,
    ElectraSelfAttention,
)
from transformers.models.roberta.modeling_roberta import (
    RobertaAttention,
    RobertaClassificationHead,
    RobertaForSequenceClassification,
    RobertaIntermediate,
    RobertaSelfAttention,
)

from lava_spikedattn import training
from lava_spikedattn.models.folding import UnsupportedModuleError

__all__ = [
    "BERT_FAMILY_MODELS",
    "ChannelBatchNorm",
    "ReluClassificationHead",
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

#: The Hugging Face models ``prepare_bert`` and the BERT family's converter take (a bare
#: ``BertModel`` is prepared, but has no classifier to convert).
BERT_FAMILY_MODELS = (BertModel, BertForSequenceClassification, RobertaForSequenceClassification,
                      DistilBertForSequenceClassification, ElectraForSequenceClassification)
# The feed-forward block of each BERT-family model and the attribute holding its activation.
_FFN_ACTIVATIONS = ((BertIntermediate, "intermediate_act_fn"), (RobertaIntermediate, "intermediate_act_fn"),
                    (ElectraIntermediate, "intermediate_act_fn"), (modeling_distilbert.FFN, "activation"))
# Sentence heads whose activation (RoBERTa: a functional tanh) ``prepare_bert`` replaces with the head.
_NONLINEAR_HEADS = (RobertaClassificationHead, ElectraClassificationHead)


# The sample weight of this rank in the data-parallel training step in progress (1, or 0 for a rank
# that repeats a batch to keep step with the others; see ``finetune``), else empty: while set,
# ChannelBatchNorm and RunningAffineNorm in training mode use the statistics of every rank's batch.
_sync: list[float] = []


def _global_mean(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over dim 0 of every rank's ``values``, their count); differentiable (all-reduce both ways)."""
    total = training.all_reduce_with_grad(torch.cat([values.sum(0), values.new_tensor([values.shape[0]])])
                                          * _sync[-1])
    return total[:-1] / total[-1], total[-1]


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
    a start-up bias; later batches update them with ``momentum`` as usual. In data-parallel
    ``finetune`` the batch statistics are those of every process's batch together.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (..., C) per channel; returns the same shape."""
        flat = x.reshape(-1, x.shape[-1])
        if self.training and _sync:
            return self._synchronised(flat).reshape(x.shape)
        if self.training and self.track_running_stats and self.num_batches_tracked == 0:
            with torch.no_grad():  # the momentum update below then blends the batch with itself
                self.running_mean.copy_(flat.mean(dim=0))
                self.running_var.copy_(flat.var(dim=0))
        return super().forward(flat).reshape(x.shape)

    def _synchronised(self, flat: torch.Tensor) -> torch.Tensor:
        """The training forward with the mean and variance of every rank's batch (data-parallel finetune)."""
        mean, count = _global_mean(flat)
        var = _global_mean((flat - mean).square())[0]
        with torch.no_grad():
            factor = 1.0 if self.num_batches_tracked == 0 else self.momentum
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(var * count / (count - 1).clamp(min=1), factor)
            self.num_batches_tracked += 1
        return (flat - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class RunningAffineNorm(nn.Module):
    """MA-BERT's PowerNorm: per-channel scaling by a running quadratic mean.

    ``y = weight * x / sqrt(phi + eps) + bias`` over the last axis, with ``phi``
    the mean of ``x**2`` over every other axis (no mean subtraction). In training
    mode ``phi`` is the batch's quadratic mean (BatchNorm-style); the first
    training batch sets ``running_phi`` (init 1) outright, later ones update it as
    ``(1 - momentum) * running_phi + momentum * phi``. In eval mode the frozen
    ``running_phi`` is used, so the layer is a fixed per-channel affine map that
    folds into the adjacent Linear layer. In data-parallel ``finetune``, ``phi`` is that of every
    process's batch together.
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
            squares = x.reshape(-1, x.shape[-1]).pow(2)
            phi = _global_mean(squares)[0] if _sync else squares.mean(dim=0)
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

    Replaced: every LayerNorm (``patch_embed.norm``, ``norm_pre``, each block's ``norm1``/``norm2``,
    ``norm``, ``fc_norm``) -> ``ChannelBatchNorm`` (gamma/beta copied, running stats 0/1 until
    calibrated); ``mlp.act`` GELU -> ReLU; an empty ``mlp.norm`` slot gets a
    ``ChannelBatchNorm(hidden)``, as in Swin. ``Attention`` is kept with ``fused_attn`` False (same
    math, explicit logits). Variants the converter cannot run (q/k norms, attention pooling, gated
    MLPs) are refused by name at conversion. The input model is untouched (it can serve as
    distillation teacher).
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"prepare_vit() expects a timm VisionTransformer, got {type(model).__name__}")
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.LayerNorm):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, _bn_from_ln(module))
    for block in model.blocks:
        block.mlp.act = nn.ReLU()
        if isinstance(block.mlp.norm, nn.Identity):
            block.mlp.norm = ChannelBatchNorm(block.mlp.fc1.out_features).to(block.mlp.fc1.weight.device)
        block.attn.fused_attn = False
    check_prepared(model)
    return model


class ReluClassificationHead(nn.Module):
    """A sentence head with ReLU: token 0 → dropout → ``dense`` → ReLU → dropout → ``out_proj``.

    ``prepare_bert`` puts it in place of RoBERTa's ``RobertaClassificationHead`` (whose tanh is a
    function call, not a module that could be swapped) and ELECTRA's ``ElectraClassificationHead``
    (GELU), keeping their ``dense``, ``out_proj`` and dropout, so the state-dict keys are unchanged.
    It maps onto the converted network's ``pooler`` (dense), ``pooler_if`` (ReLU neuron) and
    ``classifier`` (out_proj) as BERT's pooler and classifier do.
    """

    def __init__(self, dense: nn.Linear, out_proj: nn.Linear, dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.dense = dense
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(0.0) if dropout is None else dropout
        self.out_proj = out_proj

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits (batch, labels) of the hidden states ``features`` (batch, N, hidden)."""
        x = self.activation(self.dense(self.dropout(features[:, 0])))
        return self.out_proj(self.dropout(x))


def prepare_bert(model: nn.Module) -> nn.Module:
    """Return a deep copy of a HF BERT-family model with foldable norms and ReLU (MA-BERT recipe).

    Takes ``BertModel`` / ``BertForSequenceClassification`` and the RoBERTa, DistilBERT and
    ELECTRA sequence classifiers (``BERT_FAMILY_MODELS``). Every ``nn.LayerNorm`` (embedding
    norm, each layer's two post-norms) -> ``RunningAffineNorm`` (gamma/beta copied,
    ``running_phi`` = 1 until calibrated); the feed-forward activation (``intermediate_act_fn``,
    DistilBERT's ``ffn.activation``) GELU -> ReLU, and ``config.hidden_act`` (DistilBERT:
    ``config.activation``) = "relu"; BERT's ``pooler.activation`` Tanh -> ReLU; RoBERTa's and
    ELECTRA's sentence head -> ``ReluClassificationHead`` (DistilBERT's head already applies
    ReLU). Attention and HF's padding mask are unchanged; the attention implementation is set to
    "eager" (same math as SDPA) so the additive mask and explicit logits are used.
    Raises ``TypeError`` naming the supported classes for any other model.
    """
    if not isinstance(model, BERT_FAMILY_MODELS):
        raise TypeError(f"prepare_bert() expects one of the transformers models "
                        f"{', '.join(cls.__name__ for cls in BERT_FAMILY_MODELS)}, got {type(model).__name__}")
    model = copy.deepcopy(model)
    if isinstance(model, DistilBertForSequenceClassification):
        model.config.activation = "relu"
    else:
        model.config.hidden_act = "relu"
    model.set_attn_implementation("eager")
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.LayerNorm):
            parent_name, _, attr = name.rpartition(".")
            norm = _affine_from(RunningAffineNorm(module.normalized_shape[-1]), module)
            setattr(model.get_submodule(parent_name), attr, norm)
        for block, attr in _FFN_ACTIVATIONS:
            if isinstance(module, block):
                setattr(module, attr, nn.ReLU())
    bert = model if isinstance(model, BertModel) else getattr(model, "bert", None)  # only BERT has a pooler
    if bert is not None and bert.pooler is not None:
        bert.pooler.activation = nn.ReLU()
    head = getattr(model, "classifier", None)
    if isinstance(head, _NONLINEAR_HEADS):
        model.classifier = ReluClassificationHead(head.dense, head.out_proj, head.dropout)
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
    _Preparation((RobertaForSequenceClassification,), "prepare_bert()", "RunningAffineNorm",
                 (RobertaAttention, RobertaSelfAttention), "transformers RobertaSelfAttention"),
    _Preparation((DistilBertForSequenceClassification,), "prepare_bert()", "RunningAffineNorm",
                 (DistilBertSelfAttention,), "transformers DistilBertSelfAttention"),
    _Preparation((ElectraForSequenceClassification,), "prepare_bert()", "RunningAffineNorm",
                 (ElectraAttention, ElectraSelfAttention), "transformers ElectraSelfAttention"),
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
        if isinstance(module, _NONLINEAR_HEADS):
            raise UnsupportedModuleError(
                f"{path}: {cls} applies tanh/GELU, which one-spike phase coding does not support; run "
                f"{family.prepare} or replace it by ann.ReluClassificationHead(dense, out_proj)"
            )
        for block, attr in _FFN_ACTIVATIONS:
            act = getattr(module, attr) if isinstance(module, block) else None
            if act is not None and not isinstance(act, nn.ReLU):
                act_name = type(act).__name__ if isinstance(act, nn.Module) else getattr(act, "__name__", repr(act))
                raise UnsupportedModuleError(
                    f"{path}.{attr}: {act_name} is not supported by one-spike phase coding; "
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
    after_epoch: Callable[[int], None] | None = None,
    cosine: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resumed: Callable[[int], None] | None = None,
) -> nn.Module:
    """Fine-tune (optionally distil) a prepared model; also calibrates its norm statistics.

    ``loader`` yields ``(x, y)`` (vision: logits = ``student(x)``, shape (B, classes))
    or dicts of tokenizer tensors plus "labels" (BERT: ``student(**inputs).logits``).
    Loss: cross-entropy to the labels without a teacher; with one,
    ``alpha * KL(softmax(t/T) || softmax(s/T)) * T**2 + (1 - alpha) * CE``, the
    teacher run in eval mode under no_grad. AdamW; runs ``epochs`` passes or stops
    after ``max_steps`` optimiser steps; ``after_epoch(epoch)`` is called after each pass, a
    partial last one included (e.g. to recalibrate). ``cosine``: the learning rate decays from
    ``lr`` to 0 over the run, else it stays constant. Returns the student in eval mode.

    ``checkpoint``: a folder written after every epoch (format: :mod:`lava_spikedattn.training`); if it
    holds a checkpoint, the run resumes after its last epoch (bit for bit as if uninterrupted) and
    ``resumed(epochs_done)`` is called once the state is restored (e.g. to recalibrate). ``ValueError``
    if it was written by another run (settings, parameter shapes, starting weights or process count differ).

    Data-parallel under ``torch.distributed`` with N > 1 ranks: every rank passes its own batches
    (``distributed.shard``); each optimiser step takes one batch per rank and averages the gradients
    weighted by batch size (a rank out of batches repeats its last with weight 0), and the ChannelBatchNorm
    and RunningAffineNorm statistics are those of all the step's batches: one process on the ranks'
    batches concatenated takes the same steps, up to float rounding (other BatchNorms are refused).
    Rank 0's weights are broadcast first (the teacher must be the same everywhere), so every rank ends with
    the same weights; rank 0 alone prints and writes the checkpoint. Dropout and drop path draw from each
    rank's own generator, so they differ from one process's draws.
    """
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    rank, world_size = training.world()
    if world_size > 1:
        _check_synchronisable(student)
        for tensor in student.state_dict().values():
            dist.broadcast(tensor, 0)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    per_epoch = training.steps_per_epoch(loader, world_size, device)
    total = None if per_epoch is None else epochs * per_epoch
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    if cosine and total is None:
        raise ValueError("a cosine schedule needs the number of steps: give a sized loader or max_steps")
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / total)))
                if cosine else None)
    settings = dict(epochs=epochs, lr=lr, temperature=temperature, alpha=alpha, max_steps=max_steps, cosine=cosine,
                    teacher=teacher is not None, steps_per_epoch=per_epoch, processes=world_size)
    folder = None if checkpoint is None else Path(checkpoint)
    start = training.state_sha256(student) if folder is not None else ""
    done = step = 0
    if folder is not None and (folder / training.CHECKPOINT_RECORD).exists():
        done, step, rng = training.resume(folder, settings, start, student, optimizer, schedule)
        if resumed is not None:
            resumed(done)
        training.set_rng_state(rng)  # after ``resumed``, which may draw from the generators
    with tqdm(total=total, initial=step, desc="finetune", disable=not progress or rank != 0) as bar:
        for epoch in range(done, epochs):
            if max_steps is not None and step >= max_steps:
                break
            for batch, weight in _step_batches(loader, world_size, device):
                if max_steps is not None and step >= max_steps:
                    break
                args, kwargs, labels = _split_batch(batch, device)
                with _synchronised(weight) if world_size > 1 else contextlib.nullcontext():
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
                if world_size > 1:  # the sum of the samples' losses (0 for a repeated batch), see average_gradients
                    (loss * (weight * labels.shape[0])).backward()
                    training.average_gradients(parameters, weight * labels.shape[0])
                else:
                    loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if after_epoch is not None:
                after_epoch(epoch)
            if folder is not None:
                training.save_checkpoint(folder, student, optimizer, schedule, dict(
                    epochs_done=epoch + 1, step=step, settings=settings, start_sha256=start))
    return student.eval()


# --- data-parallel steps ---------------------------------------------------------------------------------
def _step_batches(loader: Iterable, world_size: int, device: torch.device | str) -> Iterator[tuple[Any, float]]:
    """(batch, sample weight) of each optimiser step of one epoch on this rank: its own batches, weight 1;
    with N > 1 ranks, while another rank has batches left, its last one again with weight 0."""
    if world_size == 1:
        yield from ((batch, 1.0) for batch in loader)
        return
    batches, previous = iter(loader), None
    while True:
        batch = next(batches, None)
        ranks_with_batch = training.all_reduce_sum(float(batch is not None), device)
        if ranks_with_batch == 0:
            return
        if previous is None and ranks_with_batch < world_size:
            raise ValueError(f"only {ranks_with_batch:g} of {world_size} processes got a training batch: use more "
                             f"batches or fewer processes")
        previous = previous if batch is None else batch
        yield previous, 0.0 if batch is None else 1.0


@contextlib.contextmanager
def _synchronised(weight: float) -> Iterator[None]:
    """Norm statistics over every rank's batch while the student runs (``_sync``)."""
    _sync.append(weight)
    try:
        yield
    finally:
        _sync.pop()


def _check_synchronisable(student: nn.Module) -> None:
    """Refuse BatchNorms whose statistics data-parallel ``finetune`` would not synchronise."""
    for name, module in student.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, ChannelBatchNorm):
            raise ValueError(f"student.{name}: {type(module).__name__} would normalise with each process's own "
                             f"batch statistics in data-parallel fine-tuning; only ChannelBatchNorm and "
                             f"RunningAffineNorm are synchronised: prepare the model, or fine-tune in one process")
