"""What the image families (Swin, ViT) share in the registry: timm models by name, image data
sets resized to the model's input, a blank image for what depends on the input's size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lava_spikedattn.data import RANDOM_SAMPLES, Batches, batch_generator
from lava_spikedattn.models import ModelFamily

__all__ = ["ImageFamily"]


class ImageFamily(ModelFamily):
    """A timm image classifier whose architecture JSON has ``img_size``, ``in_chans`` and
    ``num_classes`` and whose ``patch_embed`` is timm's ``PatchEmbed``."""

    datasets = ("fashion-mnist", "mnist-5k", "digits", "random")
    default_code = (1.15, 40)
    model_options = ("num_classes", "img_size", "in_chans")

    def example_input(self, architecture: Mapping[str, Any], *, seq_len: int | None = None) -> torch.Tensor:
        """A blank image (1, C, H, W): the network's size does not depend on the input."""
        return torch.zeros(1, architecture["in_chans"], *architecture["img_size"])

    def build_ann(self, name: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        """``timm.create_model(name, pretrained=False, **kwargs)``: random init, nothing downloaded."""
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
