"""The ViT family: timm ``VisionTransformer`` and DeiT (distilled too) (its registry entry).

``network.py``: the architecture, the layer graph, folding and the spiking network (Swin's blocks
with one window over all tokens); ``lava_builder.py``: the same network as Lava processes. This
module names them, the preparation (``ann.prepare_vit``) and the model names the command line
builds (timm ``vit_*`` and ``deit_*``; the image data sets are ``images.ImageFamily``'s). timm
and ``network.py`` are imported on use: the command line reads the registry before it parses.
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
    from lava_spikedattn.models.vit.network import SpikingViT

__all__ = ["ViTFamily"]


class ViTFamily(ImageFamily):
    """timm ``VisionTransformer`` prepared with ``ann.prepare_vit``."""

    name = "vit"
    model_names = ("timm VisionTransformer models (vit_*, deit_*, e.g. vit_tiny_patch16_224, "
                   "deit_tiny_distilled_patch16_224; random init)")

    def matches(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        from lava_spikedattn.models.vit import network

        return network.ViTConfig.from_model(model).to_json()

    def check_architecture(self, architecture: Mapping[str, Any]) -> None:
        from lava_spikedattn.models.vit import network

        network.ViTConfig.from_json(architecture)

    def layer_graph(self, architecture: Mapping[str, Any], convention: str) -> list[LayerSpec]:
        from lava_spikedattn.models.vit import network

        return network.vit_layer_graph(network.ViTConfig.from_json(architecture), convention)

    def weight_shapes(self, architecture: Mapping[str, Any], convention: str) -> dict[str, tuple[int, ...]]:
        from lava_spikedattn.models.vit import network

        return network.vit_weight_shapes(network.ViTConfig.from_json(architecture), convention)

    def fold(self, model: nn.Module, convention: str) -> dict[str, torch.Tensor]:
        from lava_spikedattn.models.vit import network

        return network.fold_vit(model, convention)

    def network(self, architecture: Mapping[str, Any], convention: str, weights: Mapping[str, torch.Tensor],
                code: PhaseCode | None = None, engine: str = "ann") -> SpikingViT:
        from lava_spikedattn.models.vit import network

        return network.SpikingViT(network.ViTConfig.from_json(architecture), convention, weights, code, engine)

    def prepare(self, model: nn.Module) -> nn.Module:
        from lava_spikedattn.ann import prepare_vit

        return prepare_vit(model)

    def lava_builder(self) -> type:
        from lava_spikedattn.models.vit.lava_builder import ViTBuilder

        return ViTBuilder

    def owns_model_name(self, name: str) -> bool:
        return name.startswith(("vit_", "deit_"))


register_family(ViTFamily())
