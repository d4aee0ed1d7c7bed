"""The Swin family: timm ``SwinTransformer`` (its registry entry).

``network.py``: the architecture, the layer graph, norm folding and the spiking network;
``lava_builder.py``: the same network as Lava processes. This module names them, the preparation
(``ann.prepare_swin``) and what the command line builds (timm ``swin_*`` names, image data sets).
timm and ``network.py`` are imported on use: the command line reads the registry before it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lava_spikedattn.data import RANDOM_SAMPLES, Batches, batch_generator
from lava_spikedattn.models import ModelFamily, register_family

if TYPE_CHECKING:
    from lava_spikedattn.coding import PhaseCode
    from lava_spikedattn.layers import LayerSpec
    from lava_spikedattn.models.swin.network import SpikingSwin

__all__ = ["SwinFamily"]


class SwinFamily(ModelFamily):
    """timm ``SwinTransformer`` prepared with ``ann.prepare_swin``."""

    name = "swin"
    model_names = "timm SwinTransformer models (swin_*, e.g. swin_tiny_patch4_window7_224; random init)"
    datasets = ("fashion-mnist", "mnist-5k", "digits", "random")
    default_code = (1.15, 40)
    model_options = ("num_classes", "img_size", "in_chans")

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

    def example_input(self, architecture: Mapping[str, Any], *, seq_len: int | None = None) -> torch.Tensor:
        """A blank image (1, C, H, W): a Swin's size does not depend on the input."""
        return torch.zeros(1, architecture["in_chans"], *architecture["img_size"])

    def prepare(self, model: nn.Module) -> nn.Module:
        from lava_spikedattn.ann import prepare_swin

        return prepare_swin(model)

    def lava_builder(self) -> type:
        from lava_spikedattn.models.swin.lava_builder import SwinBuilder

        return SwinBuilder

    def owns_model_name(self, name: str) -> bool:
        return name.startswith("swin")

    def build_ann(self, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs), name, dict(kwargs)

    def model_info(self, model: nn.Module) -> dict[str, Any]:
        return {"img_size": list(model.patch_embed.img_size), "in_chans": model.patch_embed.proj.in_channels,
                "num_classes": model.num_classes}

    def architecture_info(self, architecture: Mapping[str, Any]) -> dict[str, Any]:
        return {key: architecture[key] for key in ("img_size", "in_chans", "num_classes")}

    def batches(self, data: str, split: str, *, limit: int | None, batch_size: int, info: Mapping[str, Any],
                seed: int, seq_len: int) -> Batches:
        """Images resized to the model's input (``data.fit_images``), or Gaussian noise (``random``)."""
        height, width = info["img_size"]
        channels = info["in_chans"]
        if data == "random":
            def make_random(start: int, stop: int):
                g = batch_generator(seed, split, start)
                x = torch.randn(stop - start, channels, height, width, generator=g)
                return x, torch.randint(0, info["num_classes"], (stop - start,), generator=g)

            return Batches(RANDOM_SAMPLES if limit is None else limit, batch_size, make_random)
        from lava_spikedattn.data import fit_images, load_image_dataset

        images, labels = load_image_dataset(data, split, limit)

        def make(start: int, stop: int):
            return fit_images(images[start:stop], (height, width), channels), labels[start:stop]

        return Batches(len(images), batch_size, make)


register_family(SwinFamily())
