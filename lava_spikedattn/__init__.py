"""lava-spikedattn: SpikedAttention transformers as one-spike phase-coded Lava networks."""

__version__ = "0.1.0"
