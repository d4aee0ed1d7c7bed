"""Conversion of a prepared ANN into a one-spike phase-coded network (spec §5).

Pipeline::

    cm = convert(prepared_model, calibration_batches, code)   # fold norms, calibrate scales
    cm.save(folder); cm = ConvertedModel.load(folder)         # config.json + weights.safetensors
    snn = cm.to_reference(engine="closed")                    # or "stepped"; an nn.Module
    logits = snn(x)

Who owns what: the layer graph (:mod:`~lava_spikedattn.layers`), the engines and the network
module (:mod:`~lava_spikedattn.engines`), calibration (:mod:`~lava_spikedattn.calibrate`), the
converted-model file (:mod:`~lava_spikedattn.converted_model`), base search
(:mod:`~lava_spikedattn.base_search`); the family modules (:mod:`lava_spikedattn.models`) know
each architecture.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lava_spikedattn import ann
from lava_spikedattn.calibrate import Calibrator, batch_size, calibration_input
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.converted_model import FORMAT_VERSION, ConvertedModel, tensor_sha256
from lava_spikedattn.engines import AnnEngine, SpikingNetwork
from lava_spikedattn.layers import layer_count, steps_per_inference
from lava_spikedattn.models import ModelFamily, family_of

__all__ = ["FOLDING_TOLERANCE", "convert"]

# Relative error allowed between the prepared ANN and the folded network (float32 rounding).
FOLDING_TOLERANCE = 1e-4


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

