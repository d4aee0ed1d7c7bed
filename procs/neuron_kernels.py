"""The phase neurons' per-step update in one compiled pass over the population.

``dynamics.phase_step`` in numpy took about ten passes per step (gain, input, two comparisons,
masks, a scan for the firing neurons, a scan for "any spike"); on Swin-T it was the largest
single cost of an inference. :func:`phase_update` does the same IEEE operations in the same
order per neuron (numba without fastmath: no reassociation, no fused multiply-add), so every
value is bit for bit the numpy equations'. Compiled at import, before Lava forks its workers.
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, njit, types

_IN = types.Array(float64, 2, "C", readonly=True)  # read-only inputs (may be a shared zero array)
_STATE = types.Array(float64, 2, "C")
_FLAGS = types.Array(boolean, 2, "C")


def rows(a: np.ndarray) -> np.ndarray:
    """``a`` as (rows, last axis), a view (never a copy: the kernel updates it in place)."""
    view = a.view()
    view.shape = (-1, a.shape[-1] if a.ndim else 1)  # raises where a view is impossible
    return view


@njit(int64(_STATE, _IN, _IN, float64, boolean, boolean, float64, boolean, float64, boolean, _IN, boolean, float64,
            int64, _FLAGS, _FLAGS, _STATE, _STATE, _STATE, types.Array(int64, 2, "C"), _STATE), cache=True, nogil=True)
def phase_update(v, x, scale, gain, integrate, check, limit, fire_now, theta, signed, divisor, scaled, trace, k,
                 fired, saturated, latched, sign, spikes, fire_step, trace_out):  # pragma: no cover (compiled)
    """One step of a phase-neuron population, in place; returns how many neurons fired.

    v ← v·gain (+ x/scale if ``integrate``); if ``check``, saturated ← |v| > limit (v > limit
    unsigned); if ``fire_now``, a neuron not yet fired fires where v ≥ θ (or v ≤ −θ, signed; both
    at once cancel): fired, latched = trace, sign = ±1, spikes = sign·scale, fire_step = k,
    trace_out = trace·spike. ``scaled`` (divide-free normalisation) multiplies limit and θ by the
    row divisor, and rows with divisor 0 neither saturate nor fire. ``scale`` has one column (per
    row) or the population's.
    """
    n_rows, n_cols = v.shape
    per_row = scale.shape[1] == 1
    count = 0
    for i in range(n_rows):
        for j in range(n_cols):
            value = v[i, j] * gain
            s = scale[i, 0] if per_row else scale[i, j]
            if integrate:
                value = value + x[i, j] / s
            v[i, j] = value
            d = divisor[i, j] if scaled else 1.0
            if check:
                bound = limit * d if scaled else limit
                over = abs(value) > bound if signed else value > bound
                saturated[i, j] = over and not (scaled and d == 0)
            if fire_now and not fired[i, j] and not (scaled and d == 0):
                th = theta * d if scaled else theta
                up = value >= th
                if up != (signed and value <= -th):
                    sign[i, j] = 1.0 if up else -1.0
                    spike = sign[i, j] * s
                    fired[i, j] = True
                    latched[i, j] = trace
                    spikes[i, j] = spike
                    fire_step[i, j] = k
                    trace_out[i, j] = trace * spike
                    count += 1
    return count
