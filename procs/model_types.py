"""One declaration of a Process's ports and Vars, shared by its float and fixed-point models.

Lava's ``proc/lif/models.py`` declares ports and Vars once in an abstract model and lets the
concrete models override only the arithmetic. Here every Process has a ``floating_pt`` and a
``fixed_pt`` model whose port and Var types differ only by precision, so each Process declares
them once, by role, in an abstract base model, and each concrete model names its precision::

    class AbstractTokenLinearModel(TypedProcessModel):
        ports = {"s_in": IN, "a_out": OUT}

    @implements(proc=TokenLinear, protocol=LoihiProtocol)
    @requires(CPU)
    @tag("floating_pt")
    class PyTokenLinearModelFloat(AbstractTokenLinearModel, precision=FLOAT):
        def run_spk(self) -> None: ...

The concrete class gets one ``LavaPyType`` class attribute per declared name, which is what
Lava's compiler reads.
"""

from __future__ import annotations

import functools
import typing as ty
from dataclasses import dataclass

import numpy as np
from lava.magma.core.model.py.model import PyAsyncProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType

__all__ = ["FIXED", "FLAG", "FLOAT", "IN", "OUT", "RECORDS", "SIGN", "STEP", "VALUE", "Precision", "TypedProcessModel"]

# Roles of ports and Vars.
IN, OUT = "in", "out"  # dense ports carrying values (currents, spikes, traces)
VALUE = "value"  # a state array of values (membrane, latched trace, threshold, ...)
SIGN = "sign"  # ±1 per neuron
FLAG = "flag"  # bool per neuron
STEP = "step"  # an integer step per neuron (fire step)


@dataclass(frozen=True)
class Precision:
    """The numpy type of values and, for integers, their bit width (Loihi 2: 24-bit state)."""

    value: type
    bits: int | None = None
    sign_bits: int | None = None

    def lava_type(self, role: str) -> LavaPyType:
        """The LavaPyType of a port or Var of ``role`` at this precision."""
        if role in (IN, OUT):
            port = PyInPort.VEC_DENSE if role == IN else PyOutPort.VEC_DENSE
            return LavaPyType(port, self.value, precision=self.bits)
        if role == VALUE:
            return LavaPyType(np.ndarray, self.value, precision=self.bits)
        if role == SIGN:
            return LavaPyType(np.ndarray, self.value, precision=self.sign_bits)
        if role == FLAG:
            return LavaPyType(np.ndarray, bool)
        if role == STEP:
            return LavaPyType(np.ndarray, int)
        raise ValueError(f"unknown role {role!r}; expected one of {IN}, {OUT}, {VALUE}, {SIGN}, {FLAG}, {STEP}")


#: proc_params entries a model writes for the parent to read (shared memory), reset between inputs,
#: and the value they start from (fire step −1: silent; nothing saturated; nothing clipped).
RECORDS = {"fire_record": -1, "saturation_record": False, "clip_record": 0}

FLOAT = Precision(float)
FIXED = Precision(np.int32, bits=24, sign_bits=2)


class TypedProcessModel(PyAsyncProcessModel):
    """Base of the ProcessModels: ``ports`` and ``variables`` (name → role) declared once per
    Process; a concrete model passes ``precision=`` and gets their LavaPyTypes."""

    ports: ty.ClassVar[dict[str, str]] = {}
    variables: ty.ClassVar[dict[str, str]] = {}
    #: Model attributes (besides the Vars) that hold state, reset with them between inputs.
    transient: ty.ClassVar[tuple[str, ...]] = ()
    #: 0-based step within the current input (``begin_step``).
    t: int = 0
    #: 1-based step since the start, as Lava's PyLoihiProcessModel counts it.
    time_step: int = 0

    def run_async(self) -> None:
        """Lava's AsyncProtocol: step ``num_steps`` times. A step blocks only on the messages it
        receives, so the processes keep in step through their data (dataflow), the spikes of a
        LoihiProtocol run (where a runtime service synchronises every process on every step, a
        round trip per process and step that dominated every run here); tested."""
        counters = self.__dict__  # the per-step counters bypass Lava's __setattr__ (a port type check)
        for _ in range(self.num_steps):
            counters["time_step"] = self.time_step + 1
            self.run_spk()

    def run_spk(self) -> None:
        """One step: receive, update, send."""
        raise NotImplementedError

    def __init_subclass__(cls, precision: Precision | None = None, **kwargs: ty.Any) -> None:
        super().__init_subclass__(**kwargs)
        if precision is None:  # an abstract model: declares, does not type
            return
        cls.precision = precision
        for name, role in {**cls.ports, **cls.variables}.items():
            setattr(cls, name, precision.lava_type(role))

    # --- many inputs in one compiled graph ----------------------------------------------------------------
    def begin_step(self) -> int:
        """Start a step; returns (and sets ``self.t``) the 0-based step within the current input.

        With ``proc_params["period"]`` (set by the builder: the steps of one inference) the
        graph runs input after input: at the first step of each input after the first, every
        state (Vars, ``transient`` attributes, the records in ``RECORDS``, held port values)
        goes back to what it was at step 0, as a Loihi 2 core resets its neurons every reset
        interval. Without it, time runs on from the first step."""
        step, period = self.time_step - 1, self._period
        t = self.__dict__["t"] = step if period is None else step % period
        if period is not None:
            if step == 0:
                self._initial = self._state_copy()
            elif t == 0:
                self.reset()
        return t

    @functools.cached_property
    def _period(self) -> int | None:
        return self.proc_params.get("period")

    def _state(self) -> dict[str, np.ndarray]:
        names = (*self.variables, *self.transient)
        state = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        state.update({key: self.proc_params[key] for key in RECORDS if self.proc_params.get(key) is not None})
        return state

    def _state_copy(self) -> dict[str, np.ndarray]:
        return {name: np.array(value, copy=True) for name, value in self._state().items()}

    def reset(self) -> None:
        """Every state back to its step-0 value (in place: the records are shared with the parent)."""
        for name, value in self._state().items():
            value[...] = self._initial[name]
        self.__dict__.pop("_held", None)

    # --- quiet ports (``procs.windows``): a port sends and receives only inside its window ----------------
    @functools.cached_property
    def windows(self) -> dict:
        """{port name: procs.windows.Window} assigned by ``assign_windows``; a port without one
        sends and receives every step."""
        return self.proc_params.get("windows") or {}

    def in_window(self, name: str) -> bool:
        """Whether port ``name`` carries a message this step."""
        window = self.windows.get(name)
        return window is None or self.t in window

    def receive(self, name: str) -> np.ndarray:
        """What InPort ``name`` reads this step: the message inside its window; outside, zeros,
        or after a latched window the last message (what an every-step message would hold)."""
        port = getattr(self, name)
        window = self.windows.get(name)
        if window is None:
            return port.recv()
        held = self.__dict__.setdefault("_held", {})
        if self.t in window:
            value = port.recv()
            if window.latched:
                held[name] = value
            return value
        if window.latched and name in held:
            return held[name]
        return self._zeros(port)

    def receive_nonzero(self, name: str) -> np.ndarray | None:
        """:meth:`receive`, or None where InPort ``name`` reads all zeros (no scan outside its window)."""
        value = self.receive(name)
        if value is self._zeros(getattr(self, name)) or not value.any():
            return None
        return value

    def _zeros(self, port) -> np.ndarray:
        """A read-only zero array of the port's shape and type (what a quiet port reads)."""
        cache = self.__dict__.setdefault("_zero_arrays", {})
        if port not in cache:
            cache[port] = np.zeros(port._shape, port._d_type)
            cache[port].setflags(write=False)
        return cache[port]

    def emit(self, name: str, value: np.ndarray | ty.Callable[[], np.ndarray]) -> None:
        """Send on OutPort ``name`` if this step is in its window (``value`` may be a callable,
        called only then)."""
        if self.in_window(name):
            getattr(self, name).send(value() if callable(value) else value)
