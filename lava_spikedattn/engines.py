"""The engines that run a converted network, and the engine-agnostic network module.

A family module (``lava_spikedattn.models.<family>``) writes its network once, as a
:class:`SpikingNetwork`, against the small :class:`Engine` interface (``input_layer`` /
``neuron`` / ``attention``). Three engines run it:

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

Padding is passed as masks: ``mask`` on :meth:`Engine.neuron` and ``query_mask`` on
:meth:`Engine.attention` only keep padded positions out of calibration (the spiking engines
compute them like any token), while ``key_mask`` on :meth:`Engine.attention` removes absent keys
from the computation: the ANN gives them zero attention weight, the spiking engines never let
their logit and WOSS neurons fire.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.energy import Synapse
from lava_spikedattn.layers import ATTENTION_LAYERS, LayerSpec, LayerStats, fit_scale
from lava_spikedattn.reference import closed, functional
from lava_spikedattn.reference.stepped import BitSerialEncoderSim, ConvertNeuronSim, PhaseNeuronSim

__all__ = ["ENGINES", "AnnEngine", "ClosedEngine", "Engine", "Observer", "SpikingNetwork", "SteppedEngine"]

ENGINES = ("closed", "stepped", "ann")


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

    def _closed_neuron(self, name: str, x: torch.Tensor, signed: bool) -> torch.Tensor:
        decoded, counts = self.code.quantize_counted(x, self.scale(name, x.shape), signed)
        self.stats[name] = LayerStats.from_counts(counts, self.code.timesteps)
        return decoded

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
        decoded = self._closed_neuron(n_q, q, True), self._closed_neuron(n_k, k, True)
        logits = closed.attention_logits(q, k, code, s_q, s_k, bias, decoded)
        s_logits = self.scale(n_logits, logits.shape)
        if key_mask is None:
            present, l_hat = None, self._closed_neuron(n_logits, logits, True)
        else:  # absent keys never fire: counted from the fire steps
            present, encoding = key_mask.expand_as(logits), code.encode(logits, s_logits)
            l_hat = encoding.decoded()
            self._record(n_logits, encoding.fire_step.masked_fill(~present, -1), (encoding.saturated() & present).sum())
        woss = closed.woss(logits, code, s_logits, key_mask=present, decoded=l_hat)
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

