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

import typing as ty
from dataclasses import dataclass

import numpy as np
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType

__all__ = ["FIXED", "FLAG", "FLOAT", "IN", "OUT", "SIGN", "STEP", "VALUE", "Precision", "TypedProcessModel"]

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


FLOAT = Precision(float)
FIXED = Precision(np.int32, bits=24, sign_bits=2)


class TypedProcessModel(PyLoihiProcessModel):
    """Base of the ProcessModels: ``ports`` and ``variables`` (name → role) declared once per
    Process; a concrete model passes ``precision=`` and gets their LavaPyTypes."""

    ports: ty.ClassVar[dict[str, str]] = {}
    variables: ty.ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, precision: Precision | None = None, **kwargs: ty.Any) -> None:
        super().__init_subclass__(**kwargs)
        if precision is None:  # an abstract model: declares, does not type
            return
        cls.precision = precision
        for name, role in {**cls.ports, **cls.variables}.items():
            setattr(cls, name, precision.lava_type(role))
