"""Faulty: a pass-through Process that raises, hangs or fails to build."""


from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess

MODES = ("raise", "raise_odd", "hang", "hang_stop", "init", "ok")


class FaultyError(ValueError):
    """Raised by the Faulty model (its class must survive pickling)."""


class OddError(Exception):
    """An exception the parent cannot unpickle (``__init__`` needs 2 args)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} (code {code})")


class Faulty(AbstractProcess):
    """Forwards ``a_in`` to ``s_out`` and misbehaves at 0-based step
    ``fail_at``.

    Parameters
    ----------
    shape : tuple of int
        Shape of ``a_in`` / ``s_out``.
    fail_at : int
        Step at which to misbehave (before sending that step's output).
    mode : str
        ``"raise"``: raise ``FaultyError(message)``; ``"raise_odd"``: raise
        ``OddError(message, 7)`` (cannot be unpickled as-is); ``"hang"``: sleep
        forever; ``"hang_stop"``: run fine but hang on Lava's STOP command;
        ``"init"``: raise ``FaultyError(message)`` while the model is
        built; ``"ok"``: behave.
    message : str
        Text of the exception.
    marker : str, optional
        File created when the model starts misbehaving (lets a test wait
        until the run is underway).
    """

    def __init__(self, *, shape: tuple[int, ...], fail_at: int = 0,
                 mode: str = "raise", message: str = "faulty model failed",
                 marker: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(shape=shape, fail_at=fail_at, mode=mode,
                         message=message, marker=marker)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
