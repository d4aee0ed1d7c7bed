"""Public functional API of the reference engine, with the engine switch.

``engine="closed"`` computes in the decoded domain in one shot (fast); ``engine="stepped"`` runs
the per-step dynamics of :mod:`lava_spikedattn.reference.stepped` (slow, the oracle). Both
return the same values (to float64 rounding) in both conventions.

Inputs enter the stepped engine as a one-shot injection at the first input step (``x_0 =
unit_gain·a``), which leaves exactly ``u = unit_gain·a/scale`` in the receiving neuron.
"""

from __future__ import annotations

from collections import deque

import torch

from lava_spikedattn.coding import PhaseCode, broadcast_shape, check_finite
from lava_spikedattn.reference import closed
from lava_spikedattn.reference.stepped import (
    AttentionCoreSim,
    BitSerialEncoderSim,
    ConvertNeuronSim,
    PhaseNeuronSim,
    WOSSSim,
    key_mask_tensor,
    trace_product,
)

ENGINES = ("closed", "stepped")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def _tensor(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x)
    x = x if torch.is_floating_point(x) else x.double()
    check_finite(name, x)
    return x


def _pair(name_a: str, a, name_b: str, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite float tensors promoted to a common dtype."""
    a, b = _tensor(name_a, a), _tensor(name_b, b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _check_row_scale(scale, logits: torch.Tensor) -> None:
    scale = torch.as_tensor(scale)
    broadcast_shape("logits", logits, "scale", scale)
    if scale.dim() > 0 and scale.shape[-1] != 1:
        raise ValueError(
            f"WOSS needs one scale per row (shape (..., N, 1) or scalar), got scale of shape "
            f"{tuple(scale.shape)}: the winner's spike must carry the row's common scale"
        )


def _inject(code: PhaseCode, x: torch.Tensor, t: int) -> torch.Tensor | None:
    return code.unit_gain * x.double() if t == 0 else None


def trace_matmul(a, b, code: PhaseCode, scale_a, scale_b, *, engine: str = "closed") -> torch.Tensor:
    """Trace-driven spike×spike product â·b̂ᵀ as the next layer integrates it, in ANN units.

    Args:
        a: (..., N, d) values encoded by bipolar phase neurons with ``scale_a``.
        b: (..., M, d) values encoded with ``scale_b`` (leading axes broadcast with ``a``'s).
        code: the phase code.
        engine: ``"closed"`` or ``"stepped"``.
    Returns:
        (..., N, M): ``u/unit_gain`` of the neuron that integrates the product.
    """
    _check_engine(engine)
    a, b = _pair("a", a, "b", b)
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"trace_matmul needs a (..., N, d) and b (..., M, d) with the same d, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    broadcast_shape("a batch axes", a[..., :1, :1], "b batch axes", b[..., :1, :1])
    if engine == "closed":
        return closed.trace_matmul(a, b, code, scale_a, scale_b)
    T = code.timesteps
    na = PhaseNeuronSim(code, scale_a, a.shape)
    nb = PhaseNeuronSim(code, scale_b, b.shape)
    u = 0.0
    for t in range(na.end):
        sa, sb = na.step(_inject(code, a, t)), nb.step(_inject(code, b, t))
        if sa is not None:
            step = trace_product(sa, na.decoded, sb.transpose(-1, -2), nb.decoded.transpose(-1, -2), code)
            u = u + code.base ** -(t - T) * step
    return u / code.unit_gain


def woss_softmax(logits, code: PhaseCode, scale, *, engine: str = "closed",
                 ramp_start: float | None = None, key_mask=None) -> torch.Tensor:
    """Row-normalised WOSS probabilities of phase-coded logits (keys on the last axis).

    Args:
        logits: (..., N, M), encoded by a bipolar neuron with one ``scale`` per row.
        scale: scalar or (..., N, 1).
        ramp_start: initial WOSS threshold in units of its slope (default: the convention's;
            the released BERT code used 1.0).
        key_mask: bool, broadcastable to the logits, True where the key is present; absent
            keys (padding) never fire and get probability 0.
    Returns:
        (..., N, M) probabilities; a row in which no entry fires is all zeros (never NaN).
    """
    _check_engine(engine)
    logits = _tensor("logits", logits)
    _check_row_scale(scale, logits)
    present = key_mask_tensor(key_mask, logits.shape)
    if engine == "closed":
        return closed.woss(logits, code, scale, ramp_start, present).probabilities
    neuron = PhaseNeuronSim(code, scale, logits.shape)
    wta = WOSSSim(code, logits.shape, start=code.timesteps, ramp_start=ramp_start, key_mask=present)
    for t in range(wta.start + wta.wait + code.timesteps):
        wta.step(neuron.step(_inject(code, torch.where(present, logits, 0.0), t)))
    return wta.probabilities()


def woss_attention(logits, values, code: PhaseCode, scale_logits, scale_values, scale_out, *,
                   engine: str = "closed", ramp_start: float | None = None) -> torch.Tensor:
    """WOSS softmax × V with the spike-sum normalisation, decoded at the output neuron (§4.5).

    logits: (..., N, M) with per-row ``scale_logits``; values: (..., M, d) with ``scale_values``;
    ``scale_out`` broadcasts to (..., N, d). Returns the decoded (..., N, d) output. In the
    stepped engine V waits in a FIFO so that the k-th WOSS step pairs with the k-th V step.
    """
    _check_engine(engine)
    logits, values = _pair("logits", logits, "values", values)
    _check_row_scale(scale_logits, logits)
    if values.dim() < 2 or values.shape[-2] != logits.shape[-1]:
        raise ValueError(
            f"values must be (..., M, d) with M = logits.shape[-1] = {logits.shape[-1]}, got "
            f"{tuple(values.shape)}"
        )
    if engine == "closed":
        return closed.woss_attention(logits, values, code, scale_logits, scale_values, scale_out, ramp_start)
    T = code.timesteps
    out_shape = torch.Size(broadcast_shape("logits", logits[..., :1], "values", values[..., :1, :]))
    out_shape = out_shape[:-1] + (values.shape[-1],)
    logit_neuron = PhaseNeuronSim(code, scale_logits, logits.shape)
    value_neuron = PhaseNeuronSim(code, scale_values, values.shape)
    wta = WOSSSim(code, logits.shape, start=T, ramp_start=ramp_start)
    out = PhaseNeuronSim(code, scale_out, out_shape, start=2 * T)
    fifo: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
    for t in range(out.end):
        s_v = value_neuron.step(_inject(code, values, t))
        if s_v is not None:
            fifo.append((s_v, value_neuron.decoded.clone()))
        s_w = wta.step(logit_neuron.step(_inject(code, logits, t)))
        x_out = None
        if s_w is not None:
            v_spikes, v_decoded = fifo.popleft()
            x_out = trace_product(s_w, wta.decoded, v_spikes, v_decoded, code)
        if t == out.start + T - 1:  # WOSS window over: hand the spike sum to the output neuron
            out.set_divisor(wta.spike_sum.unsqueeze(-1))
        out.step(x_out)
    return out.decoded


def encode_input(x, code: PhaseCode, scale, *, max_value: float | None = None,
                 engine: str = "closed") -> tuple[torch.Tensor, torch.Tensor]:
    """First layer: bit-serial input code into a convert neuron (spec §1.4), identity weights.

    Args:
        x: input values (e.g. normalised pixels), any shape.
        scale: the convert neuron's calibrated scale, broadcastable to ``x``.
        max_value: the encoder's full-scale value (default: the signed maximum of ``x``).
    Returns:
        (decoded first-layer values, bits emitted per element over the T input steps).
    """
    _check_engine(engine)
    x = _tensor("x", x).double()
    max_value = float(x.max()) if max_value is None else float(max_value)
    if max_value <= 0:
        raise ValueError(f"max_value must be > 0 (the input's full scale), got {max_value}")
    if engine == "closed":
        value, bits = closed.bit_serial(x, code.timesteps, max_value)
        return code.quantize(value, scale), bits
    encoder = BitSerialEncoderSim(x, code.timesteps, max_value)
    neuron = ConvertNeuronSim(code, scale, x.shape)
    for _ in range(neuron.end):
        neuron.step(encoder.step())
    return neuron.decoded, encoder.bits


def spiking_attention(q, k, v, code: PhaseCode, scale_q, scale_k, scale_v, scale_logits, scale_out, *,
                      bias=None, engine: str = "closed", ramp_start: float | None = None,
                      key_mask=None) -> torch.Tensor:
    """The SpikedAttention core: q, k, v neurons → QKᵀ neuron → WOSS → attention×V neuron.

    Args:
        q, k, v: (..., N, d), (..., M, d), (..., M, dv) ANN values entering the q/k/v neurons.
        scale_q, scale_k, scale_v: their calibrated scales (broadcastable).
        scale_logits: one per row of the logits, (..., N, 1) or scalar.
        scale_out: scale of the attention×V neuron, broadcastable to (..., N, dv).
        bias: optional additive logit bias broadcastable to (..., N, M) (relative-position bias,
            shifted-window mask); injected on every input step divided by ``code.bias_divisor``.
        key_mask: bool, broadcastable to (..., N, M), True where the key is present (BERT
            padding: absent keys' logit and WOSS neurons never fire).
    Returns:
        (..., N, dv) decoded output of the attention×V neuron.

    Pipeline (W = T, spec §1.5): q/k/v fire in [T, 2T), the QKᵀ neuron in [2T, 3T), WOSS in
    [3T, 4T), the output in [4T, 5T); V waits 2T steps in a FIFO.
    """
    _check_engine(engine)
    q, k = _pair("q", q, "k", k)
    q, v = _pair("q", q, "v", v)
    k = k.to(q.dtype)
    if q.dim() < 2 or k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"spiking_attention needs q (..., N, d), k (..., M, d), v (..., M, dv), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    logit_shape = torch.Size(broadcast_shape("q", q[..., :1], "k", k[..., :1].transpose(-1, -2)))
    if bias is not None:
        bias = _tensor("bias", bias).to(q.dtype)
        broadcast_shape("logits", torch.empty(logit_shape), "bias", bias)
    _check_row_scale(scale_logits, torch.empty(logit_shape))
    present = key_mask_tensor(key_mask, logit_shape)
    if engine == "closed":
        return closed.spiking_attention(q, k, v, code, scale_q, scale_k, scale_v, scale_logits,
                                        scale_out, bias, ramp_start, present)
    return AttentionCoreSim(q, k, v, code, scale_q, scale_k, scale_v, scale_logits, scale_out,
                            bias=bias, ramp_start=ramp_start, key_mask=present).run()
