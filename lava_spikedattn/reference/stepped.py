"""Time-stepped reference of SpikedAttention's dynamics (spec §1.1, §1.4, §2, §3, §4).

Each class advances one population by one time step per :meth:`step` call, vectorised over any
tensor shape, exactly as the spec's per-step pseudo-code. They are the oracle of the Lava
ProcessModels: with ``record=True`` every step's output spikes and membrane are kept.

Time: each population has a private counter ``t`` (0 on creation), a ``start`` and a ``wait``
W ≥ T. Input window ``[start, start+T)``, fire window ``[start+W, start+W+T)``. Raw output
spikes carry ``sign·scale`` (ANN units); ``decoded`` is the latched trace value (spec §2).
"""

from __future__ import annotations

import math
from collections import deque
from numbers import Integral

import torch

from lava_spikedattn.coding import PhaseCode, broadcast_shape, check_scale
from lava_spikedattn.reference.closed import normalise_rows


def _window(code: PhaseCode, start: int, wait: int | None) -> tuple[int, int]:
    wait = code.timesteps if wait is None else wait
    for name, value in (("start", start), ("wait", wait)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if wait < code.timesteps:
        raise ValueError(
            f"wait must be >= timesteps ({code.timesteps}) so that a neuron never fires before "
            f"its input window closes, got {wait}"
        )
    return int(start), int(wait)


class _Recorder:
    """Per-step history of output spikes and membranes (for step-by-step comparisons)."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.spikes: list[torch.Tensor] = []
        self.membrane: list[torch.Tensor] = []

    def add(self, spikes: torch.Tensor, membrane: torch.Tensor) -> None:
        if self.record:
            self.spikes.append(spikes.clone())
            self.membrane.append(membrane.clone())

    def stacked(self) -> dict[str, torch.Tensor]:
        """History as (steps, *shape) tensors: ``spikes`` and ``membrane``."""
        if not self.record:
            raise RuntimeError("create the population with record=True to keep its history")
        return {"spikes": torch.stack(self.spikes), "membrane": torch.stack(self.membrane)}


class PhaseNeuronSim:
    """One-spike phase neurons (spec §1.1) with the latched global trace (spec §2).

    Per step, inside ``[start, start+T+W)``::

        v = v / divisor                      (once, at t = start+W, if a divisor was set: §4.5)
        v = gain·v (+ x/scale in the input window)
        fire window, step k:  s = [v ≥ θ] − [v ≤ −θ] (bipolar) or [v ≥ θ] (unipolar)
                              only the first spike leaves; it latches g_k = trace_start·B^-k

    θ = B^W·(1+1/B)/2 and gain = B. No reset on firing: the membrane keeps growing.
    """

    def __init__(
        self,
        code: PhaseCode,
        scale,
        shape,
        *,
        signed: bool = True,
        start: int = 0,
        wait: int | None = None,
        record: bool = False,
    ) -> None:
        self.code = code
        self.shape = torch.Size(shape)
        self.scale = torch.as_tensor(scale, dtype=torch.float64)
        check_scale("scale", self.scale)
        broadcast_shape("population", torch.empty(self.shape), "scale", self.scale)
        self.signed = signed
        self.start, self.wait = _window(code, start, wait)
        self.gain = code.base
        self.threshold = code.neuron_threshold(self.wait)
        self.divisor: torch.Tensor | None = None
        self.t = 0
        self.v = torch.zeros(self.shape, dtype=torch.float64)
        self.fired = torch.zeros(self.shape, dtype=torch.bool)
        self.sign = torch.zeros(self.shape, dtype=torch.float64)
        self.latched = torch.zeros(self.shape, dtype=torch.float64)
        self.fire_step = torch.full(self.shape, -1, dtype=torch.long)
        self.global_trace = code.trace_start
        self.history = _Recorder(record)

    @property
    def end(self) -> int:
        """First step after this population's fire window."""
        return self.start + self.wait + self.code.timesteps

    @property
    def decoded(self) -> torch.Tensor:
        """Decoded value of every neuron that has fired (trace_v, ANN units); 0 otherwise."""
        return self.latched * self.sign * self.scale

    def set_divisor(self, divisor) -> None:
        """Divide the membrane once at the fire-window start (WOSS row normalisation, §4.5).

        Where the divisor is 0 (a softmax row that never spiked) the membrane is cleared, so
        the neuron stays silent and decodes 0 instead of producing NaN.
        """
        divisor = torch.as_tensor(divisor, dtype=torch.float64)
        broadcast_shape("population", self.v, "divisor", divisor)
        self.divisor = divisor

    def step(self, x: torch.Tensor | None = None) -> torch.Tensor | None:
        """Advance one step with input ``x`` (ANN units). Returns raw spikes or None."""
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        out = None
        if 0 <= t_rel < T + W:
            if self.divisor is not None and t_rel == W:
                safe = torch.where(self.divisor == 0, torch.ones_like(self.divisor), self.divisor)
                self.v = torch.where(self.divisor == 0, torch.zeros_like(self.v), self.v / safe)
            self.v = self.gain * self.v
            if t_rel < T and x is not None:
                self.v = self.v + torch.as_tensor(x, dtype=torch.float64) / self.scale
            if t_rel >= W:
                out = self._fire(t_rel - W)
        self.history.add(torch.zeros(self.shape, dtype=torch.float64) if out is None else out, self.v)
        self.t += 1
        return out

    def _threshold(self, k: int) -> float:
        return self.threshold

    def _fire(self, k: int) -> torch.Tensor:
        theta = self._threshold(k)
        s = (self.v >= theta).double()
        if self.signed:
            s = s - (self.v <= -theta).double()
        s = torch.where(self.fired, torch.zeros_like(s), s)
        new = s != 0
        self.global_trace = self.code.trace_start * self.code.base**-k
        self.latched = torch.where(new, torch.full_like(self.latched, self.global_trace), self.latched)
        self.sign = torch.where(new, s, self.sign)
        self.fire_step = torch.where(new, torch.full_like(self.fire_step, k), self.fire_step)
        self.fired = self.fired | new
        return s * self.scale


class ConvertNeuronSim(PhaseNeuronSim):
    """First-layer neuron that converts the bit-serial input code into the phase code (§1.4).

    Membrane gain 2 instead of B and the growing threshold ``code.convert_threshold(W, k)``, so
    it fires at the same step as a phase neuron fed the (truncated) input value.
    """

    def __init__(self, code: PhaseCode, scale, shape, **kwargs) -> None:
        super().__init__(code, scale, shape, **kwargs)
        self.gain = code.convert_gain

    def _threshold(self, k: int) -> float:
        return self.code.convert_threshold(self.wait, k)


class BitSerialEncoderSim:
    """Radix-2 sign-magnitude bit-serial input code (spec §1.4).

    ``r = x/max``; each step ``r ← 2r``, emit ``sign(x)·[|r| ≥ 1]`` and subtract it, and send the
    bit times ``max`` (ANN units). Values beyond ``max`` saturate (spike every step); they are
    counted in ``saturated``.
    """

    def __init__(self, x: torch.Tensor, timesteps: int, max_value: float | None = None) -> None:
        x = torch.as_tensor(x, dtype=torch.float64)
        self.max_value = float(x.max()) if max_value is None else float(max_value)
        if not math.isfinite(self.max_value) or self.max_value <= 0:
            raise ValueError(f"max_value must be finite and > 0, got {self.max_value}")
        self.timesteps = timesteps
        self.sign = torch.sign(x)
        self.r = x / self.max_value
        self.saturated = int((x.abs() > self.max_value).sum())
        self.bits = torch.zeros_like(x)
        self.t = 0

    def step(self) -> torch.Tensor | None:
        if self.t >= self.timesteps:
            return None
        self.r = 2.0 * self.r
        s = self.sign * (self.r.abs() >= 1.0).double()
        self.r = self.r - s
        self.bits += s.abs()
        self.t += 1
        return s * self.max_value


class WOSSSim:
    """Winner-oriented spike shift softmax neurons (spec §4.2), rows along the last axis.

    Input window (gain B): at the first step of a row with a positive input spike, that spike's
    value (the row maximum m) is subtracted from every entry of the row. Fire window (no gain):
    ``s = [v ≥ θ_k]`` with the shared threshold ramp θ_k = mv·ramp_start − k·mv, one spike per
    entry, which latches ``trace_start·B^-k``; ``spike_sum`` accumulates the row's latched
    values, the normaliser handed to the attention×V neuron. Entries whose key is absent
    (``key_mask`` False, e.g. padding) take no part in the row maximum and never fire.
    """

    def __init__(
        self,
        code: PhaseCode,
        shape,
        *,
        start: int = 0,
        wait: int | None = None,
        ramp_start: float | None = None,
        key_mask=None,
        record: bool = False,
    ) -> None:
        self.code = code
        self.shape = torch.Size(shape)
        self.start, self.wait = _window(code, start, wait)
        self.present = key_mask_tensor(key_mask, self.shape)
        self.slope = code.woss_slope
        ramp = code.woss_ramp_start if ramp_start is None else float(ramp_start)
        self.threshold0 = ramp * self.slope
        self.t = 0
        self.v = torch.zeros(self.shape, dtype=torch.float64)
        self.fired = torch.zeros(self.shape, dtype=torch.bool)
        self.latched = torch.zeros(self.shape, dtype=torch.float64)
        self.fire_step = torch.full(self.shape, -1, dtype=torch.long)
        self.block_input = torch.ones(self.shape[:-1] + (1,), dtype=torch.bool)
        self.spike_sum = torch.zeros(self.shape[:-1], dtype=torch.float64)
        self.history = _Recorder(record)

    @property
    def decoded(self) -> torch.Tensor:
        """Latched trace of fired entries (trace_v of the WTA layer, unsigned, unscaled)."""
        return self.latched

    def step(self, x: torch.Tensor | None = None) -> torch.Tensor | None:
        t_rel, T, W = self.t - self.start, self.code.timesteps, self.wait
        out = None
        if 0 <= t_rel < T:
            x = torch.zeros(self.shape, dtype=torch.float64) if x is None else torch.as_tensor(x, dtype=torch.float64)
            m = torch.where(self.present, x, -math.inf).amax(dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no key present
            x = x - m * self.block_input
            self.block_input = self.block_input & ~(m > 0)
            self.v = self.code.base * self.v + x
        if W <= t_rel < W + T:
            k = t_rel - W
            s = (self.v >= self.threshold0 - k * self.slope) & ~self.fired & self.present
            g = self.code.trace_start * self.code.base**-k
            self.latched = torch.where(s, torch.full_like(self.latched, g), self.latched)
            self.fire_step = torch.where(s, torch.full_like(self.fire_step, k), self.fire_step)
            self.fired = self.fired | s
            self.spike_sum = self.spike_sum + (s.double() * g).sum(-1)
            out = s.double()
        self.history.add(torch.zeros(self.shape, dtype=torch.float64) if out is None else out, self.v)
        self.t += 1
        return out

    def probabilities(self) -> torch.Tensor:
        """Row-normalised latched traces; rows that never spiked give all zeros, not NaN."""
        return normalise_rows(self.latched, self.spike_sum)


def key_mask_tensor(key_mask, shape: torch.Size) -> torch.Tensor:
    """Bool mask of present keys broadcast to ``shape`` (all True for None)."""
    if key_mask is None:
        return torch.ones(shape, dtype=torch.bool)
    key_mask = torch.as_tensor(key_mask)
    if key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be a bool tensor (True = key present), got {key_mask.dtype}")
    broadcast_shape("logits", torch.empty(shape), "key_mask", key_mask)
    return key_mask.expand(shape)


def trace_product(a_spikes, a_decoded, b_spikes, b_decoded, code: PhaseCode) -> torch.Tensor:
    """One step of the trace-driven product A·B of two spike streams (spec §3.1, §3.3).

    ``A_spk @ B̂ + Â @ B_spk − (Â ∘ 1[A fired now]) @ B_spk``: each pair of spikes is counted once,
    at the later of its two fire steps. ``A`` is (..., N, d) and ``B`` is (..., d, M) (pass kᵀ for
    QKᵀ). Decoded tensors include this step's new spikes. The official convention keeps the
    release's third term ``|Â| ∘ 1[A fired now]``, which is wrong for negative A (spec §3.1).
    """
    fired_now = a_spikes != 0
    a_new = a_decoded.abs() if code.official else a_decoded
    a_new = torch.where(fired_now, a_new, torch.zeros_like(a_new))
    return a_spikes @ b_decoded + a_decoded @ b_spikes - a_new @ b_spikes


class AttentionCoreSim:
    """The SpikedAttention core pipelined in time (spec §1.5, W = T).

    q/k/v neurons (start 0, input injected one-shot at step 0, fire [T, 2T)) → trace-driven QKᵀ
    (×d^-1/2, + bias/bias_divisor) into the logits neuron (start T) → WOSS (start 2T) →
    trace-driven attention×V with V delayed 2T steps → output neuron (start 3T, membrane divided
    by the WOSS spike sum, fire [4T, 5T)). Absent keys (``key_mask`` False) get no logit input
    and never fire in WOSS. ``populations`` maps q, k, v, logits, woss, out to the
    simulated populations; with ``record=True`` each keeps its per-step history.
    """

    def __init__(self, q, k, v, code: PhaseCode, scale_q, scale_k, scale_v, scale_logits, scale_out, *,
                 bias=None, ramp_start: float | None = None, key_mask=None, record: bool = False) -> None:
        T = code.timesteps
        self.code = code
        self.inputs = {"q": q, "k": k, "v": v}
        logit_shape = torch.broadcast_shapes(q[..., :1].shape, k[..., :1].transpose(-1, -2).shape)
        out_shape = logit_shape[:-1] + (v.shape[-1],)
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float64)
        self.present = key_mask_tensor(key_mask, logit_shape)
        self.populations = {
            "q": PhaseNeuronSim(code, scale_q, q.shape, record=record),
            "k": PhaseNeuronSim(code, scale_k, k.shape, record=record),
            "v": PhaseNeuronSim(code, scale_v, v.shape, record=record),
            "logits": PhaseNeuronSim(code, scale_logits, logit_shape, start=T, record=record),
            "woss": WOSSSim(code, logit_shape, start=2 * T, ramp_start=ramp_start, key_mask=key_mask,
                            record=record),
            "out": PhaseNeuronSim(code, scale_out, out_shape, start=3 * T, record=record),
        }

    @property
    def num_steps(self) -> int:
        return self.populations["out"].end

    def run(self) -> torch.Tensor:
        """Run all 5T steps; returns the output neuron's decoded values (..., N, dv)."""
        code, pop, T = self.code, self.populations, self.code.timesteps
        nq, nk, nv, logits, wta, out = (pop[n] for n in ("q", "k", "v", "logits", "woss", "out"))
        scale_d = self.inputs["q"].shape[-1] ** -0.5
        v_fifo: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        for t in range(self.num_steps):
            injected = {n: code.unit_gain * x.double() if t == 0 else None for n, x in self.inputs.items()}
            s_q, s_k, s_v = nq.step(injected["q"]), nk.step(injected["k"]), nv.step(injected["v"])
            x_logits = None
            if s_q is not None:
                x_logits = scale_d * trace_product(s_q, nq.decoded, s_k.transpose(-1, -2),
                                                   nk.decoded.transpose(-1, -2), code)
                if self.bias is not None:
                    x_logits = x_logits + self.bias / code.bias_divisor
                x_logits = torch.where(self.present, x_logits, 0.0)  # absent keys' neurons get nothing
                v_fifo.append((s_v, nv.decoded.clone()))
            s_w = wta.step(logits.step(x_logits))
            x_out = None
            if s_w is not None:
                v_spikes, v_decoded = v_fifo.popleft()
                x_out = trace_product(s_w, wta.decoded, v_spikes, v_decoded, code)
            if t == out.start + T - 1:  # the WOSS window is over: hand the spike sum on
                out.set_divisor(wta.spike_sum.unsqueeze(-1))
            out.step(x_out)
        return out.decoded
