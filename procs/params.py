"""Validation of Process parameters shared by the Processes in ``procs/``.

Kept beside (not inside) the process folders: Lava's compiler executes every module inside a
process folder while it searches for ProcessModels.
"""

from __future__ import annotations

import mmap
import typing as ty
from numbers import Integral

import numpy as np

from lava_spikedattn.coding import PhaseCode


def shape_tuple(owner: str, name: str, shape: ty.Any) -> tuple[int, ...]:
    """``shape`` as a non-empty tuple of positive ints, or a ValueError naming it."""
    if isinstance(shape, Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be a tuple of ints, got {shape!r}") from None
    if not dims or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in dims):
        raise ValueError(f"{owner}: {name} must be a non-empty tuple of ints >= 1, got {shape!r}")
    return tuple(int(d) for d in dims)


def phase_code(owner: str, code: ty.Any) -> PhaseCode:
    if not isinstance(code, PhaseCode):
        raise ValueError(f"{owner}: code must be a lava_spikedattn.coding.PhaseCode, got {type(code).__name__}")
    return code


def non_negative_int(owner: str, name: str, value: ty.Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{owner}: {name} must be an integer >= 0, got {value!r}")
    return int(value)


def window(owner: str, code: PhaseCode, start: ty.Any, wait: ty.Any) -> tuple[int, int]:
    """(start, wait) with wait defaulting to T and never below it (no firing before input ends)."""
    start = non_negative_int(owner, "start", start)
    wait = code.timesteps if wait is None else non_negative_int(owner, "wait", wait)
    if wait < code.timesteps:
        raise ValueError(f"{owner}: wait must be >= timesteps ({code.timesteps}), got {wait}")
    return start, wait


def array(owner: str, name: str, value: ty.Any, shape: tuple[int, ...], positive: bool = False,
          dtype: type = np.float64) -> np.ndarray:
    """C-contiguous ``dtype`` copy of ``value`` that broadcasts to ``shape``; finite (and > 0 if
    ``positive``)."""
    arr = np.array(value, dtype=dtype, order="C")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{owner}: {name} must be finite (found NaN or inf)")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{owner}: {name} must be > 0 everywhere (found min {arr.min():.4g})")
    try:
        np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        raise ValueError(f"{owner}: {name} of shape {arr.shape} does not broadcast to {shape}") from None
    if np.broadcast_shapes(arr.shape, shape) != shape:
        raise ValueError(f"{owner}: {name} of shape {arr.shape} would enlarge the population {shape}")
    arr.setflags(write=False)
    return arr


def woss_process_params(owner: str, shape: ty.Any, code: ty.Any, start: ty.Any, wait: ty.Any,
                        ramp_start: ty.Any, key_mask: ty.Any) -> dict[str, ty.Any]:
    """Process parameters shared by a WossNeuron and its WossInhibitor (same arguments, same values)."""
    shape = shape_tuple(owner, "shape", shape)
    code = phase_code(owner, code)
    start, wait = window(owner, code, start, wait)
    ramp = code.woss_ramp_start if ramp_start is None else float(ramp_start)
    return dict(shape=shape, base=code.base, timesteps=code.timesteps, start=start, wait=wait,
                slope=code.woss_slope, theta0=ramp * code.woss_slope, ramp_start=ramp,
                present=mask(owner, key_mask, shape))


def fixed_point(owner: str, fixed_format: ty.Any, **exponents: ty.Any) -> dict[str, ty.Any]:
    """fixed_pt parameters of a process: its payload/current exponents (ints, all required once
    fixed point is asked for by any of them or by ``fixed_format``), the FixedFormat (default
    ``FixedFormat()``) and a shared clip counter; every one None for a float-only process."""
    from lava_spikedattn.fixed_point import FixedFormat

    if fixed_format is None and all(value is None for value in exponents.values()):
        return dict(fixed_format=None, clip_record=None, **exponents)
    for name, value in exponents.items():
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"{owner}: fixed point needs {', '.join(exponents)} as ints, got {name}={value!r}")
    fixed_format = FixedFormat() if fixed_format is None else fixed_format
    if not isinstance(fixed_format, FixedFormat):
        raise ValueError(f"{owner}: fixed_format must be a reference.fixed.FixedFormat, got "
                         f"{type(fixed_format).__name__}")
    return dict(fixed_format=fixed_format, clip_record=shared_array((1,), np.int64, 0),
                **{name: int(value) for name, value in exponents.items()})


def woss_fixed(owner: str, code: PhaseCode, current_exp: ty.Any, fixed_format: ty.Any) -> dict[str, ty.Any]:
    """fixed_pt parameters of a WossNeuron / WossInhibitor: current_exp (the logits' payload
    exponent) and the FixedFormat (see :func:`fixed_point`)."""
    return dict(code=code, **fixed_point(owner, fixed_format, current_exp=current_exp))


def mask(owner: str, key_mask: ty.Any, shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask of present keys broadcast to ``shape`` (all True for None)."""
    if key_mask is None:
        return np.ones(shape, dtype=bool)
    arr = np.asarray(key_mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{owner}: key_mask must be a bool array (True = key present), got {arr.dtype}")
    try:
        return np.broadcast_to(arr, shape).copy()
    except ValueError:
        raise ValueError(f"{owner}: key_mask of shape {arr.shape} does not broadcast to {shape}") from None


def index(owner: str, name: str, value: ty.Any, size: int) -> np.ndarray | None:
    """A gather index: an integer array (any shape) of flat positions in [0, size), or None."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{owner}: {name} must be an integer array, got {arr.dtype} of shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{owner}: {name} holds positions outside [0, {size})")
    arr = arr.astype(np.int64)
    arr.setflags(write=False)
    return arr


def shared_array(shape: tuple[int, ...], dtype: ty.Any = np.float64, fill: ty.Any = np.nan) -> np.ndarray:
    """Array on an anonymous MAP_SHARED memory map, filled with ``fill``.

    Allocated in the parent before Lava forks its workers, the pages are shared with the forked
    ProcessModel: what the model writes, the parent reads after the run with no transfer (Lava
    0.10.0's ``Var.get()`` moves ~50 µs per element). Relies on the 'fork' start method.
    """
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    array = np.ndarray(shape, dtype=dtype, buffer=buffer)
    array.fill(fill)
    return array
