"""SpikeSink Process: records every step's input into parent-visible memory."""

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from lava_spikedattn.procs import params


class SpikeSink(AbstractProcess):
    """Records the tensor received on ``a_in`` at every time step.

    Row ``t`` of :meth:`data` holds what arrived at 0-based time step ``t``
    (Lava's ``time_step - 1``); rows of steps that have not run are NaN.
    Steps beyond ``num_steps`` raise inside the model.

    Why not a Var: Lava 0.10.0 transfers ``Var.get()`` one element at a time
    (~50 us per element, i.e. ~0.5 s for 10k floats). Instead the recording
    buffer is an anonymous shared memory map (``MAP_SHARED``) allocated here,
    in the parent, before Lava forks its worker processes. The forked
    ProcessModel writes into the very same pages, so after the run the parent
    reads the record without any transfer or naming/cleanup of shared memory
    segments. This relies on the 'fork' start method, which Lava 0.10.0
    forces on Linux/macOS.

    Parameters
    ----------
    shape : tuple of int
        Shape of the tensor received per step (may be multi-dimensional).
    num_steps : int
        Number of time steps to record (>= 1).

    Ports
    -----
    a_in : InPort, shape ``shape``
        Graded input; several connected OutPorts are summed by Lava.
    """

    # Lava 0.10.0 bug workaround: AbstractProcess.__del__ reads _runtime,
    # which is unset when validation raises before super().__init__().
    _runtime = None

    def __init__(
        self,
        *,
        shape: tuple[int, ...],
        num_steps: int,
        name: str | None = None,
        log_config: LogConfig | None = None,
    ) -> None:
        shape = _validated_shape(shape)
        if isinstance(num_steps, bool) or not isinstance(
                num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(
                f"SpikeSink: num_steps must be an int >= 1, got {num_steps!r}")
        num_steps = int(num_steps)
        record = params.shared_array((num_steps, *shape))
        super().__init__(shape=shape, num_steps=num_steps, record=record,
                         name=name, log_config=log_config)
        self.a_in = InPort(shape=shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor recorded per step."""
        return tuple(self.proc_params["shape"])

    @property
    def num_steps(self) -> int:
        """Number of time steps the sink can record."""
        return int(self.proc_params["num_steps"])

    def data(self) -> np.ndarray:
        """Copy of the record, float64 of shape ``(num_steps, *shape)``.

        Valid after the run has finished (e.g. after ``run_processes``).
        """
        return np.array(self.proc_params["record"], dtype=np.float64,
                        copy=True)


def _validated_shape(shape: ty.Any) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints or raise ValueError."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(
            f"SpikeSink: shape must be a tuple of ints, got {shape!r}"
        ) from None
    if not dims or any(
            isinstance(d, bool) or not isinstance(d, (int, np.integer))
            or d < 1 for d in dims):
        raise ValueError(
            f"SpikeSink: shape must be a non-empty tuple of ints >= 1, "
            f"got {shape!r}")
    return tuple(int(d) for d in dims)
