"""Model families the converter knows: a small registry, family name → :class:`ModelFamily`.

A family knows one kind of prepared ANN (timm Swin, Hugging Face BERT): its architecture
hyper-parameters, its neuron-layer graph in each convention, how to fold its weights, and the
engine-agnostic network code that runs it (see :class:`lava_spikedattn.engines.SpikingNetwork`).
The generic converter (:mod:`lava_spikedattn.convert`) dispatches on it and never looks inside
a model itself.

Built-in families live in their own modules (``models/swin.py``, ``models/bert.py``) and register
themselves with :func:`register_family` when imported; the registry imports them on first use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

if TYPE_CHECKING:
    from lava_spikedattn.coding import PhaseCode
    from lava_spikedattn.engines import SpikingNetwork
    from lava_spikedattn.layers import LayerSpec

__all__ = ["ModelFamily", "family_names", "family_of", "get_family", "register_family"]

# Family name → module that defines (and registers) it.
_BUILTIN_MODULES = {"swin": "lava_spikedattn.models.swin", "bert": "lava_spikedattn.models.bert"}
_REGISTRY: dict[str, ModelFamily] = {}


class ModelFamily(ABC):
    """What the converter needs to know about one model family.

    ``architecture`` dicts are plain JSON (lists, numbers, strings): they are written to
    ``config.json`` as they are and must rebuild the network on their own.
    """

    name: str = ""

    @abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """True if ``model`` is a (prepared) ANN of this family."""

    @abstractmethod
    def architecture(self, model: nn.Module) -> dict[str, Any]:
        """JSON hyper-parameters of ``model``; raises ``ValueError`` for variants it cannot run."""

    @abstractmethod
    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the field if ``architecture`` is incomplete or invalid."""

    @abstractmethod
    def layer_graph(self, architecture: Mapping[str, Any], convention: str) -> list[LayerSpec]:
        """Neuron layers in execution order, with their pipeline index and scale shape."""

    @abstractmethod
    def weight_shapes(self, architecture: Mapping[str, Any], convention: str) -> dict[str, tuple[int, ...]]:
        """Shape of every stored tensor except the per-layer scales (``scale.<layer>``)."""

    @abstractmethod
    def fold(self, model: nn.Module, convention: str) -> dict[str, torch.Tensor]:
        """Inference weights of ``model`` with its norms folded as ``convention`` requires."""

    @abstractmethod
    def network(self, architecture: Mapping[str, Any], convention: str, weights: Mapping[str, torch.Tensor],
                code: PhaseCode | None = None, engine: str = "ann") -> SpikingNetwork:
        """The engine-agnostic network module of this family."""

    def model_input(self, batch: Any) -> Any:
        """The model input inside one calibration batch: the batch itself or its first item.

        Families whose input is a dict (BERT) override this to keep only the model's inputs."""
        if isinstance(batch, (tuple, list)):
            return batch[0]
        return batch

    def ann_output(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Logits of the prepared ANN for ``inputs`` (used to verify the folded network)."""
        return model(inputs)


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry under ``family.name`` (a name can be registered once)."""
    if not family.name:
        raise ValueError(f"{type(family).__name__} has no name")
    if family.name in _REGISTRY and type(_REGISTRY[family.name]) is not type(family):
        raise ValueError(f"a different family is already registered as {family.name!r}")
    _REGISTRY[family.name] = family
    return family


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES.values():
        importlib.import_module(module)


def family_names() -> list[str]:
    """Names of every known family, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``; ``KeyError`` listing the known names otherwise."""
    if name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(family_names())}")
    return _REGISTRY[name]


def family_of(model: nn.Module) -> ModelFamily:
    """The family that converts ``model``; ``TypeError`` if none does."""
    _load_builtins()
    for family in _REGISTRY.values():
        if family.matches(model):
            return family
    raise TypeError(
        f"no converter is registered for {type(model).__name__}; registered families: "
        f"{', '.join(family_names())}"
    )
