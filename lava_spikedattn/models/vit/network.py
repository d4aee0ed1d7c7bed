"""timm Vision Transformer (ViT, DeiT, DeiT distilled) → SpikedAttention network.

A ViT block is a Swin block whose one window holds every token (no shift, no relative-position
bias), so the blocks are Swin's (``swin.network.WindowedTransformer``): the token stream is a
(batch, 1, N, C) grid, N = prefix tokens (class, distillation, register) + patches, and each block
has the same neuron layers as a Swin block in either convention (see ``swin/network.py``):
[norm1_if], q_if/k_if/v_if, stdp_qk, softmax_if, stdp_av, attn_if, [norm2_if], mlp_act,
[mlp_if], final_if. ``prepare_vit`` puts a BatchNorm after the MLP activation, as in Swin.

**Input.** ``patch_embed_if`` (convert neuron, per token) integrates the patch embedding of the
bit-serial coded image. The prefix tokens and the learned absolute position embedding are
constants: both are **folded into that layer's bias**, which is per token ((N, C): the class
token plus its position for the prefix rows, the conv bias plus the patch's position for the
others; ``patch_embed.norm`` and ``norm_pre`` folded into weight and bias). So the whole input,
class token included, is one spiking layer driven by the image, nothing is added on the host,
and a chip would hold the position embedding as a bias like any other (a host addition would
need a second input stream per token). Prefix rows read no pixel: their synapses see an input
that never spikes, and like every first-layer bias theirs integrates to b·(1 − 2^-T) (spec §1.4).

**Head.** The final norm (``norm``, and ``fc_norm`` of average pooling: both per-channel affine
maps, which commute with selecting or averaging tokens) folds into the classifier (exact) or is
a BatchNorm neuron ``last_norm_if`` on the stream (official). ``global_pool="token"``: the
classifier ``last_fc`` reads the class token's spikes directly (no pooling neuron); a distilled
DeiT averages its two heads in eval mode, one classifier over the class and distillation tokens
with weight [W_cls, W_dist]/2. ``global_pool="avg"``: ``pool_if`` (per channel) on the mean of
the patch tokens (prefix tokens too with ``pool_include_prefix``), then the classifier.

Layers: exact 7·depth + 2 (+1 with average pooling), official 10·depth + 3 (+1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, Mlp, PatchEmbed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from lava_spikedattn.coding import CONVENTIONS, PhaseCode
from lava_spikedattn.energy import Synapse
from lava_spikedattn.engines import Engine
from lava_spikedattn.layers import LayerGraph, LayerSpec
from lava_spikedattn.models.folding import fold_linear
from lava_spikedattn.models.swin.network import (
    BlockGeometry,
    WindowedTransformer,
    batchnorm_affine,
    block_layers,
    block_synapses,
    block_weight_shapes,
    diagonal,
    fold_block,
    patchify,
)

__all__ = ["SpikingViT", "ViTConfig", "embed_patches", "fold_vit", "vit_layer_graph", "vit_weight_shapes"]

POOLS = ("token", "avg")


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters that rebuild a converted ViT (timm's names where timm has one).

    ``prefix_tokens``: class, distillation and register tokens before the patches;
    ``head_tokens``: tokens the classifier reads with token pooling (2 for a distilled DeiT);
    ``pool_prefix``: average pooling includes the prefix tokens.
    """

    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    num_classes: int
    prefix_tokens: int
    global_pool: str
    head_tokens: int
    pool_prefix: bool

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens(self) -> int:
        """N: prefix tokens + patches."""
        return self.prefix_tokens + self.patches

    @property
    def pooled(self) -> range:
        """Tokens the average pooling averages."""
        return range(0 if self.pool_prefix else self.prefix_tokens, self.tokens)

    def blocks(self) -> list[BlockGeometry]:
        """Each block as a Swin block with one window over the (1, N) token grid."""
        return [BlockGeometry(prefix=f"blocks.{i}", dim=self.embed_dim, heads=self.num_heads, head_dim=self.head_dim,
                              hidden=self.mlp_hidden, resolution=(1, self.tokens), window=(1, self.tokens),
                              shift=(0, 0)) for i in range(self.depth)]

    @classmethod
    def from_json(cls, arch: Mapping[str, Any]) -> ViTConfig:
        """Validated config from ``config.json``'s architecture; ``ValueError`` naming the field."""
        if not isinstance(arch, Mapping):
            raise ValueError(f"architecture must be an object, got {type(arch).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in arch]
        if missing:
            raise ValueError(f"architecture is missing {', '.join(repr(m) for m in missing)}")
        for key in ("in_chans", "embed_dim", "depth", "num_heads", "head_dim", "mlp_hidden", "num_classes",
                    "head_tokens"):
            if not _positive_int(arch[key]):
                raise ValueError(f"architecture {key!r} must be a positive integer, got {arch[key]!r}")
        if not _count(arch["prefix_tokens"]):
            raise ValueError(f"architecture 'prefix_tokens' must be an integer >= 0, got {arch['prefix_tokens']!r}")
        if arch["global_pool"] not in POOLS:
            raise ValueError(f"architecture 'global_pool' must be one of {POOLS}, got {arch['global_pool']!r}")
        if not isinstance(arch["pool_prefix"], bool):
            raise ValueError(f"architecture 'pool_prefix' must be true or false, got {arch['pool_prefix']!r}")
        pairs = {}
        for key in ("img_size", "patch_size"):
            value = arch[key]
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(v) for v in value)):
                raise ValueError(f"architecture {key!r} must be two positive integers, got {value!r}")
            pairs[key] = (int(value[0]), int(value[1]))
        config = cls(**{**{name: arch[name] for name in names}, **pairs})
        if any(i % p for i, p in zip(config.img_size, config.patch_size)):
            raise ValueError(f"img_size {config.img_size} must be a multiple of patch_size {config.patch_size}")
        if config.global_pool == "token" and config.head_tokens > config.prefix_tokens:
            raise ValueError(f"token pooling reads {config.head_tokens} prefix token(s), the model has "
                             f"{config.prefix_tokens}")
        return config

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["img_size"], out["patch_size"] = list(self.img_size), list(self.patch_size)
        return out

    @classmethod
    def from_model(cls, model: VisionTransformer) -> ViTConfig:
        """Config of a timm ``VisionTransformer``; ``ValueError`` naming what the converter cannot run."""
        pe = model.patch_embed
        if (getattr(model, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", False)
                or getattr(pe, "dynamic_img_pad", False)):
            raise ValueError("ViT with a dynamic image size is not supported: build it with a fixed img_size")
        if type(pe) is not PatchEmbed or not pe.flatten:
            raise ValueError(f"the ViT patch embedding must be timm's PatchEmbed (a flattened token sequence), got "
                             f"{type(pe).__name__}")
        conv = pe.proj
        if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or conv.groups != 1:
            raise ValueError(f"the patch embedding must be a non-overlapping convolution (kernel = stride, no "
                             f"padding), got kernel {conv.kernel_size}, stride {conv.stride}, padding {conv.padding}")
        if model.attn_pool is not None or model.global_pool not in POOLS:
            raise ValueError(f"global_pool {model.global_pool!r} is not supported; supported: {', '.join(POOLS)}")
        if not isinstance(model.head, nn.Linear):
            raise ValueError("the ViT needs a Linear classifier head (num_classes > 0)")
        distilled = isinstance(model, VisionTransformerDistilled)
        if model.global_pool == "token" and not model.has_class_token:
            raise ValueError("token pooling needs a class token (class_token=True)")
        for i, block in enumerate(model.blocks):
            _check_block(block, f"blocks.{i}")
        attn = model.blocks[0].attn
        config = cls(
            img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=conv.in_channels,
            embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=attn.num_heads, head_dim=attn.head_dim,
            mlp_hidden=model.blocks[0].mlp.fc1.out_features, num_classes=model.head.out_features,
            prefix_tokens=model.num_prefix_tokens, global_pool=model.global_pool,
            head_tokens=2 if distilled else 1, pool_prefix=bool(getattr(model, "pool_include_prefix", False)))
        for i, block in enumerate(model.blocks):
            found = (block.attn.num_heads, block.attn.head_dim, block.mlp.fc1.out_features, block.mlp.fc1.in_features)
            if found != (config.num_heads, config.head_dim, config.mlp_hidden, config.embed_dim):
                raise ValueError(f"blocks.{i}: (heads, head_dim, mlp hidden, width) = {found} differs from block 0's; "
                                 f"the converter needs identical blocks")
        return cls.from_json(config.to_json())


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_block(block: nn.Module, path: str) -> None:
    """``ValueError`` naming the part of a block the converter cannot run."""
    if type(block) is not Block:
        raise ValueError(f"{path}: block type {type(block).__name__} is not supported; the converter runs timm's "
                         f"vision_transformer.Block")
    attn = block.attn
    if type(attn) is not Attention:
        raise ValueError(f"{path}.attn: {type(attn).__name__} is not supported; the converter runs timm's Attention")
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name), nn.Identity):
            raise ValueError(f"{path}.attn.{name}: a norm inside the attention (qk_norm / scale_attn_norm) is not "
                             f"supported")
    if getattr(attn, "gate", None) is not None:
        raise ValueError(f"{path}.attn: gated attention is not supported")
    if abs(attn.scale - attn.head_dim ** -0.5) > 1e-12:
        raise ValueError(f"{path}.attn: logit scale {attn.scale} is not head_dim^-0.5 (the SNN computes q·k/√d)")
    if type(block.mlp) is not Mlp:
        raise ValueError(f"{path}.mlp: {type(block.mlp).__name__} is not supported; the converter runs timm's Mlp "
                         f"(fc1, act, norm, fc2)")
    for name in ("ls1", "ls2"):
        if not isinstance(getattr(block, name), (nn.Identity, LayerScale)):
            raise ValueError(f"{path}.{name}: {type(getattr(block, name)).__name__} is not supported")


def vit_layer_graph(config: ViTConfig, convention: str) -> list[LayerSpec]:
    """Neuron layers of the converted ViT in execution order (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    official = convention == "official"
    graph = LayerGraph()
    graph.add("patch_embed_if", "convert", (1, config.tokens, 1))
    for g in config.blocks():
        block_layers(graph, g, official)
    if official:
        graph.add("last_norm_if", "phase", (1, config.tokens, 1))
    if config.global_pool == "avg":
        graph.add("pool_if", "phase", (config.embed_dim,))
    graph.add("last_fc", "readout", None)
    return graph.layers


def _head_width(config: ViTConfig) -> int:
    return config.embed_dim * (config.head_tokens if config.global_pool == "token" else 1)


def vit_weight_shapes(config: ViTConfig, convention: str) -> dict[str, tuple[int, ...]]:
    """Shape of every stored tensor except the scales; ``patch_embed.bias`` is per token (N, C)."""
    official = convention == "official"
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.weight": (config.embed_dim, config.in_chans, *config.patch_size),
        "patch_embed.bias": (config.tokens, config.embed_dim),
        "input_max": (),
    }
    for g in config.blocks():
        shapes.update(block_weight_shapes(g, official))
    if official:
        shapes["norm.weight"] = shapes["norm.bias"] = (config.embed_dim,)
    shapes["head.weight"] = (config.num_classes, _head_width(config))
    shapes["head.bias"] = (config.num_classes,)
    return shapes


def _layer_scale(module: nn.Module, width: int) -> torch.Tensor:
    """The per-channel gain of a LayerScale (ones for Identity), float64."""
    if isinstance(module, LayerScale):
        return module.gamma.double().cpu()
    return torch.ones(width, dtype=torch.float64)


def fold_vit(model: VisionTransformer, convention: str) -> dict[str, torch.Tensor]:
    """Inference weights of a prepared ViT, norms and constants folded (module docstring)."""
    official = convention == "official"
    config = ViTConfig.from_model(model)
    dtype = next(model.parameters()).dtype
    width = config.embed_dim
    pe = model.patch_embed
    a, c = batchnorm_affine(pe.norm, width, "patch_embed.norm")
    conv_bias = torch.zeros_like(a) if pe.proj.bias is None else pe.proj.bias.double().cpu()
    weight = pe.proj.weight.double().cpu() * a[:, None, None, None]
    prefix = [model.cls_token, getattr(model, "dist_token", None), model.reg_token]
    prefix = [token.double().cpu().reshape(-1, width) for token in prefix if token is not None]
    rows = torch.cat([*prefix, (conv_bias * a + c).expand(config.patches, width)])
    if model.pos_embed is not None:
        position = model.pos_embed.double().cpu().reshape(-1, width)
        rows[rows.shape[0] - position.shape[0]:] += position  # no_embed_class: patches only
    a, c = batchnorm_affine(model.norm_pre, width, "norm_pre")
    out = {"patch_embed.weight": weight * a[:, None, None, None], "patch_embed.bias": rows * a + c}
    for g, block in zip(config.blocks(), model.blocks):
        folded = fold_block(block, g.prefix, official)
        for linear, scale in (("proj", block.ls1), ("fc2", block.ls2)):
            gain = _layer_scale(scale, width)
            folded[f"{g.prefix}.{linear}.weight"] = folded[f"{g.prefix}.{linear}.weight"] * gain[:, None]
            folded[f"{g.prefix}.{linear}.bias"] = folded[f"{g.prefix}.{linear}.bias"] * gain
        out.update(folded)
    a_norm, c_norm = batchnorm_affine(model.norm, width, "norm")
    a_fc, c_fc = batchnorm_affine(model.fc_norm, width, "fc_norm")
    a, c = a_fc * a_norm, a_fc * c_norm + c_fc
    heads = [model.head] + ([model.head_dist] if config.head_tokens == 2 else [])
    head_weight = torch.cat([fold_linear(head)[0] for head in heads], dim=1) / len(heads)
    head_bias = sum(fold_linear(head)[1] for head in heads) / len(heads)
    repeat = head_weight.shape[1] // width
    if official:
        out["norm.weight"], out["norm.bias"] = a, c
        out["head.weight"], out["head.bias"] = head_weight, head_bias
    else:
        out["head.weight"] = head_weight * a.repeat(repeat)
        out["head.bias"] = head_weight @ c.repeat(repeat) + head_bias
    return {key: value.to(dtype).contiguous() for key, value in out.items()}


def embed_patches(images: torch.Tensor, weight: torch.Tensor, config: ViTConfig) -> torch.Tensor:
    """The patch embedding without bias on the (batch, 1, N, C) token grid: zero for the prefix
    tokens (their value is all bias), ``weight`` (C, in_chans·ph·pw) applied to each patch."""
    patches = F.linear(patchify(images, config.patch_size).flatten(1, 2), weight)
    prefix = patches.new_zeros(patches.shape[0], config.prefix_tokens, patches.shape[-1])
    return torch.cat([prefix, patches], dim=1)[:, None]


class SpikingViT(WindowedTransformer):
    """Converted ViT; ``forward(images (batch, in_chans, H, W)) → logits (batch, classes)``.

    Streams are (batch, 1, N, C) decoded values (module docstring); attention tensors
    (batch, 1, heads, N, head_dim).
    """

    def __init__(self, config: ViTConfig, convention: str, weights: Mapping[str, torch.Tensor],
                 code: PhaseCode | None = None, engine: str = "ann") -> None:
        super().__init__(vit_layer_graph(config, convention), weights, code, engine)
        self.config = config
        self.official = convention == "official"

    def run(self, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        cfg = self.config
        x = self._images(x)
        weight = self.weight("patch_embed.weight").flatten(1)
        x = engine.input_layer("patch_embed_if", x, lambda v: embed_patches(v, weight, cfg),
                               self.weight("patch_embed.bias"))
        for block in cfg.blocks():
            x = self._block(x, block, engine)
        if self.official:
            x = self._norm_neuron("norm", "last_norm_if", x, engine)
        if cfg.global_pool == "token":
            return self._linear("head", x[:, 0, :cfg.head_tokens].flatten(1), engine)  # last_fc: read-out
        pooled = engine.neuron("pool_if", x[:, 0, cfg.pooled.start:].mean(dim=1))
        return self._linear("head", pooled, engine)

    def synapses(self, x: Any = None) -> list[Synapse]:
        """Synaptic operations per image, in execution order (the same for every input): the
        patch embedding (prefix tokens have no input synapses), each block's (as Swin's), the
        official norm, the average pool, the classifier."""
        cfg, official = self.config, self.official
        patch = cfg.in_chans * cfg.patch_size[0] * cfg.patch_size[1]
        rows = [Synapse("patch_embed", cfg.patches * patch * cfg.embed_dim, patch, ("input",), ("patch_embed_if",))]
        x = "patch_embed_if"
        for g in cfg.blocks():
            x = block_synapses(rows, g, x, official)
        if official:
            x = diagonal(rows, "norm", cfg.tokens * cfg.embed_dim, x, "last_norm_if")
        if cfg.global_pool == "avg":
            pooled = len(cfg.pooled)
            rows.append(Synapse("pool", pooled * cfg.embed_dim, pooled, (x,), ("pool_if",)))
            x = "pool_if"
        width = _head_width(cfg)
        rows.append(Synapse("head", width * cfg.num_classes, width, (x,), ("last_fc",)))
        return rows
