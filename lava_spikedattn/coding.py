"""One-spike phase coding: the code of SpikedAttention and every constant the engines share.

A phase neuron fires at most once in a window of ``T`` fire steps. Firing at step ``k`` means
``±scale·B^-(k+offset)``; ``offset`` is 0 in the ``exact`` convention (top level = scale) and 1
in the ``official`` convention of the released code (top level = scale/B). Spec §1–§4.

Every engine (time-stepped reference, closed form, Lava models) takes its constants from a
:class:`PhaseCode`; none re-derives them.

The one relation all engines rely on: a value ``a`` arriving as spikes (or as an injected
constant) leaves ``u = unit_gain · a / scale`` in the integrated membrane of the receiving
neuron (``u = Σ_τ B^-τ x_τ``, spec §1.2); ``unit_gain`` is 1 (exact) or B (official).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch

from lava_spikedattn.kernels import SpikeCounts, kernel_applies, phase_quantize

CONVENTIONS = ("exact", "official")


class NonFiniteInputError(ValueError):
    """An input holds NaN or inf: every engine refuses it rather than return confident logits."""


def check_finite(name: str, x: Any) -> None:
    """Raise :class:`NonFiniteInputError` if ``x`` holds NaN or inf (never let a NaN through silently).

    ``x``: a tensor (or array-like), or a dict of them such as a tokenizer's output, checked per
    key (``None`` entries are skipped). Integer tensors (token ids) cannot hold NaN and pass.
    """
    if isinstance(x, Mapping):
        for key, value in x.items():
            if value is not None:
                check_finite(f"{name}[{key!r}]", value)
        return
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        return
    count = int((~torch.isfinite(x)).sum())
    if count:
        nan = int(x.isnan().sum())
        raise NonFiniteInputError(
            f"{name} contains {count} NaN/inf value(s) ({nan} NaN, {count - nan} inf) among its {x.numel()}; "
            f"inputs must be finite: fix the preprocessing that produced them or replace them (torch.nan_to_num)")


def check_scale(name: str, scale: torch.Tensor) -> None:
    """Scales are calibrated maxima: finite and strictly positive."""
    check_finite(name, scale)
    if bool((scale <= 0).any()):
        raise ValueError(f"{name} must be > 0 everywhere (found min {float(scale.min()):.4g})")


def broadcast_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> torch.Size:
    """Broadcast shape of ``a`` and ``b`` or a ``ValueError`` naming both shapes."""
    try:
        return torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{name_b} of shape {tuple(b.shape)} does not broadcast to {name_a} of shape "
            f"{tuple(a.shape)} (use a scalar, per-channel (C,), per-row (..., N, 1) or "
            f"per-element scale)"
        ) from None


@dataclass(frozen=True)
class PhaseCode:
    """Validated configuration of the one-spike phase code.

    Args:
        base: B in (1, 2]; the membrane gain per step and the ratio of adjacent levels.
        timesteps: T ≥ 1; fire steps per window (and input steps per window).
        convention: ``"exact"`` (levels scale·B^-k, the paper's method without the release's
            slips) or ``"official"`` (levels scale·B^-(k+1) and the released code's quirks).
    """

    base: float
    timesteps: int
    convention: str = "exact"

    def __post_init__(self) -> None:
        base, steps = self.base, self.timesteps
        if isinstance(base, bool) or not isinstance(base, Real) or not math.isfinite(base):
            raise ValueError(f"base must be a finite real number in (1, 2], got {base!r}")
        if not 1.0 < float(base) <= 2.0:
            raise ValueError(f"base must be in (1, 2], got {base!r}")
        if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
            raise ValueError(f"timesteps must be an integer >= 1, got {steps!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        object.__setattr__(self, "base", float(base))
        object.__setattr__(self, "timesteps", int(steps))

    # --- constants of the method -------------------------------------------------------------
    @property
    def official(self) -> bool:
        return self.convention == "official"

    @property
    def level_offset(self) -> int:
        """A spike at fire step k means B^-(k + level_offset) (0 exact, 1 official)."""
        return 1 if self.official else 0

    @property
    def unit_gain(self) -> float:
        """Integrated membrane per unit of decoded value: u = unit_gain·a/scale (spec §1.2)."""
        return self.base**self.level_offset

    @property
    def midpoint(self) -> float:
        """Threshold factor (1+1/B)/2: the midpoint between adjacent levels (round to nearest)."""
        return (1.0 + 1.0 / self.base) / 2.0

    @property
    def geometric_sum(self) -> float:
        """S = Σ_{τ<T} B^-τ, the weight of a constant input held for T input steps."""
        b, t = self.base, self.timesteps
        return (1.0 - b**-t) / (1.0 - 1.0 / b)

    @property
    def bias_divisor(self) -> float:
        """Per-step divisor of a bias injected on each of the T input steps.

        exact: S, so the integrated bias is exactly b (unit_gain 1). official: S−1, the
        release's value, which integrates to S/(S−1)·b ≈ B·b (spec §3.2).
        """
        s = self.geometric_sum
        return s - 1.0 if self.official else s

    @property
    def bias_gain(self) -> float:
        """Integrated value, in ANN units, of a bias injected as b/bias_divisor for T steps, per b.

        1 in the exact convention; S/((S−1)·B) ≈ 1.0006 (B=1.15, T=40) in the official one.
        """
        return self.geometric_sum / (self.bias_divisor * self.unit_gain)

    @property
    def trace_start(self) -> float:
        """Global trace value at fire step 0; it decays by 1/B per step (1/B official, 1 exact)."""
        return self.base**-self.level_offset

    @property
    def woss_slope(self) -> float:
        """WOSS threshold decrement per fire step, mv = B^(T−1)·ln B (spec §4.1)."""
        return self.base ** (self.timesteps - 1) * math.log(self.base)

    @property
    def woss_ramp_start(self) -> float:
        """Initial WOSS threshold in units of the slope.

        official: +1/2 (the winner fires at step 1, step 0 is never used). exact: −1/2, so the
        winner fires at step 0 and every step of the window is usable; both round the log-domain
        distance to the nearest step. The released BERT code used +1 (no /2).
        """
        return 0.5 if self.official else -0.5

    def neuron_threshold(self, wait: int) -> float:
        """Constant fire threshold of a phase neuron with wait W: B^W·(1+1/B)/2 (spec §1.1)."""
        return self.base**wait * self.midpoint

    #: Membrane gain of the first-layer convert neuron, which integrates the radix-2 input code.
    convert_gain = 2.0

    def convert_threshold(self, wait: int, k: int) -> float:
        """Threshold of the convert neuron at fire step k (spec §1.4).

        θ_k = 2^W·(1+1/B)/2·(B/unit_gain)·(2/B)^(k+1): it fires at the same step as a phase
        neuron fed the value of the bit-serial code.
        """
        return 2.0**wait * self.midpoint * self.base / self.unit_gain * (2.0 / self.base) ** (k + 1)

    def saturation_membrane(self, wait: int, bit_serial_input: bool = False) -> float:
        """|membrane| at the first fire step above which the value exceeds the top level (clipped).

        A phase neuron holds v = B^W·u there, and u = unit_gain·a/scale reaches 1 at the top level;
        the convert neuron holds 2^(W+1)·a/scale (spec §1.4).
        """
        if bit_serial_input:
            return 2.0 ** (wait + 1) * self.max_level
        return self.base**wait

    # --- level set -------------------------------------------------------------------------------
    @property
    def levels(self) -> torch.Tensor:
        """Decoded magnitude per fire step for scale 1, shape (T,), float64, descending."""
        k = torch.arange(self.timesteps, dtype=torch.float64)
        return torch.as_tensor(self.base, dtype=torch.float64) ** -(k + self.level_offset)

    @property
    def max_level(self) -> float:
        return self.base**-self.level_offset

    @property
    def min_level(self) -> float:
        return self.base ** -(self.timesteps - 1 + self.level_offset)

    @property
    def relative_error_bound(self) -> float:
        """|a−â|/|a| ≤ (B−1)/(B+1) for values between the lowest threshold and the top level."""
        return (self.base - 1.0) / (self.base + 1.0)

    @property
    def fire_thresholds(self) -> torch.Tensor:
        """Normalised value (|a|/scale) needed to fire at step k: levels·midpoint, shape (T,)."""
        return self.levels * self.midpoint

    # --- closed-form encode / decode ----------------------------------------------------------------
    def encode(self, x: torch.Tensor, scale, signed: bool = True) -> PhaseEncoding:
        """Fire steps, saturation and decoded values of neurons whose integrated values are ``x``,
        from one pass over ``x`` (what the closed-form engine needs per layer; arguments as
        :meth:`fire_step`)."""
        x, scale = self._prepare(x, scale)
        ratio = self._ratio(x, scale, signed)
        return PhaseEncoding(self, x, scale, self._steps(ratio), ratio)

    def fire_step(self, x: torch.Tensor, scale, signed: bool = True) -> torch.Tensor:
        """First fire step of a neuron whose integrated value is ``x`` (ANN units).

        Args:
            x: values, any shape.
            scale: calibrated maximum, broadcastable to ``x`` (scalar, per-channel, per-row...).
            signed: bipolar neuron (default); ``False`` for ReLU neurons (negatives stay silent).
        Returns:
            LongTensor of the broadcast shape: fire step in [0, T), or −1 where silent.
        """
        x, scale = self._prepare(x, scale)
        return self._steps(self._ratio(x, scale, signed))

    def decode(self, k: torch.Tensor, sign, scale) -> torch.Tensor:
        """Decoded value sign·scale·level[k]; 0 where ``k`` is −1 (silent)."""
        k = torch.as_tensor(k)
        if k.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"fire steps must be an integer tensor, got {k.dtype}")
        if bool(((k < -1) | (k >= self.timesteps)).any()):
            raise ValueError(f"fire steps must be in [-1, {self.timesteps}), got out-of-range values")
        scale = torch.as_tensor(scale)
        scale = scale if torch.is_floating_point(scale) else scale.double()
        return self._decode(k, torch.as_tensor(sign, dtype=scale.dtype), scale)

    def quantize(self, x: torch.Tensor, scale, signed: bool = True) -> torch.Tensor:
        """Value the next layer decodes from this neuron: decode(fire_step(x)), closed form."""
        return self.quantize_counted(x, scale, signed)[0]

    def quantize_counted(self, x: torch.Tensor, scale, signed: bool = True) -> tuple[torch.Tensor, SpikeCounts]:
        """:meth:`quantize` and the population's spike counts, from one pass over ``x``.

        CPU float tensors go through the compiled kernel (:mod:`lava_spikedattn.kernels`, about
        ten times faster), anything else through :meth:`encode`; both give the same values.
        """
        x, scale = self._prepare(x, scale, check_values=False)
        if kernel_applies(x) and broadcast_shape("x", x, "scale", scale) == x.shape:
            dtype = x.dtype
            decoded, counts, non_finite = phase_quantize(x, scale, self.fire_thresholds.to(dtype),
                                                         self.levels.to(dtype), signed)
            if non_finite:
                check_finite("x", x)
            return decoded, counts
        encoding = self.encode(x, scale, signed)
        return encoding.decoded(), SpikeCounts.from_fire_steps(encoding.fire_step, int(encoding.saturated().sum()))

    def decode_spike_train(self, spikes, fire_start: int = 0) -> torch.Tensor:
        """Decode recorded graded spikes (steps, *shape), raw ``sign·scale``, into values.

        The first nonzero spike inside ``[fire_start, fire_start+T)`` at fire step k decodes to
        spike·level[k]; a neuron with no spike there decodes to 0.
        """
        spikes = torch.as_tensor(spikes, dtype=torch.float64)
        window = spikes[fire_start:fire_start + self.timesteps]
        if window.shape[0] != self.timesteps:
            raise ValueError(f"the record ends before the fire window [{fire_start}, "
                             f"{fire_start + self.timesteps}) closes ({spikes.shape[0]} steps)")
        fired = window != 0
        k = torch.where(fired.any(0), fired.double().argmax(0), -1)
        first = window.gather(0, k.clamp(min=0).unsqueeze(0)).squeeze(0)
        return self._decode(k, torch.ones_like(first), first)

    def saturated(self, x: torch.Tensor, scale, signed: bool = True) -> torch.Tensor:
        """Mask of values above the top level (clipped to it by the code): count and report."""
        x, scale = self._prepare(x, scale)
        return self._ratio(x, scale, signed) > self.max_level

    @staticmethod
    def _ratio(x: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
        """|x|/scale (x/scale for unsigned neurons): what the thresholds are compared with."""
        return (x.abs() if signed else x) / scale

    def _steps(self, r: torch.Tensor) -> torch.Tensor:
        """Fire step of each ratio ``r`` (−1: below the lowest threshold, silent)."""
        ascending = self.fire_thresholds.flip(0).to(dtype=r.dtype, device=r.device)
        k = self.timesteps - torch.searchsorted(ascending, r.contiguous(), right=True)
        return k.masked_fill_(k == self.timesteps, -1)

    def _decode(self, k: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # Index −1 (silent) picks the appended 0.
        padded = torch.cat([self.levels, torch.zeros(1, dtype=torch.float64)]).to(dtype=scale.dtype, device=k.device)
        return sign * scale * padded[k]

    def _prepare(self, x, scale, check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        if not torch.is_floating_point(x):
            x = x.to(torch.float64)
        scale = torch.as_tensor(scale, dtype=x.dtype)
        if check_values:
            check_finite("x", x)
        check_scale("scale", scale)
        broadcast_shape("x", x, "scale", scale)
        return x, scale

    def describe(self) -> str:
        return (
            f"PhaseCode(B={self.base:g}, T={self.timesteps}, {self.convention}): levels "
            f"{self.max_level:.4g}..{self.min_level:.3g} x scale, relative error <= "
            f"{self.relative_error_bound:.2%}"
        )


@dataclass(frozen=True)
class PhaseEncoding:
    """Neurons encoded by :meth:`PhaseCode.encode`: their fire steps, and on demand their
    saturation and decoded values, sharing one ``|x|/scale``."""

    code: PhaseCode
    x: torch.Tensor
    scale: torch.Tensor
    fire_step: torch.Tensor  # long, −1 where silent
    ratio: torch.Tensor  # |x|/scale (x/scale unsigned)

    def saturated(self) -> torch.Tensor:
        """Mask of values above the top level (clipped to it by the code), as :meth:`PhaseCode.saturated`."""
        return self.ratio > self.code.max_level

    def decoded(self) -> torch.Tensor:
        """sign·scale·level[k]; 0 where silent: what the next layer decodes."""
        return self.code._decode(self.fire_step, torch.sign(self.x), self.scale)
