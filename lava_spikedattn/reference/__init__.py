"""PyTorch reference engine: time-stepped dynamics (the oracle) and the closed form (fast)."""

from lava_spikedattn.reference import closed, functional, stepped

__all__ = ["closed", "functional", "stepped"]
