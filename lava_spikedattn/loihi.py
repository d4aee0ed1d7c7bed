"""What a converted model would need on Loihi 2, in the mapping of ``docs/loihi2_mapping.md``:
neurons, synapses, state, memory, cores, chips, step time, latency and energy per inference, each
in an optimistic and a pessimistic bound.

``resource_estimate(cm)`` gives one :class:`LayerResources` row per neuron layer of the converted
model (counts that do not depend on the bound) and one :class:`BoundEstimate` per
:class:`LoihiCosts` (:data:`OPTIMISTIC`, :data:`PESSIMISTIC`), as a :class:`LoihiReport`
(``table()``, ``to_json()``). Nothing runs on Loihi. Every capacity, time and energy below is a
row of the mapping's parameter table (§5), which gives its source or marks it an assumption; no
Loihi 2 time or energy per operation is public, so those are Loihi 1 figures (Davies et al.,
IEEE Micro 2018; SANA-FE's silicon fit), the optimistic times divided by Intel's stated Loihi 2
speed-ups.

**What a row counts** (one input; a synapse is charged to the layers it feeds, shared among
several targets, q/k/v, in proportion to their neurons):

* ``neurons``: the population entering the layer (the Lava builder's populations; tested), the
  WOSS layer one neuron per logit, the read-out one integrating neuron per class.
* ``weights``: the unique stored weights of its token-wise synapses (shared by every token: an
  assumption of the mapping, §2); ``connections``: the same synapses unrolled.
* ``synops``: synaptic operations. One-spike coding sends at most one spike per neuron, so a
  stored-weight synapse costs at most one operation per connection; the bit-serial input sends
  up to T bits per pixel (T operations per connection).
* ``trace_products``: the terms (i, j, d) of the spike×spike products QKᵀ and attention×V. No
  Loihi synapse can hold the other operand (§3), so each term needs its own state, by ``design``:
  ``"A1"`` (default) one product neuron per term holding the earlier operand (1 state word;
  3 synaptic operations and 1 spike per term), ``"B"`` one axon and plastic synapse per term
  written by the learning engine (2 operations and 1 weight write per term; 8-bit weight and
  7-bit trace, 2 bytes; a core takes ``axons_in_per_core`` terms). Both stagger the operands (q
  fires a window after k: T more steps per QKᵀ layer, §3).
* ``inhibitors``: one WOSS inhibitor per row of logits (2 state words); each WOSS neuron sends a
  detection spike to it and its value to the spike sum, the inhibitor one shift spike to its M
  keys (3 operations per WOSS neuron, §3.5).
* ``spikes``: at most one per neuron, product neuron and WOSS detection, two per inhibitor.

**Per bound**: state words (PhaseNeuron ``state_words_per_neuron``, +1 for the attention×V spike
sum S; WOSS neuron and inhibitor 2; A1 product neuron 1) stored at ``state_word_storage_bits``;
``memory_bytes`` = weights at ``weight_bits`` + one exponent byte + state (+ Design B's 2 bytes
per term); ``cores = max(ceil(all neurons / neurons_per_core), ceil(memory_bytes /
memory_per_core), ceil(design B terms / axons_in_per_core), ceil(synops per step ·
synop_ns / (neurons_per_core · neuron_update_idle_ns)))``: the last spreads a layer with many
synaptic operations (the bit-serial input) until a core's synaptic work per step is no more than
the idle-update floor of a full core; layers do not share cores; chips
``= max(ceil(cores / cores_per_chip), ceil(neurons / neurons_per_chip), ceil(synapses /
synapses_per_chip))``.

**Step time** (§4.1, a busiest-core roofline in the pipelined steady state where every layer is
active): a layer's operations, spikes and writes spread over the T steps of its window and over
its cores; per core and step, neurons with input or a spike are updated at the active cost, the
others at the idle cost (Loihi 1 services idle neurons; §4.2). The optimistic bound overlaps the
terms (their max), the pessimistic one adds them; then + ``barrier_ns`` (the multi-chip barrier
above one chip) + ``hops``·``hop_ns``. **Steps** on the chip (§4.3): the graph's n_layers·T, plus
one per layer (a synaptic hop takes a step on Loihi, none in the Lava graph), 2 per WOSS layer and
T per staggered QKᵀ layer. Latency = chip steps × step time; a pipeline takes a new input every
2T steps.

**Energy per inference**: synops, spikes (each with ``hops`` router hops), weight writes, neuron
updates and static power. Optimistic: the pipelined steady state, each neuron serviced for 2T
steps per input and static power for 2T steps; pessimistic: one input alone, every neuron
serviced and static power for the whole latency.

Example: ``spikedattn loihi-report FOLDER`` prints the table; the README's port section lists the
shipped Swin and ViT, Swin-T, ViT-S and MiniLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.energy import Synapse
from lava_spikedattn.engines import AnnEngine, Observer
from lava_spikedattn.layers import LayerSpec

__all__ = ["DESIGNS", "OPTIMISTIC", "PESSIMISTIC", "BoundEstimate", "LayerResources", "LoihiCosts",
           "LoihiQuantization", "LoihiReport", "NeuronQuantization", "WeightQuantization", "layer_cores",
           "quantize_for_loihi", "resource_estimate"]

#: How a trace product's terms are held (module docstring; docs/loihi2_mapping.md §3).
DESIGNS = ("A1", "B")


@dataclass(frozen=True)
class LoihiCosts:
    """One bound of the mapping's parameter table (docs/loihi2_mapping.md §5): per-core and
    per-chip capacities, times in ns and energies in pJ per operation."""

    bound: str
    neurons_per_core: int
    memory_per_core: int  # bytes
    cores_per_chip: int
    neurons_per_chip: int
    synapses_per_chip: int
    axons_in_per_core: int
    weight_bits: int
    state_words_per_neuron: int
    state_word_storage_bits: int
    synop_ns: float
    synop_pj: float
    neuron_update_ns: float
    neuron_update_idle_ns: float
    neuron_update_pj: float
    neuron_update_idle_pj: float
    spike_ns: float
    spike_pj: float
    hop_ns: float
    hop_pj: float
    hops: int  # router hops per message: 1 (neighbouring tiles) / 10 (across the 8x4 router grid)
    barrier_ns: float
    multichip_barrier_ns: float
    weight_write_ns: float
    weight_write_pj: float
    static_power_w_per_chip: float
    overlapped: bool  # a core's operations overlap (max) or run one after another (sum)
    pipelined: bool  # energy of the pipelined steady state, or of one input alone


OPTIMISTIC = LoihiCosts(
    bound="optimistic", neurons_per_core=8192, memory_per_core=196_608, cores_per_chip=128,
    neurons_per_chip=1_000_000, synapses_per_chip=120_000_000, axons_in_per_core=4096, weight_bits=8,
    state_words_per_neuron=2, state_word_storage_bits=24, synop_ns=0.7, synop_pj=23.6, neuron_update_ns=4.2,
    neuron_update_idle_ns=2.65, neuron_update_pj=81.0, neuron_update_idle_pj=52.0, spike_ns=0.21, spike_pj=1.7,
    hop_ns=4.1, hop_pj=3.0, hops=1, barrier_ns=200.0, multichip_barrier_ns=3575.0, weight_write_ns=1.22,
    weight_write_pj=120.0, static_power_w_per_chip=0.104, overlapped=True, pipelined=True)
PESSIMISTIC = LoihiCosts(
    bound="pessimistic", neurons_per_core=4096, memory_per_core=131_072, cores_per_chip=120,
    neurons_per_chip=1_000_000, synapses_per_chip=15_728_640, axons_in_per_core=4096, weight_bits=8,
    state_words_per_neuron=4, state_word_storage_bits=32, synop_ns=4.0, synop_pj=35.5, neuron_update_ns=9.7,
    neuron_update_idle_ns=6.0, neuron_update_pj=81.0, neuron_update_idle_pj=52.0, spike_ns=7.6, spike_pj=76.8,
    hop_ns=6.5, hop_pj=4.2, hops=10, barrier_ns=1800.0, multichip_barrier_ns=16_200.0, weight_write_ns=6.1,
    weight_write_pj=120.0, static_power_w_per_chip=1.0, overlapped=False, pipelined=False)


def layer_cores(neurons: int, memory_bytes: int, costs: LoihiCosts = OPTIMISTIC, axons: int = 0,
                synops_per_step: float = 0.0) -> int:
    """Neuro-cores of one layer: the most of its neurons, memory and input axons per core, and of
    its synaptic work per step against a full core's idle-update floor (module docstring)."""
    floor_ns = costs.neurons_per_core * costs.neuron_update_idle_ns  # 0: no floor to balance against
    spread = math.ceil(synops_per_step * costs.synop_ns / floor_ns) if floor_ns > 0 else 1
    return max(math.ceil(neurons / costs.neurons_per_core), math.ceil(memory_bytes / costs.memory_per_core),
               math.ceil(axons / costs.axons_in_per_core), spread)


@dataclass(frozen=True)
class LayerResources:
    """One neuron layer on Loihi 2 for one input, independent of the bound (module docstring)."""

    name: str
    kind: str
    index: int
    neurons: int
    weights: int
    connections: int
    synops: int
    trace_products: int
    product_neurons: int
    product_synapses: int
    weight_writes: int
    inhibitors: int
    spikes: int

    @property
    def all_neurons(self) -> int:
        return self.neurons + self.product_neurons + self.inhibitors

    def state_words(self, costs: LoihiCosts) -> int:
        if self.kind == "woss":
            return 2 * (self.neurons + self.inhibitors)
        words = costs.state_words_per_neuron + (self.kind == "attention_out")
        return self.neurons * words + self.product_neurons

    def memory_bytes(self, costs: LoihiCosts, design: str) -> int:
        weights = (self.weights * costs.weight_bits + 7) // 8 + (1 if self.weights else 0)
        state = (self.state_words(costs) * costs.state_word_storage_bits + 7) // 8
        return weights + state + (2 * self.trace_products if design == "B" else 0)

    def cores(self, costs: LoihiCosts, design: str, timesteps: int) -> int:
        axons = self.trace_products if design == "B" else 0
        return layer_cores(self.all_neurons, self.memory_bytes(costs, design), costs, axons, self.synops / timesteps)


@dataclass(frozen=True)
class BoundEstimate:
    """The whole network in one bound: cores, chips, time and energy per inference."""

    costs: LoihiCosts
    cores: int
    chips: int
    memory_bytes: int
    step_ns: float
    busiest_layer: str
    chip_steps: int
    timesteps: int
    energy_pj: dict[str, float]

    @property
    def latency_us(self) -> float:
        return self.chip_steps * self.step_ns / 1e3

    @property
    def throughput_per_s(self) -> float:
        """A new input every 2T steps (a layer's input and fire windows)."""
        return 1e9 / (2 * self.timesteps * self.step_ns)

    @property
    def energy_uj(self) -> float:
        return sum(self.energy_pj.values()) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {"bound": self.costs.bound, "costs": asdict(self.costs), "cores": self.cores, "chips": self.chips,
                "memory_bytes": self.memory_bytes, "step_ns": self.step_ns, "busiest_layer": self.busiest_layer,
                "chip_steps": self.chip_steps, "latency_us": self.latency_us,
                "throughput_per_s": self.throughput_per_s, "energy_pj": self.energy_pj,
                "energy_uj": self.energy_uj}


_TOTALS = ("neurons", "weights", "connections", "synops", "trace_products", "product_neurons", "product_synapses",
           "weight_writes", "inhibitors", "spikes")


@dataclass(frozen=True)
class LoihiReport:
    """Per-layer counts of a converted model on Loihi 2 and the network in each bound."""

    family: str
    timesteps: int
    steps_per_inference: int  # of the Lava graph: n_layers·T
    design: str
    layers: tuple[LayerResources, ...]
    bounds: tuple[BoundEstimate, ...]

    def total(self, key: str) -> int:
        """Sum of one count (``neurons``, ``weights``, ``synops``, ...) over the layers."""
        return sum(getattr(layer, key) for layer in self.layers)

    @property
    def messages_per_step(self) -> float:
        """Spike messages per step in the pipelined steady state (one input every 2T steps)."""
        return self.total("spikes") / (2 * self.timesteps)

    def bound(self, name: str) -> BoundEstimate:
        """The estimate of one bound, ``"optimistic"`` or ``"pessimistic"``."""
        for bound in self.bounds:
            if bound.costs.bound == name:
                return bound
        raise KeyError(f"no bound {name!r}; the report has {[b.costs.bound for b in self.bounds]}")

    def table(self) -> str:
        """A fixed-width text table: one row per layer, the totals, then each bound's summary."""
        names = [b.costs.bound[:4] + ". cores" for b in self.bounds]
        header = (f"{'layer':<32} {'kind':<13} {'n':>4} {'neurons':>10} {'weights':>10} {'synops':>13} "
                  f"{'trace terms':>12} {'inhib.':>7} " + " ".join(f"{name:>11}" for name in names))
        rule = "-" * len(header)
        lines = [f"Loihi 2 estimate: {self.family}, T = {self.timesteps}, trace products in design {self.design} "
                 f"(docs/loihi2_mapping.md)", header, rule]
        for layer in self.layers:
            cores = " ".join(f"{layer.cores(b.costs, self.design, self.timesteps):>11,}" for b in self.bounds)
            lines.append(f"{layer.name:<32} {layer.kind:<13} {layer.index:>4} {layer.neurons:>10,} "
                         f"{layer.weights:>10,} {layer.synops:>13,} {layer.trace_products:>12,} "
                         f"{layer.inhibitors:>7,} {cores}")
        lines.append(rule)
        cores = " ".join(f"{b.cores:>11,}" for b in self.bounds)
        lines.append(f"{'total':<32} {'':<13} {'':>4} {self.total('neurons'):>10,} {self.total('weights'):>10,} "
                     f"{self.total('synops'):>13,} {self.total('trace_products'):>12,} "
                     f"{self.total('inhibitors'):>7,} {cores}")
        lines.append(f"product neurons {self.total('product_neurons'):,}, product synapses "
                     f"{self.total('product_synapses'):,}, weight writes {self.total('weight_writes'):,}, "
                     f"spikes {self.total('spikes'):,} per inference ({self.messages_per_step:,.0f} messages per step "
                     f"pipelined); Lava graph steps {self.steps_per_inference:,}")
        for b in self.bounds:
            lines.append(f"{b.costs.bound:>11}: {b.cores:,} cores, {b.chips} chip(s), "
                         f"{b.memory_bytes / 2**20:,.1f} MiB; {b.step_ns / 1e3:,.2f} µs per step (busiest: "
                         f"{b.busiest_layer}), {b.chip_steps:,} steps, "
                         f"latency {b.latency_us / 1e3:,.2f} ms, {b.throughput_per_s:,.0f} inferences/s pipelined, "
                         f"{b.energy_uj:,.1f} µJ per inference ({b.energy_pj['static'] / 1e6:,.1f} static)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict: per-layer rows, totals and both bounds."""
        return {"family": self.family, "timesteps": self.timesteps, "steps_per_inference": self.steps_per_inference,
                "design": self.design, "layers": [asdict(layer) for layer in self.layers],
                "totals": {key: self.total(key) for key in _TOTALS}, "messages_per_step": self.messages_per_step,
                "bounds": {b.costs.bound: b.to_json() for b in self.bounds}}


class _Shapes(Observer):
    """Records the shape of the value entering every neuron layer with a scale (one sample)."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}

    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        self.shapes[name] = tuple(x[0].shape)


def _first_sample(inputs: Any) -> Any:
    """The first sample of a batch: an image tensor or a tokenizer dict of tensors."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, Mapping):
        return {key: value[:1] if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    raise ValueError(f"inputs must be a tensor or a dict of tensors (one batch of model inputs), "
                     f"got {type(inputs).__name__}")


def _stored_weights(cm: ConvertedModel, synapse: Synapse) -> int:
    """Sizes of the converted model's weight tensors that ``synapse`` applies (0 for none)."""
    keys = [f"{synapse.name}.weight"]
    if synapse.name.endswith(".qkv") and keys[0] not in cm.weights:  # BERT stores q, k and v apart
        prefix = synapse.name.removesuffix(".qkv")
        keys = [f"{prefix}.attention.{part}.weight" for part in ("query", "key", "value")]
    return sum(cm.weights[key].numel() for key in keys if key in cm.weights)


def _split(total: int, parts: list[int]) -> list[int]:
    """``total`` split in proportion to ``parts``, in integers that sum to ``total``."""
    whole, cumulative, shares = sum(parts), 0, []
    for part in parts:
        start = total * cumulative // whole
        cumulative += part
        shares.append(total * cumulative // whole - start)
    return shares


def _layer_counts(cm: ConvertedModel, x: Any, design: str) -> list[LayerResources]:
    network = cm.to_reference("ann")
    observed = _Shapes()
    with torch.no_grad():
        network.run(x, AnnEngine(observed))
    synapses = network.synapses(x)
    neurons = {name: math.prod(shape) for name, shape in observed.shapes.items()}
    for synapse in synapses:  # layers without a scale: WOSS (one per logit), the read-out (one per class)
        for target in synapse.targets:
            neurons.setdefault(target, synapse.macs // synapse.fan_in // len(synapse.targets))
    counts = {layer.name: dict.fromkeys(("weights", "connections", "synops", "trace_products", "keys"), 0)
              for layer in cm.layers}
    for synapse in synapses:
        if len(synapse.sources) == 2:  # a product of two spike streams: QKᵀ, WOSS·V
            kinds = {"trace_products": synapse.macs}
        else:
            bits = cm.code.timesteps if synapse.sources == ("input",) else 1  # the bit-serial input
            kinds = {"connections": synapse.macs, "synops": synapse.macs * bits,
                     "weights": _stored_weights(cm, synapse)}
        for key, total in kinds.items():
            for target, share in zip(synapse.targets, _split(total, [neurons[t] for t in synapse.targets])):
                counts[target][key] += share
        if synapse.sources[0] in observed.shapes and len(synapse.sources) == 1:
            for target in synapse.targets:  # a WOSS layer's keys per row: its logits' last axis
                counts[target]["keys"] = observed.shapes[synapse.sources[0]][-1]
    rows = []
    for layer in cm.layers:
        c, n = counts[layer.name], neurons[layer.name]
        terms = c["trace_products"]
        product_neurons = terms if design == "A1" else 0
        inhibitors = n // c["keys"] if layer.kind == "woss" else 0
        synops = c["synops"] + (3 if design == "A1" else 2) * terms + 3 * n * (layer.kind == "woss")
        spikes = (0 if layer.kind == "readout" else n) + product_neurons + n * (layer.kind == "woss") + 2 * inhibitors
        rows.append(LayerResources(
            layer.name, layer.kind, layer.index, n, c["weights"], c["connections"], synops, terms, product_neurons,
            (3 if design == "A1" else 1) * terms, terms if design == "B" else 0, inhibitors, spikes))
    return rows


def _bound(cm: ConvertedModel, rows: list[LayerResources], costs: LoihiCosts, design: str) -> BoundEstimate:
    """Cores, chips, step time, steps and energy of the whole network in one bound."""
    T = cm.code.timesteps
    cores = [row.cores(costs, design, T) for row in rows]
    synapses = sum(row.weights + row.product_synapses for row in rows)
    all_neurons = sum(row.all_neurons for row in rows)
    chips = max(math.ceil(sum(cores) / costs.cores_per_chip), math.ceil(all_neurons / costs.neurons_per_chip),
                math.ceil(synapses / costs.synapses_per_chip))
    work = {}
    for row, n_cores in zip(rows, cores):
        per_step = T * n_cores
        synops, spikes, writes = row.synops / per_step, row.spikes / per_step, row.weight_writes / per_step
        serviced = row.all_neurons / n_cores
        active = min(serviced, synops + spikes)
        terms = (synops * costs.synop_ns,
                 active * costs.neuron_update_ns + (serviced - active) * costs.neuron_update_idle_ns,
                 spikes * costs.spike_ns, writes * costs.weight_write_ns)
        work[row.name] = max(terms) if costs.overlapped else sum(terms)
    busiest = max(work, key=work.get)
    barrier = costs.barrier_ns if chips == 1 else costs.multichip_barrier_ns
    step_ns = barrier + work[busiest] + costs.hops * costs.hop_ns
    kinds = [row.kind for row in rows]
    chip_steps = cm.steps_per_inference + cm.n_layers + 2 * kinds.count("woss") + T * kinds.count("logits")
    synops, spikes = sum(row.synops for row in rows), sum(row.spikes for row in rows)
    serviced = all_neurons * (2 * T if costs.pipelined else chip_steps)
    active = min(serviced, synops + spikes)
    seconds = (2 * T if costs.pipelined else chip_steps) * step_ns * 1e-9
    energy = {"synops": synops * costs.synop_pj, "spikes": spikes * (costs.spike_pj + costs.hops * costs.hop_pj),
              "weight_writes": sum(row.weight_writes for row in rows) * costs.weight_write_pj,
              "neuron_updates": active * costs.neuron_update_pj + (serviced - active) * costs.neuron_update_idle_pj,
              "static": costs.static_power_w_per_chip * chips * seconds * 1e12}
    memory = sum(row.memory_bytes(costs, design) for row in rows)
    return BoundEstimate(costs, sum(cores), chips, memory, step_ns, busiest, chip_steps, T, energy)


def resource_estimate(cm: ConvertedModel, *, inputs: Any = None, design: str = "A1",
                      bounds: tuple[LoihiCosts, ...] = (OPTIMISTIC, PESSIMISTIC)) -> LoihiReport:
    """Neurons, synapses, state, memory, cores, chips, time and energy of ``cm`` on Loihi 2.

    Args:
        cm: the converted model.
        inputs: one batch of model inputs; only the first sample's shape matters. Optional for
            the image families (a blank image), required for BERT (the sequence length sets the sizes).
        design: how the trace products' terms are held, one of :data:`DESIGNS` (module docstring).
        bounds: the parameter sets to evaluate (default: the mapping's optimistic and pessimistic).
    Raises:
        ValueError: an unknown design, no bounds, or missing BERT inputs.
    """
    if not isinstance(cm, ConvertedModel):
        raise TypeError(f"expected a ConvertedModel, got {type(cm).__name__}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS} (docs/loihi2_mapping.md §3), got {design!r}")
    if not bounds or not all(isinstance(b, LoihiCosts) for b in bounds):
        raise ValueError("bounds must be one or more LoihiCosts (e.g. loihi.OPTIMISTIC, loihi.PESSIMISTIC)")
    if inputs is None:
        inputs = cm.family.example_input(cm.config["architecture"])
    rows = _layer_counts(cm, _first_sample(cm.family.model_input(inputs)), design)
    return LoihiReport(cm.family.name, cm.code.timesteps, cm.steps_per_inference, design, tuple(rows),
                       tuple(_bound(cm, rows, costs, design) for costs in bounds))


# --- integer parameters ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightQuantization:
    """One weight tensor as 8-bit mantissas with one exponent (``weight ≈ mantissa·2^exponent``).

    ``zeroed``: non-zero weights that round to mantissa 0; ``clipped``: weights beyond the
    mantissa range (0 by construction: the exponent covers the largest weight); ``rel_error``:
    ‖ŵ − w‖ / ‖w‖.
    """

    name: str
    size: int
    exponent: int
    zeroed: int
    clipped: int
    rel_error: float


@dataclass(frozen=True)
class NeuronQuantization:
    """One neuron layer's integer units: graded-spike payload exponent, input-current exponent,
    and the bits its largest threshold Θ_0 needs against the state width."""

    name: str
    payload_exp: int
    current_exp: int
    threshold_bits: int
    state_bits: int


@dataclass(frozen=True)
class LoihiQuantization:
    """What :func:`quantize_for_loihi` produced: per-tensor weights, per-layer units, and the
    converted model with its weights replaced by their 8-bit values (``quantized``)."""

    weights: tuple[WeightQuantization, ...]
    neurons: tuple[NeuronQuantization, ...]
    quantized: ConvertedModel

    def table(self) -> str:
        lines = [f"{'weight tensor':<40} {'size':>9} {'exp':>5} {'zeroed':>8} {'rel. error':>10}"]
        lines += [f"{w.name:<40} {w.size:>9,} {w.exponent:>5} {w.zeroed:>8,} {w.rel_error:>10.2e}"
                  for w in self.weights]
        lines.append(f"\n{'neuron layer':<40} {'payload exp':>11} {'current exp':>11} {'Θ_0 bits':>9}")
        lines += [f"{n.name:<40} {n.payload_exp:>11} {n.current_exp:>11} {n.threshold_bits:>5} / {n.state_bits}"
                  for n in self.neurons]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"weights": [asdict(w) for w in self.weights], "neurons": [asdict(n) for n in self.neurons]}


def neuron_units(layer: LayerSpec, scale: Any, fmt: Any) -> tuple[int, int]:
    """(payload_exp, current_exp) of a neuron layer in the fixed-point format ``fmt``.

    From the layer's whole calibrated ``scale``, so a layer's units do not depend on the input
    (a sequence's length): on the chip they are fixed when the network is compiled. An
    attention×V layer gets the headroom of its unnormalised membrane, keys = its scale's
    position axis (``FixedFormat.attention_output_exponent``). The Lava builder
    (``fixed_format``) and :func:`quantize_for_loihi` both use these.
    """
    scale = torch.as_tensor(scale).double().cpu().numpy()
    if layer.kind == "attention_out":
        current_exp = fmt.attention_output_exponent(scale, layer.scale_shape[-2])
    else:
        current_exp = fmt.current_exponent(scale)
    return fmt.payload_exponent(scale), current_exp


def quantize_for_loihi(cm: ConvertedModel, fmt: Any = None) -> LoihiQuantization:
    """The integer parameters of ``cm`` in the fixed-point format ``fmt`` (default
    ``reference.fixed.FixedFormat()``: 24-bit state, 8-bit weight mantissas, 16-bit payloads).

    Every synaptic weight tensor (``*.weight``; the host-side embedding tables excepted) gets one
    exponent; every neuron layer with a scale gets its payload and current units
    (:func:`neuron_units`: the top level 2 bits below the state limit, more for attention×V) and
    the width of its threshold table. ``quantized`` is ``cm`` with
    8-bit weights, to measure what weight quantisation alone costs on the reference engine.
    """
    from lava_spikedattn.fixed_point import FixedFormat, quantize_weights

    fmt = FixedFormat() if fmt is None else fmt
    if not isinstance(cm, ConvertedModel):
        raise TypeError(f"expected a ConvertedModel, got {type(cm).__name__}")
    weights, rows = dict(cm.weights), []
    for name, tensor in cm.weights.items():
        if not name.endswith(".weight") or name.startswith("embeddings."):
            continue
        w = tensor.detach().double().cpu().numpy()
        mantissa, exponent = quantize_weights(w, fmt.weight_bits)
        dequantized = torch.from_numpy(mantissa * 2.0**exponent)
        norm = float(torch.from_numpy(w).norm())
        error = float((dequantized - torch.from_numpy(w)).norm()) / norm if norm > 0 else 0.0
        rows.append(WeightQuantization(name, int(w.size), exponent, int(((mantissa == 0) & (w != 0)).sum()),
                                       int((abs(w / 2.0**exponent) > 2 ** (fmt.weight_bits - 1) - 0.5).sum()),
                                       error))
        weights[name] = dequantized.to(tensor.dtype)
    neurons = []
    for layer in cm.layers:
        key = f"scale.{layer.name}"
        if key not in cm.weights:
            continue
        scale = cm.weights[key].double().cpu().numpy()
        payload_exp, current_exp = neuron_units(layer, scale, fmt)
        theta = fmt.thresholds(cm.code, scale.max(), current_exp)
        neurons.append(NeuronQuantization(layer.name, payload_exp, current_exp,
                                          int(theta.max()).bit_length() + 1, fmt.state_bits))
    quantized = ConvertedModel(dict(cm.config, weights_sha256=tensor_sha256(weights)), weights)
    return LoihiQuantization(tuple(rows), tuple(neurons), quantized)
