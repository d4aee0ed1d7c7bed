"""Lava Processes of SpikedAttention (imported as ``lava_spikedattn.procs``)."""
