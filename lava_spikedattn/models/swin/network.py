"""timm Swin Transformer → SpikedAttention network (spec §5.1–§5.4).

Neuron layers per block (pipeline index n, one index per line; W = T, spec §1.5):

``exact`` (7): every BatchNorm folds into the following linear layer (norm1 → qkv, norm2 → fc1,
mlp.norm → fc2), since no neuron sits between them::

    q_if, k_if, v_if   qkv(BN1(x))                       per (window, head, token)
    stdp_qk            q̂k̂ᵀ/√d + rel-pos bias (+ mask)     per (window, head, query row)
    softmax_if         WOSS
    stdp_av            WOSS·V̂ / spike sum                 per (window, head, token)
    attn_if            x + proj(·)                        per element (H, W, C)
    mlp_act            ReLU neuron on fc1(BN2(·))         per element (H, W, hidden)
    final_if           · + fc2(BN_mlp(·))                 per token (H, W), shared over C

``official`` (10, the release's graph): a neuron re-encodes the stream after each BN:
norm1_if (per token) before qkv, norm2_if (per element) before fc1, mlp_if (per element) after
mlp.norm. Both conventions: patch embed = conv with its BN folded → convert neuron (per token);
patch merging = 2×2 gather → reduction with its BN folded → one neuron (per token); head =
[last_norm_if (official)] → average pool → pool_if (per channel) → classifier read-out
(``last_fc``: the integrated membrane, no spikes; exact folds the final BN into it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lava_spikedattn.coding import CONVENTIONS, PhaseCode, check_finite
from lava_spikedattn.energy import Synapse
from lava_spikedattn.engines import Engine, SpikingNetwork
from lava_spikedattn.layers import LayerGraph, LayerSpec
from lava_spikedattn.models.folding import UnsupportedModuleError, fold_linear

if TYPE_CHECKING:  # timm is needed to convert a Swin, not to run a converted one
    from timm.models.swin_transformer import SwinTransformer

__all__ = ["BlockGeometry", "SpikingSwin", "StageGeometry", "SwinConfig", "WindowedTransformer", "batchnorm_affine",
           "block_layers", "block_synapses", "block_weight_shapes", "diagonal", "fold_block", "merge_heads",
           "merge_patches", "merge_windows", "partition_windows", "patchify", "split_heads", "swin_layer_graph"]


# --- architecture -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockGeometry:
    """One Swin block: ``prefix`` (``layers.i.blocks.j``), widths, token grid and windows."""

    prefix: str
    dim: int
    heads: int
    head_dim: int
    hidden: int
    resolution: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]

    @property
    def tokens(self) -> int:
        """N, tokens per window."""
        return self.window[0] * self.window[1]

    @property
    def windows(self) -> int:
        """nW, windows per image."""
        return (self.resolution[0] // self.window[0]) * (self.resolution[1] // self.window[1])

    @property
    def shifted(self) -> bool:
        return any(self.shift)


@dataclass(frozen=True)
class StageGeometry:
    """One stage: ``merge`` says whether a patch merging (in_dim → dim, resolution/2) opens it."""

    index: int
    in_dim: int
    dim: int
    resolution: tuple[int, int]
    merge: bool
    blocks: tuple[BlockGeometry, ...]


def _pair(value: Any, key: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(v) for v in value)):
        raise ValueError(f"architecture {key!r} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters that rebuild a Swin (timm's names; per-stage tuples where timm allows)."""

    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    head_dim: tuple[int, ...]
    window_size: tuple[tuple[int, int], ...]
    mlp_ratio: tuple[float, ...]
    num_classes: int

    @classmethod
    def from_json(cls, arch: Mapping[str, Any]) -> SwinConfig:
        """Validated config from ``config.json``'s architecture; ``ValueError`` naming the field."""
        if not isinstance(arch, Mapping):
            raise ValueError(f"architecture must be an object, got {type(arch).__name__}")
        missing = [f for f in cls.__dataclass_fields__ if f not in arch]
        if missing:
            raise ValueError(f"architecture is missing {', '.join(repr(m) for m in missing)}")
        for key in ("in_chans", "embed_dim", "num_classes"):
            if not _positive_int(arch[key]):
                raise ValueError(f"architecture {key!r} must be a positive integer, got {arch[key]!r}")
        stages = arch["depths"]
        if not (isinstance(stages, list) and stages and all(_positive_int(d) for d in stages)):
            raise ValueError(f"architecture 'depths' must be a non-empty list of positive integers, got {stages!r}")
        for key in ("num_heads", "head_dim", "window_size", "mlp_ratio"):
            if not (isinstance(arch[key], list) and len(arch[key]) == len(stages)):
                raise ValueError(f"architecture {key!r} must be a list with one entry per stage ({len(stages)})")
        for key in ("num_heads", "head_dim"):
            if not all(_positive_int(v) for v in arch[key]):
                raise ValueError(f"architecture {key!r} must hold positive integers, got {arch[key]!r}")
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in arch["mlp_ratio"]):
            raise ValueError(f"architecture 'mlp_ratio' must hold positive numbers, got {arch['mlp_ratio']!r}")
        config = cls(
            img_size=_pair(arch["img_size"], "img_size"),
            patch_size=_pair(arch["patch_size"], "patch_size"),
            in_chans=arch["in_chans"],
            embed_dim=arch["embed_dim"],
            depths=tuple(stages),
            num_heads=tuple(arch["num_heads"]),
            head_dim=tuple(arch["head_dim"]),
            window_size=tuple(_pair(w, "window_size") for w in arch["window_size"]),
            mlp_ratio=tuple(float(r) for r in arch["mlp_ratio"]),
            num_classes=arch["num_classes"],
        )
        config.stages()  # checks the token grid divides as the converted network needs
        return config

    def to_json(self) -> dict[str, Any]:
        return {
            "img_size": list(self.img_size), "patch_size": list(self.patch_size), "in_chans": self.in_chans,
            "embed_dim": self.embed_dim, "depths": list(self.depths), "num_heads": list(self.num_heads),
            "head_dim": list(self.head_dim), "window_size": [list(w) for w in self.window_size],
            "mlp_ratio": list(self.mlp_ratio), "num_classes": self.num_classes,
        }

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the classifier's input)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def stages(self) -> list[StageGeometry]:
        """Per-stage geometry with timm's rules: a window no larger than the grid, no shift when
        the window covers the grid. Raises ``ValueError`` where timm would pad (padded tokens
        would receive the folded norm's bias, so the folded network would differ)."""
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        resolution = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        stages, in_dim = [], self.embed_dim
        for i, depth in enumerate(self.depths):
            dim = self.embed_dim * 2**i
            if i > 0:
                if resolution[0] % 2 or resolution[1] % 2:
                    raise ValueError(f"stage {i}: patch merging needs an even token grid, got {resolution}")
                resolution = (resolution[0] // 2, resolution[1] // 2)
            target = self.window_size[i]
            window = tuple(min(r, w) for r, w in zip(resolution, target))
            if resolution[0] % window[0] or resolution[1] % window[1]:
                raise ValueError(f"stage {i}: token grid {resolution} is not a multiple of the window {window} "
                                 f"(timm would pad; padding is not supported)")
            blocks = []
            for j in range(depth):
                wanted = tuple(w // 2 for w in target) if j % 2 else (0, 0)
                shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, window, wanted))
                blocks.append(BlockGeometry(
                    prefix=f"layers.{i}.blocks.{j}", dim=dim, heads=self.num_heads[i], head_dim=self.head_dim[i],
                    hidden=round(dim * self.mlp_ratio[i]), resolution=resolution, window=window, shift=shift))
            stages.append(StageGeometry(i, in_dim, dim, resolution, i > 0, tuple(blocks)))
            in_dim = dim
        return stages

    @classmethod
    def from_model(cls, model: SwinTransformer) -> SwinConfig:
        """Config of a timm ``SwinTransformer``; ``ValueError`` for variants the converter cannot run."""
        pe = model.patch_embed
        if not getattr(pe, "strict_img_size", True) or getattr(pe, "dynamic_img_pad", False):
            raise ValueError("Swin with a dynamic image size is not supported: build it with a fixed img_size")
        if model.global_pool != "avg" or not isinstance(model.head.fc, nn.Linear):
            raise ValueError(f"the Swin head must be average pooling + a Linear classifier, got global_pool="
                             f"{model.global_pool!r} and head.fc {type(model.head.fc).__name__}")
        first = [stage.blocks[0] for stage in model.layers]
        config = cls(
            img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=pe.proj.in_channels,
            embed_dim=pe.proj.out_channels, depths=tuple(len(stage.blocks) for stage in model.layers),
            num_heads=tuple(b.attn.num_heads for b in first),
            head_dim=tuple(b.attn.qkv.out_features // (3 * b.attn.num_heads) for b in first),
            window_size=tuple(tuple(b.window_size) for b in first),
            mlp_ratio=tuple(b.mlp.fc1.out_features / b.dim for b in first),
            num_classes=model.num_classes,
        )
        for stage, module in zip(config.stages(), model.layers):
            if stage.merge != hasattr(module.downsample, "reduction") or (
                    stage.merge and module.downsample.reduction.out_features != stage.dim):
                raise ValueError(f"layers.{stage.index}: unexpected downsample {type(module.downsample).__name__}")
            for g, block in zip(stage.blocks, module.blocks):
                found = (block.dim, tuple(block.input_resolution), tuple(block.window_size), tuple(block.shift_size),
                         block.attn.qkv.out_features, block.mlp.fc1.out_features)
                expected = (g.dim, g.resolution, g.window, g.shift, 3 * g.heads * g.head_dim, g.hidden)
                if found != expected:
                    raise ValueError(f"{g.prefix}: unsupported Swin variant: (dim, resolution, window, shift, qkv, "
                                     f"hidden) = {found}, the converter derives {expected} (always_partition or "
                                     f"per-stage embed_dim are not supported)")
        return config


def swin_layer_graph(config: SwinConfig, convention: str) -> list[LayerSpec]:
    """Neuron layers of the converted Swin in execution order (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    official = convention == "official"
    graph = LayerGraph()
    add = graph.add

    stages = config.stages()
    h, w = stages[0].resolution
    add("patch_embed_if", "convert", (h, w, 1))
    for stage in stages:
        h, w = stage.resolution
        if stage.merge:
            add(f"layers.{stage.index}.patch_merging_if", "phase", (h, w, 1))
        for g in stage.blocks:
            block_layers(graph, g, official)
    if official:
        add("last_norm_if", "phase", (h, w, 1))
    add("pool_if", "phase", (config.num_features,))
    add("last_fc", "readout", None)
    return graph.layers


def block_layers(graph: LayerGraph, g: BlockGeometry, official: bool) -> None:
    """Add the neuron layers of one (windowed) pre-norm block to ``graph`` (module docstring);
    shared by every family built from these blocks (Swin, ViT)."""
    add, (h, w), p = graph.add, g.resolution, g.prefix
    per_head = (g.windows, g.heads, g.tokens, 1)
    if official:
        add(f"{p}.norm1_if", "phase", (h, w, 1))
    add(f"{p}.q_if", "phase", per_head)
    add(f"{p}.k_if", "phase", per_head, new_index=False)
    add(f"{p}.v_if", "phase", per_head, new_index=False)
    add(f"{p}.stdp_qk", "logits", per_head)
    add(f"{p}.softmax_if", "woss", None)
    add(f"{p}.stdp_av", "attention_out", per_head)
    add(f"{p}.attn_if", "phase", (h, w, g.dim))
    if official:
        add(f"{p}.norm2_if", "phase", (h, w, g.dim))
    add(f"{p}.mlp_act", "phase", (h, w, g.hidden), signed=False)
    if official:
        add(f"{p}.mlp_if", "phase", (h, w, g.hidden))
    add(f"{p}.final_if", "phase", (h, w, 1))


def block_weight_shapes(g: BlockGeometry, official: bool) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's linear layers and (official) norms; attention biases are the family's."""
    p, inner, shapes = g.prefix, g.heads * g.head_dim, {}
    for name, out_features, in_features in (("qkv", 3 * inner, g.dim), ("proj", g.dim, inner),
                                            ("fc1", g.hidden, g.dim), ("fc2", g.dim, g.hidden)):
        shapes[f"{p}.{name}.weight"] = (out_features, in_features)
        shapes[f"{p}.{name}.bias"] = (out_features,)
    if official:
        for norm, width in (("norm1", g.dim), ("norm2", g.dim), ("mlp_norm", g.hidden)):
            shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (width,)
    return shapes


def swin_weight_shapes(config: SwinConfig, convention: str) -> dict[str, tuple[int, ...]]:
    """Shape of every stored tensor except the scales.

    ``<norm>.weight`` / ``<norm>.bias`` (official only) are a BatchNorm collapsed to its affine
    map ``y = weight·x + bias``; ``rel_pos_bias`` is the relative-position bias already gathered
    to (heads, N, N); ``attn_mask`` the 0/−100 shift mask (nW, N, N) of shifted blocks.
    """
    official = convention == "official"
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.weight": (config.embed_dim, config.in_chans, *config.patch_size),
        "patch_embed.bias": (config.embed_dim,),
        "input_max": (),
    }
    for stage in config.stages():
        if stage.merge:
            shapes[f"layers.{stage.index}.downsample.weight"] = (stage.dim, 4 * stage.in_dim)
            shapes[f"layers.{stage.index}.downsample.bias"] = (stage.dim,)
        for g in stage.blocks:
            shapes.update(block_weight_shapes(g, official))
            shapes[f"{g.prefix}.rel_pos_bias"] = (g.heads, g.tokens, g.tokens)
            if g.shifted:
                shapes[f"{g.prefix}.attn_mask"] = (g.windows, g.tokens, g.tokens)
    if official:
        shapes["norm.weight"] = shapes["norm.bias"] = (config.num_features,)
    shapes["head.weight"] = (config.num_classes, config.num_features)
    shapes["head.bias"] = (config.num_classes,)
    return shapes


# --- folding ----------------------------------------------------------------------------------------------
def batchnorm_affine(norm: nn.Module, width: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with norm(x) = a·x + c in eval mode, float64; identity for ``nn.Identity``."""
    if isinstance(norm, nn.Identity):
        return torch.ones(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_var is None:
        raise UnsupportedModuleError(f"model.{path}: {type(norm).__name__} cannot be folded; it must be a "
                                     f"BatchNorm with running statistics (run the family's prepare_*())")
    a = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        a = a * norm.weight.double()
    c = -a * norm.running_mean.double()
    if norm.bias is not None:
        c = c + norm.bias.double()
    return a.cpu(), c.cpu()


def fold_block(block: nn.Module, p: str, official: bool) -> dict[str, torch.Tensor]:
    """Inference weights of one pre-norm block (timm's ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``norm2``, ``mlp.fc1``, ``mlp.norm``, ``mlp.fc2``), float64, under the names of prefix ``p``:
    exact folds each BatchNorm into the linear after it, official keeps it (module docstring)."""
    out: dict[str, torch.Tensor] = {}
    norms = {"norm1": (block.norm1, "qkv", block.attn.qkv), "norm2": (block.norm2, "fc1", block.mlp.fc1),
             "mlp_norm": (block.mlp.norm, "fc2", block.mlp.fc2)}
    for norm_name, (norm, linear_name, linear) in norms.items():
        a, c = batchnorm_affine(norm, linear.in_features, f"{p}.{norm_name.replace('_', '.')}")
        if official:
            out[f"{p}.{norm_name}.weight"], out[f"{p}.{norm_name}.bias"] = a, c
            out[f"{p}.{linear_name}.weight"], out[f"{p}.{linear_name}.bias"] = fold_linear(linear)
        else:
            out[f"{p}.{linear_name}.weight"], out[f"{p}.{linear_name}.bias"] = fold_linear(linear, a, c)
    out[f"{p}.proj.weight"], out[f"{p}.proj.bias"] = fold_linear(block.attn.proj)
    return out


def fold_swin(model: SwinTransformer, convention: str) -> dict[str, torch.Tensor]:
    """Inference weights of a prepared Swin, norms folded per ``convention`` (module docstring)."""
    official = convention == "official"
    dtype = next(model.parameters()).dtype
    out: dict[str, torch.Tensor] = {}
    pe = model.patch_embed
    a, c = batchnorm_affine(pe.norm, pe.proj.out_channels, "patch_embed.norm")
    conv_bias = torch.zeros_like(a) if pe.proj.bias is None else pe.proj.bias.double().cpu()
    out["patch_embed.weight"] = pe.proj.weight.double().cpu() * a[:, None, None, None]
    out["patch_embed.bias"] = conv_bias * a + c
    for i, stage in enumerate(model.layers):
        if i > 0:
            ds = stage.downsample
            a, c = batchnorm_affine(ds.norm, ds.reduction.in_features, f"layers.{i}.downsample.norm")
            out[f"layers.{i}.downsample.weight"], out[f"layers.{i}.downsample.bias"] = fold_linear(ds.reduction, a, c)
        for j, block in enumerate(stage.blocks):
            p = f"layers.{i}.blocks.{j}"
            out.update(fold_block(block, p, official))
            out[f"{p}.rel_pos_bias"] = block.attn._get_rel_pos_bias()[0].double().cpu()
            if block.attn_mask is not None:
                out[f"{p}.attn_mask"] = block.attn_mask.double().cpu()
    a, c = batchnorm_affine(model.norm, model.num_features, "norm")
    if official:
        out["norm.weight"], out["norm.bias"] = a, c
        out["head.weight"], out["head.bias"] = fold_linear(model.head.fc)
    else:
        out["head.weight"], out["head.bias"] = fold_linear(model.head.fc, a, c)
    return {key: value.to(dtype).contiguous() for key, value in out.items()}


# --- layouts (pure gathers: the Lava builder applies them to index tensors) --------------------------------
def patchify(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(batch, C, H, W) → (batch, H/p, W/p, C·ph·pw): the patch embed conv as a token-wise linear
    with ``weight.reshape(embed_dim, -1)``."""
    b, c, height, width = x.shape
    (ph, pw), rows, cols = patch, height // patch[0], width // patch[1]
    return x.reshape(b, c, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, rows, cols, c * ph * pw)


def partition_windows(x: torch.Tensor, g: BlockGeometry) -> torch.Tensor:
    """(batch, H, W, C) → (batch, nW, N, C): cyclic shift by −shift, then window partition."""
    b, height, width, channels = x.shape
    (wh, ww), (sh, sw) = g.window, g.shift
    if g.shifted:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    windows = x.reshape(b, height // wh, wh, width // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(b, g.windows, g.tokens, channels)


def merge_windows(windows: torch.Tensor, g: BlockGeometry) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: (batch, nW, N, C) → (batch, H, W, C)."""
    (height, width), (wh, ww), (sh, sw) = g.resolution, g.window, g.shift
    b, channels = windows.shape[0], windows.shape[-1]
    x = windows.reshape(b, height // wh, width // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, height, width, channels)
    return torch.roll(x, shifts=(sh, sw), dims=(1, 2)) if g.shifted else x


def split_heads(x: torch.Tensor, g: BlockGeometry) -> torch.Tensor:
    """(batch, nW, N, heads·head_dim) → (batch, nW, heads, N, head_dim)."""
    return x.reshape(*x.shape[:-1], g.heads, g.head_dim).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, nW, heads, N, head_dim) → (batch, nW, N, heads·head_dim)."""
    return x.transpose(-3, -2).flatten(-2)


def merge_patches(x: torch.Tensor) -> torch.Tensor:
    """timm's PatchMerging gather: (batch, H, W, C) → (batch, H/2, W/2, 4C)."""
    b, height, width, channels = x.shape
    return x.reshape(b, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)


# --- the network ------------------------------------------------------------------------------------------
def diagonal(rows: list[Synapse], name: str, size: int, source: str, target: str, counted: bool = True) -> str:
    """Append a one-to-one synapse (a norm on the stream, a residual) to ``rows``; returns ``target``."""
    rows.append(Synapse(name, size, 1, (source,), (target,), counted))
    return target


def block_synapses(rows: list[Synapse], g: BlockGeometry, x: str, official: bool) -> str:
    """Append one block's synapses to ``rows`` (input layer ``x``); returns its output layer."""
    p, inner, pairs = g.prefix, g.heads * g.head_dim, g.windows * g.heads * g.tokens * g.tokens
    tokens = g.resolution[0] * g.resolution[1]
    h_in = diagonal(rows, f"{p}.norm1", tokens * g.dim, x, f"{p}.norm1_if") if official else x
    rows += [
        Synapse(f"{p}.qkv", tokens * g.dim * 3 * inner, g.dim, (h_in,), (f"{p}.q_if", f"{p}.k_if", f"{p}.v_if")),
        Synapse(f"{p}.qk", pairs * g.head_dim, g.head_dim, (f"{p}.q_if", f"{p}.k_if"), (f"{p}.stdp_qk",)),
        Synapse(f"{p}.woss", pairs, 1, (f"{p}.stdp_qk",), (f"{p}.softmax_if",)),
        Synapse(f"{p}.av", pairs * g.head_dim, g.tokens, (f"{p}.softmax_if", f"{p}.v_if"), (f"{p}.stdp_av",)),
        Synapse(f"{p}.proj", tokens * inner * g.dim, inner, (f"{p}.stdp_av",), (f"{p}.attn_if",)),
    ]
    diagonal(rows, f"{p}.residual1", tokens * g.dim, x, f"{p}.attn_if", counted=False)
    x = f"{p}.attn_if"
    h_in = diagonal(rows, f"{p}.norm2", tokens * g.dim, x, f"{p}.norm2_if") if official else x
    rows.append(Synapse(f"{p}.fc1", tokens * g.dim * g.hidden, g.dim, (h_in,), (f"{p}.mlp_act",)))
    h_in = (diagonal(rows, f"{p}.mlp_norm", tokens * g.hidden, f"{p}.mlp_act", f"{p}.mlp_if") if official
            else f"{p}.mlp_act")
    rows.append(Synapse(f"{p}.fc2", tokens * g.hidden * g.dim, g.hidden, (h_in,), (f"{p}.final_if",), official=False))
    diagonal(rows, f"{p}.residual2", tokens * g.dim, x, f"{p}.final_if", counted=False)
    return f"{p}.final_if"


class WindowedTransformer(SpikingNetwork):
    """Streams of (batch, H, W, C) decoded values through pre-norm blocks with (windowed)
    attention: the part of the forward pass Swin and ViT share. Subclasses set ``official`` and
    ``config`` (with ``in_chans`` and ``img_size``)."""

    official: bool
    config: Any

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked to be finite images (batch, in_chans, H, W) of the model's size, in this
        module's device and dtype."""
        architecture = self.config
        expected = (architecture.in_chans, *architecture.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expects images (batch, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        check_finite("input", x)
        return x.to(device=self.device, dtype=self.dtype)

    def _linear(self, key: str, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        return F.linear(x, self.weight(f"{key}.weight"), self.weight(f"{key}.bias") * engine.bias_gain)

    def _norm_neuron(self, norm: str, neuron: str, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        """Official convention: a BatchNorm on the stream (diagonal layer), then a neuron."""
        affine = x * self.weight(f"{norm}.weight") + self.weight(f"{norm}.bias") * engine.bias_gain
        return engine.neuron(neuron, affine)

    def _block(self, x: torch.Tensor, g: BlockGeometry, engine: Engine) -> torch.Tensor:
        p = g.prefix
        h = self._norm_neuron(f"{p}.norm1", f"{p}.norm1_if", x, engine) if self.official else x
        x = engine.neuron(f"{p}.attn_if", x + self._window_attention(h, g, engine))
        h = self._norm_neuron(f"{p}.norm2", f"{p}.norm2_if", x, engine) if self.official else x
        h = engine.neuron(f"{p}.mlp_act", self._linear(f"{p}.fc1", h, engine), signed=False)
        if self.official:
            h = self._norm_neuron(f"{p}.mlp_norm", f"{p}.mlp_if", h, engine)
        return engine.neuron(f"{p}.final_if", x + self._linear(f"{p}.fc2", h, engine))

    def _window_attention(self, x: torch.Tensor, g: BlockGeometry, engine: Engine) -> torch.Tensor:
        """(W-)MSA of timm's ``SwinTransformerBlock._attn`` (one window: ViT's ``Attention``) on
        (batch, H, W, C) → same shape; the relative-position bias and shift mask where stored."""
        qkv = self._linear(f"{g.prefix}.qkv", partition_windows(x, g), engine)
        q, k, v = (split_heads(part, g) for part in qkv.chunk(3, dim=-1))
        bias = None
        if self.has_weight(f"{g.prefix}.rel_pos_bias"):
            bias = self.weight(f"{g.prefix}.rel_pos_bias")  # (heads, N, N)
        if g.shifted:
            bias = bias + self.weight(f"{g.prefix}.attn_mask")[:, None]  # (nW, heads, N, N)
        out = engine.attention(g.prefix, q, k, v, bias)  # (batch, nW, heads, N, head_dim)
        return merge_windows(self._linear(f"{g.prefix}.proj", merge_heads(out), engine), g)


class SpikingSwin(WindowedTransformer):
    """Converted Swin; ``forward(images (batch, in_chans, H, W)) → logits (batch, classes)``.

    Mirrors timm's forward (patch embed, cyclic shift, window partition, relative-position bias,
    shift mask, window reverse, patch merging, average pool, head) with every neuron layer and
    attention core delegated to the engine. Streams are (batch, H, W, C) decoded values; window
    tensors are (batch, nW, heads, N, head_dim).
    """

    def __init__(self, config: SwinConfig, convention: str, weights: Mapping[str, torch.Tensor],
                 code: PhaseCode | None = None, engine: str = "ann") -> None:
        super().__init__(swin_layer_graph(config, convention), weights, code, engine)
        self.config = config
        self.official = convention == "official"
        self.geometry = config.stages()

    def run(self, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        cfg = self.config
        x = self._images(x)
        weight = self.weight("patch_embed.weight").flatten(1)
        x = engine.input_layer("patch_embed_if", x, lambda v: F.linear(patchify(v, cfg.patch_size), weight),
                               self.weight("patch_embed.bias"))
        for stage in self.geometry:
            if stage.merge:
                x = self._patch_merging(x, stage.index, engine)
            for block in stage.blocks:
                x = self._block(x, block, engine)
        return self._head(x, engine)

    def synapses(self, x: Any = None) -> list[Synapse]:
        """Synaptic operations per image, in execution order (the same for every input).

        Dense layers (patch embed, qkv, proj, fc1, fc2, patch merging, head), the two trace-driven
        products (QKᵀ, WOSS·V), the logit → WOSS connection, the residual additions, the
        average pool, and in the official convention the BatchNorms on the stream. ``official``
        is False for what the release's bookkeeping leaves out: every MLP's fc2 and the residual
        additions (spec §7.3).
        """
        cfg, official = self.config, self.official
        h, w = self.geometry[0].resolution
        patch = cfg.in_chans * cfg.patch_size[0] * cfg.patch_size[1]
        rows = [Synapse("patch_embed", h * w * patch * cfg.embed_dim, patch, ("input",), ("patch_embed_if",))]
        x = "patch_embed_if"
        for stage in self.geometry:
            tokens = stage.resolution[0] * stage.resolution[1]
            if stage.merge:
                target = f"layers.{stage.index}.patch_merging_if"
                rows.append(Synapse(f"layers.{stage.index}.downsample", tokens * 4 * stage.in_dim * stage.dim,
                                    4 * stage.in_dim, (x,), (target,)))
                x = target
            for g in stage.blocks:
                x = block_synapses(rows, g, x, official)
        features = cfg.num_features
        tokens = self.geometry[-1].resolution[0] * self.geometry[-1].resolution[1]
        if official:
            x = diagonal(rows, "norm", tokens * features, x, "last_norm_if")
        rows.append(Synapse("pool", tokens * features, tokens, (x,), ("pool_if",)))
        rows.append(Synapse("head", features * cfg.num_classes, features, ("pool_if",), ("last_fc",)))
        return rows

    def _patch_merging(self, x: torch.Tensor, stage: int, engine: Engine) -> torch.Tensor:
        """timm's ``PatchMerging`` (2×2 gather, folded BN + reduction) and its neuron."""
        y = self._linear(f"layers.{stage}.downsample", merge_patches(x), engine)
        return engine.neuron(f"layers.{stage}.patch_merging_if", y)

    def _head(self, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        if self.official:
            x = self._norm_neuron("norm", "last_norm_if", x, engine)
        pooled = engine.neuron("pool_if", x.mean(dim=(1, 2)))
        return self._linear("head", pooled, engine)  # last_fc: membrane read-out, no spikes
