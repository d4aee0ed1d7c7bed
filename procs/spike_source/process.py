"""SpikeSource Process: replays a recorded tensor sequence on an OutPort."""

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from lava_spikedattn.procs import params


class SpikeSource(AbstractProcess):
    """Plays back ``data[t]`` on ``s_out`` at time step ``t``.

    Time step ``t`` is 0-based and counts from the first step the Process
    executes (Lava's ``time_step - 1``). Once ``t >= data.shape[0]`` the
    source sends zeros. Payloads are graded (float64), so one message carries
    a whole dense tensor per step.

    A receiver that ``recv()``s in its own ``run_spk`` gets ``data[t]`` in
    the same time step ``t`` (no delay; measured with Lava 0.10.0).

    Parameters
    ----------
    data : numpy.ndarray
        Shape ``(steps, *shape)`` with ``ndim >= 2``; finite real values.
        It is copied (as float64) into memory shared with the ProcessModel
        and handed to it as a Process parameter, not as a Var, because Lava
        moves Var values one element at a time; :meth:`load` replaces it
        between runs of a compiled graph.

    Ports
    -----
    s_out : OutPort, shape ``data.shape[1:]``
        Graded output: the slice ``data[t]`` at step ``t``, zeros afterwards.
    """

    # Lava 0.10.0 bug workaround: AbstractProcess.__del__ reads _runtime,
    # which is unset when validation raises before super().__init__().
    _runtime = None

    def __init__(
        self,
        *,
        data: np.ndarray,
        name: str | None = None,
        log_config: LogConfig | None = None,
    ) -> None:
        data = _validated_data(data)
        shared = params.shared_array(data.shape)
        shared[...] = data  # copied (as float64)
        super().__init__(data=shared, name=name, log_config=log_config)
        self.s_out = OutPort(shape=data.shape[1:])

    def load(self, data: np.ndarray) -> None:
        """Replace the data (same shape) for the next run of a compiled graph; call it between
        runs only (the ProcessModel reads the shared memory while it runs)."""
        data = _validated_data(data)
        if data.shape != self.proc_params["data"].shape:
            raise ValueError(f"SpikeSource: new data of shape {data.shape} does not match the compiled "
                             f"{self.proc_params['data'].shape}")
        self.proc_params["data"][...] = data

    @property
    def num_steps(self) -> int:
        """Number of recorded steps (after which the source sends zeros)."""
        return int(self.proc_params["data"].shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor sent each step."""
        return tuple(self.s_out.shape)


def _validated_data(data: ty.Any) -> np.ndarray:
    """Return ``data`` (finite, real, (steps, *shape)) or raise ValueError."""
    if not isinstance(data, np.ndarray):
        raise ValueError(
            f"SpikeSource: data must be a numpy.ndarray, got "
            f"{type(data).__name__}")
    if data.ndim < 2:
        raise ValueError(
            f"SpikeSource: data must have shape (steps, *shape) with "
            f"ndim >= 2, got shape {data.shape}")
    if data.size == 0:
        raise ValueError(
            f"SpikeSource: data must not be empty, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number)
            or data.dtype == np.bool_) or np.iscomplexobj(data):
        raise ValueError(
            f"SpikeSource: data must be real numeric, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError("SpikeSource: data must be finite (found NaN or inf)")
    return data
