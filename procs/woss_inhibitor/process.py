"""WossInhibitor Process: the inhibitory side of WOSS softmax."""

from __future__ import annotations

import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.procs import params


class WossInhibitor(AbstractProcess):
    """Drives a :class:`WossNeuron` population and normalises its rows (spec §4.2–§4.5)::

        input window:  m = max_row(a_in);  shift_out = m·open;  open = 0 where m > 0
                       (the winner-oriented shift: one subtraction, at the row's first positive
                       spike, which always carries the row's largest value)
        fire window:   theta_out = slope·(ramp_start − k) at fire step k, slope = B^(T−1)·ln B
        every step:    norm_out = spike_sum = Σ_row trace_in (the WOSS neurons' latched values)

    ``norm_out`` feeds ``div_in`` of the attention×V :class:`PhaseNeuron`, which divides its
    membrane by it once, when its fire window opens. A row in which no entry fired has
    spike_sum 0; that neuron row is then cleared, so its output decodes to 0 (never NaN).

    Within a step the model receives ``a_in``, sends the shift and threshold, then receives the
    WOSS neurons' traces: the two Processes form a cycle that cannot deadlock.

    Args (keyword-only): shape (..., N, M) of the WOSS population; code; start; wait;
    ramp_start (threshold at step 0 in units of the slope; the convention's by default);
    key_mask (bool, True = key present; absent keys take no part in the row maximum);
    current_exp and fixed_format as for the WossNeuron (``fixed_pt``: integer shift, ramp
    and spike sum, 2^-F units, clipped to 24 bits and counted in :meth:`recorded_clips`).
    Ports: a_in (logit spikes), trace_in (WOSS latched) → shift_out (..., N, 1), theta_out (1,),
    norm_out (..., N, 1). Vars: open (..., N, 1), theta (1,), spike_sum (..., N, 1).
    """

    _runtime = None  # Lava 0.10.0: __del__ reads it even if __init__ raised early

    def __init__(self, *, shape: tuple[int, ...], code: PhaseCode, start: int = 0,
                 wait: int | None = None, ramp_start: float | None = None,
                 key_mask: ty.Any = None, current_exp: int | None = None,
                 fixed_format: ty.Any = None, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        p = params.woss_process_params("WossInhibitor", shape, code, start, wait, ramp_start, key_mask)
        p.update(params.woss_fixed("WossInhibitor", code, current_exp, fixed_format))
        super().__init__(**p, name=name, log_config=log_config)
        shape, row_shape = p["shape"], p["shape"][:-1] + (1,)
        self.a_in = InPort(shape=shape)
        self.trace_in = InPort(shape=shape)
        self.shift_out = OutPort(shape=row_shape)
        self.theta_out = OutPort(shape=(1,))
        self.norm_out = OutPort(shape=row_shape)
        self.open = Var(shape=row_shape, init=True)
        self.theta = Var(shape=(1,), init=p["theta0"])
        self.spike_sum = Var(shape=row_shape, init=0.0)

    def recorded_clips(self) -> int:
        """fixed_pt: how many row spike sums were clipped to the state range (summed over steps)."""
        if self.proc_params["clip_record"] is None:
            raise ValueError("WossInhibitor: built without a fixed-point format (no clip record)")
        return int(self.proc_params["clip_record"][0])
