"""A converted ViT as Lava processes: the block diagram of ``SpikingViT.run`` (network.py).

The image is bit-serial coded on the host into a SpikeSource with one extra input that never
spikes: the prefix tokens' rows of the patch-embedding synapse read it, so the class token (and
the position embedding) enter as that synapse's per-token bias. Blocks are Swin's
(``swin.lava_builder.WindowedBuilder``) with one window over the (1, N) token grid; the
classifier reads the class token's spikes through a gather (token pooling) or a pooling neuron
(average pooling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lava_spikedattn.builder import Graph, Stream, index_positions
from lava_spikedattn.models.swin.lava_builder import WindowedBuilder
from lava_spikedattn.models.swin.network import patchify
from lava_spikedattn.models.vit.network import ViTConfig
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.token_linear.process import TokenLinear

__all__ = ["ViTBuilder"]


class ViTBuilder(WindowedBuilder):
    """Block diagram of a converted ViT (mirrors ``SpikingViT.run``)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.config = ViTConfig.from_json(graph.cm.config["architecture"])

    def build(self, images: torch.Tensor) -> tuple[Any, int]:
        """All processes for ``images`` (the stem, the blocks and the head, a Circuit each); returns
        the read-out port and its pipeline index."""
        x = self._patch_embed(images)
        for block in self.config.blocks():
            x = self._block(x, block)
        return self._head(x)

    def encode(self, images: torch.Tensor) -> np.ndarray:
        """The bit-serial code (T, batch, C·H·W + 1): the images' code flattened, then one input
        that never spikes (what the prefix tokens' synapses read)."""
        bits = super().encode(images).reshape(self.g.T, images.shape[0], -1)
        return np.concatenate([bits, np.zeros(bits.shape[:-1] + (1,))], axis=-1)

    def _patch_embed_members(self, g: Graph, x: Stream) -> PhaseNeuron:
        """The stem's patch embedding, reading the (batch, C·H·W + 1) input code ``x``."""
        cfg, b = self.config, g.batch
        weight = g.weight("patch_embed.weight").reshape(cfg.embed_dim, -1)
        if g.fmt is not None:
            weight = weight * float(g.cm.weights["input_max"])
        pixels = x.shape[1] - 1
        positions = index_positions((b, pixels + 1))
        images = (b, cfg.in_chans, *cfg.img_size)
        patches = patchify(positions[:, :pixels].reshape(images), cfg.patch_size).flatten(1, 2)
        silent = positions[:, pixels:, None].expand(b, cfg.prefix_tokens, patches.shape[-1])
        in_index = torch.cat([silent, patches], dim=1)[:, None].numpy()  # (batch, 1, N, C·ph·pw)
        neuron = g.neuron("patch_embed_if", (b, 1, cfg.tokens, cfg.embed_dim), bit_serial_input=True)
        # The first bias (per token) is added undivided on every input step (spec §1.4).
        g.linear("patch_embed", x, neuron, in_index=in_index, weight=weight, bias_divisor=1.0)
        return neuron

    def _head_members(self, g: Graph, x: Stream) -> tuple[TokenLinear, int]:
        cfg, b = self.config, g.batch
        if self.official:
            x = self._norm_neuron(g, "norm", "last_norm_if", x)
        if cfg.global_pool == "token":
            read = index_positions(x.shape)[:, 0, :cfg.head_tokens].flatten(1).numpy()
            return g.readout("head", x, in_index=read)
        pool = g.neuron("pool_if", (b, cfg.embed_dim))
        pooled = index_positions(x.shape)[:, 0, cfg.pooled.start:].transpose(1, 2).numpy()
        g.linear("pool", x, pool, in_index=pooled, out_index=index_positions((b, cfg.embed_dim)).numpy(),
                 weight=np.full((1, len(cfg.pooled)), 1.0 / len(cfg.pooled)), bias=np.zeros(1))
        return g.readout("head", g.stream(pool))
