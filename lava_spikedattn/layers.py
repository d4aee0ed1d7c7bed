"""The neuron-layer graph of a converted network: one :class:`LayerSpec` per neuron layer, in
pipeline order, and the spike bookkeeping (:class:`LayerStats`) every engine fills.

A family module (``lava_spikedattn.models.<family>``) lists its layers; the converted-model file
stores them, the engines, calibration, energy and the Lava builder read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lava_spikedattn.kernels import SpikeCounts

__all__ = ["ATTENTION_LAYERS", "LAYER_KINDS", "LayerGraph", "LayerSpec", "LayerStats", "fit_scale", "layer_count",
           "steps_per_inference"]

LAYER_KINDS = ("convert", "phase", "logits", "woss", "attention_out", "readout")
# Neuron layers of one attention core, as suffixes of the core's prefix (release names, §5.4).
ATTENTION_LAYERS = ("q_if", "k_if", "v_if", "stdp_qk", "softmax_if", "stdp_av")


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


class LayerGraph:
    """A family's layer graph, built in pipeline order: each added layer takes the next pipeline
    index, unless ``new_index=False`` puts it beside the previous one (k and v next to q)."""

    def __init__(self) -> None:
        self.layers: list[LayerSpec] = []

    def add(self, name: str, kind: str, shape: tuple[int, ...] | None, *, signed: bool = True,
            new_index: bool = True, seq_axis: int | None = None) -> None:
        """Append layer ``name`` (arguments as :class:`LayerSpec`)."""
        index = self.layers[-1].index + new_index if self.layers else 0
        self.layers.append(LayerSpec(name, kind, index, signed, shape, seq_axis))


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
        return cls.from_counts(SpikeCounts.from_fire_steps(fire_step, saturated), timesteps)

    @classmethod
    def from_counts(cls, counts: SpikeCounts, timesteps: int) -> LayerStats:
        """Statistics of a population from its spike counts (:meth:`PhaseCode.quantize_counted`)."""
        silent = counts.neurons - counts.fired
        return cls(counts.neurons, counts.fired, counts.saturated, counts.fire_step_sum + silent * timesteps)

