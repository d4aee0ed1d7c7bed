"""WossNeuron Process: the winner-oriented spike shift softmax neurons."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.procs import params


class WossNeuron(AbstractProcess):
    """WOSS softmax neurons, rows along the last axis (spec §4.2, §4.4).

    With ``t_rel = t − start``::

        input window (t_rel < T):        v = B·v + a_in − shift_in          (gain only here)
        fire window (W ≤ t_rel < W+T):   s = [v ≥ theta_in], first spike only (unipolar, 0/1)
                                         latched = trace_in at the spike

    The row shift (the winner's value at the row's first positive spike) and the shared
    threshold ramp come from a :class:`WossInhibitor`; ``latched`` is the softmax weight before
    the row normalisation, ``trace_start·B^-k`` for an entry that fired at step k.

    Args (keyword-only): shape (..., N, M) with keys on the last axis; code; start; wait;
    ramp_start; key_mask (bool, broadcastable, True = key present: absent keys, e.g. padding,
    never fire) — the same arguments as the population's :class:`WossInhibitor`; current_exp
    (the logit neurons' ``payload_exp``) and fixed_format enable the ``fixed_pt`` model
    (``reference.fixed.FixedWossSim``: integer ramp, spikes carry 2^F, trace_out = latched
    integer trace in 2^-F units).
    Ports: a_in (logit spikes, ANN units), shift_in (..., N, 1), theta_in (1,), trace_in (1,)
    from a TraceHolder; s_out (0/1 spikes), trace_out (latched), v_out (membrane probe).
    Vars: v, fired, fire_step, latched. :meth:`recorded_fire_steps` as for PhaseNeuron.
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(self, *, shape: tuple[int, ...], code: PhaseCode, start: int = 0,
                 wait: int | None = None, ramp_start: float | None = None,
                 key_mask: ty.Any = None, current_exp: int | None = None,
                 fixed_format: ty.Any = None, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        p = params.woss_process_params("WossNeuron", shape, code, start, wait, ramp_start, key_mask)
        p.update(params.woss_fixed("WossNeuron", code, current_exp, fixed_format))
        super().__init__(**p, fire_record=params.shared_array(p["shape"], np.int64, -1), name=name,
                         log_config=log_config)
        shape = p["shape"]
        self.a_in = InPort(shape=shape)
        self.shift_in = InPort(shape=shape[:-1] + (1,))
        self.theta_in = InPort(shape=(1,))
        self.trace_in = InPort(shape=(1,))
        self.s_out = OutPort(shape=shape)
        self.trace_out = OutPort(shape=shape)
        self.v_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0.0)
        self.fired = Var(shape=shape, init=False)
        self.fire_step = Var(shape=shape, init=-1)
        self.latched = Var(shape=shape, init=0.0)

    def recorded_clips(self) -> int:
        """fixed_pt: how many membrane updates were clipped to the state range in the last run."""
        if self.proc_params["clip_record"] is None:
            raise ValueError("WossNeuron: built without a fixed-point format (no clip record)")
        return int(self.proc_params["clip_record"][0])

    def recorded_fire_steps(self) -> np.ndarray:
        """Fire step of every entry in the last run (−1: silent)."""
        return np.array(self.proc_params["fire_record"], copy=True)
