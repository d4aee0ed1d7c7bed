"""Test data shared by the Swin test modules: a small synthetic 10-class image task."""

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
