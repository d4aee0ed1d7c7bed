"""Test data shared by the test modules: small synthetic image and token tasks."""

import torch
import torch.nn.functional as F


def synthetic_task(n: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a 10-class task: a smooth class prototype plus smooth and white noise.

    A Swin with random weights has nearly tied logits, so its prediction agreement would
    measure rounding noise rather than fidelity; a few training steps on this task give it
    real decision margins, as a pre-trained model has.
    """
    prototypes = F.interpolate(torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(7)),
                               size=size, mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (n,), generator=generator)
    smooth = F.interpolate(torch.randn(n, 3, 8, 8, generator=generator), size=size, mode="bilinear",
                           align_corners=False)
    return prototypes[labels] + 0.5 * smooth + 0.1 * torch.randn(n, 3, size, size, generator=generator), labels


def grey_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-class task of 1-channel 16x16 images: smooth class prototypes plus noise (gives the
    model real margins)."""
    prototypes = F.interpolate(torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(7)), size=16,
                               mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    return prototypes[labels] + 0.3 * torch.randn(n, 1, 16, 16, generator=g), labels


def sentences(n: int, seed: int) -> dict:
    """Token batches of 8 positions (ids below 50) and varying length (padding at the end), as a
    tokenizer returns them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g)
    return {"input_ids": torch.randint(0, 50, (n, 8), generator=g),
            "attention_mask": (torch.arange(8) < lengths[:, None]).long()}
