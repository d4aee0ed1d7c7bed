"""What a converted model would need on Loihi 2: neurons, synapses, memory, cores, chips and time.

``resource_estimate(cm)`` gives one :class:`LayerResources` row per neuron layer of the converted
model (``cm.layers``), plus totals, as a :class:`LoihiReport` (``table()``, ``to_json()``).
Nothing runs on Loihi: the numbers follow from the model's geometry and the limits below.

**What a row counts.** On Loihi a neuro-core holds a group of neurons together with every
synapse that feeds them, so each synaptic operation of ``cm.to_reference().synapses(x)``
(:class:`~lava_spikedattn.energy.Synapse`) is charged to the layers it feeds (shared among
several targets, q/k/v, in proportion to their neurons):

* ``neurons``: population size for one input. It is the size of the value entering the layer in
  one forward pass of the folded ANN (the same tensor shapes the Lava builder gives its
  populations; tested against ``LavaNetwork.build``); the WOSS layer has one neuron per logit and
  the read-out (``last_fc`` / ``classifier``) one integrating neuron per class, as their
  synapses say. The WOSS inhibitors, delay lines and the bit-serial input source of the Lava
  graph are not neurons here; the input would be fed by the chip's embedded CPUs.
* ``weights``: the unique stored weights of the layer's dense (token-wise) synapses: the sizes of
  the converted model's ``<synapse>.weight`` tensors (BERT's ``qkv`` row: its ``query``, ``key``
  and ``value`` tensors). A token-wise weight matrix is shared by every token. Identity synapses
  (residuals, logit → WOSS) and the average pool store no weights.
* ``connections``: the same synapses unrolled, one per (source neuron, target neuron) pair:
  their dense MACs per sample. This is what a core would hold if weights were not shared.
* ``trace_products``: multiplications of the trace-driven products (QKᵀ, WOSS·V, the synapses
  driven by two spike streams) per sample. They have no stored weights; their per-pair state is
  the logit and WOSS neurons themselves. A trace × trace product is not a standard Loihi synapse:
  it is assumed to run as neuron microcode (unverified).
* ``memory_bytes``: ``weights`` at 8 bits + one shared exponent byte per layer with weights.
  Biases (also the relative-position bias and the shift mask) are per-neuron bias currents and
  count as neuron state, which the neurons-per-core limit covers; axon routing tables are not
  counted.
* ``cores = max(ceil(neurons / neurons_per_core), ceil(memory_bytes / memory_per_core))``.
  Layers do not share cores. The weights are counted once per layer: this assumes the layer is
  split across its cores by output channel (channel-major), so a weight column (one output
  channel's fan-in) is stored only on the core(s) that hold that channel and reused there for
  every token (assumed: a core applies one stored column to many target neurons, as shared or
  convolutional connectivity does; not verified for Loihi 2 here); the columns of a channel that
  straddles two cores (at most one per core) are neglected.
* chips ``= max(ceil(cores / cores_per_chip), ceil(neurons / neurons_per_chip),
  ceil(weights / synapses_per_chip))``.

**Time.** One inference takes ``cm.steps_per_inference`` = n_layers·T algorithmic time steps
(spec §6); its latency is that times ``step_time_us``. A layer is busy for 2T steps per input
(its input window, then its fire window, spec §1.5), so a pipeline accepts a new input every 2T
steps (spec §6): throughput = 1 / (2T · step time). (A new input every T steps would need two
membranes per neuron, one integrating while the other fires; not assumed.)

**Limits** (:data:`LOIHI2`, all overridable) and where each figure comes from:

* 128 neuro-cores and 6 embedded (Lakemont x86) CPUs per chip; up to 1 million neurons and 120
  million synapses per chip: Intel Labs, "Taking Neuromorphic Computing to the Next Level with
  Loihi 2", technology brief (2021). Checked offline against open-neuromorphic.org's "Loihi 2 -
  Intel" page and elprocus.com's Loihi 2 article, which state the same four figures; the stored
  copy of the brief itself was readable only up to its introduction, and Orchard et al.,
  "Efficient Neuromorphic Signal Processing with Loihi 2" (SiPS 2021) only as its abstract.
* 8192 neurons per core: an assumption, consistent with the above (128 × 8192 = 2^20 neurons)
  and with secondary summaries ("up to ~8,000 per core"); not found in a primary source here.
* 192 KB (196,608 bytes) of memory per core for synapses and neuron state: an assumption (the
  figure usually quoted for the brief), NOT verified: the offline sources did not state it, and
  one news article gives 128 KB of flexibly partitioned SRAM per core.
* 8-bit weights + one shared exponent byte per layer: this estimate's assumption, not a checked
  hardware limit (open-neuromorphic.org lists Loihi 2 weights as "<= 32-bit").

``step_time_us`` defaults to :data:`DEFAULT_STEP_TIME_US` = 10 µs: an assumption, not a
measurement: a few µs per step is the figure suggested for small networks (no measured value was
found offline); a network of this size spreads over many cores (often several chips) with large
fan-ins and a barrier every step, so a slower step is assumed. Pass the step time measured on
the target system.

Example (full Swin-T, random weights; conversion takes ~40 s and the estimate ~5 s on 2 cores)::

    model = prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    cm = convert(model.eval(), [torch.randn(2, 3, 224, 224)], PhaseCode(1.15, 40))
    print(resource_estimate(cm).table())

gives 19,245,832 neurons, 28,199,424 weights (4.36 G connections unrolled), 2,444 cores on 20
chips (neuron-bound), 3,600 steps: 36 ms per image and 1,250 images/s pipelined at 10 µs/step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

import torch

from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.energy import Synapse
from lava_spikedattn.engines import AnnEngine, Observer
from lava_spikedattn.layers import LayerSpec

__all__ = ["DEFAULT_STEP_TIME_US", "LOIHI2", "LayerResources", "LoihiLimits", "LoihiQuantization", "LoihiReport",
           "NeuronQuantization", "WeightQuantization", "layer_cores", "quantize_for_loihi",
           "resource_estimate"]

#: Assumed time of one algorithmic time step on Loihi 2, in µs (see the module docstring).
DEFAULT_STEP_TIME_US = 10.0


@dataclass(frozen=True)
class LoihiLimits:
    """Per-core and per-chip capacities (sources in the module docstring)."""

    neurons_per_core: int = 8192
    memory_per_core: int = 192 * 1024  # bytes
    cores_per_chip: int = 128
    neurons_per_chip: int = 1_000_000
    synapses_per_chip: int = 120_000_000
    weight_bits: int = 8
    exponent_bytes: int = 1  # one shared weight exponent per layer


LOIHI2 = LoihiLimits()


def layer_cores(neurons: int, memory_bytes: int, limits: LoihiLimits = LOIHI2) -> int:
    """Neuro-cores of one layer: ``max(ceil(neurons / per core), ceil(bytes / per core))``."""
    return max(math.ceil(neurons / limits.neurons_per_core), math.ceil(memory_bytes / limits.memory_per_core))


@dataclass(frozen=True)
class LayerResources:
    """One neuron layer on Loihi 2, for one input (see the module docstring for each count)."""

    name: str
    kind: str
    index: int
    neurons: int
    weights: int
    connections: int
    trace_products: int
    memory_bytes: int
    cores: int


_TOTALS = ("neurons", "weights", "connections", "trace_products", "memory_bytes", "cores")


@dataclass(frozen=True)
class LoihiReport:
    """Per-layer and total resources of a converted model on Loihi 2, and its timing."""

    family: str
    timesteps: int
    steps_per_inference: int
    step_time_us: float
    limits: LoihiLimits
    layers: tuple[LayerResources, ...]

    def total(self, key: str) -> int:
        """Sum of one count (``neurons``, ``weights``, ``connections``, ...) over the layers."""
        return sum(getattr(layer, key) for layer in self.layers)

    @property
    def chips(self) -> int:
        limits = self.limits
        return max(math.ceil(self.total("cores") / limits.cores_per_chip),
                   math.ceil(self.total("neurons") / limits.neurons_per_chip),
                   math.ceil(self.total("weights") / limits.synapses_per_chip))

    @property
    def latency_us(self) -> float:
        """One inference, first input step to read-out: steps_per_inference × step time."""
        return self.steps_per_inference * self.step_time_us

    @property
    def interval_steps(self) -> int:
        """Steps between two pipelined inputs: 2T (a layer's input and fire windows)."""
        return 2 * self.timesteps

    @property
    def throughput_per_s(self) -> float:
        """Inferences per second with a new input every :attr:`interval_steps` steps."""
        return 1e6 / (self.interval_steps * self.step_time_us)

    def table(self) -> str:
        """A fixed-width text table: one row per layer, the totals, then chips and timing."""
        header = (f"{'layer':<32} {'kind':<13} {'n':>4} {'neurons':>10} {'weights':>11} {'connections':>13} "
                  f"{'trace ops':>12} {'bytes':>11} {'cores':>6}")
        rule = "-" * len(header)
        lines = [f"Loihi 2 estimate: {self.family}, T = {self.timesteps}", header, rule]
        for layer in self.layers:
            lines.append(f"{layer.name:<32} {layer.kind:<13} {layer.index:>4} {layer.neurons:>10,} "
                         f"{layer.weights:>11,} {layer.connections:>13,} {layer.trace_products:>12,} "
                         f"{layer.memory_bytes:>11,} {layer.cores:>6,}")
        lines.append(rule)
        lines.append(f"{'total':<32} {'':<13} {'':>4} {self.total('neurons'):>10,} {self.total('weights'):>11,} "
                     f"{self.total('connections'):>13,} {self.total('trace_products'):>12,} "
                     f"{self.total('memory_bytes'):>11,} {self.total('cores'):>6,}")
        limits = self.limits
        lines += [
            (f"chips: {self.chips} (limits: {limits.cores_per_chip} cores, {limits.neurons_per_chip:,} neurons, "
             f"{limits.synapses_per_chip:,} synapses per chip; {limits.neurons_per_core:,} neurons and "
             f"{limits.memory_per_core:,} bytes per core)"),
            (f"steps per inference: {self.steps_per_inference:,}; latency {self.latency_us / 1000:.3f} ms at "
             f"{self.step_time_us:g} µs per step"),
            f"pipelined: a new input every {self.interval_steps} steps, {self.throughput_per_s:,.1f} inferences/s",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict: limits, per-layer rows, totals, chips and timing."""
        return {
            "family": self.family,
            "timesteps": self.timesteps,
            "steps_per_inference": self.steps_per_inference,
            "step_time_us": self.step_time_us,
            "limits": asdict(self.limits),
            "layers": [asdict(layer) for layer in self.layers],
            "totals": {key: self.total(key) for key in _TOTALS},
            "chips": self.chips,
            "latency_us": self.latency_us,
            "interval_steps": self.interval_steps,
            "throughput_per_s": self.throughput_per_s,
        }


class _Sizes(Observer):
    """Records the size of the value entering every neuron layer with a scale (one sample)."""

    def __init__(self) -> None:
        self.neurons: dict[str, int] = {}

    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        self.neurons[name] = int(x[0].numel())


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


def _check_step_time(step_time_us: Any) -> float:
    if isinstance(step_time_us, bool) or not isinstance(step_time_us, Real) or not (
            math.isfinite(step_time_us) and step_time_us > 0):
        raise ValueError(f"step_time_us must be a positive finite number of microseconds, got {step_time_us!r}")
    return float(step_time_us)


def resource_estimate(cm: ConvertedModel, *, step_time_us: float = DEFAULT_STEP_TIME_US, inputs: Any = None,
                      limits: LoihiLimits = LOIHI2) -> LoihiReport:
    """Neurons, synapses, memory, cores, chips and timing of ``cm`` on Loihi 2 (module docstring).

    Args:
        cm: the converted model.
        step_time_us: time of one algorithmic time step in µs (default: an assumption).
        inputs: one batch of model inputs; only the first sample's shape matters. Optional for
            Swin (a blank image), required for BERT (the sequence length sets the sizes).
        limits: the per-core and per-chip capacities.
    Raises:
        ValueError: a step time that is not a positive finite number, or missing BERT inputs.
    """
    if not isinstance(cm, ConvertedModel):
        raise TypeError(f"expected a ConvertedModel, got {type(cm).__name__}")
    step_time_us = _check_step_time(step_time_us)
    if inputs is None:
        inputs = cm.family.example_input(cm.config["architecture"])
    x = _first_sample(cm.family.model_input(inputs))
    network = cm.to_reference("ann")
    sizes = _Sizes()
    with torch.no_grad():
        network.run(x, AnnEngine(sizes))
    synapses = network.synapses(x)
    neurons = dict(sizes.neurons)
    for synapse in synapses:  # layers without a scale: WOSS (one per logit), the read-out (one per class)
        for target in synapse.targets:
            neurons.setdefault(target, synapse.macs // synapse.fan_in // len(synapse.targets))
    counts = {layer.name: {"weights": 0, "connections": 0, "trace_products": 0} for layer in cm.layers}
    for synapse in synapses:
        parts = [neurons[target] for target in synapse.targets]
        trace = len(synapse.sources) == 2  # a product of two spike streams: QKᵀ, WOSS·V
        kinds = {"trace_products": synapse.macs} if trace else {
            "connections": synapse.macs, "weights": _stored_weights(cm, synapse)}
        for key, total in kinds.items():
            for target, share in zip(synapse.targets, _split(total, parts)):
                counts[target][key] += share
    rows = []
    for layer in cm.layers:
        count = counts[layer.name]
        memory = (count["weights"] * limits.weight_bits + 7) // 8
        memory += limits.exponent_bytes if count["weights"] else 0
        rows.append(LayerResources(layer.name, layer.kind, layer.index, neurons[layer.name], count["weights"],
                                   count["connections"], count["trace_products"], memory,
                                   layer_cores(neurons[layer.name], memory, limits)))
    return LoihiReport(cm.family.name, cm.code.timesteps, cm.steps_per_inference, step_time_us, limits, tuple(rows))


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
