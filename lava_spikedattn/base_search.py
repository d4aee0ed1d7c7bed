"""Base search (spec §5.3): the base B whose phase code best fits a network's activation ratios."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.engines import AnnEngine, Observer

__all__ = ["BaseSearch", "log_error", "search_base"]

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

