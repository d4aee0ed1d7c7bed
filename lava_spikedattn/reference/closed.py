"""Closed-form (decoded-domain) SpikedAttention operations (spec §11.1 "fast path").

The same functions as the time-stepped reference, computed in one shot from fire-step formulas:
quantisers, products of decoded values, WOSS fire steps. Shapes follow torch broadcasting;
``(..., N, d)`` means any number of leading batch/window/head axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.kernels import kernel_applies, woss_fire


def trace_matmul(a, b, code: PhaseCode, scale_a, scale_b, decoded=None) -> torch.Tensor:
    """Decoded product â·b̂ᵀ of two bipolar phase-coded tensors (ANN units).

    a: (..., N, d), b: (..., M, d) → (..., N, M). In the official convention the release's
    third-term slip (spec §3.1) adds 2·â·b̂ for every pair where a negative â fires in the same
    step as b̂; it is reproduced here term by term. ``decoded``: (â, b̂) if the caller has
    quantised them already.
    """
    a_hat, b_hat = decoded or (code.quantize(a, scale_a), code.quantize(b, scale_b))
    out = a_hat @ b_hat.transpose(-1, -2)
    if code.official:
        ka = code.fire_step(a, scale_a)
        kb = code.fire_step(b, scale_b)
        neg_a = torch.where(a_hat < 0, a_hat, torch.zeros_like(a_hat))
        for k in range(code.timesteps):
            same_a = torch.where(ka == k, neg_a, torch.zeros_like(neg_a))
            same_b = torch.where(kb == k, b_hat, torch.zeros_like(b_hat))
            out = out + 2.0 * same_a @ same_b.transpose(-1, -2)
    return out


@dataclass(frozen=True)
class WossResult:
    """Outcome of a WOSS window per entry (keys on the last axis)."""

    fire_step: torch.Tensor  # (..., N, M) long, −1 where the entry never fired
    decoded: torch.Tensor  # (..., N, M) latched trace trace_start·B^-k, 0 if silent
    spike_sum: torch.Tensor  # (..., N) Σ_row decoded: the softmax normaliser

    @property
    def probabilities(self) -> torch.Tensor:
        return normalise_rows(self.decoded, self.spike_sum)


def normalise_rows(decoded: torch.Tensor, spike_sum: torch.Tensor) -> torch.Tensor:
    """decoded / spike_sum per row (spike_sum (..., N)); rows with no spike give zeros, never NaN."""
    total = spike_sum.unsqueeze(-1)
    return torch.where(total > 0, decoded / torch.where(total > 0, total, 1.0), 0.0)


def woss(logits, code: PhaseCode, scale, ramp_start: float | None = None, key_mask=None,
         decoded=None) -> WossResult:
    """WOSS softmax of logits encoded with one scale per row (spec §4.4, closed form).

    Entry j fires at ``k_j = max(0, ⌈ramp_start + unit_gain·(m − l̂_j)/ln B⌉)`` if k_j < T, where
    l̂ are the decoded logits and m the winner's value subtracted at the row's first positive
    spike (0 for rows without one; a row whose entries all fire negative in one step shifts by
    that common value, as the release does). ``key_mask`` (bool, broadcastable, True = key
    present) disables absent keys (padding): their logit and WOSS neurons never fire.
    ``decoded``: l̂ if the caller has quantised the logits already.
    """
    l_hat = code.quantize(logits, scale) if decoded is None else decoded
    if key_mask is None:
        present = None
        m = l_hat.amax(dim=-1, keepdim=True)
        all_same_negative = m < 0  # rare: then check that the row is all its maximum
        if all_same_negative.any():
            all_same_negative &= (l_hat == m).all(dim=-1, keepdim=True)
    else:
        present = key_mask.expand_as(l_hat)
        l_hat = l_hat.masked_fill(~present, 0.0)
        m = l_hat.masked_fill(~present, -math.inf).amax(dim=-1, keepdim=True)
        all_same_negative = (((l_hat == m) | ~present).all(dim=-1, keepdim=True) & (m < 0)
                             & present.any(dim=-1, keepdim=True))
    shift = torch.where((m > 0) | all_same_negative, m, torch.zeros_like(m))
    ramp = code.woss_ramp_start if ramp_start is None else float(ramp_start)
    # ⌈ramp + unit_gain·(shift − l̂)/ln B⌉, in place
    steps = (shift - l_hat).mul_(code.unit_gain).div_(math.log(code.base)).add_(ramp).ceil_().clamp_(min=0)
    if present is not None:
        steps.masked_fill_(~present, code.timesteps)
    traces = code.trace_start * code.base ** -torch.arange(code.timesteps, dtype=torch.float64)
    traces = torch.cat([traces, traces.new_zeros(1)]).to(l_hat.dtype)  # silent: the last, 0
    if kernel_applies(steps):
        k, decoded = woss_fire(steps, traces)
    else:
        k = torch.where(steps < code.timesteps, steps.long(), -1)
        decoded = traces[k]
    return WossResult(fire_step=k, decoded=decoded, spike_sum=decoded.sum(-1))


def woss_attention(logits, values, code: PhaseCode, scale_logits, scale_values, scale_out,
                   ramp_start: float | None = None, key_mask=None) -> torch.Tensor:
    """Decoded attention×V output: quantize(WOSS(l̂) · V̂) with the spike-sum normalisation (§4.5).

    logits: (..., N, M), values: (..., M, d) → (..., N, d).
    """
    p = woss(logits, code, scale_logits, ramp_start, key_mask).probabilities
    return code.quantize(p @ code.quantize(values, scale_values), scale_out)


def bit_serial(x, timesteps: int, max_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Value carried by the T-bit serial input code and the number of bits (spikes) per element.

    ``sign·max·min(⌊|x|/max·2^T⌋, 2^T−1)/2^T`` — truncation, saturating at ``max·(1−2^-T)``.
    """
    if timesteps > 62:
        raise ValueError(f"the bit-serial input code supports T <= 62, got {timesteps}")
    x = torch.as_tensor(x, dtype=torch.float64)
    full = 2**timesteps
    ints = torch.floor(x.abs() / max_value * full).clamp(max=full - 1).long()
    bits = torch.zeros_like(ints)
    rest = ints.clone()
    for _ in range(timesteps):
        bits += rest & 1
        rest >>= 1
    return torch.sign(x) * max_value * ints.double() / full, bits.double()


def attention_logits(q, k, code: PhaseCode, scale_q, scale_k, bias=None, decoded=None) -> torch.Tensor:
    """Logits the QKᵀ neuron integrates, in ANN units: q̂k̂ᵀ·d^-1/2 + injected bias (§3.1, §3.2).

    The bias (relative-position bias, shift mask) is injected on each of the T input steps
    divided by ``code.bias_divisor``; it integrates to ``bias·S/(divisor·unit_gain)`` in ANN
    units: exactly ``bias`` in the exact convention, ≈ ``bias`` (×1.0006 at B=1.15, T=40) in the
    official one. ``decoded``: (q̂, k̂) if the caller has quantised them already.
    """
    logits = trace_matmul(q, k, code, scale_q, scale_k, decoded) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + torch.as_tensor(bias, dtype=logits.dtype) * code.bias_gain
    return logits


def spiking_attention(q, k, v, code: PhaseCode, scale_q, scale_k, scale_v, scale_logits, scale_out,
                      bias=None, ramp_start: float | None = None, key_mask=None) -> torch.Tensor:
    """Decoded output of the whole spiking attention core (closed form).

    q, k, v: (..., N, d), (..., M, d), (..., M, dv); ``scale_logits`` one per row (..., N, 1);
    ``key_mask`` (bool, broadcastable to (..., N, M), True = key present).
    """
    logits = attention_logits(q, k, code, scale_q, scale_k, bias)
    return woss_attention(logits, v, code, scale_logits, scale_v, scale_out, ramp_start, key_mask)
