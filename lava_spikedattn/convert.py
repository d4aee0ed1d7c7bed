"""Calibration and conversion of prepared ANNs, the converted-model file, and base search.

Pipeline (spec §5)::

    cm = convert(prepared_model, calibration_batches, code)   # fold norms, calibrate scales
    cm.save(folder); cm = ConvertedModel.load(folder)         # config.json + weights.safetensors
    snn = cm.to_reference(engine="closed")                    # or "stepped"; an nn.Module
    logits = snn(x)

A family module (``lava_spikedattn.models.<family>``) writes its network once, against the small
:class:`Engine` interface (``input_layer`` / ``neuron`` / ``attention``). Three engines run it:

* ``"ann"``: no spikes; neurons are identities (ReLU for unsigned ones) and attention is float
  softmax. It is the folded ANN: calibration observes the neuron inputs through it.
* ``"closed"``: every neuron is the closed-form phase code (``PhaseCode.quantize``) and attention
  the closed-form SpikedAttention core (:mod:`lava_spikedattn.reference.closed`).
* ``"stepped"``: every neuron layer and the attention core run the time-stepped dynamics
  (:mod:`lava_spikedattn.reference.stepped` / ``functional``), each operator with its input
  injected one-shot. Integration is linear, so it equals ``"closed"`` to float64 rounding.

Linear layers act on decoded values in every engine; their biases are injected per input step
divided by ``code.bias_divisor`` and so integrate to ``b·code.bias_gain`` (exactly ``b`` in the
exact convention). The first layer's bias is not divided (spec §1.4): ``b·(1−2^-T)``.

Variable-length inputs (BERT): a layer whose scale is indexed by token position declares that
axis as its ``seq_axis``; its scale covers the longest sequence (``max_position_embeddings``)
and an input of N tokens uses the first N entries. Padding is passed as masks: ``mask`` on
:meth:`Engine.neuron` and ``query_mask`` on :meth:`Engine.attention` only keep padded positions
out of calibration (the spiking engines compute them like any token), while ``key_mask`` on
:meth:`Engine.attention` removes absent keys from the computation: the ANN gives them zero
attention weight, the spiking engines never let their logit and WOSS neurons fire.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from lava_spikedattn import ann
from lava_spikedattn.coding import CONVENTIONS, PhaseCode, check_finite
from lava_spikedattn.energy import Synapse
from lava_spikedattn.models import ModelFamily, family_of, get_family
from lava_spikedattn.reference import closed, functional
from lava_spikedattn.reference.stepped import BitSerialEncoderSim, ConvertNeuronSim, PhaseNeuronSim

__all__ = [
    "ATTENTION_LAYERS",
    "ENGINES",
    "BaseSearch",
    "ConvertedModel",
    "ConvertedModelError",
    "Engine",
    "LayerSpec",
    "LayerStats",
    "SpikingNetwork",
    "calibration_input",
    "check_save_folder",
    "convert",
    "fit_scale",
    "log_error",
    "search_base",
    "tensor_sha256",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ENGINES = ("closed", "stepped", "ann")
CALIBRATION_METHODS = ("max", "percentile")
LAYER_KINDS = ("convert", "phase", "logits", "woss", "attention_out", "readout")
# Neuron layers of one attention core, as suffixes of the core's prefix (release names, §5.4).
ATTENTION_LAYERS = ("q_if", "k_if", "v_if", "stdp_qk", "softmax_if", "stdp_av")
# Relative error allowed between the prepared ANN and the folded network (float32 rounding).
FOLDING_TOLERANCE = 1e-4


class ConvertedModelError(ValueError):
    """A converted-model folder is missing, incomplete, inconsistent or corrupt."""


# --- layer graph ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One neuron layer of the converted network.

    Attributes:
        name: dotted name, e.g. ``layers.0.blocks.1.stdp_qk``; its scale is ``scale.<name>``.
        kind: ``convert`` (bit-serial input + convert neuron), ``phase`` (phase neuron),
            ``logits`` (phase neuron with one scale per row, feeding WOSS), ``woss`` (WOSS
            softmax, no scale), ``attention_out`` (attention×V neuron, membrane divided by the
            spike sum), ``readout`` (membrane read-out of the classifier, no spikes, no scale).
        index: pipeline position n; the layer's input window is [n·T, (n+1)·T) (W = T, §1.5).
            q, k and v share one index.
        signed: bipolar neuron (True) or ReLU neuron (False).
        scale_shape: shape of the calibrated scale (the activation's shape without the batch
            axis, shared axes set to 1), or None for layers without a scale.
        seq_axis: the axis of ``scale_shape`` indexed by token position, for variable-length
            inputs (BERT), or None. ``scale_shape[seq_axis]`` is the longest sequence; an
            activation of N tokens uses the first N entries (:func:`fit_scale`). Written to the
            layer's JSON only when set.
    """

    name: str
    kind: str
    index: int
    signed: bool = True
    scale_shape: tuple[int, ...] | None = None
    seq_axis: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name}: kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if self.seq_axis is not None and (self.scale_shape is None
                                          or not 0 <= self.seq_axis < len(self.scale_shape)):
            raise ValueError(f"layer {self.name}: seq_axis {self.seq_axis} is not an axis of its scale shape "
                             f"{self.scale_shape}")

    def to_json(self) -> dict[str, Any]:
        shape = None if self.scale_shape is None else list(self.scale_shape)
        out = {"name": self.name, "kind": self.kind, "index": self.index, "signed": self.signed,
               "scale_shape": shape}
        if self.seq_axis is not None:
            out["seq_axis"] = self.seq_axis
        return out


def fit_scale(spec: LayerSpec | None, scale: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """``scale`` of layer ``spec`` cut to an activation of ``shape`` (batch axis first).

    Only a layer with a ``seq_axis`` is cut: to the activation's sequence length along that
    axis. Other scales are returned unchanged. Raises ``ValueError`` for a sequence longer than
    the scale covers.
    """
    if spec is None or spec.seq_axis is None or shape is None:
        return scale
    axis = spec.seq_axis
    if len(shape) != scale.dim() + 1:
        raise ValueError(f"layer {spec.name}: activation of shape {tuple(shape)} does not match its scale "
                         f"shape {tuple(scale.shape)} (batch axis first)")
    length = int(shape[axis + 1])
    if length > scale.shape[axis]:
        raise ValueError(f"layer {spec.name}: a sequence of {length} tokens is longer than the "
                         f"{scale.shape[axis]} positions its scale covers")
    return scale.narrow(axis, 0, length)


def layer_count(layers: Sequence[LayerSpec]) -> int:
    """Number of pipeline layers (distinct indices)."""
    return len({layer.index for layer in layers})


def steps_per_inference(layers: Sequence[LayerSpec], timesteps: int) -> int:
    """Time steps from the first input step to the read-out: (n_layers−1)·W + T, W = T (§6)."""
    return (layer_count(layers) - 1) * timesteps + timesteps


# --- engines ------------------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Spike bookkeeping of one layer during one forward (summed over the batch).

    ``neurons``: population size; ``spikes``: neurons that fired (one spike each; for the
    ``input`` entry, the bits of the bit-serial code); ``saturated``: values above the top level
    (clipped to it by the code; for ``input``, pixels beyond the encoder's full scale).
    """

    neurons: int = 0
    spikes: int = 0
    saturated: int = 0
    active_steps: int = 0

    @classmethod
    def from_fire_steps(cls, fire_step: torch.Tensor, timesteps: int,
                        saturated: int = 0) -> LayerStats:
        """Statistics of a population from its fire steps (−1: silent).

        ``active_steps``: neuron updates in the fire window, the energy model's ``N·p``
        (spec §7.2): a neuron firing at step k was updated k + 1 times, a silent one T times.
        """
        k = torch.as_tensor(fire_step)
        fired = k >= 0
        active = torch.where(fired, k + 1, torch.full_like(k, timesteps))
        return cls(int(k.numel()), int(fired.sum()), int(saturated), int(active.sum()))


class Observer(ABC):
    """Receives the ANN value entering every neuron (calibration, base search)."""

    @abstractmethod
    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        """``x``: (batch, *activation shape) value integrated by layer ``name``.

        ``mask``: bool, broadcastable to ``x``, False where the value belongs to padding (it
        must not count); None: every value counts.
        """

    def observe_input(self, x: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """``x``: the raw network input (before the bit-serial code); ignored by default."""


class Engine(ABC):
    """What a family's network code calls at every spike point.

    ``bias_gain`` multiplies the biases of linear layers and the injected attention bias (what
    a bias injected per step integrates to); network code computes linear layers itself.
    ``code`` is the phase code the engine simulates (None for the ANN engine): network code
    reads it for host-side input coding that only the spiking network has.
    ``attention_maps``: set it to a dict to keep every attention core's probabilities
    (``prefix`` → (batch, ..., N, N): the softmax, or the WOSS spikes' normalised weights).
    """

    bias_gain: float = 1.0
    code: PhaseCode | None = None

    def __init__(self) -> None:
        self.stats: dict[str, LayerStats] = {}
        self.attention_maps: dict[str, torch.Tensor] | None = None

    @abstractmethod
    def input_layer(self, name: str, x: torch.Tensor, linear: Callable[[torch.Tensor], torch.Tensor],
                    bias: torch.Tensor) -> torch.Tensor:
        """First layer: ``linear(x) + bias`` through the bit-serial input code and convert neuron.

        ``linear`` maps the input (batch, ...) to the layer's activation without bias; ``bias``
        broadcasts to that activation.
        """

    @abstractmethod
    def neuron(self, name: str, x: torch.Tensor, signed: bool = True,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded output of neuron layer ``name`` integrating ``x`` (batch, *scale shape).

        ``mask`` (bool, broadcastable to ``x``, False at padded positions) only keeps padding
        out of calibration; every position is computed.
        """

    @abstractmethod
    def attention(self, prefix: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  bias: torch.Tensor | None, key_mask: torch.Tensor | None = None,
                  query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention core ``prefix`` (layers ``prefix.<ATTENTION_LAYERS>``).

        q, k, v: (batch, ..., N, d); bias: additive logit bias broadcastable to (batch, ..., N, N).
        ``key_mask``: bool, broadcastable to (batch, ..., N, N), True where the key is present;
        absent keys get no attention (ANN: weight 0; spiking: their logit and WOSS neurons
        never fire). ``query_mask``: bool, broadcastable to (batch, ..., N, 1), False for
        padded query rows (still computed; kept out of calibration only).
        Returns softmax(q·kᵀ/√d + bias)·v over present keys, (batch, ..., N, d), as the engine
        computes it.
        """


def _attention_names(prefix: str) -> list[str]:
    return [f"{prefix}.{suffix}" for suffix in ATTENTION_LAYERS]


class AnnEngine(Engine):
    """The folded ANN: identity (or ReLU) neurons, float softmax; reports to an observer."""

    def __init__(self, observer: Observer | None = None) -> None:
        super().__init__()
        self.observer = observer

    def _observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        if self.observer is not None:
            self.observer.observe(name, x, signed, mask)

    def input_layer(self, name, x, linear, bias):
        if self.observer is not None:
            self.observer.observe_input(x)
        y = linear(x) + bias
        self._observe(name, y, True)
        return y

    def neuron(self, name, x, signed=True, mask=None):
        self._observe(name, x, signed, mask)
        return x if signed else F.relu(x)

    def attention(self, prefix, q, k, v, bias, key_mask=None, query_mask=None):
        n_q, n_k, n_v, n_logits, _, n_out = _attention_names(prefix)
        # A key counts in calibration if it is present for any query: (batch, ..., M, 1).
        key_tokens = None if key_mask is None else key_mask.any(dim=-2, keepdim=True).transpose(-1, -2)
        for name, value, mask in ((n_q, q, query_mask), (n_k, k, key_tokens), (n_v, v, key_tokens)):
            self._observe(name, value, True, mask)
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if bias is not None:
            logits = logits + bias
        pairs = _and_masks(key_mask, query_mask)
        self._observe(n_logits, logits, True, pairs)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask, -math.inf)
        probabilities = torch.softmax(logits, dim=-1)
        if self.attention_maps is not None:
            self.attention_maps[prefix] = probabilities
        out = probabilities @ v
        self._observe(n_out, out, True, query_mask)
        return out


def _and_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return a & b


class _SpikingEngine(Engine):
    """Shared state of the closed and stepped engines: code, scales, spike statistics."""

    def __init__(self, code: PhaseCode, scale: Callable[[str, Sequence[int] | None], torch.Tensor],
                 input_max: torch.Tensor | None) -> None:
        super().__init__()
        self.code = code
        self.scale = scale  # (layer name, activation shape) → its scale, cut to that shape
        self.input_max = input_max
        self.bias_gain = code.bias_gain
        self.input_bias_gain = 1.0 - 2.0**-code.timesteps  # first layer: bias not divided (§1.4)

    def _record(self, name: str, fire_step: torch.Tensor, saturated: torch.Tensor | int) -> None:
        self.stats[name] = LayerStats.from_fire_steps(fire_step, self.code.timesteps, int(saturated))

    def _record_neuron(self, name: str, x: torch.Tensor, scale: torch.Tensor, signed: bool,
                       present: torch.Tensor | None = None) -> None:
        """Statistics of a neuron layer; neurons outside ``present`` (absent keys) never fire."""
        fire_step = self.code.fire_step(x, scale, signed)
        saturated = self.code.saturated(x, scale, signed)
        if present is not None:
            fire_step, saturated = fire_step.masked_fill(~present, -1), saturated & present
        self._record(name, fire_step, saturated.sum())

    def _closed_neuron(self, name: str, x: torch.Tensor, signed: bool) -> torch.Tensor:
        scale = self.scale(name, x.shape)
        k = self.code.fire_step(x, scale, signed)
        self._record(name, k, self.code.saturated(x, scale, signed).sum())
        return self.code.decode(k, torch.sign(x), scale.to(x.dtype))

    def _full_scale(self, x: torch.Tensor) -> float:
        """Full-scale value of the bit-serial input code; starts the ``input`` statistics."""
        if self.input_max is None:
            raise RuntimeError("this converted model has no calibrated input_max")
        full_scale = float(self.input_max)
        self.stats["input"] = LayerStats(x.numel(), 0, int((x.abs() > full_scale).sum()))
        return full_scale

    def _closed_attention(self, prefix: str, q, k, v, bias, key_mask=None) -> torch.Tensor:
        """Closed-form core (spec §3, §4), recording the statistics of its six layers.

        Absent keys (``key_mask`` False) are neither fired nor counted in the logits and WOSS
        layers' spikes (their neurons stay in the population size).
        """
        n_q, n_k, n_v, n_logits, n_woss, n_out = _attention_names(prefix)
        code = self.code
        s_q, s_k = self.scale(n_q, q.shape), self.scale(n_k, k.shape)
        self._record_neuron(n_q, q, s_q, True)
        self._record_neuron(n_k, k, s_k, True)
        logits = closed.attention_logits(q, k, code, s_q, s_k, bias)
        s_logits = self.scale(n_logits, logits.shape)
        present = None if key_mask is None else key_mask.expand_as(logits)
        self._record_neuron(n_logits, logits, s_logits, True, present)
        woss = closed.woss(logits, code, s_logits, key_mask=present)
        self._record(n_woss, woss.fire_step, 0)
        if self.attention_maps is not None:
            self.attention_maps[prefix] = woss.probabilities
        v_hat = self._closed_neuron(n_v, v, True)
        return self._closed_neuron(n_out, woss.probabilities @ v_hat, True)


class ClosedEngine(_SpikingEngine):
    """Closed-form phase code at every spike point (fast)."""

    def input_layer(self, name, x, linear, bias):
        value, bits = closed.bit_serial(x, self.code.timesteps, self._full_scale(x))
        self.stats["input"].spikes = int(bits.sum())
        y = linear(value.to(x.dtype)) + bias * self.input_bias_gain
        return self._closed_neuron(name, y, True)

    def neuron(self, name, x, signed=True, mask=None):
        return self._closed_neuron(name, x, signed)

    def attention(self, prefix, q, k, v, bias, key_mask=None, query_mask=None):
        return self._closed_attention(prefix, q, k, v, bias, key_mask)


class SteppedEngine(_SpikingEngine):
    """Time-stepped dynamics at every spike point (the oracle; slow).

    Stream neurons run :class:`PhaseNeuronSim` over their 2T steps with the integrated input
    injected at the first input step; the input layer runs the bit-serial encoder into a
    :class:`ConvertNeuronSim`, applying the first linear layer to every step's bits; the attention
    core runs ``functional.spiking_attention(engine="stepped")``. The attention core's internal
    spike counts are taken from the closed form (which it equals; tested).
    """

    def input_layer(self, name, x, linear, bias):
        encoder = BitSerialEncoderSim(x, self.code.timesteps, self._full_scale(x))
        steps = [linear(encoder.step().to(x.dtype)) + bias for _ in range(self.code.timesteps)]
        scale = self.scale(name, steps[0].shape)
        neuron = ConvertNeuronSim(self.code, scale, steps[0].shape)
        for t in range(neuron.end):
            neuron.step(steps[t] if t < len(steps) else None)
        self.stats["input"].spikes = int(encoder.bits.sum())
        # What the convert neuron integrated, Σ_t 2^-(t+1)·x_t, decides its saturation.
        integrated = sum(2.0 ** -(t + 1) * x_t for t, x_t in enumerate(steps))
        self._record(name, neuron.fire_step, self.code.saturated(integrated, scale).sum())
        return neuron.decoded.to(x.dtype)

    def neuron(self, name, x, signed=True, mask=None):
        scale = self.scale(name, x.shape)
        sim = PhaseNeuronSim(self.code, scale, x.shape, signed=signed)
        for t in range(sim.end):
            sim.step(self.code.unit_gain * x.double() if t == 0 else None)
        self._record(name, sim.fire_step, self.code.saturated(x, scale, signed).sum())
        return sim.decoded.to(x.dtype)

    def attention(self, prefix, q, k, v, bias, key_mask=None, query_mask=None):
        self._closed_attention(prefix, q, k, v, bias, key_mask)  # statistics only
        n_q, n_k, n_v, n_logits, _, n_out = _attention_names(prefix)
        logits_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
        out_shape = (*logits_shape[:-1], v.shape[-1])
        out = functional.spiking_attention(
            q, k, v, self.code, self.scale(n_q, q.shape), self.scale(n_k, k.shape), self.scale(n_v, v.shape),
            self.scale(n_logits, logits_shape), self.scale(n_out, out_shape), bias=bias, engine="stepped",
            key_mask=key_mask)
        return out.to(q.dtype)


# --- the network module -------------------------------------------------------------------------------
class SpikingNetwork(nn.Module):
    """A converted network: weights as buffers, one engine per forward, spike statistics.

    Family subclasses write :meth:`run` once, against :class:`Engine`; ``forward`` builds the
    engine chosen at construction (``"closed"``, ``"stepped"`` or ``"ann"``). After a forward,
    ``stats`` maps every layer name (and ``"input"`` for the bit-serial code) to its
    :class:`LayerStats`. The module computes in the dtype of its buffers (``.double()`` for
    float64); the stepped engine always simulates in float64 and casts back.
    """

    def __init__(self, layers: Sequence[LayerSpec], weights: Mapping[str, torch.Tensor],
                 code: PhaseCode | None, engine: str) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine != "ann" and code is None:
            raise ValueError(f"engine {engine!r} needs a PhaseCode")
        self.layers = tuple(layers)
        self._specs = {layer.name: layer for layer in self.layers}
        self.code = code
        self.engine = engine
        self._buffer_of: dict[str, str] = {}
        for key, tensor in weights.items():
            self._buffer_of[key] = key.replace(".", "__")
            self.register_buffer(self._buffer_of[key], tensor)
        self.stats: dict[str, LayerStats] = {}

    def weight(self, key: str) -> torch.Tensor:
        """Stored tensor ``key`` (the file's name, e.g. ``layers.0.blocks.0.qkv.weight``)."""
        return getattr(self, self._buffer_of[key])

    def has_weight(self, key: str) -> bool:
        return key in self._buffer_of

    def scale(self, name: str, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Calibrated scale of layer ``name``, cut to an activation of ``shape`` (batch first)
        along the layer's sequence axis (see :func:`fit_scale`); the whole scale without it."""
        return fit_scale(self._specs.get(name), self.weight(f"scale.{name}"), shape)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.buffers()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def make_engine(self) -> Engine:
        """A fresh engine of this module's kind (fresh statistics)."""
        if self.engine == "ann":
            return AnnEngine()
        input_max = self.weight("input_max") if self.has_weight("input_max") else None
        engine_class = ClosedEngine if self.engine == "closed" else SteppedEngine
        return engine_class(self.code, self.scale, input_max)

    def forward(self, x: Any) -> torch.Tensor:
        """Logits for ``x`` (the ANN's input format)."""
        engine = self.make_engine()
        with torch.no_grad():
            out = self.run(x, engine)
        self.stats = engine.stats
        return out

    def run(self, x: Any, engine: Engine) -> torch.Tensor:
        """The family's forward pass with every spike point delegated to ``engine``.

        Family code refuses an input that holds NaN or inf (``coding.check_finite``) before any
        layer runs, on every engine."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(x, engine)")

    def synapses(self, x: Any) -> list[Synapse]:
        """The synaptic operations one sample of ``x`` costs (energy accounting, spec §7)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its synapses")


# --- calibration ----------------------------------------------------------------------------------------
def _check_activation(spec: LayerSpec, x: torch.Tensor) -> list[int]:
    """Axes of ``x`` (batch first) that the layer's scale shares; checks the shapes agree.

    Along the layer's ``seq_axis`` the activation may be shorter than the scale (N tokens of a
    scale that covers the longest sequence)."""
    shape = spec.scale_shape
    fits = x.dim() == len(shape) + 1 and all(
        s in (1, d) or (axis == spec.seq_axis and d <= s) for axis, (s, d) in enumerate(zip(shape, x.shape[1:])))
    if not fits:
        raise ValueError(f"layer {spec.name}: activation of shape {tuple(x.shape)} does not match its "
                         f"scale shape {shape} (batch axis first)")
    return [0] + [axis + 1 for axis, size in enumerate(shape) if size == 1]


def _present(spec: LayerSpec, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` broadcast to ``values`` (all True for None)."""
    if mask is None:
        return torch.ones_like(values, dtype=torch.bool)
    try:
        return mask.to(device=values.device, dtype=torch.bool).expand_as(values)
    except RuntimeError:
        raise ValueError(f"layer {spec.name}: mask of shape {tuple(mask.shape)} does not broadcast to its "
                         f"activation of shape {tuple(values.shape)}") from None


def _pad_sequence(spec: LayerSpec, t: torch.Tensor, offset: int, value: float | bool) -> torch.Tensor:
    """Pad ``t`` (``offset`` leading axes before the scale's axes) along the layer's sequence
    axis to the full scale length with ``value``."""
    if spec.seq_axis is None:
        return t
    axis = offset + spec.seq_axis
    missing = spec.scale_shape[spec.seq_axis] - t.shape[axis]
    if missing == 0:
        return t
    pad_shape = list(t.shape)
    pad_shape[axis] = missing
    return torch.cat([t, torch.full(pad_shape, value, dtype=t.dtype, device=t.device)], dim=axis)


class Calibrator(Observer):
    """Per-neuron scales from the ANN values entering each neuron (spec §5.2).

    ``method="max"``: the running maximum of |x| (of max(x, 0) for ReLU neurons) over the batch
    and the layer's shared axes. ``method="percentile"``: that percentile of the same samples,
    computed exactly (every sample is kept, so memory grows with the calibration set: use it on
    small sets). A zero scale (a neuron that saw only zeros) is replaced by the layer's largest
    scale, or 1.0 if the whole layer saw only zeros: on the calibration data the neuron is
    silent whatever its scale, and the layer's range is the best guess for other inputs. Such
    neurons are counted as ``zero_count`` in the summary; layers whose every scale was zero are
    listed in ``zero_layers`` (name → zero_count) with a warning, as their 1.0 is a guess with
    nothing behind it. A calibration whose network input was zero everywhere is refused.

    Masked values (padding, ``observe(mask=...)``) are not samples. A neuron that never got a
    sample (a position that was padding, or beyond the longest sequence, in every calibration
    batch) is *unseen*: it takes the largest scale of the same neuron at any position (along
    the layer's ``seq_axis``), else the layer's largest scale; counted as ``unseen_count``.
    """

    def __init__(self, layers: Sequence[LayerSpec], method: str = "max", percentile: float = 99.99) -> None:
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        self.method = method
        self.percentile = float(percentile)
        self.specs = {layer.name: layer for layer in layers if layer.scale_shape is not None}
        self.maxima: dict[str, torch.Tensor] = {}
        self.seen: dict[str, torch.Tensor] = {}
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.input_max: float | None = None

    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        if name not in self.specs:
            raise KeyError(f"the network reported an activation for {name!r}, which has no scale in its layer graph")
        spec = self.specs[name]
        shared = _check_activation(spec, x)
        values = (x.abs() if signed else x.clamp(min=0)).detach().double()
        present = _present(spec, values, mask)
        if self.method == "max":
            m = torch.where(present, values, 0.0).amax(dim=shared, keepdim=True)[0]
            seen = present.to(torch.uint8).amax(dim=shared, keepdim=True)[0].bool()
            m, seen = _pad_sequence(spec, m, 0, 0.0).cpu(), _pad_sequence(spec, seen, 0, False).cpu()
            if name in self.maxima:
                m, seen = torch.maximum(self.maxima[name], m), self.seen[name] | seen
            self.maxima[name], self.seen[name] = m, seen
        else:
            kept = [axis for axis in range(x.dim()) if axis not in shared]
            sizes = [1 if axis in shared else x.shape[axis] for axis in range(1, x.dim())]
            samples = torch.where(present, values, math.nan).permute(*shared, *kept).reshape(-1, *sizes)
            self.samples.setdefault(name, []).append(_pad_sequence(spec, samples.float().cpu(), 1, math.nan))

    def observe_input(self, x: torch.Tensor) -> None:
        self.input_max = max(self.input_max or 0.0, float(x.abs().max()))

    def _raw(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(the max or percentile per neuron, 0 where unseen; bool mask of neurons with samples)."""
        if self.method == "max":
            return self.maxima[name], self.seen[name]
        shape = self.specs[name].scale_shape
        values = torch.cat(self.samples[name]).double().reshape(-1, math.prod(shape))
        count = (~values.isnan()).sum(dim=0)
        values = values.sort(dim=0).values  # NaN (no sample) sorts last
        position = (count - 1).clamp(min=0).double() * self.percentile / 100.0
        lo, hi = position.floor().long(), position.ceil().long()
        low, high = values.gather(0, lo[None])[0], values.gather(0, hi[None])[0]
        raw = low + (high - low) * (position - lo)
        seen = count > 0
        return torch.where(seen, raw, 0.0).reshape(shape), seen.reshape(shape)

    def finish(self, dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(weights ``scale.<layer>`` and, if the network has a bit-serial input, ``input_max``;
        JSON summary per layer)."""
        observed = self.maxima if self.method == "max" else self.samples
        missing = [name for name in self.specs if name not in observed]
        if missing:
            raise RuntimeError(f"calibration never reached {len(missing)} layer(s): {', '.join(missing[:5])}")
        if self.input_max == 0:
            raise ValueError("every calibration input is zero: the scales would say nothing about real inputs "
                             "(every layer would get the placeholder scale 1.0); calibrate on real data")
        weights: dict[str, torch.Tensor] = {}
        layers: dict[str, dict[str, Any]] = {}
        zero_layers: dict[str, int] = {}
        for name, spec in self.specs.items():
            raw, seen = self._raw(name)
            if spec.seq_axis is not None and not bool(seen.all()):
                other_positions = torch.where(seen, raw, 0.0).amax(dim=spec.seq_axis, keepdim=True)
                raw = torch.where(seen, raw, other_positions.expand_as(raw))
            zero = raw <= 0
            floor = float(raw.max()) if bool((raw > 0).any()) else 1.0
            scale = torch.where(zero, torch.full_like(raw, floor), raw).to(dtype)
            weights[f"scale.{name}"] = scale
            layers[name] = {"min": float(scale.min()), "max": float(scale.max()),
                            "zero_count": int((zero & seen).sum()), "unseen_count": int((~seen).sum())}
            if bool(zero.all()):
                zero_layers[name] = layers[name]["zero_count"]
        if zero_layers:
            names = ", ".join(list(zero_layers)[:8]) + (", ..." if len(zero_layers) > 8 else "")
            warnings.warn(f"calibration: {len(zero_layers)} layer(s) saw only zeros ({names}; all in the config's "
                          f"calibration.zero_layers), so their scales are a placeholder 1.0: calibrate on inputs "
                          f"that reach them", stacklevel=3)
        if self.input_max is not None:
            weights["input_max"] = torch.tensor(self.input_max, dtype=dtype)
        summary = {
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "input_max": float(weights["input_max"]) if "input_max" in weights else None,
            "zero_floor": "layer's largest scale (1.0 if the whole layer was zero)",
            "zero_count": sum(layer["zero_count"] for layer in layers.values()),
            "zero_layers": zero_layers,
            "unseen_floor": "largest scale of the same neuron at any position, else the layer's largest",
            "unseen_count": sum(layer["unseen_count"] for layer in layers.values()),
            "layers": layers,
        }
        return weights, summary


def batch_size(x: Any) -> int:
    """Samples in a model input: a tensor's first axis, or a dict of tensors' (tokenizer output)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, Mapping):
        return next(batch_size(v) for v in x.values() if isinstance(v, torch.Tensor))
    raise TypeError(f"a calibration batch must be a tensor or a dict of tensors, got {type(x).__name__}")


def calibration_input(family: ModelFamily, batch: Any, index: int) -> Any:
    """The model input of calibration batch number ``index``, checked before it runs.

    Raises ``ValueError`` for a batch of 0 samples and :class:`coding.NonFiniteInputError` for
    one that holds NaN or inf, naming the batch: either would otherwise end deep inside
    calibration (a reduction over nothing, NaN scales) with an error that names neither.
    """
    x = family.model_input(batch)
    if batch_size(x) == 0:
        raise ValueError(f"calibration batch {index} holds 0 samples: drop empty batches from the calibration set")
    check_finite(f"calibration batch {index}", x)
    return x


# --- the converted model and its file ---------------------------------------------------------------------
def tensor_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors in a fixed order: sorted names, each with dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_CONFIG_TYPES = {
    "format_version": int, "family": str, "architecture": dict, "base": (int, float), "timesteps": int,
    "convention": str, "layers": list, "n_layers": int, "steps_per_inference": int, "calibration": dict,
    "source_sha256": str, "weights_sha256": str,
}


@dataclass(eq=False)
class ConvertedModel:
    """A converted network: ``config`` (JSON, see ``config.json``) and its ``weights``.

    ``config`` keys: format_version, family, architecture, base, timesteps, convention, layers
    (the ordered layer graph, :meth:`LayerSpec.to_json`), n_layers, steps_per_inference,
    calibration (summary), source_sha256 (the prepared model's state dict, :func:`tensor_sha256`),
    weights_sha256 (of ``weights``). ``weights``: folded weights, biases, attention biases and
    masks, ``input_max``, and ``scale.<layer>`` for every layer with a scale.
    """

    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def family(self) -> ModelFamily:
        return get_family(self.config["family"])

    @property
    def code(self) -> PhaseCode:
        return PhaseCode(self.config["base"], self.config["timesteps"], self.config["convention"])

    @property
    def layers(self) -> list[LayerSpec]:
        return self.family.layer_graph(self.config["architecture"], self.config["convention"])

    @property
    def n_layers(self) -> int:
        return self.config["n_layers"]

    @property
    def steps_per_inference(self) -> int:
        return self.config["steps_per_inference"]

    def with_code(self, base: float | None = None, timesteps: int | None = None) -> ConvertedModel:
        """The same network under another base and/or window (the calibrated scales do not depend
        on either); ``steps_per_inference`` follows T. ``ValueError`` for an invalid B or T."""
        code = PhaseCode(self.config["base"] if base is None else base,
                         self.config["timesteps"] if timesteps is None else timesteps, self.config["convention"])
        return ConvertedModel(dict(self.config, base=code.base, timesteps=code.timesteps,
                                   steps_per_inference=steps_per_inference(self.layers, code.timesteps)),
                              self.weights)

    def to_reference(self, engine: str = "closed") -> SpikingNetwork:
        """The network as an ``nn.Module`` on the reference engine (``"closed"``, ``"stepped"``,
        or ``"ann"`` for the folded ANN without spikes); its input format is the ANN's."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        return self.family.network(self.config["architecture"], self.config["convention"], self.weights,
                                   self.code, engine)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` as the folder ``folder``, atomically.

        ``config["weights_sha256"]`` is recomputed from the weights being written. Both files are
        written into a temporary sibling folder (``.<name>.*.partial``), which one rename then
        makes ``folder``, so ``folder`` never holds new weights with an old config or half a file.
        An error (or ^C) while writing removes the temporary folder and leaves ``folder`` as it
        was. An existing ``folder`` must be a converted-model folder (:func:`check_save_folder`,
        ``FileExistsError`` otherwise); it is replaced as :func:`_move_into_place` describes.
        """
        folder = Path(folder)
        check_save_folder(folder)
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.weights.items()}
        self.config["weights_sha256"] = tensor_sha256(tensors)
        text = json.dumps(self.config, indent=1, allow_nan=False)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = _sibling(folder, "partial")
        staging.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the saved folder's
        try:
            safetensors.torch.save_file(tensors, str(staging / WEIGHTS_FILE),
                                        metadata={"format_version": str(FORMAT_VERSION), "family": self.config["family"]})
            (staging / CONFIG_FILE).write_text(text + "\n")
            _move_into_place(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConvertedModel:
        """Read and validate a folder written by :meth:`save`; ``ConvertedModelError`` if broken."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConvertedModelError(f"{folder} is not a folder")
        config = _read_config(folder / CONFIG_FILE)
        family, architecture, layers = _check_config(config)
        weights = _read_weights(folder / WEIGHTS_FILE)
        expected = family.weight_shapes(architecture, config["convention"])
        expected.update({f"scale.{layer.name}": layer.scale_shape for layer in layers if layer.scale_shape is not None})
        _check_weights(weights, expected)
        if tensor_sha256(weights) != config["weights_sha256"]:
            raise ConvertedModelError(f"{folder / WEIGHTS_FILE} does not match the weights_sha256 recorded in "
                                      f"{CONFIG_FILE}: the file was modified or is corrupt")
        return cls(config, weights)

    def summary(self) -> str:
        """One line: family, code, layer count and steps per inference."""
        cal = self.config["calibration"]
        return (f"{self.config['family']} {self.code.describe()}; {self.n_layers} neuron layers, "
                f"{self.steps_per_inference} steps per inference; calibrated ({cal['method']}) on "
                f"{cal['samples']} samples, {cal['zero_count']} zero scale(s)")


def check_save_folder(folder: str | os.PathLike) -> None:
    """Raise ``FileExistsError`` unless :meth:`ConvertedModel.save` may write ``folder``: it does not
    exist, or it is a folder holding nothing but ``config.json`` / ``weights.safetensors``.

    save() replaces the whole folder, so it refuses one with anything else in it rather than
    delete the user's files. Call it before long work (calibration) to fail early.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"cannot save a converted model as {folder}: it is a file; choose a folder path")
    others = sorted(path.name for path in folder.iterdir() if path.name not in (CONFIG_FILE, WEIGHTS_FILE))
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"cannot save a converted model as {folder}: saving replaces the whole folder and it "
                              f"holds {len(others)} other file(s) ({listed}); choose a new or empty folder, or move "
                              f"them away")


def _sibling(folder: Path, kind: str) -> Path:
    """A fresh hidden name beside ``folder``: ``.<name>.<random hex>.<kind>``."""
    return folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.{kind}")


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the complete folder ``staging`` to ``folder``.

    An existing ``folder`` is first renamed aside (``.<name>.<hex>.old`` beside it), then deleted.
    Crash window: between those two renames ``folder`` does not exist and the previous model
    sits, complete, in the ``.old`` folder (rename it back); a failed second rename restores it.
    """
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = _sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConvertedModelError(f"missing {path.name} in {path.parent}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConvertedModelError(f"{path} is not valid JSON (truncated or corrupt): {error}") from None
    if not isinstance(config, dict):
        raise ConvertedModelError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def _check_config(config: dict[str, Any]) -> tuple[ModelFamily, dict[str, Any], list[LayerSpec]]:
    if "format_version" not in config:
        raise ConvertedModelError(f"{CONFIG_FILE} has no 'format_version'")
    version = config["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ConvertedModelError(f"unsupported format_version {version!r} in {CONFIG_FILE}: this version of "
                                  f"lava-spikedattn reads format_version {FORMAT_VERSION}")
    for key, types in _CONFIG_TYPES.items():
        if key not in config:
            raise ConvertedModelError(f"{CONFIG_FILE} is missing the key {key!r}")
        if not isinstance(config[key], types) or isinstance(config[key], bool):
            raise ConvertedModelError(f"{CONFIG_FILE}: {key!r} has type {type(config[key]).__name__}, "
                                      f"expected {getattr(types, '__name__', 'a number')}")
    try:
        family = get_family(config["family"])
    except KeyError as error:
        raise ConvertedModelError(f"{CONFIG_FILE}: {error.args[0]}") from None
    if config["convention"] not in CONVENTIONS:
        raise ConvertedModelError(f"{CONFIG_FILE}: convention must be one of {CONVENTIONS}, "
                                  f"got {config['convention']!r}")
    try:
        PhaseCode(config["base"], config["timesteps"], config["convention"])
        family.check_architecture(config["architecture"])
    except ValueError as error:
        raise ConvertedModelError(f"{CONFIG_FILE}: {error}") from None
    layers = family.layer_graph(config["architecture"], config["convention"])
    derived = [layer.to_json() for layer in layers]
    if config["layers"] != derived:
        first = next((i for i, (a, b) in enumerate(zip(config["layers"], derived)) if a != b),
                     min(len(derived), len(config["layers"])))
        raise ConvertedModelError(
            f"{CONFIG_FILE}: the layer graph does not match the architecture (first difference at layer "
            f"{first}: found {config['layers'][first] if first < len(config['layers']) else 'nothing'}, "
            f"expected {derived[first] if first < len(derived) else 'nothing'})")
    for key, value in (("n_layers", layer_count(layers)),
                       ("steps_per_inference", steps_per_inference(layers, config["timesteps"]))):
        if config[key] != value:
            raise ConvertedModelError(f"{CONFIG_FILE}: {key} is {config[key]}, the layer graph gives {value}")
    return family, config["architecture"], layers


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConvertedModelError(f"missing {path.name} in {path.parent}")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for every malformed file
        raise ConvertedModelError(f"{path} is truncated or corrupt: {error}") from None


def _check_weights(weights: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    missing = [key for key in expected if key not in weights]
    if missing:
        raise ConvertedModelError(f"{WEIGHTS_FILE} is missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        raise ConvertedModelError(f"{WEIGHTS_FILE} has {len(unexpected)} unexpected tensor(s): "
                                  f"{', '.join(unexpected[:8])}")
    for key, shape in expected.items():
        tensor = weights[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ConvertedModelError(f"{WEIGHTS_FILE}: tensor {key!r} has shape {tuple(tensor.shape)}, the "
                                      f"architecture needs {tuple(shape)}")
        if not torch.is_floating_point(tensor):
            raise ConvertedModelError(f"{WEIGHTS_FILE}: tensor {key!r} has dtype {tensor.dtype}, "
                                      f"expected floating point")
    non_finite = {key: int((~torch.isfinite(tensor)).sum()) for key, tensor in weights.items()}
    non_finite = {key: count for key, count in non_finite.items() if count}
    if non_finite:
        listed = ", ".join(f"{key!r} ({count})" for key, count in list(non_finite.items())[:8])
        raise ConvertedModelError(f"{WEIGHTS_FILE} holds NaN/inf values in {len(non_finite)} tensor(s): {listed}; "
                                  f"the file is corrupt or was written from a diverged model: convert again")


# --- conversion ----------------------------------------------------------------------------------------------
def convert(model: nn.Module, calibration_batches: Iterable[Any], code: PhaseCode, *, method: str = "max",
            percentile: float = 99.99, verify: bool = True) -> ConvertedModel:
    """Fold, calibrate and package a prepared ANN (output of ``ann.prepare_swin`` and fine-tuning).

    Args:
        model: the prepared model; its norms are folded with their running statistics.
        calibration_batches: iterable of model inputs (a tensor, or a tuple whose first item is
            the input, as data loaders yield); each is run once through the folded network.
        code: the phase code (B, T, convention) the converted model runs with.
        method: ``"max"`` or ``"percentile"`` (with ``percentile``), see :class:`Calibrator`.
        verify: check that the folded network reproduces the model (eval mode) on the first
            batch within ``FOLDING_TOLERANCE`` relative error.
    Raises:
        TypeError / ``ann.UnsupportedModuleError``: a model the converter cannot handle.
    """
    if not isinstance(code, PhaseCode):
        raise TypeError(f"code must be a PhaseCode, got {type(code).__name__}")
    ann.check_prepared(model)
    family = family_of(model)
    architecture = family.architecture(model)
    layers = family.layer_graph(architecture, code.convention)
    folded = family.fold(model, code.convention)
    dtype = next(iter(folded.values())).dtype
    network = family.network(architecture, code.convention, folded).to(next(model.parameters()).device)
    calibrator = Calibrator(layers, method, percentile)
    engine = AnnEngine(calibrator)
    n_batches = n_samples = 0
    first = None
    with torch.no_grad():
        for index, batch in enumerate(calibration_batches):
            x = calibration_input(family, batch, index)
            network.run(x, engine)
            first = x if first is None else first
            n_batches += 1
            n_samples += batch_size(x)
    if first is None:
        raise ValueError("calibration_batches is empty: convert() needs at least one batch")
    scales, summary = calibrator.finish(dtype)
    summary.update(batches=n_batches, samples=n_samples)
    if verify:
        summary["folding_error"] = _folding_error(family, model, network, first)
    weights = {key: value.detach().cpu() for key, value in {**folded, **scales}.items()}
    config = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "architecture": architecture,
        "base": code.base,
        "timesteps": code.timesteps,
        "convention": code.convention,
        "layers": [layer.to_json() for layer in layers],
        "n_layers": layer_count(layers),
        "steps_per_inference": steps_per_inference(layers, code.timesteps),
        "calibration": summary,
        "source_sha256": tensor_sha256(model.state_dict()),
        "weights_sha256": tensor_sha256(weights),
    }
    return ConvertedModel(json.loads(json.dumps(config, allow_nan=False)), weights)


def _folding_error(family: ModelFamily, model: nn.Module, network: SpikingNetwork, x: Any) -> float:
    """Relative L2 error of the folded network's logits against the prepared model (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = family.ann_output(model, x).double()
            folded = network.run(x, AnnEngine()).double()
    finally:
        model.train(was_training)
    error = float((folded - reference).norm() / reference.norm().clamp(min=1e-30))
    if not error <= FOLDING_TOLERANCE:  # NaN too
        raise ValueError(f"the folded network does not reproduce the prepared model: relative error {error:.3g} "
                         f"> {FOLDING_TOLERANCE:g} (are the norms' running statistics finite and the model a "
                         f"variant this converter supports?)")
    return error


# --- base search -----------------------------------------------------------------------------------------------
class BaseSearch(NamedTuple):
    """Result of :func:`search_base`: the best base and the error curve."""

    base: float
    bases: torch.Tensor  # (n,) float64, the bases tried
    errors: torch.Tensor  # (n,) float64, mean log error at each base


def log_error(ratios: torch.Tensor, code: PhaseCode) -> float:
    """Mean |ln â − ln a| over positive normalised activations a = |x|/scale (spec §1.3, §5.5).

    A value below the lowest threshold is silent (decoded 0, an infinite log error); it is
    scored as if it were decoded at the smallest level, i.e. by its log distance to the code's
    range, so a too-small dynamic range B^T costs in proportion to how far below it the
    activations lie. Values above the top level are clipped to it and scored likewise.
    """
    ratios = ratios.double()
    decoded = code.quantize(ratios, 1.0, signed=False)
    decoded = torch.where(decoded > 0, decoded, torch.full_like(decoded, code.min_level))
    return float((decoded.log() - ratios.log()).abs().mean())


class _RatioCollector(Observer):
    """Keeps up to ``max_values`` random nonzero |x|/scale values per layer."""

    def __init__(self, scale: Callable[[str, Sequence[int]], torch.Tensor], names: Iterable[str], max_values: int,
                 seed: int) -> None:
        self.scale = scale  # (layer name, activation shape) → its scale
        self.names = set(names)
        self.max_values = max_values
        self.generator = torch.Generator().manual_seed(seed)
        self.ratios: dict[str, torch.Tensor] = {}

    def _subsample(self, r: torch.Tensor) -> torch.Tensor:
        if r.numel() <= self.max_values:
            return r
        return r[torch.randperm(r.numel(), generator=self.generator)[: self.max_values]]

    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        if name not in self.names:
            return
        r = ((x.abs() if signed else x.clamp(min=0)) / self.scale(name, x.shape)).detach().double().cpu()
        if mask is not None:
            r = r[mask.cpu().expand_as(r)]
        r = r.reshape(-1)
        r = self._subsample(r[r > 0])
        previous = self.ratios.get(name)
        self.ratios[name] = r if previous is None else self._subsample(torch.cat([previous, r]))


def _model_ratios(cm: ConvertedModel, batches: Iterable[Any], max_values: int, seed: int) -> dict[str, torch.Tensor]:
    network = cm.to_reference("ann")
    names = [layer.name for layer in cm.layers if layer.scale_shape is not None]
    collector = _RatioCollector(network.scale, names, max_values, seed)
    engine = AnnEngine(collector)
    with torch.no_grad():
        for batch in batches:
            network.run(cm.family.model_input(batch), engine)
    if not collector.ratios:
        raise ValueError("batches is empty: search_base() needs at least one batch")
    return collector.ratios


def search_base(model_or_activations: Any, timesteps: int, bases: Sequence[float] | torch.Tensor | None = None,
                plot: str | os.PathLike | None = None, *, batches: Iterable[Any] | None = None,
                convention: str | None = None, max_values: int = 65536, seed: int = 0) -> BaseSearch:
    """Pick the base B in (1, 2] that minimises the mean log quantisation error (spec §5.5).

    Args:
        model_or_activations: one of
            * a :class:`ConvertedModel` (with ``batches``): activations of every neuron layer
              with a scale, normalised by the model's calibrated scales (which do not depend on B);
            * a prepared ``nn.Module`` (with re-iterable ``batches``): calibrated on ``batches``
              first (method max), then as above;
            * a tensor, a sequence or a dict of tensors of raw activations: each tensor is
              normalised by its own max |x|.
        timesteps: T.
        bases: candidate bases (default 100 values from 1.01 to 2.0).
        plot: if given, a PNG of error vs B is written there.
        convention: the level set (default: the converted model's, else ``"exact"``).
        max_values: random nonzero activations kept per layer (seeded by ``seed``).
    Returns:
        :class:`BaseSearch`. The error at a base is the mean over layers (each neuron layer adds
        one quantisation to the signal path) of :func:`log_error`; exact zeros are excluded.
    """
    if isinstance(model_or_activations, nn.Module):
        if batches is None or iter(batches) is batches:
            raise ValueError("search_base() on a model needs re-iterable batches (a list or a DataLoader): "
                             "they are run twice, to calibrate and to measure")
        code = PhaseCode(2.0, timesteps, convention or "exact")
        model_or_activations = convert(model_or_activations, batches, code, verify=False)
    if isinstance(model_or_activations, ConvertedModel):
        if batches is None:
            raise ValueError("search_base() on a converted model needs batches of model inputs")
        convention = convention or model_or_activations.config["convention"]
        ratios = _model_ratios(model_or_activations, batches, max_values, seed)
    else:
        tensors = model_or_activations
        if isinstance(tensors, torch.Tensor):
            tensors = {"activations": tensors}
        elif not isinstance(tensors, Mapping):
            tensors = {str(i): t for i, t in enumerate(tensors)}
        tensors = {name: torch.as_tensor(t) for name, t in tensors.items()}
        collector = _RatioCollector(lambda name, shape: tensors[name].abs().max(), tensors, max_values, seed)
        for name, t in tensors.items():
            if not bool((t != 0).any()):
                raise ValueError(f"activations {name!r} are all zero: nothing to measure")
            collector.observe(name, t, True)
        ratios = collector.ratios
    # default grid 1.01, 1.02, ..., 2.00, rounded so that the chosen B is written as 1.47, not 1.4700000000000002
    bases = (torch.arange(101, 201, dtype=torch.float64) / 100) if bases is None else torch.as_tensor(
        bases, dtype=torch.float64).reshape(-1)
    convention = convention or "exact"
    errors = torch.tensor([sum(log_error(r, PhaseCode(float(b), timesteps, convention)) for r in ratios.values())
                           / len(ratios) for b in bases], dtype=torch.float64)
    best = float(bases[int(errors.argmin())])
    if plot is not None:
        _plot_base_search(bases, errors, best, timesteps, convention, plot)
    return BaseSearch(best, bases, errors)


def _plot_base_search(bases: torch.Tensor, errors: torch.Tensor, best: float, timesteps: int, convention: str,
                      path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(bases.numpy(), errors.numpy())
    ax.axvline(best, linestyle="--", color="gray")
    ax.set_xlabel("base B")
    ax.set_ylabel("mean |ln â − ln a|")
    ax.set_title(f"T = {timesteps} ({convention}): best B = {best:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
