"""The Swin family: timm ``SwinTransformer`` (its registry entry).

``network.py``: the architecture, the layer graph, norm folding and the spiking network;
``lava_builder.py``: the same network as Lava processes. This module names them, the preparation
(``ann.prepare_swin``) and what the command line builds (timm ``swin_*`` names; the image data
sets and the rest of the command line's part are ``images.ImageFamily``'s).
timm and ``network.py`` are imported on use: the command line reads the registry before it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lava_spikedattn.models import register_family
from lava_spikedattn.models.images import ImageFamily

if TYPE_CHECKING:
    from lava_spikedattn.coding import PhaseCode
    from lava_spikedattn.layers import LayerSpec
    from lava_spikedattn.models.swin.network import SpikingSwin

__all__ = ["SwinFamily"]


class SwinFamily(ImageFamily):
    """timm ``SwinTransformer`` prepared with ``ann.prepare_swin``."""

    name = "swin"
    model_names = "timm SwinTransformer models (swin_*, e.g. swin_tiny_patch4_window7_224; random init)"

    def matches(self, model: nn.Module) -> bool:
        from timm.models.swin_transformer import SwinTransformer

        return isinstance(model, SwinTransformer)

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        from lava_spikedattn.models.swin import network

        return network.SwinConfig.from_model(model).to_json()

    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        from lava_spikedattn.models.swin import network

        network.SwinConfig.from_json(architecture)

    def layer_graph(self, architecture: Mapping[str, Any], convention: str) -> list[LayerSpec]:
        from lava_spikedattn.models.swin import network

        return network.swin_layer_graph(network.SwinConfig.from_json(architecture), convention)

    def weight_shapes(self, architecture: Mapping[str, Any], convention: str) -> dict[str, tuple[int, ...]]:
        from lava_spikedattn.models.swin import network

        return network.swin_weight_shapes(network.SwinConfig.from_json(architecture), convention)

    def fold(self, model: nn.Module, convention: str) -> dict[str, torch.Tensor]:
        from lava_spikedattn.models.swin import network

        return network.fold_swin(model, convention)

    def network(self, architecture: Mapping[str, Any], convention: str, weights: Mapping[str, torch.Tensor],
                code: PhaseCode | None = None, engine: str = "ann") -> SpikingSwin:
        from lava_spikedattn.models.swin import network

        return network.SpikingSwin(network.SwinConfig.from_json(architecture), convention, weights, code, engine)

    def prepare(self, model: nn.Module) -> nn.Module:
        from lava_spikedattn.ann import prepare_swin

        return prepare_swin(model)

    def lava_builder(self) -> type:
        from lava_spikedattn.models.swin.lava_builder import SwinBuilder

        return SwinBuilder

    def owns_model_name(self, name: str) -> bool:
        return name.startswith("swin")


register_family(SwinFamily())
