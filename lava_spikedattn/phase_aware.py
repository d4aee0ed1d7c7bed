"""Phase-aware fine-tuning: train a prepared ANN through the converted network's own rounding.

Post-training conversion rounds every neuron to the nearest level ``scale·B^-k`` once per layer,
and the errors compound over the layers; at small T they cost accuracy. Here the prepared ANN is
trained *through* that rounding, as quantisation-aware training trains integer networks:

* the forward pass is the converted network on the closed-form engine, exactly: the family's
  ``fold`` of the ANN's current parameters (differentiable), the calibrated scales, the
  bit-serial input, every phase quantiser, the trace products, WOSS and the bias divisor
  (:class:`PhaseAwareEngine`). What is trained is what runs in Lava: ``convert`` of the tuned ANN
  with the same scales gives a network whose closed-form logits equal the training forward's;
* the backward pass is straight-through: a quantiser passes the gradient where its input lies in
  the code's range (zero where it saturates, and below zero for ReLU neurons); the attention core
  passes the gradient of float softmax attention evaluated at the quantised q̂, k̂, v̂;
* the loss is distillation from the unquantised teacher (the prepared ANN before tuning) plus
  cross-entropy, as :func:`lava_spikedattn.ann.finetune`;
* the scales are **recalibrated** after every epoch with ``convert``'s own rule (max or
  percentile over the calibration batches): the tuned network then converts with the scales it
  was trained with. Or, with ``learn_scales``, they are **learned** from the first calibration
  on (each ``scale.*`` a parameter, trained in the log domain with the straight-through gradient
  of LSQ, Esser et al. 2020: d(decoded)/d(scale) = level − x/scale inside the code's range, the
  top level outside) and stored in the converted model in place of the calibrated ones.

The BatchNorm statistics the fold uses stay as calibrated (the ANN's forward never runs), their
affine parameters train.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lava_spikedattn import ann
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.engines import ClosedEngine, _attention_names
from lava_spikedattn.layers import fit_scale
from lava_spikedattn.models import family_of

__all__ = ["PhaseAwareEngine", "PhaseAwareModel", "finetune_phase_aware"]


class PhaseAwareEngine(ClosedEngine):
    """The closed-form engine with straight-through gradients (module docstring).

    Forward values are the :class:`ClosedEngine`'s bit for bit (each quantiser runs on the
    detached input, through the same kernel); the gradients are the straight-through estimates.
    ``learned_scale(name, shape)``: the learned scale of a layer (as ``scale``, but carrying its
    gradient), or None where the scales are not learned.
    """

    def __init__(self, *args: Any, learned_scale: Any = None) -> None:
        super().__init__(*args)
        self.learned_scale = learned_scale

    def _closed_neuron(self, name: str, x: torch.Tensor, signed: bool) -> torch.Tensor:
        decoded = super()._closed_neuron(name, x.detach(), signed)
        learned = None if self.learned_scale is None else self.learned_scale(name, x.shape)
        if not x.requires_grad and learned is None:
            return decoded
        scale = self.scale(name, x.shape)
        top = scale * self.code.max_level
        inside = (x.abs() <= top) if signed else ((x > 0) & (x <= top))
        out = decoded + (x - x.detach()) * inside
        if learned is not None:  # LSQ: level − x/scale inside the range, the level itself outside
            out = out + (learned - learned.detach()) * ((decoded - x.detach() * inside) / scale)
        return out

    def attention(self, prefix, q, k, v, bias, key_mask=None, query_mask=None):
        with torch.no_grad():
            out = self._closed_attention(prefix, q, k, v, bias, key_mask)
        if not (q.requires_grad or k.requires_grad or v.requires_grad):
            return out
        n_q, n_k, n_v, *_ = _attention_names(prefix)  # their counts are recorded again, unchanged
        q_hat, k_hat, v_hat = (self._closed_neuron(n, t, True) for n, t in ((n_q, q), (n_k, k), (n_v, v)))
        logits = q_hat @ k_hat.transpose(-1, -2) * q.shape[-1] ** -0.5
        if bias is not None:
            logits = logits + bias * self.bias_gain
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask, float("-inf"))
        surrogate = logits.softmax(dim=-1) @ v_hat
        return surrogate + (out - surrogate).detach()


class PhaseAwareModel(nn.Module):
    """A prepared ANN whose forward is its converted network on :class:`PhaseAwareEngine`.

    ``scales``: the calibrated ``scale.*`` tensors and ``input_max`` of a converted model of this
    ANN (``convert(model, ...)``); :meth:`recalibrate` replaces them. The parameters are the ANN's,
    and with ``learn_scales`` the logarithm of every ``scale.*`` (``log_scales``, set by
    :meth:`recalibrate`; :meth:`current_scales` gives the scales in use).
    """

    def __init__(self, model: nn.Module, code: PhaseCode, scales: Mapping[str, torch.Tensor],
                 learn_scales: bool = False) -> None:
        super().__init__()
        self.model = model
        self.code = code
        self.family = family_of(model)
        self.architecture = self.family.architecture(model)
        self.learn_scales = learn_scales
        self.log_scales = nn.ParameterDict()
        self._set_scales(scales)

    def _set_scales(self, scales: Mapping[str, torch.Tensor]) -> None:
        self.scales = dict(scales)
        if self.learn_scales:
            self.log_scales = nn.ParameterDict({_parameter_name(key): nn.Parameter(value.double().log())
                                                for key, value in self.scales.items() if key.startswith("scale.")})

    def current_scales(self) -> dict[str, torch.Tensor]:
        """The scales the forward uses (the learned ones where learned), detached."""
        return {key: self.log_scales[_parameter_name(key)].detach().exp() if _parameter_name(key) in self.log_scales
                else value for key, value in self.scales.items()}

    @classmethod
    def from_converted(cls, model: nn.Module, cm: ConvertedModel) -> PhaseAwareModel:
        """The ANN ``model`` with the code and scales of ``cm`` (a conversion of it)."""
        return cls(model, cm.code, _calibrated(cm))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of the converted network for the model input (a tensor, or tokenizer tensors)."""
        x = args[0] if args else kwargs
        folded = self.family.fold(self.model, self.code.convention)
        dtype = next(iter(folded.values())).dtype
        weights = {**folded, **{key: value.to(dtype) for key, value in self.current_scales().items()}}
        network = self.family.network(self.architecture, self.code.convention, weights, self.code, "closed")
        learned = None
        if self.log_scales:
            specs = {layer.name: layer for layer in network.layers}

            def learned(name: str, shape: Any) -> torch.Tensor:
                return fit_scale(specs.get(name), self.log_scales[_parameter_name(f"scale.{name}")].exp().to(dtype),
                                 shape)
        x = self.family.model_input(x)
        return network.run(x, PhaseAwareEngine(self.code, network.scale, weights.get("input_max"),
                                               learned_scale=learned))

    def recalibrate(self, batches: Iterable[Any], method: str = "max", percentile: float = 99.99) -> ConvertedModel:
        """Convert the current ANN on ``batches`` (``convert``'s calibration rule) and take its scales."""
        was_training = self.model.training
        self.model.eval()
        try:
            cm = convert(self.model, batches, self.code, method=method, percentile=percentile)
        finally:
            self.model.train(was_training)
        self._set_scales(_calibrated(cm))
        return cm

    def converted(self, cm: ConvertedModel) -> ConvertedModel:
        """``cm`` (a conversion of the current ANN) with the scales in use: the learned ones, if learned."""
        if not self.log_scales:
            return cm
        scales = {key: value.to(cm.weights[key].dtype) for key, value in self.current_scales().items()}
        weights = {**cm.weights, **scales}
        return ConvertedModel(dict(cm.config, calibration={**cm.config["calibration"], "learned": True}), weights)


def _calibrated(cm: ConvertedModel) -> dict[str, torch.Tensor]:
    """What calibration stored in a converted model: every ``scale.*`` and ``input_max``."""
    return {key: value for key, value in cm.weights.items() if key.startswith("scale.") or key == "input_max"}


def _parameter_name(key: str) -> str:
    return key.replace(".", "/")  # a parameter name has no dots


def finetune_phase_aware(model: nn.Module, code: PhaseCode, loader: Sequence[Any], calibration: Sequence[Any], *,
                         epochs: int = 1, lr: float = 1e-4, temperature: float = 2.0, alpha: float = 0.5,
                         method: str = "max", percentile: float = 99.99, max_steps: int | None = None,
                         cosine: bool = False, progress: bool = True, checkpoint: str | os.PathLike | None = None,
                         learn_scales: bool = False) -> tuple[nn.Module, ConvertedModel]:
    """Fine-tune the prepared ANN ``model`` through the rounding of its converted network at ``code``.

    ``loader`` yields training batches as :func:`lava_spikedattn.ann.finetune` takes them (``(x, y)``
    or tokenizer dicts with ``"labels"``); ``calibration`` the calibration batches (``convert``'s,
    with ``method`` / ``percentile``). The teacher is a frozen copy of ``model`` as given. Each epoch
    trains with the scales of the last calibration, then recalibrates (one AdamW for the whole run,
    its rate constant or, with ``cosine``, decaying to 0; ``max_steps``: optimiser steps in all).
    With ``learn_scales`` the scales are calibrated once, then learned (module docstring).
    Returns the tuned model (eval mode; ``model`` itself is tuned in place) and its converted
    model, whose closed-form engine computes the training forward.

    ``checkpoint``: a folder for ``ann.finetune``'s checkpoints, resumed from if it holds one
    (calibrated scales are not stored: they are recalibrated from the restored ANN, which gives
    them bit for bit; learned ones are parameters, stored with the ANN's).
    Under ``torchrun`` it trains data-parallel as ``ann.finetune``: ``loader`` is this rank's share of
    the batches (``distributed.shard``), ``calibration`` all of them (every rank recalibrates alike).
    """
    if not isinstance(code, PhaseCode):
        raise TypeError(f"code must be a PhaseCode, got {type(code).__name__}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ann.check_prepared(model)
    teacher = copy.deepcopy(model).eval()
    student = PhaseAwareModel(model, code, {}, learn_scales=learn_scales)
    calibrated = [student.recalibrate(calibration, method, percentile)]

    def recalibrate(epoch: int) -> None:
        calibrated.append(student.recalibrate(calibration, method, percentile))

    every_epoch = None if learn_scales else recalibrate
    ann.finetune(student, loader, teacher, epochs=epochs, lr=lr, temperature=temperature, alpha=alpha,
                 max_steps=max_steps, progress=progress, after_epoch=every_epoch, cosine=cosine,
                 checkpoint=checkpoint, resumed=every_epoch)
    if learn_scales:  # the tuned ANN's weights, converted, with the learned scales
        return model.eval(), student.converted(convert(model.eval(), calibration, code, method=method,
                                                       percentile=percentile))
    return model.eval(), calibrated[-1]
