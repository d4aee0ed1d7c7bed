"""Norm folding shared by the families: a linear layer after a per-channel affine map.

Folds are differentiable (nothing is detached): phase-aware fine-tuning trains the ANN through
them; ``convert`` detaches what it stores."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UnsupportedModuleError", "fold_linear"]


class UnsupportedModuleError(ValueError):
    """A prepared model still contains a module that one-spike phase coding cannot convert."""


def fold_linear(linear: nn.Linear, a: torch.Tensor | None = None, c: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of ``linear(a·x + c)``: W' = W·diag(a), b' = W·c + b (no norm: W, b)."""
    weight = linear.weight.double().cpu()
    if linear.bias is None:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64)
    else:
        bias = linear.bias.double().cpu()
    if a is None:
        return weight, bias
    return weight * a, weight @ c + bias
