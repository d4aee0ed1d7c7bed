"""The paper's energy model (spec §7): per-layer ANN and SNN energy from activity counts.

A layer is described by a :class:`LayerActivity` (dense MAC count, fan-in, measured spike rate,
active neuron-steps, ANN activation density) and :func:`energy_report` turns a list of them into
per-layer and total energies, the SNN/ANN ratio and the saving.

Measured activity: a converted network lists its synaptic operations as :class:`Synapse` rows
(``SpikingNetwork.synapses(inputs)``: dense MACs per sample, fan-in, the neuron layers whose
spikes drive it, the layers it feeds). :func:`synapse_sums` combines one run's spike statistics
(:class:`~lava_spikedattn.layers.LayerStats`: spikes and active neuron-steps per layer, from
the fire steps of the closed-form engine, the stepped engine or a Lava run) and the ANN's
activation density on the same input into sums that add up exactly over batches;
:func:`layer_activity` turns the totals into a :class:`LayerActivity`.
``lava_spikedattn.evaluate`` does both for every batch it evaluates
(``EvaluationReport.energy(counting)``).

Constants (units: pJ, 32-bit operations in a 45 nm process) are those of the released code
(spec §7.1), which takes them from M. Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, as used by the release: add 0.9 pJ, multiply 3.7 pJ, memory access
5.0 pJ. A MAC costs add + multiply = 4.6 pJ; an accumulate (AC, one per input spike) 0.9 pJ.
The release's 8-bit alternatives (0.03 / 0.2 / 1.25) are unused there and not offered here.

Counting conventions (spec §7.3):

* ``"official"``: only layers marked ``included_in_official``, reproducing the release's
  bookkeeping (which omits, e.g., every MLP's second linear layer ``fc2``); use it to compare
  with the paper's 42 % (Swin) / 58 % (MA-BERT) savings.
* ``"complete"``: every layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from numbers import Real
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lava_spikedattn.layers import LayerStats

# 32-bit, 45 nm, pJ per operation (Horowitz, ISSCC 2014, as used by the release; spec §7.1).
E_ADD_PJ = 0.9
E_MUL_PJ = 3.7
E_MEM_PJ = 5.0
E_MAC_PJ = E_ADD_PJ + E_MUL_PJ  # 4.6 pJ: one multiply-accumulate
E_AC_PJ = E_ADD_PJ  # 0.9 pJ: one accumulate (a synaptic op triggered by a spike)

# Per active neuron-step: two state accesses (read + write), one multiply (×B) and three adds
# (the release's "add, compare") = 2·5.0 + 3.7 + 3·0.9 = 16.4 pJ (spec §7.2).
E_NEURON_STEP_PJ = 2 * E_MEM_PJ + E_MUL_PJ + 3 * E_ADD_PJ
# Weight reads per input spike: 32-bit weight plus the 1-bit spike itself, i.e. ×33/32.
WEIGHT_READ_FACTOR = 33 / 32
# Writing a 1-bit spike costs 1/32 of a 32-bit memory access.
SPIKE_WRITE_PJ = E_MEM_PJ / 32

COUNTINGS = ("complete", "official")
# Per-synapse sums over samples (see synapse_sums), in the order they are stored.
ACTIVITY_SUMS = ("macs", "neurons", "synops", "ann_macs", "neuron_steps")

PJ_PER_MJ = 1e9


def pj_to_mj(energy_pj: float) -> float:
    """Convert picojoules to millijoules (the unit the release prints)."""
    return energy_pj / PJ_PER_MJ


@dataclass(frozen=True)
class LayerActivity:
    """Activity of one layer over one inference, the inputs of the spec §7.2 formulas.

    ``macs``: dense MAC count F of the synaptic op feeding the layer. ``fan_in``: weights per
    output neuron w (neurons N = F/w). ``spike_rate``: r, input spikes per input neuron over the
    window (may exceed 1 for the bit-serial input layer). ``active_steps``: p, mean fire-window
    steps a neuron is still un-fired (0..T). ``ann_density``: s, the ANN's input activation
    density (0..1). ``included_in_official``: whether the release's bookkeeping counts it.
    """

    name: str
    macs: float
    fan_in: float
    spike_rate: float
    active_steps: float
    ann_density: float = 1.0
    included_in_official: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.included_in_official, bool):
            raise ValueError(  # noqa: TRY004 (one error type for all field checks)
                f"included_in_official must be a bool, got {self.included_in_official!r}"
            )
        for f in fields(self):
            if f.name in ("name", "included_in_official"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ValueError(f"{f.name} must be a real number, got {value!r}")  # noqa: TRY004
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"{f.name} must be finite and non-negative, got {value!r}"
                )
            object.__setattr__(self, f.name, value)
        if self.fan_in <= 0:
            raise ValueError(f"fan_in must be positive, got {self.fan_in!r}")
        if self.ann_density > 1:
            raise ValueError(f"ann_density must be at most 1, got {self.ann_density!r}")

    @property
    def neurons(self) -> float:
        """Output neurons N = F / w."""
        return self.macs / self.fan_in


@dataclass(frozen=True)
class Synapse:
    """One synaptic operation of a converted network, the unit of energy accounting.

    ``macs``: dense MAC count F per sample. ``fan_in``: weights per output neuron w.
    ``sources``: neuron layers whose spikes drive it; its spike rate r is the product of their
    spike rates (e.g. q·k for QKᵀ, spec §7.2; ``"input"`` is the bit-serial input code, whose
    rate is bits per pixel). ``targets``: the neuron layers it feeds, whose mean active steps
    are p (the read-out, which records no fire steps, integrates over all T steps).
    ``official``: counted by the release's bookkeeping (spec §7.3).
    """

    name: str
    macs: int
    fan_in: int
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    official: bool = True


def synapse_sums(synapse: Synapse, stats: Mapping[str, LayerStats], ann_density: Mapping[str, float],
                 samples: int, timesteps: int) -> dict[str, float]:
    """Activity of ``synapse`` over one batch of ``samples``, as sums (see :data:`ACTIVITY_SUMS`).

    ``stats``: the spiking run's per-layer statistics, summed over the batch. ``ann_density``:
    the ANN's non-zero fraction of each layer's output on the same batch (a layer without an
    entry counts as dense, e.g. the softmax). Returns ``macs`` (F·samples), ``neurons``,
    ``synops`` (F·r), ``ann_macs`` (F·s) and ``neuron_steps`` (N·p); every one adds up over
    batches, so totals over a data set (or over ranks) are exact.
    """
    rate = density = 1.0
    for source in synapse.sources:
        if source not in stats:
            raise KeyError(f"synapse {synapse.name}: the run recorded no statistics for its source {source!r}")
        neurons = stats[source].neurons
        rate *= stats[source].spikes / neurons if neurons else 0.0
        density *= ann_density.get(source, 1.0)
    recorded = [stats[target] for target in synapse.targets if target in stats]
    target_neurons = sum(target.neurons for target in recorded)
    active_steps = (sum(target.active_steps for target in recorded) / target_neurons if target_neurons
                    else float(timesteps))
    macs = float(synapse.macs) * samples
    neurons = macs / synapse.fan_in
    return {"macs": macs, "neurons": neurons, "synops": macs * rate, "ann_macs": macs * density,
            "neuron_steps": neurons * active_steps}


def layer_activity(synapse: Synapse, sums: Mapping[str, float], samples: int) -> LayerActivity:
    """Per-sample :class:`LayerActivity` of ``synapse`` from its :func:`synapse_sums` totals."""
    macs, neurons = sums["macs"], sums["neurons"]
    if samples <= 0 or macs <= 0 or neurons <= 0:
        raise ValueError(f"synapse {synapse.name}: no activity was measured ({samples} samples, "
                         f"{macs:g} MACs)")
    return LayerActivity(synapse.name, macs=macs / samples, fan_in=macs / neurons,
                         spike_rate=sums["synops"] / macs, active_steps=sums["neuron_steps"] / neurons,
                         ann_density=sums["ann_macs"] / macs, included_in_official=synapse.official)


def snn_energy_pj(layer: LayerActivity) -> float:
    """The release's ``SpikeSim_Energy`` (spec §7.2), in pJ.

    ``F·(33/32)·E_mem·r + F·E_ad·r + N·p·(2E_mem + E_mul + 3E_ad) + N·p·E_mem/32``: weight
    reads and accumulates per input spike, neuron updates per active step, 1-bit spike writes.
    """
    f, r, active = layer.macs, layer.spike_rate, layer.neurons * layer.active_steps
    return (
        f * WEIGHT_READ_FACTOR * E_MEM_PJ * r
        + f * E_ADD_PJ * r
        + active * E_NEURON_STEP_PJ
        + active * SPIKE_WRITE_PJ
    )


def ann_energy_pj(layer: LayerActivity) -> float:
    """The release's ``ANN_Energy`` (spec §7.2), in pJ: ``F·2E_mem·s + F·E_mac·s + E_mem·N``."""
    f, s = layer.macs, layer.ann_density
    return f * 2 * E_MEM_PJ * s + f * E_MAC_PJ * s + E_MEM_PJ * layer.neurons


@dataclass(frozen=True)
class LayerEnergy:
    """One layer's activity with its ANN and SNN energies (pJ)."""

    activity: LayerActivity
    ann_pj: float
    snn_pj: float


@dataclass(frozen=True)
class EnergyReport:
    """Per-layer and total ANN vs SNN energy under one counting convention."""

    counting: str
    layers: tuple[LayerEnergy, ...]

    @property
    def ann_total_pj(self) -> float:
        return math.fsum(layer.ann_pj for layer in self.layers)

    @property
    def snn_total_pj(self) -> float:
        return math.fsum(layer.snn_pj for layer in self.layers)

    @property
    def ratio(self) -> float:
        """SNN energy / ANN energy."""
        return self.snn_total_pj / self.ann_total_pj

    @property
    def saving(self) -> float:
        """Fraction of the ANN energy the SNN saves, 1 − ratio (the paper's headline number)."""
        return 1.0 - self.ratio

    def table(self) -> str:
        """A fixed-width text table: one row per layer, then the totals, ratio and saving."""
        header = (
            f"{'layer':<24} {'MACs':>12} {'r':>7} {'p':>7} {'s':>6} "
            f"{'ANN mJ':>11} {'SNN mJ':>11}"
        )
        lines = [f"energy ({self.counting} counting)", header, "-" * len(header)]
        for layer in self.layers:
            a = layer.activity
            lines.append(
                f"{a.name:<24} {a.macs:>12.4g} {a.spike_rate:>7.3f} {a.active_steps:>7.2f} "
                f"{a.ann_density:>6.3f} {pj_to_mj(layer.ann_pj):>11.6f} "
                f"{pj_to_mj(layer.snn_pj):>11.6f}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<24} {'':>12} {'':>7} {'':>7} {'':>6} "
            f"{pj_to_mj(self.ann_total_pj):>11.6f} {pj_to_mj(self.snn_total_pj):>11.6f}"
        )
        lines.append(
            f"SNN/ANN ratio {self.ratio:.4f}, saving {100 * self.saving:.1f} %"
        )
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-serialisable dict: constants, per-layer inputs and energies, totals."""
        return {
            "counting": self.counting,
            "constants_pj": {"add": E_ADD_PJ, "mul": E_MUL_PJ, "mem": E_MEM_PJ},
            "layers": [
                {
                    "name": layer.activity.name,
                    "macs": layer.activity.macs,
                    "fan_in": layer.activity.fan_in,
                    "spike_rate": layer.activity.spike_rate,
                    "active_steps": layer.activity.active_steps,
                    "ann_density": layer.activity.ann_density,
                    "included_in_official": layer.activity.included_in_official,
                    "ann_pj": layer.ann_pj,
                    "snn_pj": layer.snn_pj,
                }
                for layer in self.layers
            ],
            "ann_total_pj": self.ann_total_pj,
            "snn_total_pj": self.snn_total_pj,
            "ann_total_mj": pj_to_mj(self.ann_total_pj),
            "snn_total_mj": pj_to_mj(self.snn_total_pj),
            "ratio": self.ratio,
            "saving": self.saving,
        }


def energy_report(
    layers: Iterable[LayerActivity], counting: str = "complete"
) -> EnergyReport:
    """Energies of ``layers`` under ``counting`` (``"complete"`` or ``"official"``, see module doc).

    Raises ``ValueError`` for an unknown convention, a non-``LayerActivity`` entry, or when the
    counted layers have no ANN energy (the ratio would be undefined).
    """
    if counting not in COUNTINGS:
        raise ValueError(f"counting must be one of {COUNTINGS}, got {counting!r}")
    counted = []
    for layer in layers:
        if not isinstance(layer, LayerActivity):
            raise ValueError(f"expected LayerActivity, got {type(layer).__name__}")  # noqa: TRY004
        if counting == "complete" or layer.included_in_official:
            counted.append(
                LayerEnergy(layer, ann_energy_pj(layer), snn_energy_pj(layer))
            )
    report = EnergyReport(counting, tuple(counted))
    if report.ann_total_pj <= 0:
        raise ValueError(
            "the counted layers have no ANN energy; the SNN/ANN ratio is undefined"
        )
    return report
