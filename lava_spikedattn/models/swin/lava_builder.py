"""A converted Swin as Lava processes: the block diagram of ``SpikingSwin.run`` (network.py).

The input image is bit-serial coded on the host (``BitSerialEncoderSim``: T bits, ±full scale)
into a SpikeSource; every Swin block is one :class:`~lava_spikedattn.procs.circuit.process.Circuit`;
layouts (patchify, window partition with the cyclic shift, head split/merge, patch merging,
pooling) are gathers inside the TokenLinear synapses (:func:`~lava_spikedattn.builder.index_positions`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch

from lava_spikedattn.builder import FamilyBuilder, Graph, LavaBuildError, Stream, attention_core, index_positions
from lava_spikedattn.coding import check_finite
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.layers import LayerStats
from lava_spikedattn.models.swin.network import (
    BlockGeometry,
    SwinConfig,
    merge_heads,
    merge_patches,
    merge_windows,
    partition_windows,
    patchify,
    split_heads,
)
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.reference.stepped import BitSerialEncoderSim

__all__ = ["SwinBuilder", "WindowedBuilder", "check_images"]


def check_images(cm: ConvertedModel, x: Any) -> tuple[torch.Tensor, int]:
    """Images (batch, C, H, W) or one image (C, H, W), float, of the model's size (architecture
    keys ``in_chans``, ``img_size``), as float64 on the CPU, and the batch size."""
    architecture = cm.config["architecture"]
    expected = (architecture["in_chans"], *architecture["img_size"])
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        dtype = f" {x.dtype}" if isinstance(x, torch.Tensor) else ""
        raise LavaBuildError(f"input must be a float tensor of images (batch, {', '.join(map(str, expected))}), "
                             f"got {type(x).__name__}{dtype}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise LavaBuildError(f"input must be images (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
    check_finite("input", x)
    x = x.detach().cpu().double()
    return x, x.shape[0]


class WindowedBuilder(FamilyBuilder):
    """Pre-norm blocks with (windowed) attention as Circuits, and the bit-serial image input:
    the part of the block diagram Swin and ViT share (mirrors ``network.WindowedTransformer``)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.official = graph.code.official

    @classmethod
    def check_input(cls, cm: ConvertedModel, x: Any) -> tuple[torch.Tensor, int]:
        """Images (batch, C, H, W) or one image (C, H, W), float, of the model's size."""
        return check_images(cm, x)

    def encode(self, images: torch.Tensor) -> np.ndarray:
        """The bit-serial input code (T, batch, C, H, W): ±full scale (payloads ±1 in fixed
        point, the first weights absorb the full scale)."""
        g = self.g
        full_scale = float(g.cm.weights["input_max"])
        encoder = BitSerialEncoderSim(images.double(), g.T, full_scale)
        bits = np.empty((g.T, *images.shape))
        for step in bits:
            step[...] = encoder.step().numpy()
        g.input_stats = LayerStats(images.numel(), int(encoder.bits.sum()), encoder.saturated)
        return bits if g.fmt is None else bits / full_scale

    def _patch_embed(self, images: torch.Tensor) -> Stream:
        """The stem block: the bit-serial input (a SpikeSource) into the patch embedding."""
        source = self.g.input(self.encode(images))
        x = Stream(source.s_out, None, -1, tuple(source.s_out.shape), 0)
        return self.g.circuit(x, "patch_embed", self._patch_embed_members)

    def _head(self, x: Stream) -> tuple[Any, int]:
        """The read-out block (the family's ``_head_members``: [last norm,] pooling, classifier)."""
        return self.g.head_circuit(x, self._head_members)

    @abstractmethod
    def _patch_embed_members(self, g: Graph, x: Stream) -> PhaseNeuron:
        """The stem block's members in ``g``, reading the input code ``x``; returns its neuron."""

    @abstractmethod
    def _head_members(self, g: Graph, x: Stream) -> tuple[TokenLinear, int]:
        """The read-out block's members in ``g``; returns ``g.readout``'s (synapse, pipeline index)."""

    def _norm_neuron(self, g: Graph, norm: str, name: str, x: Stream) -> Stream:
        """Official convention: a BatchNorm as a diagonal synapse, then a neuron."""
        neuron = g.neuron(name, x.shape)
        g.linear(norm, x, neuron, weight=np.diag(g.weight(f"{norm}.weight")))
        return g.stream(neuron)

    def _block(self, x: Stream, geometry: BlockGeometry) -> Stream:
        """One block as a :class:`Circuit` (fused or decomposed at run time)."""
        return self.g.circuit(x, geometry.prefix, lambda g, x_in: self._block_members(g, x_in, geometry))

    def _block_members(self, g: Graph, x: Stream, geometry: BlockGeometry) -> PhaseNeuron:
        p = geometry.prefix
        h = self._norm_neuron(g, f"{p}.norm1", f"{p}.norm1_if", x) if self.official else x
        attn_if = g.neuron(f"{p}.attn_if", x.shape)
        g.residual(x, attn_if)
        self._window_attention(g, h, geometry, attn_if)
        x = g.stream(attn_if)
        h = self._norm_neuron(g, f"{p}.norm2", f"{p}.norm2_if", x) if self.official else x
        act = g.neuron(f"{p}.mlp_act", x.shape[:-1] + (geometry.hidden,))
        g.linear(f"{p}.fc1", h, act)
        h = g.stream(act)
        if self.official:
            h = self._norm_neuron(g, f"{p}.mlp_norm", f"{p}.mlp_if", h)
        final = g.neuron(f"{p}.final_if", x.shape)
        g.residual(x, final)
        g.linear(f"{p}.fc2", h, final)
        return final

    def _window_attention(self, g: Graph, x: Stream, geo: BlockGeometry, destination: PhaseNeuron) -> None:
        """q/k/v → QKᵀ (+ relative-position bias, shift mask, where stored) → WOSS → attention×V → proj."""
        p, b = geo.prefix, g.batch
        inner = geo.heads * geo.head_dim
        head_shape = (b, geo.windows, geo.heads, geo.tokens, geo.head_dim)
        logit_shape = head_shape[:-1] + (geo.tokens,)
        windows = partition_windows(index_positions(x.shape), geo).numpy()
        heads = split_heads(index_positions((b, geo.windows, geo.tokens, inner)), geo).numpy()
        qkv_weight, qkv_bias = g.weight(f"{p}.qkv.weight"), g.weight(f"{p}.qkv.bias")
        qkv = {}
        for part, name in enumerate(("q_if", "k_if", "v_if")):
            qkv[name] = g.neuron(f"{p}.{name}", head_shape)
            rows = slice(part * inner, (part + 1) * inner)
            g.linear(f"{p}.qkv", x, qkv[name], in_index=windows, out_index=heads, weight=qkv_weight[rows],
                     bias=qkv_bias[rows])
        bias = None
        if f"{p}.rel_pos_bias" in g.cm.weights:
            bias = g.weight(f"{p}.rel_pos_bias")
            if geo.shifted:
                bias = bias + g.weight(f"{p}.attn_mask")[:, None]
            bias = np.broadcast_to(bias, logit_shape)
        out = attention_core(g, p, qkv, bias)
        merged = merge_heads(index_positions(head_shape)).numpy()
        reverse = merge_windows(index_positions((b, geo.windows, geo.tokens, geo.dim)), geo).numpy()
        g.linear(f"{p}.proj", g.stream(out), destination, in_index=merged, out_index=reverse)


class SwinBuilder(WindowedBuilder):
    """Block diagram of a converted Swin (mirrors ``SpikingSwin.run``)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.config = SwinConfig.from_json(graph.cm.config["architecture"])

    def build(self, images: torch.Tensor) -> tuple[Any, int]:
        """All processes for ``images`` (the stem, the blocks, the patch mergings and the head, a
        Circuit each); returns the read-out port and its pipeline index."""
        x = self._patch_embed(images)
        for stage in self.config.stages():
            if stage.merge:
                x = self._patch_merging(x, stage.index)
            for block in stage.blocks:
                x = self._block(x, block)
        return self._head(x)

    def _patch_embed_members(self, g: Graph, x: Stream) -> PhaseNeuron:
        cfg, b = self.config, g.batch
        weight = g.weight("patch_embed.weight").reshape(cfg.embed_dim, -1)
        if g.fmt is not None:
            weight = weight * float(g.cm.weights["input_max"])
        rows, cols = cfg.img_size[0] // cfg.patch_size[0], cfg.img_size[1] // cfg.patch_size[1]
        neuron = g.neuron("patch_embed_if", (b, rows, cols, cfg.embed_dim), bit_serial_input=True)
        in_index = patchify(index_positions(x.shape), cfg.patch_size).numpy()
        # The first bias is added undivided on every input step (spec §1.4).
        g.linear("patch_embed", x, neuron, in_index=in_index, weight=weight, bias_divisor=1.0)
        return neuron

    def _patch_merging(self, x: Stream, stage: int) -> Stream:
        """A patch merging as its own block."""
        return self.g.circuit(x, f"layers.{stage}.downsample", lambda g, x_in: self._merging_members(g, x_in, stage))

    def _merging_members(self, g: Graph, x: Stream, stage: int) -> PhaseNeuron:
        b, height, width, _ = x.shape
        out_dim = g.weight(f"layers.{stage}.downsample.weight").shape[0]
        neuron = g.neuron(f"layers.{stage}.patch_merging_if", (b, height // 2, width // 2, out_dim))
        g.linear(f"layers.{stage}.downsample", x, neuron, in_index=merge_patches(index_positions(x.shape)).numpy())
        return neuron

    def _head_members(self, g: Graph, x: Stream) -> tuple[TokenLinear, int]:
        b, height, width, channels = x.shape
        if self.official:
            x = self._norm_neuron(g, "norm", "last_norm_if", x)
        pool = g.neuron("pool_if", (b, channels))
        tokens = index_positions(x.shape).reshape(b, height * width, channels).transpose(1, 2).numpy()
        g.linear("pool", x, pool, in_index=tokens, out_index=index_positions((b, channels)).numpy(),
                 weight=np.full((1, height * width), 1.0 / (height * width)), bias=np.zeros(1))
        return g.readout("head", g.stream(pool))
