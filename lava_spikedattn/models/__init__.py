"""The model families, in one registry: family name → :class:`ModelFamily`.

A family is one package (``models/swin/``, ``models/vit/``, ``models/bert/``) whose ``__init__``
defines and registers its :class:`ModelFamily`: everything the library needs to know about one
kind of transformer, in one place:

* preparation: ``prepare`` (the ``ann.prepare_*`` function);
* conversion: ``matches``, ``architecture``, ``layer_graph``, ``weight_shapes``, ``fold``;
* the reference network (``network``, a :class:`~lava_spikedattn.engines.SpikingNetwork` in the
  package's ``network.py``);
* the Lava builder (``lava_builder``, in the package's ``lava_builder.py``; imported on use);
* the command line: the ``--model`` names it builds (``owns_model_name`` / ``build_ann``), its
  data sets and their batches, its default phase code.

Adding a family is one new package and one line in :data:`_BUILTIN_MODULES`.
Nothing outside the package branches on a family's name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lava_spikedattn.coding import PhaseCode
    from lava_spikedattn.data import Batches
    from lava_spikedattn.engines import SpikingNetwork
    from lava_spikedattn.layers import LayerSpec

__all__ = ["ModelFamily", "family_for_model_name", "family_names", "family_of", "get_family", "register_family"]

# Family name → package that defines (and registers) it.
_BUILTIN_MODULES = {"swin": "lava_spikedattn.models.swin", "vit": "lava_spikedattn.models.vit",
                    "bert": "lava_spikedattn.models.bert"}
_REGISTRY: dict[str, ModelFamily] = {}


class ModelFamily(ABC):
    """What the library needs to know about one model family.

    ``architecture`` dicts are plain JSON (lists, numbers, strings): they are written to
    ``config.json`` as they are and must rebuild the network on their own.
    """

    name: str = ""
    #: The ``--model`` names it builds, as the command line's help and errors list them.
    model_names: str = ""
    #: Data sets of the command line (``--data``), the first one the family's default.
    datasets: tuple[str, ...] = ()
    #: Default (B, T) of the command line: the paper's setting for the family.
    default_code: tuple[float, int] = (1.15, 40)
    #: Model options of ``spikedattn convert`` besides ``--model-kwargs`` that apply to the family.
    model_options: tuple[str, ...] = ("num_classes",)

    # --- conversion ---------------------------------------------------------------------------------
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
        """The model input inside one batch: the batch itself or its first item.

        Families whose input is a dict (BERT) override this to keep only the model's inputs."""
        if isinstance(batch, (tuple, list)):
            return batch[0]
        return batch

    def ann_output(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Logits of the prepared ANN for ``inputs`` (used to verify the folded network)."""
        return model(inputs)

    @abstractmethod
    def example_input(self, architecture: Mapping[str, Any], *, seq_len: int | None = None) -> Any:
        """One blank sample of model input, for what depends on the input's size (the resource
        estimate). ``seq_len``: tokens, for families whose size depends on it; ``ValueError`` if
        such a family gets none, or more than the model's positions."""

    # --- preparation and the Lava builder ------------------------------------------------------------
    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """The family's ``ann.prepare_*``: norms → running affine maps, GELU → ReLU."""

    @abstractmethod
    def lava_builder(self) -> type:
        """The class that builds a converted model of this family as Lava processes
        (:class:`lava_spikedattn.builder.FamilyBuilder`); imported here, on use, because importing
        Lava is slow and conversion does not need it."""

    # --- the command line --------------------------------------------------------------------------
    @abstractmethod
    def owns_model_name(self, name: str) -> bool:
        """Whether ``spikedattn convert --model NAME`` builds a model of this family."""

    @abstractmethod
    def build_ann(self, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        """(unprepared ANN with random init or bundled weights, name and kwargs that rebuild it) for
        ``--model name`` with ``kwargs`` (also what an ANN checkpoint stores)."""

    @abstractmethod
    def model_info(self, model: nn.Module) -> dict[str, Any]:
        """What :meth:`batches` needs to know about the model (image size / vocabulary, classes)."""

    @abstractmethod
    def architecture_info(self, architecture: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`model_info` from a converted model's ``config.json`` architecture."""

    @abstractmethod
    def batches(self, data: str, split: str, *, limit: int | None, batch_size: int, info: Mapping[str, Any],
                seed: int, seq_len: int) -> Batches:
        """Batches of ``(x, y)`` tuples (or dicts with ``"labels"``) of the data set ``data``."""


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


def family_for_model_name(name: str) -> ModelFamily:
    """The family whose command line builds ``--model name``; ``ValueError`` listing every
    family's model names otherwise."""
    _load_builtins()
    for family in _REGISTRY.values():
        if family.owns_model_name(name):
            return family
    supported = "; ".join(f"{family.name}: {family.model_names}" for family in _REGISTRY.values())
    raise ValueError(f"no model family builds --model {name!r}; supported: {supported}")
