"""Compiled CPU kernels (numba) for the closed-form engine's hot loops: the phase quantiser and
WOSS's fire steps.

The closed form quantises every neuron of the network (155 M values for Swin-T at batch 8).
In torch that is a chain of full-size passes (ratio, ``searchsorted``, index, sign, statistics),
ten times the ANN's time. :func:`phase_quantize` does it in one pass over the values, threads over
blocks of rows, and counts the spikes on the way. It makes exactly the comparisons the torch path
makes (``|x|/scale >= threshold[k]`` in the values' dtype) and the same products, so its results
are equal bit for bit (tested). The fire step (the number of thresholds above the ratio) is looked
up by the ratio's float32 bit pattern, which orders like the value, then corrected by those
comparisons; the loops are branch-free, so the compiler vectorises them.

Kernels compile on first use (a few seconds) and are cached on disk next to this file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

#: dtypes the kernels are compiled for; anything else takes the torch path.
KERNEL_DTYPES = (torch.float32, torch.float64)
#: values per work item: a thread's temporaries stay in its cache
CHUNK = 1024
#: a float32 bit pattern >> LOOKUP_SHIFT is its bucket: sign, exponent and 8 mantissa bits
LOOKUP_SHIFT = 15


@dataclass(frozen=True)
class SpikeCounts:
    """What a layer's statistics need from one quantisation pass.

    ``fire_step_sum``: Σ (k + 1) over the neurons that fired (their updates in the fire window).
    """

    neurons: int
    fired: int
    fire_step_sum: int
    saturated: int

    @classmethod
    def from_fire_steps(cls, fire_step: torch.Tensor, saturated: int = 0) -> SpikeCounts:
        """Counts of a population from its fire steps (−1: silent)."""
        k = torch.as_tensor(fire_step).reshape(-1)
        # a silent neuron (−1) adds 0 to the sum of k + 1
        return cls(k.numel(), int((k >= 0).sum()), int((k + 1).sum()), int(saturated))


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Put torch's thread count back after a parallel kernel.

    numba's OpenMP threading layer shares libgomp with torch, and a parallel kernel's launch sets
    the thread count torch uses next (1 became 2: training after a closed-form run was 15-45x
    slower on a busy 2-core machine). numba's own workqueue layer leaves torch alone but made the
    closed form 1.5x slower here (torch's OpenMP threads spin while it runs), so the layer stays
    and the count is put back."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def kernel_applies(x: torch.Tensor) -> bool:
    """Whether :func:`phase_quantize` can take ``x``: a CPU float32/float64 tensor without grad."""
    return x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and not x.requires_grad


def phase_quantize(x: torch.Tensor, scale: torch.Tensor, thresholds: torch.Tensor, levels: torch.Tensor,
                   signed: bool) -> tuple[torch.Tensor, SpikeCounts, int]:
    """Decoded values ``sign·scale·levels[k]`` (0 where silent), their spike counts, and the
    number of non-finite values in ``x`` (the caller refuses them).

    ``x``: any shape, a dtype of :data:`KERNEL_DTYPES`; ``scale``: broadcastable to ``x``, same
    dtype; ``thresholds`` and ``levels``: the code's (T,) fire thresholds and levels (descending),
    in ``x``'s dtype. A neuron fires at the first step k with ``|x|/scale >= thresholds[k]``.
    """
    x2 = x.detach().contiguous().reshape(-1, x.shape[-1] if x.dim() else 1)
    scale2 = _scale_rows(scale, x.shape)
    table, up, down = fire_step_table(tuple(thresholds.tolist()), str(thresholds.dtype).removeprefix("torch."))
    padded_levels = torch.cat([levels, levels.new_zeros(1)])
    out = torch.empty_like(x2)
    with _torch_threads_kept():
        counts = _quantize_rows(x2.numpy(), scale2.numpy(), scale2.shape[1] > 1, thresholds.contiguous().numpy(),
                                padded_levels.numpy(), table, up, down, signed, out.numpy())
    fired, fire_step_sum, saturated, non_finite = (int(c) for c in counts)
    return out.reshape(x.shape), SpikeCounts(x.numel(), fired, fire_step_sum, saturated), non_finite


@functools.lru_cache(maxsize=16)
def fire_step_table(thresholds: tuple[float, ...], dtype: str) -> tuple[np.ndarray, int, int]:
    """Fire step at the start of every float32 bucket (bit pattern >> LOOKUP_SHIFT, positive
    patterns only), and how many steps up and down a ratio's step can be from its bucket's.

    A ratio in bucket b fires at a step in [table[b+1], table[b]]: at most ``down`` steps below
    the table's. float64 ratios are looked up rounded to float32, which can put them one bucket
    up: one step ``up``.
    """
    starts = (np.arange(2**16, dtype=np.uint32) << LOOKUP_SHIFT).view(np.float32)
    starts = starts[~np.isnan(starts)].astype(dtype)  # NaN patterns (the last buckets) are never looked up
    ascending = np.asarray(thresholds, dtype=dtype)[::-1]
    table = np.zeros(2**16, np.int32)
    table[:starts.size] = len(thresholds) - np.searchsorted(ascending, starts, side="right")
    down = int(np.max(table[:starts.size - 1] - table[1:starts.size], initial=0))
    return table, 0 if dtype == "float32" else 1, down


def woss_fire(steps: torch.Tensor, traces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fire steps (long, −1 where silent) and latched traces of WOSS neurons whose ramp reaches
    them at ``steps`` (float, ≥ 0; silent if ≥ T).

    ``traces``: (T + 1,) trace value per fire step, 0 last, in ``steps``' dtype.
    """
    steps2 = steps.contiguous().reshape(-1, steps.shape[-1])
    fire_step = torch.empty(steps2.shape, dtype=torch.long)
    decoded = torch.empty_like(steps2)
    with _torch_threads_kept():
        _woss_rows(steps2.numpy(), traces.contiguous().numpy(), fire_step.numpy(), decoded.numpy())
    return fire_step.reshape(steps.shape), decoded.reshape(steps.shape)


def _scale_rows(scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``scale`` as a 2-D (S, 1 or cols) tensor for values of ``shape`` seen as (rows, cols), such
    that row i of the values takes scale row i % S (copies only if no such S exists)."""
    if len(shape) == 0:
        return scale.reshape(1, 1)
    scale = scale.reshape((1,) * (len(shape) - scale.dim()) + tuple(scale.shape))
    lead, last = tuple(scale.shape[:-1]), scale.shape[-1]
    for cut in range(len(lead) + 1):  # scale varies over the last len(lead) - cut leading axes
        if all(size == 1 for size in lead[:cut]) and lead[cut:] == tuple(shape[cut:-1]):
            return scale.contiguous().reshape(-1, last)
    return scale.expand(*shape[:-1], last).contiguous().reshape(-1, last)


@njit(parallel=True, nogil=True, cache=True)
def _quantize_rows(x, scale, per_column, thresholds, padded_levels, table, up, down, signed,
                   out):  # pragma: no cover (compiled)
    rows, cols = x.shape
    scale_rows, col_step, steps = scale.shape[0], 1 if per_column else 0, thresholds.shape[0]
    top = padded_levels[0]
    chunk_rows = max(1, CHUNK // cols)
    chunks = (rows + chunk_rows - 1) // chunk_rows
    counts = np.zeros((chunks, 4), np.int64)
    for c in prange(chunks):
        first, end = c * chunk_rows, min(rows, (c + 1) * chunk_rows)
        size = (end - first) * cols
        ratio = np.empty(size, x.dtype)
        for i in range(first, end):
            s_row = i % scale_rows
            for j in range(cols):
                value = x[i, j]
                ratio[(i - first) * cols + j] = (abs(value) if signed else value) / scale[s_row, j * col_step]
        # the bucket's step (float64 ratios rounded to float32), then `up` steps up and `down` down
        bits = ratio.astype(np.float32).view(np.int32)
        step = np.empty(size, np.int32)
        for e in range(size):
            step[e] = table[(bits[e] >> LOOKUP_SHIFT) & 0xFFFF] if bits[e] >= 0 else steps
        for _ in range(up):
            for e in range(size):
                k = step[e]
                below = k if k < steps else steps - 1
                step[e] = k + 1 if (k < steps and ratio[e] < thresholds[below]) else k
        for _ in range(down):
            for e in range(size):
                k = step[e]
                above = k - 1 if k > 0 else 0
                step[e] = above if (k > 0 and ratio[e] >= thresholds[above]) else k
        fired, fire_step_sum, saturated, non_finite = 0, 0, 0, 0
        for i in range(first, end):
            s_row = i % scale_rows
            for j in range(cols):
                e, value = (i - first) * cols + j, x[i, j]
                k = step[e]
                sign = 1 if value > 0 else (-1 if value < 0 else 0)
                out[i, j] = sign * scale[s_row, j * col_step] * padded_levels[k]
                fired += k < steps
                fire_step_sum += (k + 1) * (k < steps)
                saturated += ratio[e] > top
                non_finite += not abs(value) < np.inf
        counts[c, 0], counts[c, 1], counts[c, 2], counts[c, 3] = fired, fire_step_sum, saturated, non_finite
    return counts.sum(0)


@njit(parallel=True, nogil=True, cache=True)
def _woss_rows(steps, traces, fire_step, decoded):  # pragma: no cover (compiled)
    rows, cols = steps.shape
    timesteps = traces.shape[0] - 1
    for i in prange(rows):
        for j in range(cols):
            live = steps[i, j] < timesteps
            k = np.int64(steps[i, j]) if live else timesteps
            fire_step[i, j] = k if live else -1
            decoded[i, j] = traces[k]
