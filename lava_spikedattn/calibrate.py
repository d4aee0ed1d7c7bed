"""Calibration: the per-neuron scales of every layer, observed through the folded ANN (spec §5.2).

:class:`Calibrator` is an :class:`~lava_spikedattn.engines.Observer` of the ``"ann"`` engine; it
keeps the maximum (or a percentile) of every neuron's input over the calibration batches.
Variable-length inputs (BERT): a layer whose scale is indexed by token position declares that axis
as its ``seq_axis``; its scale covers the longest sequence (``max_position_embeddings``) and an
input of N tokens uses the first N entries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lava_spikedattn.coding import check_finite
from lava_spikedattn.engines import Observer
from lava_spikedattn.layers import LayerSpec

if TYPE_CHECKING:
    from lava_spikedattn.models import ModelFamily

__all__ = ["CALIBRATION_METHODS", "Calibrator", "batch_size", "calibration_input"]

CALIBRATION_METHODS = ("max", "percentile")


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

