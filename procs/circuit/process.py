"""Circuit Process: a block of SpikedAttention leaf processes as one hierarchical Process."""

from __future__ import annotations

import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from lava_spikedattn.procs import params


class Circuit(AbstractProcess):
    """A block (e.g. a Swin block) of leaf processes with one input stream and one output stream.

    Its ProcessModels:

    - decomposed (``Loihi2SimCfg(select_sub_proc_model=True)``, tags ``floating_pt`` and
      ``fixed_pt``): a SubProcessModel that runs the members as the Lava processes they are, one
      OS process each, each with its model of the run's tag: the porting path;
    - fused (default), one per tag: one ProcessModel that steps every member inside a single OS
      process (``procs.fused``) with the same ``procs.dynamics`` (floating_pt) or
      ``procs.dynamics_fixed`` (fixed_pt) updates as the leaf models, so both produce identical
      spikes.

    Args (keyword-only):
        members: the block's leaf processes, connected among themselves but not to the outside.
        shape_in, shape_out: shapes of ``s_in`` and ``s_out``.
        feeds: member InPorts that receive ``s_in``.
        trace_feeds: member InPorts that receive the global trace ``trace_in``.
        output: the member OutPort sent on ``s_out``.

    Ports: s_in (shape_in) the block's input spikes; trace_in (1,) the global trace;
    s_out (shape_out) the block's output spikes.
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(self, *, members: ty.Sequence[AbstractProcess], shape_in: tuple[int, ...],
                 shape_out: tuple[int, ...], feeds: ty.Sequence[InPort], trace_feeds: ty.Sequence[InPort],
                 output: OutPort, name: str | None = None, log_config: LogConfig | None = None) -> None:
        owner = "Circuit"
        shape_in = params.shape_tuple(owner, "shape_in", shape_in)
        shape_out = params.shape_tuple(owner, "shape_out", shape_out)
        members = list(members)
        for port in (*feeds, *trace_feeds, output):
            if port.process not in members:
                raise ValueError(f"{owner}: port {port.name} belongs to {port.process.name}, not to a member")
        if tuple(output.shape) != shape_out:
            raise ValueError(f"{owner}: output of shape {tuple(output.shape)} does not match shape_out {shape_out}")
        super().__init__(members=members, feeds=list(feeds), trace_feeds=list(trace_feeds), output=output,
                         shape_in=shape_in, shape_out=shape_out, name=name, log_config=log_config)
        self.s_in = InPort(shape=shape_in)
        self.trace_in = InPort(shape=(1,))
        self.s_out = OutPort(shape=shape_out)

    @property
    def members(self) -> list[AbstractProcess]:
        return list(self.proc_params["members"])
