"""Hugging Face BERT family → SpikedAttention network (spec §8, the release's MA-BERT variant; §1–§5).

The input is a ``BertForSequenceClassification`` (or RoBERTa / DistilBERT / ELECTRA sequence
classifier) prepared with ``ann.prepare_bert`` (every LayerNorm → ``RunningAffineNorm``, ReLU FFN,
ReLU head, eager attention) and fine-tuned, which sets the norms' running statistics. At inference
a ``RunningAffineNorm`` is a per-channel affine map ``y = a·x + c`` (``a = weight/√(running_phi+eps)``,
``c = bias``).

**Variants** (``variants.py`` locates their modules). All four fold into the same stored tensors
and run as the same ``SpikingBert`` and Lava graph; they differ only on the host side and in the
head: RoBERTa's positions count the non-padding tokens from ``padding_idx + 1``
(``BertArchitecture.position_padding_idx``, reproduced in ``SpikingBert.positions``); ELECTRA's
``embeddings_project`` is folded into the embedding tables (``fold_bert``; the official
convention's T-bit embedding code then applies to the projected sum); DistilBERT has no
token types (a one-row zero table, so ``token_type_ids`` must be 0; HF's DistilBERT ignores
them). RoBERTa's and ELECTRA's head (dense → ReLU → out_proj on token 0) and DistilBERT's
(pre_classifier → ReLU → classifier) are stored as the ``pooler`` and ``classifier`` below.

**Post-norm layers.** BERT computes ``h = Norm(dense(x) + x)`` twice per layer. Neuron layers per
encoder layer (pipeline index n, one index per line; W = T, spec §1.5):

``exact`` (7): every norm folds into what consumes its output: the next q/k/v (and fc1) linears
*and* the residual path, which becomes a per-channel (diagonal) affine synapse with a bias. The
stream neurons therefore carry the pre-norm sums::

    q_if, k_if, v_if   linear(Norm_prev(s))              per position, shared over heads and d
    stdp_qk            q̂k̂ᵀ/√d                            per (head, query row), shared over keys
    softmax_if         WOSS over present keys
    stdp_av            WOSS·V̂ / spike sum                 per (head, position)
    attn_out_if        o_proj(ctx) + a_prev·s + c_prev   per element (position, channel)
    intermediate_if    ReLU neuron on fc1(Norm_1(·))     per element (position, intermediate)
    out_if             fc2(·) + a_1·h + c_1              per element (position, channel)

where ``Norm_prev`` is the previous layer's output norm (identity for layer 0, whose input is
the host-normalised embedding) and ``Norm_1`` this layer's attention-output norm.

``official`` (9, the release's graph, spec §8.4): q_if, k_if, v_if (one index), stdp_qk,
softmax_if, stdp_av; ``attention.neuron_1_if`` on o_proj(ctx); ``attention.neuron_2_if`` on
Norm_1(neuron_1 + residual), the norm a per-step affine map on both spike streams;
``intermediate_if`` (ReLU neuron) on fc1; ``output.neuron_1_if`` on fc2; ``output.neuron_2_if``
on Norm_2(neuron_1 + residual). Nothing is folded; the stream between layers is the normalised
hidden state.

Scale granularity (spec §5.2, BERT): q/k/v, stdp_qk and stdp_av share their scale over the last
axis (per position / per (head, query row) / per (head, position)); every other neuron has one
scale per element. Per-position scales cover ``max_length`` positions (their ``seq_axis``;
``max_position_embeddings``, less RoBERTa's padding offset); a sequence of N tokens uses the
first N. Positions never present in calibration take the largest scale of the same neuron at any
position (``Calibrator``).

**Input (host side).** The embedding look-up (word + position + token type) and its norm are
computed on the host: a table look-up is not a synaptic operation on spikes. The first neuron
layer, ``embeddings_if`` (per element), receives that value one-shot at its first input step,
exactly as the stepped engine injects every integrated input. In the ``official`` convention the
spiking engines first quantise the embedding sum to T bits relative to its signed maximum
(spec §8.5, ``round(e/max·2^T)/2^T·max``); the maximum is taken over the batch's *present*
tokens only (the release includes padding), so that padding cannot change the result.

**Padding.** HF's ``attention_mask`` becomes the attention ``key_mask``: padded keys get no
attention in the ANN and their logit and WOSS neurons never fire in the SNN (the release's
MA-BERT instead used a multiplicative mask, spec §8.6; ``prepare_bert`` keeps HF's additive one,
and the SNN matches it). Padded query rows are still computed (the pooler ignores them), but
padded positions never enter calibration: tokens, keys and logits rows are masked out.

**Read-out.** The pooler takes token 0 → dense (exact: the last output norm folded in) → a ReLU
neuron ``pooler_if`` (per channel); the classifier is the membrane read-out ``classifier`` (no
spikes, like Swin's ``last_fc``). Layers: exact ``7·L + 3``, official ``9·L + 3`` (embeddings_if,
pooler_if, classifier); BERT-base (L=12): 87 exact, 111 official (the release counts 110: its
classifier is a dense pass-through, not a pipeline stage, spec §6).

**Stored tensors** (``weights.safetensors``; ``.weight`` of a norm or residual is its diagonal):
``embeddings.{word,position,token_type}_embeddings``, ``embeddings.norm.{weight,bias}``;
per layer ``layers.{i}.attention.{query,key,value,output}.{weight,bias}``,
``layers.{i}.intermediate.{weight,bias}``, ``layers.{i}.output.{weight,bias}``, and
``layers.{i}.{attention,output}.residual.{weight,bias}`` (exact) or
``layers.{i}.{attention,output}.norm.{weight,bias}`` (official); ``pooler.{weight,bias}``,
``classifier.{weight,bias}``; ``scale.<layer>`` for every neuron layer with a scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lava_spikedattn.coding import CONVENTIONS, PhaseCode, check_finite
from lava_spikedattn.energy import Synapse
from lava_spikedattn.engines import Engine, SpikingNetwork
from lava_spikedattn.layers import LayerGraph, LayerSpec
from lava_spikedattn.models.folding import UnsupportedModuleError, fold_linear

__all__ = ["BertArchitecture", "SpikingBert", "bert_layer_graph", "bert_weight_shapes", "fold_bert",
           "quantize_embedding"]

#: Keys of a BERT input dict that the network reads (everything else, e.g. labels, is ignored).
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# --- architecture -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BertArchitecture:
    """Hyper-parameters that rebuild a converted BERT-family classifier (Hugging Face's names).

    ``position_padding_idx`` (RoBERTa; absent or None: BERT's positions 0..N-1) is the padding
    id from which positions are counted: ``cumsum(ids != p)·(ids != p) + p``, so a sequence has
    at most ``max_length = max_position_embeddings - p - 1`` tokens.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    num_labels: int
    position_padding_idx: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """Longest sequence (tokens) the position table serves."""
        if self.position_padding_idx is None:
            return self.max_position_embeddings
        return self.max_position_embeddings - self.position_padding_idx - 1

    @classmethod
    def from_json(cls, arch: Mapping[str, Any]) -> BertArchitecture:
        """Validated architecture from ``config.json``; ``ValueError`` naming the field. Optional
        keys (``position_padding_idx``) may be absent, as in files written before they existed."""
        if not isinstance(arch, Mapping):
            raise ValueError(f"architecture must be an object, got {type(arch).__name__}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in arch]
        if missing:
            raise ValueError(f"architecture is missing {', '.join(repr(m) for m in missing)}")
        unknown = sorted(key for key in arch if key not in names)
        if unknown:
            raise ValueError(f"architecture has unknown key(s) {', '.join(repr(u) for u in unknown)} for a BERT "
                             f"classifier (expected {', '.join(names)})")
        for name in required:
            value = arch[name]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"architecture {name!r} must be a positive integer, got {value!r}")
        padding = arch.get("position_padding_idx")
        if padding is not None and (not isinstance(padding, int) or isinstance(padding, bool) or padding < 0):
            raise ValueError(f"architecture 'position_padding_idx' must be a non-negative integer or absent, got "
                             f"{padding!r}")
        config = cls(**{name: arch[name] for name in names if name in arch})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"architecture 'hidden_size' ({config.hidden_size}) is not a multiple of "
                             f"'num_attention_heads' ({config.num_attention_heads})")
        if config.max_length < 1:
            raise ValueError(f"architecture 'position_padding_idx' ({padding}) leaves no position of the "
                             f"{config.max_position_embeddings} 'max_position_embeddings'")
        return config

    def to_json(self) -> dict[str, Any]:
        """The JSON form; optional keys at their default are left out (a BERT's file is as before)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.default is MISSING or getattr(self, f.name) != f.default}

    @classmethod
    def from_model(cls, model: nn.Module) -> BertArchitecture:
        """Architecture of a HF BERT-family classifier (``variants.CLASSIFIERS``); ``ValueError``
        for variants the converter cannot run."""
        from lava_spikedattn.models.bert.variants import read_parts  # transformers: only to read an ANN

        parts = read_parts(model)
        first = parts.layers[0]
        config = cls(
            vocab_size=parts.word.num_embeddings,
            hidden_size=first.query.in_features,
            num_hidden_layers=len(parts.layers),
            num_attention_heads=first.heads,
            intermediate_size=first.intermediate.out_features,
            max_position_embeddings=parts.position.num_embeddings,
            type_vocab_size=1 if parts.token_type is None else parts.token_type.num_embeddings,
            num_labels=parts.classifier.out_features,
            position_padding_idx=parts.position_padding_idx,
        )
        BertArchitecture.from_json(config.to_json())
        for i, layer in enumerate(parts.layers):
            found = (layer.heads, layer.head_dim, layer.intermediate.out_features)
            if found != (config.num_attention_heads, config.head_dim, config.intermediate_size):
                raise ValueError(f"encoder layer {i}: (heads, head size, intermediate) = {found} differs from "
                                 f"layer 0's; the converter needs identical layers")
        return config


def bert_layer_graph(config: BertArchitecture, convention: str) -> list[LayerSpec]:
    """Neuron layers of the converted BERT in execution order (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    official = convention == "official"
    positions, hidden, heads = config.max_length, config.hidden_size, config.num_attention_heads
    per_token, per_inter = (positions, hidden), (positions, config.intermediate_size)
    graph = LayerGraph()
    add = graph.add

    add("embeddings_if", "phase", per_token, seq_axis=0)
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}"
        add(f"{p}.q_if", "phase", (1, positions, 1), seq_axis=1)  # (batch, heads, N, d): per position
        add(f"{p}.k_if", "phase", (1, positions, 1), seq_axis=1, new_index=False)
        add(f"{p}.v_if", "phase", (1, positions, 1), seq_axis=1, new_index=False)
        add(f"{p}.stdp_qk", "logits", (heads, positions, 1), seq_axis=1)  # per (head, query row)
        add(f"{p}.softmax_if", "woss", None)
        add(f"{p}.stdp_av", "attention_out", (heads, positions, 1), seq_axis=1)  # per (head, position)
        if official:
            add(f"{p}.attention.neuron_1_if", "phase", per_token, seq_axis=0)
            add(f"{p}.attention.neuron_2_if", "phase", per_token, seq_axis=0)
            add(f"{p}.intermediate_if", "phase", per_inter, seq_axis=0, signed=False)
            add(f"{p}.output.neuron_1_if", "phase", per_token, seq_axis=0)
            add(f"{p}.output.neuron_2_if", "phase", per_token, seq_axis=0)
        else:
            add(f"{p}.attn_out_if", "phase", per_token, seq_axis=0)
            add(f"{p}.intermediate_if", "phase", per_inter, seq_axis=0, signed=False)
            add(f"{p}.out_if", "phase", per_token, seq_axis=0)
    add("pooler_if", "phase", (hidden,), signed=False)
    add("classifier", "readout", None)
    return graph.layers


def bert_weight_shapes(config: BertArchitecture, convention: str) -> dict[str, tuple[int, ...]]:
    """Shape of every stored tensor except the scales (names: module docstring)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings": (config.vocab_size, hidden),
        "embeddings.position_embeddings": (config.max_position_embeddings, hidden),
        "embeddings.token_type_embeddings": (config.type_vocab_size, hidden),
        "embeddings.norm.weight": (hidden,),
        "embeddings.norm.bias": (hidden,),
    }
    diagonal = "norm" if convention == "official" else "residual"
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}"
        for name, out_features, in_features in (
                ("attention.query", hidden, hidden), ("attention.key", hidden, hidden),
                ("attention.value", hidden, hidden), ("attention.output", hidden, hidden),
                ("intermediate", inter, hidden), ("output", hidden, inter)):
            shapes[f"{p}.{name}.weight"] = (out_features, in_features)
            shapes[f"{p}.{name}.bias"] = (out_features,)
        for block in ("attention", "output"):
            shapes[f"{p}.{block}.{diagonal}.weight"] = shapes[f"{p}.{block}.{diagonal}.bias"] = (hidden,)
    shapes["pooler.weight"], shapes["pooler.bias"] = (hidden, hidden), (hidden,)
    shapes["classifier.weight"], shapes["classifier.bias"] = (config.num_labels, hidden), (config.num_labels,)
    return shapes


# --- folding ----------------------------------------------------------------------------------------------
def _affine(norm: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with norm(x) = a·x + c in eval mode, float64; ``path``: the norm's dotted name."""
    from lava_spikedattn.ann import RunningAffineNorm  # imports timm and transformers: the ANN side only

    if not isinstance(norm, RunningAffineNorm):
        raise UnsupportedModuleError(f"{path}: {type(norm).__name__} cannot be folded; it must be a "
                                     f"RunningAffineNorm with running statistics (run prepare_bert())")
    a = norm.weight.double() * torch.rsqrt(norm.running_phi.double() + norm.eps)
    return a.cpu(), norm.bias.double().cpu()


def fold_bert(model: nn.Module, convention: str) -> dict[str, torch.Tensor]:
    """Inference weights of a prepared BERT-family classifier, norms folded per ``convention``.

    DistilBERT has no token types: a one-row zero table is stored. ELECTRA's
    ``embeddings_project`` P (after the embedding norm a·e + c) is folded into the host-side
    tables, which it maps linearly: each table row r becomes (P·diag(a))·r and the stored
    embedding norm is weight 1, bias P·c + b. The network then needs no projection stage, and
    the first neuron layer sees the projected, normalised embedding exactly as the encoder does.
    """
    from lava_spikedattn.models.bert.variants import read_parts  # transformers: only to read an ANN

    official = convention == "official"
    dtype = next(model.parameters()).dtype
    parts = read_parts(model)
    paths = {module: f"model.{name}" for name, module in model.named_modules()}
    hidden = parts.layers[0].query.in_features
    tables = {"word_embeddings": parts.word.weight, "position_embeddings": parts.position.weight,
              "token_type_embeddings": (torch.zeros(1, parts.word.embedding_dim) if parts.token_type is None
                                        else parts.token_type.weight)}
    tables = {key: value.double().cpu() for key, value in tables.items()}
    a, c = _affine(parts.norm, paths[parts.norm])
    if parts.project is not None:
        weight, c = fold_linear(parts.project, a, c)
        tables = {key: value @ weight.T for key, value in tables.items()}
        a = torch.ones(hidden, dtype=torch.float64)
    out: dict[str, torch.Tensor] = {f"embeddings.{key}": value for key, value in tables.items()}
    out["embeddings.norm.weight"], out["embeddings.norm.bias"] = a, c
    # Norm of the stream entering the layer, still to be applied (exact): none for layer 0.
    previous = (torch.ones(hidden, dtype=torch.float64), torch.zeros(hidden, dtype=torch.float64))
    for i, layer in enumerate(parts.layers):
        p = f"layers.{i}"
        norm_1, norm_2 = _affine(layer.norm_1, paths[layer.norm_1]), _affine(layer.norm_2, paths[layer.norm_2])
        for name in ("query", "key", "value"):
            a, c = (None, None) if official else previous
            out[f"{p}.attention.{name}.weight"], out[f"{p}.attention.{name}.bias"] = fold_linear(
                getattr(layer, name), a, c)
        out[f"{p}.attention.output.weight"], out[f"{p}.attention.output.bias"] = fold_linear(layer.output)
        a, c = (None, None) if official else norm_1
        out[f"{p}.intermediate.weight"], out[f"{p}.intermediate.bias"] = fold_linear(layer.intermediate, a, c)
        out[f"{p}.output.weight"], out[f"{p}.output.bias"] = fold_linear(layer.ffn_output)
        if official:
            out[f"{p}.attention.norm.weight"], out[f"{p}.attention.norm.bias"] = norm_1
            out[f"{p}.output.norm.weight"], out[f"{p}.output.norm.bias"] = norm_2
        else:
            out[f"{p}.attention.residual.weight"], out[f"{p}.attention.residual.bias"] = previous
            out[f"{p}.output.residual.weight"], out[f"{p}.output.residual.bias"] = norm_1
        previous = norm_2
    a, c = (None, None) if official else previous
    out["pooler.weight"], out["pooler.bias"] = fold_linear(parts.pooler, a, c)
    out["classifier.weight"], out["classifier.bias"] = fold_linear(parts.classifier)
    return {key: value.to(dtype).contiguous() for key, value in out.items()}


def quantize_embedding(e: torch.Tensor, present: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The release's T-bit input code of the embedding sum (spec §8.5), float64 internally.

    ``round(e/m·2^T)/2^T·m`` with m the signed maximum of ``e`` over the present tokens
    (``present``: (batch, N) bool); unchanged if m ≤ 0.
    """
    m = e[present].max().double() if bool(present.any()) else torch.tensor(0.0, dtype=torch.float64)
    if m <= 0:
        return e
    full = 2.0**timesteps
    return (torch.round(e.double() / m * full) / full * m).to(e.dtype)


# --- the network ------------------------------------------------------------------------------------------
class SpikingBert(SpikingNetwork):
    """Converted BERT classifier; ``forward(inputs) → logits (batch, num_labels)``.

    ``inputs`` is a dict as HF tokenizers return it: ``input_ids`` (batch, N) and optionally
    ``attention_mask`` (batch, N; 1 = token, 0 = padding; default all 1) and ``token_type_ids``
    (default 0); other keys (``labels``) are ignored. N ≤ ``config.max_length`` (the position
    table's size, less RoBERTa's padding offset). Streams
    are (batch, N, hidden) decoded values; attention tensors are (batch, heads, N, head_dim).
    """

    def __init__(self, config: BertArchitecture, convention: str, weights: Mapping[str, torch.Tensor],
                 code: PhaseCode | None = None, engine: str = "ann") -> None:
        super().__init__(bert_layer_graph(config, convention), weights, code, engine)
        self.config = config
        self.official = convention == "official"

    def parse_inputs(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, present (bool), token_type_ids), validated, on this module's device."""
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise ValueError("SpikingBert expects a dict with 'input_ids' (batch, N) and optionally "
                             f"'attention_mask' and 'token_type_ids', got {type(inputs).__name__}")
        check_finite("input", {key: inputs.get(key) for key in INPUT_KEYS})
        cfg = self.config
        ids = torch.as_tensor(inputs["input_ids"], device=self.device)
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor (batch, N), got {ids.dtype} {tuple(ids.shape)}")
        if ids.shape[1] > cfg.max_length and cfg.position_padding_idx is not None:
            raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than the {cfg.max_length} tokens that "
                             f"RoBERTa positions allow (max_position_embeddings {cfg.max_position_embeddings} - "
                             f"position_padding_idx {cfg.position_padding_idx} - 1)")
        if ids.shape[1] > cfg.max_length:
            raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than max_position_embeddings "
                             f"({cfg.max_position_embeddings})")
        tensors = {}
        for key, default in (("attention_mask", 1), ("token_type_ids", 0)):
            value = inputs.get(key)
            value = torch.full_like(ids, default) if value is None else torch.as_tensor(value, device=self.device)
            if tuple(value.shape) != tuple(ids.shape):
                raise ValueError(f"{key} has shape {tuple(value.shape)}, input_ids {tuple(ids.shape)}")
            tensors[key] = value
        for name, value, limit in (("input_ids", ids, cfg.vocab_size),
                                   ("token_type_ids", tensors["token_type_ids"], cfg.type_vocab_size)):
            if bool(((value < 0) | (value >= limit)).any()):
                raise ValueError(f"{name} must lie in [0, {limit}), found values in "
                                 f"[{int(value.min())}, {int(value.max())}]")
        mask = tensors["attention_mask"]
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
        present = mask == 1
        if not bool(present.any(dim=1).all()):
            raise ValueError("every sequence needs at least one token with attention_mask 1")
        return ids.long(), present, tensors["token_type_ids"].long()

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position ids (batch, N) of ``ids``: 0..N-1 (BERT), or RoBERTa's count of the tokens
        that are not ``position_padding_idx`` p, offset by p (HF's
        ``create_position_ids_from_input_ids``: padding ids get p itself)."""
        p = self.config.position_padding_idx
        if p is None:
            return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        keep = (ids != p).long()
        return torch.cumsum(keep, dim=1) * keep + p

    def embed(self, inputs: Any, code: PhaseCode | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Host side of the input: (normalised embeddings (batch, N, hidden), present (batch, N)).

        ``code`` None is the ANN; with a code, the official convention also applies the
        release's T-bit embedding quantisation (spec §8.5).
        """
        ids, present, types = self.parse_inputs(inputs)
        e = (F.embedding(ids, self.weight("embeddings.word_embeddings"))
             + F.embedding(types, self.weight("embeddings.token_type_embeddings"))
             + F.embedding(self.positions(ids), self.weight("embeddings.position_embeddings")))
        if self.official and code is not None:
            e = quantize_embedding(e, present, code.timesteps)
        return e * self.weight("embeddings.norm.weight") + self.weight("embeddings.norm.bias"), present

    def run(self, inputs: Any, engine: Engine) -> torch.Tensor:
        x, present = self.embed(inputs, engine.code)
        tokens = present[:, :, None]  # (batch, N, 1): calibration mask of per-token layers
        key_mask, query_mask = present[:, None, None, :], present[:, None, :, None]
        x = engine.neuron("embeddings_if", x, mask=tokens)
        for i in range(self.config.num_hidden_layers):
            x = self._layer(x, f"layers.{i}", engine, tokens, key_mask, query_mask)
        pooled = engine.neuron("pooler_if", self._linear("pooler", x[:, 0], engine), signed=False)
        return self._linear("classifier", pooled, engine)  # classifier: membrane read-out, no spikes

    def synapses(self, inputs: Any) -> list[Synapse]:
        """Synaptic operations per sentence of ``inputs`` (N tokens, padding included).

        Per encoder layer: q/k/v, the trace-driven QKᵀ and WOSS·V, the logit → WOSS connection,
        the attention output, the residual synapses, fc1 (``intermediate``) and fc2 (``output``);
        official: the norms on the stream. Then the pooler and the classifier. The host-side
        embedding look-up is not a synaptic operation. ``official`` is False for the residual
        synapses, which the release does not count (spec §7.5).
        """
        n = self.parse_inputs(inputs)[0].shape[1]
        cfg, official = self.config, self.official
        hidden, inter, heads, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
        pairs = heads * n * n
        rows: list[Synapse] = []
        x = "embeddings_if"
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}"
            attn_out = f"{p}.attention.neuron_1_if" if official else f"{p}.attn_out_if"
            rows += [
                Synapse(f"{p}.qkv", n * hidden * 3 * hidden, hidden, (x,), (f"{p}.q_if", f"{p}.k_if", f"{p}.v_if")),
                Synapse(f"{p}.qk", pairs * d, d, (f"{p}.q_if", f"{p}.k_if"), (f"{p}.stdp_qk",)),
                Synapse(f"{p}.woss", pairs, 1, (f"{p}.stdp_qk",), (f"{p}.softmax_if",)),
                Synapse(f"{p}.av", pairs * d, n, (f"{p}.softmax_if", f"{p}.v_if"), (f"{p}.stdp_av",)),
                Synapse(f"{p}.attention.output", n * hidden * hidden, hidden, (f"{p}.stdp_av",), (attn_out,)),
            ]
            h = attn_out
            if official:
                h = f"{p}.attention.neuron_2_if"
                rows.append(Synapse(f"{p}.attention.norm", n * hidden, 1, (attn_out,), (h,)))
            rows.append(Synapse(f"{p}.attention.residual", n * hidden, 1, (x,), (h,), official=False))
            rows.append(Synapse(f"{p}.intermediate", n * hidden * inter, hidden, (h,), (f"{p}.intermediate_if",)))
            out = f"{p}.output.neuron_1_if" if official else f"{p}.out_if"
            rows.append(Synapse(f"{p}.output", n * inter * hidden, inter, (f"{p}.intermediate_if",), (out,)))
            x = out
            if official:
                x = f"{p}.output.neuron_2_if"
                rows.append(Synapse(f"{p}.output.norm", n * hidden, 1, (out,), (x,)))
            rows.append(Synapse(f"{p}.output.residual", n * hidden, 1, (h,), (x,), official=False))
        rows.append(Synapse("pooler", hidden * hidden, hidden, (x,), ("pooler_if",)))
        rows.append(Synapse("classifier", hidden * cfg.num_labels, hidden, ("pooler_if",), ("classifier",)))
        return rows

    def _linear(self, key: str, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        return F.linear(x, self.weight(f"{key}.weight"), self.weight(f"{key}.bias") * engine.bias_gain)

    def _diagonal(self, key: str, x: torch.Tensor, engine: Engine) -> torch.Tensor:
        """A per-channel affine synapse (folded residual, or official's norm): a·x + c·gain."""
        return x * self.weight(f"{key}.weight") + self.weight(f"{key}.bias") * engine.bias_gain

    def _layer(self, s: torch.Tensor, p: str, engine: Engine, tokens: torch.Tensor, key_mask: torch.Tensor,
               query_mask: torch.Tensor) -> torch.Tensor:
        ctx = self._attention(s, p, engine, key_mask, query_mask)
        if self.official:
            h = engine.neuron(f"{p}.attention.neuron_1_if", self._linear(f"{p}.attention.output", ctx, engine),
                              mask=tokens)
            h = engine.neuron(f"{p}.attention.neuron_2_if", self._diagonal(f"{p}.attention.norm", h + s, engine),
                              mask=tokens)
            m = engine.neuron(f"{p}.intermediate_if", self._linear(f"{p}.intermediate", h, engine), signed=False,
                              mask=tokens)
            o = engine.neuron(f"{p}.output.neuron_1_if", self._linear(f"{p}.output", m, engine), mask=tokens)
            return engine.neuron(f"{p}.output.neuron_2_if", self._diagonal(f"{p}.output.norm", o + h, engine),
                                 mask=tokens)
        h = engine.neuron(f"{p}.attn_out_if", self._linear(f"{p}.attention.output", ctx, engine)
                          + self._diagonal(f"{p}.attention.residual", s, engine), mask=tokens)
        m = engine.neuron(f"{p}.intermediate_if", self._linear(f"{p}.intermediate", h, engine), signed=False,
                          mask=tokens)
        return engine.neuron(f"{p}.out_if", self._linear(f"{p}.output", m, engine)
                             + self._diagonal(f"{p}.output.residual", h, engine), mask=tokens)

    def _attention(self, s: torch.Tensor, p: str, engine: Engine, key_mask: torch.Tensor,
                   query_mask: torch.Tensor) -> torch.Tensor:
        """HF's ``BertSelfAttention`` on (batch, N, hidden) → the context (batch, N, hidden)."""
        b, n, hidden = s.shape
        heads, d = self.config.num_attention_heads, self.config.head_dim
        q, k, v = (self._linear(f"{p}.attention.{name}", s, engine).reshape(b, n, heads, d).transpose(1, 2)
                   for name in ("query", "key", "value"))
        ctx = engine.attention(p, q, k, v, None, key_mask=key_mask, query_mask=query_mask)
        return ctx.transpose(1, 2).reshape(b, n, hidden)
