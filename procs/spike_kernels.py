"""Event-driven synapses: products with a step's spikes, at a cost proportional to the spikes.

A phase neuron fires once in T steps, so a step's spike tensor holds about 1/T nonzeros. A dense
``spikes @ weight`` multiplies all of them every step (T times the ANN's MACs per window);
:func:`spike_matmul` adds one weight row per spike instead, as a neuromorphic core does. Compiled
with numba, single-threaded (each Lava worker is one OS process). Integer operands stay int64
and are exact in any order; float64 sums run in spike order (not BLAS's), a rounding-level
difference that the reference comparisons' tolerance covers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types, void


def spike_matmul(spikes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``spikes @ weight`` from the nonzero entries of ``spikes`` only (numpy matmul semantics).

    spikes: (..., R, K) or (K,)-last with any leading axes; weight: (K, N) or (..., K, N), the
    leading axes broadcast. Both float64 or both integer (computed in int64).
    """
    dtype = _dtype(spikes)
    spikes, weight = spikes.astype(dtype, copy=False), _weight(weight, dtype)
    if weight.ndim == 2:  # one weight for every row: rows of all leading axes at once
        left, right = spikes.reshape(1, -1, spikes.shape[-1]), weight[None]
        shape = spikes.shape[:-1] + weight.shape[-1:]
    else:
        lead = np.broadcast_shapes(spikes.shape[:-2], weight.shape[:-2])
        left = np.broadcast_to(spikes, lead + spikes.shape[-2:]).reshape(-1, *spikes.shape[-2:])
        right = np.broadcast_to(weight, lead + weight.shape[-2:]).reshape(-1, *weight.shape[-2:])
        shape = lead + (spikes.shape[-2], weight.shape[-1])
    out = np.zeros((left.shape[0], left.shape[1], right.shape[-1]), dtype)
    _accumulate(np.ascontiguousarray(left), np.ascontiguousarray(right), out)
    return out.reshape(shape)


def gathered_spike_matmul(spikes: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``spikes.reshape(-1)[index] @ weight`` (index (..., K) of flat positions, weight (K, N)),
    gathering inside the product: no gathered copy, no work for the positions that did not spike."""
    dtype = _dtype(spikes)
    flat = np.ascontiguousarray(spikes, dtype=dtype).reshape(-1)
    rows = np.ascontiguousarray(index, dtype=np.int64).reshape(-1, index.shape[-1])
    out = np.zeros((rows.shape[0], weight.shape[-1]), dtype)
    _accumulate_gathered(flat, rows, np.ascontiguousarray(_weight(weight, dtype)), out)
    return out.reshape(index.shape[:-1] + weight.shape[-1:])


def matmul_spikes(dense: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """``dense @ spikes`` from the nonzero entries of the right operand ``spikes`` only."""
    return np.swapaxes(spike_matmul(np.swapaxes(spikes, -1, -2), np.swapaxes(dense, -1, -2)), -1, -2)


def _dtype(spikes: np.ndarray) -> type:
    """The kernels' dtype for these spikes: int64 for integer payloads, float64 otherwise."""
    return np.int64 if np.issubdtype(spikes.dtype, np.integer) else np.float64


def _weight(weight: np.ndarray, dtype: type) -> np.ndarray:
    """The weight operand in the kernels' dtype; float32 weights stay float32 beside float64 spikes
    (half the bytes to read): each widens exactly to float64 in its product."""
    return weight if dtype is np.float64 and weight.dtype == np.float32 else weight.astype(dtype, copy=False)


def _operand(dtype) -> types.Array:
    """A C-contiguous 3-D operand, read-only (it may be a broadcast view); writable ones convert."""
    return types.Array(dtype, 3, "C", readonly=True)


# (spikes, weight) dtypes: float64 with float64 or float32 weights, int64 (fixed point)
_DTYPES = ((types.float64, types.float64), (types.float64, types.float32), (types.int64, types.int64))


# Compiled (or loaded from the cache) at import, before Lava forks its workers: they inherit it.
@njit([void(_operand(dtype), _operand(weight), types.Array(dtype, 3, "C")) for dtype, weight in _DTYPES],
      cache=True, nogil=True)
def _accumulate(spikes, weight, out):  # pragma: no cover (compiled)
    """out[g] += spikes[g] @ weight[g or 0], one weight row per nonzero spike."""
    groups, rows, inputs = spikes.shape
    outputs = out.shape[-1]
    for g in range(groups):
        w = 0 if weight.shape[0] == 1 else g
        for i in range(rows):
            for k in range(inputs):
                value = spikes[g, i, k]
                if value != 0:
                    for n in range(outputs):
                        out[g, i, n] += value * weight[w, k, n]


@njit([void(types.Array(dtype, 1, "C", readonly=True), types.Array(types.int64, 2, "C", readonly=True),
            types.Array(weight, 2, "C", readonly=True), types.Array(dtype, 2, "C"))
       for dtype, weight in _DTYPES], cache=True, nogil=True)
def _accumulate_gathered(flat, index, weight, out):  # pragma: no cover (compiled)
    """out += flat[index] @ weight, one weight row per nonzero gathered spike."""
    rows, inputs = index.shape
    outputs = out.shape[-1]
    for i in range(rows):
        for k in range(inputs):
            value = flat[index[i, k]]
            if value != 0:
                for n in range(outputs):
                    out[i, n] += value * weight[k, n]
