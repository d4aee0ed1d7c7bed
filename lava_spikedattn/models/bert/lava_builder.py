"""A converted BERT classifier as Lava processes: the block diagram of ``SpikingBert.run``
(network.py).

The embedding (look-up and norm) is computed on the host and enters ``embeddings_if`` one-shot as
values (no input spike code); every encoder layer is one
:class:`~lava_spikedattn.procs.circuit.process.Circuit`; HF's ``attention_mask`` becomes the
attention core's ``key_mask``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from lava_spikedattn.builder import FamilyBuilder, Graph, LavaBuildError, Stream, attention_core, index_positions
from lava_spikedattn.coding import check_finite
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.wiring import one_shot

__all__ = ["BertBuilder"]


class BertBuilder(FamilyBuilder):
    """Block diagram of a converted BERT classifier (mirrors ``SpikingBert.run``)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        cm = graph.cm
        # the host embedding in float64, as the reference engines compute it; only its small tensors are
        # widened (every Lava worker forks from this process's memory): the word table stays as stored,
        # its looked-up rows widen exactly when added to the float64 position embeddings
        weights = {key: value.double() if key.startswith("embeddings.") and key != "embeddings.word_embeddings"
                   else value for key, value in cm.weights.items()}
        self.network = cm.family.network(cm.config["architecture"], cm.config["convention"], weights, cm.code, "ann")
        self.config = self.network.config
        self.official = graph.code.official

    @classmethod
    def check_input(cls, cm: ConvertedModel, x: Any) -> tuple[Mapping[str, Any], int]:
        """A tokenizer dict with ``input_ids`` (batch, N); the embedding validates the rest."""
        if not isinstance(x, Mapping) or "input_ids" not in x:
            raise LavaBuildError(f"input must be a dict with 'input_ids' (batch, N) as HF tokenizers return, "
                                 f"got {type(x).__name__}")
        ids = torch.as_tensor(x["input_ids"])
        if ids.dim() != 2:
            raise LavaBuildError(f"input_ids must be (batch, N), got shape {tuple(ids.shape)}")
        check_finite("input", cm.family.model_input(x))
        return x, ids.shape[0]

    @classmethod
    def layout(cls, cm: ConvertedModel, x: Mapping[str, Any]) -> Hashable:
        """The padding shapes the graph (the attention's key mask): the batch's mask."""
        ids = torch.as_tensor(x["input_ids"])
        mask = x.get("attention_mask")
        return tuple(ids.shape), None if mask is None else torch.as_tensor(mask).numpy().tobytes()

    def encode(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """The embeddings, injected at step 0 into the embedding neurons (sets the key mask)."""
        g = self.g
        try:
            x, present = self.network.embed(inputs, g.code)  # validates the tokenizer tensors
        except ValueError as error:
            raise LavaBuildError(str(error)) from None
        self.key_mask = present[:, None, None, :].numpy()  # (batch, 1, 1, N)
        return one_shot(x.detach().double(), g.code, 1, neuron=g.populations["embeddings_if"])

    def build(self, inputs: Mapping[str, Any]) -> tuple[Any, int]:
        """All processes for ``inputs`` (the embedding neurons, the encoder layers and the head, a
        Circuit each); returns the read-out port and its pipeline index."""
        g = self.g
        shape = (*torch.as_tensor(inputs["input_ids"]).shape, self.config.hidden_size)
        source = g.input(np.zeros((1, *shape)))  # its data needs the embedding neurons' units: loaded below
        s = g.circuit(Stream(source.s_out, None, -1, shape), "embeddings", self._embeddings)
        source.load(self.encode(inputs))  # also sets the key mask the layers need
        for i in range(self.config.num_hidden_layers):
            s = g.circuit(s, f"layers.{i}", lambda sub, x_in, i=i: self._layer(sub, x_in, f"layers.{i}"))
        return g.head_circuit(s, self._head_members)

    def _embeddings(self, g: Graph, x: Stream) -> PhaseNeuron:
        """The stem: the host's embeddings, injected one-shot, into the first neurons."""
        neuron = g.neuron("embeddings_if", x.shape)
        g.link(x.s_out, neuron.a_in)
        return neuron

    def _head_members(self, g: Graph, s: Stream) -> tuple[TokenLinear, int]:
        """The pooler on the first token, then the classifier."""
        b, n, hidden = s.shape
        pooler = g.neuron("pooler_if", (b, hidden))
        first_token = index_positions(s.shape)[:, 0].numpy()
        g.linear("pooler", s, pooler, in_index=first_token)
        return g.readout("classifier", g.stream(pooler))

    def _diagonal(self, g: Graph, key: str, source: Stream, destination: PhaseNeuron, bias: bool = True) -> None:
        """A per-channel affine synapse (folded residual, or official's norm)."""
        weight = g.weight(f"{key}.weight")
        g.linear(key, source, destination, weight=np.diag(weight),
                 bias=g.weight(f"{key}.bias") if bias else np.zeros_like(weight))

    def _layer(self, g: Graph, s: Stream, p: str) -> PhaseNeuron:
        b, n, hidden = s.shape
        heads, d = self.config.num_attention_heads, self.config.head_dim
        split = index_positions((b, n, hidden)).reshape(b, n, heads, d).transpose(1, 2).numpy()
        qkv = {}
        for name, key in (("q_if", "query"), ("k_if", "key"), ("v_if", "value")):
            qkv[name] = g.neuron(f"{p}.{name}", (b, heads, n, d))
            g.linear(f"{p}.attention.{key}", s, qkv[name], out_index=split)
        ctx = g.stream(attention_core(g, p, qkv, key_mask=self.key_mask))
        merged = index_positions((b, heads, n, d)).transpose(1, 2).reshape(b, n, hidden).numpy()
        if self.official:
            n1 = g.neuron(f"{p}.attention.neuron_1_if", s.shape)
            g.linear(f"{p}.attention.output", ctx, n1, in_index=merged)
            h = g.neuron(f"{p}.attention.neuron_2_if", s.shape)
            self._diagonal(g, f"{p}.attention.norm", g.stream(n1), h)
            self._diagonal(g, f"{p}.attention.norm", s, h, bias=False)
            h = g.stream(h)
            m = g.neuron(f"{p}.intermediate_if", (b, n, self.config.intermediate_size))
            g.linear(f"{p}.intermediate", h, m)
            o1 = g.neuron(f"{p}.output.neuron_1_if", s.shape)
            g.linear(f"{p}.output", g.stream(m), o1)
            out = g.neuron(f"{p}.output.neuron_2_if", s.shape)
            self._diagonal(g, f"{p}.output.norm", g.stream(o1), out)
            self._diagonal(g, f"{p}.output.norm", h, out, bias=False)
            return out
        h = g.neuron(f"{p}.attn_out_if", s.shape)
        g.linear(f"{p}.attention.output", ctx, h, in_index=merged)
        self._diagonal(g, f"{p}.attention.residual", s, h)
        h = g.stream(h)
        m = g.neuron(f"{p}.intermediate_if", (b, n, self.config.intermediate_size))
        g.linear(f"{p}.intermediate", h, m)
        out = g.neuron(f"{p}.out_if", s.shape)
        g.linear(f"{p}.output", g.stream(m), out)
        self._diagonal(g, f"{p}.output.residual", h, out)
        return out
