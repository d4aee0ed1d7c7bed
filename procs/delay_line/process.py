"""DelayLine Process: a FIFO that delays a tensor stream by a fixed number of steps."""

from __future__ import annotations

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spikedattn.procs import params


class DelayLine(AbstractProcess):
    """``a_out[t] = s_in[t − delay]`` (zeros for t < delay): residual streams and V (spec §3.3, §3.4).

    Args (keyword-only): shape; delay ≥ 1 steps.
    Ports: s_in, a_out (shape). Var: buffer (delay, *shape), a ring buffer.
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(self, *, shape: tuple[int, ...], delay: int, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        shape = params.shape_tuple("DelayLine", "shape", shape)
        delay = params.non_negative_int("DelayLine", "delay", delay)
        if delay < 1:
            raise ValueError("DelayLine: delay must be >= 1 (connect the ports directly for no delay)")
        super().__init__(shape=shape, delay=delay, name=name, log_config=log_config)
        self.s_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.buffer = Var(shape=(delay,) + shape, init=0.0)
