"""How faithful a converted network is to its ANN: accuracy, agreement, per-layer fidelity, spikes.

::

    cm = ConvertedModel.load(folder)
    report = evaluate(prepared_ann, cm.to_reference("closed"), loader)   # or ann=None
    print(report.table())
    report.save("report.json")                 # report.to_json() is the same as a dict

For every batch the SNN's own network code (:meth:`SpikingNetwork.run`) runs twice:

1. on the ``"ann"`` engine (:class:`~lava_spikedattn.engines.AnnEngine`): the folded ANN, the
   reference activation at every spike point;
2. on the SNN's engine (``"closed"`` or ``"stepped"``, :meth:`SpikingNetwork.make_engine`): the
   decoded activations and the spike statistics (:class:`~lava_spikedattn.layers.LayerStats`).

Both runs go through a :class:`RecordingEngine`, which delegates to the real engine and hands
the decoded output of every spike point to a callback; the spiking run's outputs are compared
with the folded ANN's as they come, so one batch's ANN activations are held at a time.
``ann`` (the prepared model) gives the ANN accuracy and the prediction agreement; with
``ann=None`` the folded ANN of run 1 stands in for it (it equals the prepared model to
``lava_spikedattn.convert.FOLDING_TOLERANCE``).

Per-layer fidelity: the spiking run's decoded output of a layer against the folded ANN's output
of the same layer (the neuron's input, ReLU'd for unsigned neurons). The spiking layer's input
already carries the error of every layer before it, so the numbers show how the error grows
along the network. Reported: ``cosine``, the mean over samples of the cosine similarity of the
sample's whole activation; ``cosine_min``, the worst sample; ``rel_error``,
‖ŝ − a‖ / ‖a‖ over the whole data set (L2). Observed are the input layer, every
``Engine.neuron`` layer, each attention core's output (``<prefix>.stdp_av``) and the logits
(the row of the ``readout`` layer). ``Engine.attention`` returns only the core's output, so its
inner layers (``q_if``, ``k_if``, ``v_if``, ``stdp_qk``, ``softmax_if``) have spike statistics
but no fidelity numbers.

Energy (spec §7, :mod:`lava_spikedattn.energy`): for every batch, the network's synaptic
operations (``SpikingNetwork.synapses``) are combined with the spiking run's spike counts and
active neuron-steps and with the folded ANN's activation density (:class:`DensityObserver`);
``report.activity`` holds the per-synapse averages per sample and ``report.energy(counting)``
the ANN vs SNN energy.

Batches: ``(x, y)`` tuples (or ``(x,)`` / a bare ``x`` without labels), or dicts of model
inputs with an optional ``"labels"`` entry (Hugging Face style). Under ``torchrun`` each rank
passes its shard (:func:`lava_spikedattn.distributed.shard`) and every rank gets the report of
the whole data set; it equals the 1-process report exactly (see
:mod:`lava_spikedattn.distributed`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lava_spikedattn import distributed
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.energy import (
    ACTIVITY_SUMS,
    EnergyReport,
    LayerActivity,
    Synapse,
    energy_report,
    layer_activity,
    synapse_sums,
)
from lava_spikedattn.engines import AnnEngine, Engine, Observer, SpikingNetwork
from lava_spikedattn.layers import ATTENTION_LAYERS
from lava_spikedattn.models import family_of

__all__ = [
    "DensityObserver",
    "EvaluationReport",
    "LayerReport",
    "MetricState",
    "RecordingEngine",
    "ann_logits",
    "batch_size",
    "evaluate",
    "split_batch",
    "to_device",
]

REPORT_FORMAT = "lava-spikedattn-evaluation"
REPORT_VERSION = 1
INPUT = "input"  # the spike statistics' entry of the bit-serial input code


# --- batches ---------------------------------------------------------------------------------------------
def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(model inputs, labels or None) of one loader batch.

    ``(x, y)`` → (x, y); ``(x,)`` or a tensor → (x, None); a dict → (the dict without
    ``"labels"``, its ``"labels"`` or None).
    """
    if isinstance(batch, Mapping):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise TypeError(f"a batch tuple must be (inputs, labels) or (inputs,), got {len(batch)} items")
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(f"a batch must be a tensor, an (inputs, labels) tuple or a dict, got {type(batch).__name__}")


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (also inside dicts, lists and tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def batch_size(inputs: Any) -> int:
    """Samples in model inputs: a tensor's first axis, or that of a dict's first tensor."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
    raise TypeError(f"model inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")


def ann_logits(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Logits of an ANN: through its family's ``ann_output`` when one is registered, else
    ``model(**inputs)`` for a dict and ``model(inputs)`` otherwise; ``.logits`` of a HF output."""
    try:
        family = family_of(model)
    except TypeError:  # no family matches: call it as its framework does
        family = None
    if family is not None:
        output = family.ann_output(model, inputs)
    else:
        output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return output if isinstance(output, torch.Tensor) else output.logits


# --- capturing activations --------------------------------------------------------------------------------
class RecordingEngine(Engine):
    """An :class:`Engine` that delegates to ``inner`` and passes the decoded output of every
    spike point to ``sink(name, value)``: ``input_layer`` and ``neuron`` under the layer's
    name, ``attention`` under ``<prefix>.stdp_av`` (the core's output layer).

    ``stats`` and ``bias_gain`` are the inner engine's, so the network computes exactly what it
    computes on ``inner``.
    """

    def __init__(self, inner: Engine, sink: Callable[[str, torch.Tensor], None]) -> None:
        self.inner = inner
        self.sink = sink
        self.bias_gain = inner.bias_gain
        self.code = getattr(inner, "code", None)
        self.stats = inner.stats

    # Extra arguments (padding masks) go to the inner engine untouched.
    def input_layer(self, name, x, linear, bias, *args, **kwargs):
        out = self.inner.input_layer(name, x, linear, bias, *args, **kwargs)
        self.sink(name, out)
        return out

    def neuron(self, name, x, signed=True, *args, **kwargs):
        out = self.inner.neuron(name, x, signed, *args, **kwargs)
        self.sink(name, out)
        return out

    def attention(self, prefix, q, k, v, bias, *args, **kwargs):
        out = self.inner.attention(prefix, q, k, v, bias, *args, **kwargs)
        self.sink(f"{prefix}.{ATTENTION_LAYERS[-1]}", out)
        return out


class DensityObserver(Observer):
    """Non-zero fraction of the folded ANN's output of every layer it observes, per batch.

    This is the energy model's ANN activation density s (spec §7.2): ReLU layers are sparse,
    signed ones dense. ``"input"`` is the input's non-zero fraction (e.g. black pixels).
    """

    def __init__(self) -> None:
        self.density: dict[str, float] = {}

    def observe(self, name: str, x: torch.Tensor, signed: bool, mask: torch.Tensor | None = None) -> None:
        nonzero = x != 0 if signed else x > 0
        self.density[name] = float(nonzero.double().mean())

    def observe_input(self, x: torch.Tensor) -> None:
        self.density[INPUT] = float((x != 0).double().mean())


# --- reducible metric state -------------------------------------------------------------------------------
@dataclass
class MetricState:
    """Evaluation counters that combine exactly over batches and ranks.

    ``ints``: exact counts. ``sums``: float64 partial sums, one per batch, added with
    ``math.fsum`` (correctly rounded: the total does not depend on the order, so N ranks give
    bitwise the 1-process total). ``mins``: minima. Keys are ``(layer or "", metric)``.
    """

    ints: dict[tuple[str, str], int] = field(default_factory=dict)
    sums: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    mins: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, key: tuple[str, str], value: int) -> None:
        self.ints[key] = self.ints.get(key, 0) + int(value)

    def add_sum(self, key: tuple[str, str], value: float) -> None:
        self.sums.setdefault(key, []).append(float(value))

    def add_min(self, key: tuple[str, str], value: float) -> None:
        self.mins[key] = min(self.mins.get(key, math.inf), float(value))

    def count(self, key: tuple[str, str]) -> int:
        return self.ints.get(key, 0)

    def total(self, key: tuple[str, str]) -> float:
        return math.fsum(self.sums.get(key, ()))

    @classmethod
    def merge(cls, states: Iterable[MetricState]) -> MetricState:
        merged = cls()
        for state in states:
            for key, value in state.ints.items():
                merged.add(key, value)
            for key, values in state.sums.items():
                merged.sums.setdefault(key, []).extend(values)
            for key, value in state.mins.items():
                merged.add_min(key, value)
        return merged


def _compare(state: MetricState, name: str, reference: torch.Tensor, decoded: torch.Tensor) -> None:
    """Per-sample cosine and squared errors of ``decoded`` against ``reference`` (batch first)."""
    if reference.shape != decoded.shape:
        raise RuntimeError(f"layer {name}: the spiking run produced shape {tuple(decoded.shape)}, the folded ANN "
                           f"{tuple(reference.shape)}")
    a = reference.detach().double().flatten(1)
    s = decoded.detach().double().flatten(1)
    dot, norm_a, norm_s = (a * s).sum(1), (a * a).sum(1), (s * s).sum(1)
    denominator = (norm_a * norm_s).sqrt()
    both_zero = (norm_a == 0) & (norm_s == 0)
    cosine = torch.where(denominator > 0, dot / denominator.clamp(min=1e-300),
                         both_zero.to(dot.dtype)).clamp(-1.0, 1.0)
    state.add((name, "compared"), a.shape[0])
    state.add_sum((name, "cosine"), cosine.sum())
    state.add_min((name, "cosine_min"), cosine.min())
    state.add_sum((name, "error_sq"), ((s - a) ** 2).sum())
    state.add_sum((name, "reference_sq"), norm_a.sum())


# --- the report -------------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    """One layer of an :class:`EvaluationReport` (totals over the data set).

    ``neurons``/``spikes``/``saturated``/``active_steps``: sums over samples of :class:`LayerStats` (for the
    ``input`` row, pixels / bits of the bit-serial code / pixels beyond its full scale; zero for
    the read-out, which integrates a membrane and never spikes). ``compared``: samples compared
    with the folded ANN (0 where the layer's output is not observed: fidelity fields are None).
    """

    name: str
    kind: str
    index: int | None
    neurons: int = 0
    spikes: int = 0
    saturated: int = 0
    active_steps: int = 0
    compared: int = 0
    cosine: float | None = None
    cosine_min: float | None = None
    rel_error: float | None = None

    @property
    def spike_rate(self) -> float | None:
        """Spikes per neuron (for ``input``: bits per pixel, up to T)."""
        return self.spikes / self.neurons if self.neurons else None


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate`. Accuracies are over ``labeled`` samples, agreement over all.

    ``layers``: ``input`` first (networks with a bit-serial input code), then the layer graph in
    execution order.
    ``meta``: what was evaluated (network, engine, code, ANN source, device, world size, batches).
    ``activity``: measured activity per synapse and sample (empty on the ``"ann"`` engine), the
    input of :meth:`energy`.
    """

    samples: int
    labeled: int
    ann_correct: int
    snn_correct: int
    agree: int
    layers: list[LayerReport]
    meta: dict[str, Any] = field(default_factory=dict)
    activity: list[LayerActivity] = field(default_factory=list)

    def energy(self, counting: str = "complete") -> EnergyReport:
        """ANN vs SNN energy per inference from the measured activity (spec §7)."""
        if not self.activity:
            raise ValueError("this report has no measured activity (evaluate a spiking engine)")
        return energy_report(self.activity, counting)

    @property
    def ann_accuracy(self) -> float | None:
        return self.ann_correct / self.labeled if self.labeled else None

    @property
    def snn_accuracy(self) -> float | None:
        return self.snn_correct / self.labeled if self.labeled else None

    @property
    def agreement(self) -> float | None:
        """Fraction of samples where the SNN predicts the ANN's class."""
        return self.agree / self.samples if self.samples else None

    def layer(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this report")

    @property
    def output(self) -> LayerReport | None:
        """The row that compares the logits (the last observed layer: the read-out)."""
        observed = [layer for layer in self.layers if layer.compared]
        return observed[-1] if observed else None

    @property
    def spikes(self) -> int:
        """Spikes of every neuron layer (the input code's bits not included)."""
        return sum(layer.spikes for layer in self.layers if layer.name != INPUT)

    @property
    def neurons(self) -> int:
        return sum(layer.neurons for layer in self.layers if layer.name != INPUT)

    @property
    def saturated(self) -> int:
        """Saturated values of every layer, the input code's included."""
        return sum(layer.saturated for layer in self.layers)

    # --- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain-JSON dict (``json.dumps`` it); derived numbers are included for readers,
        :meth:`from_json` recomputes them."""
        layers = [dict(asdict(layer), spike_rate=layer.spike_rate) for layer in self.layers]
        return {
            "format": REPORT_FORMAT, "version": REPORT_VERSION, "meta": self.meta,
            "samples": self.samples, "labeled": self.labeled, "ann_correct": self.ann_correct,
            "snn_correct": self.snn_correct, "agree": self.agree,
            "ann_accuracy": self.ann_accuracy, "snn_accuracy": self.snn_accuracy, "agreement": self.agreement,
            "spikes": self.spikes, "neurons": self.neurons, "saturated": self.saturated,
            "spikes_per_sample": self.spikes / self.samples if self.samples else None,
            "layers": layers,
            "activity": [asdict(layer) for layer in self.activity],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationReport:
        """Inverse of :meth:`to_json`; ``ValueError`` for another format or version."""
        if data.get("format") != REPORT_FORMAT or data.get("version") != REPORT_VERSION:
            raise ValueError(f"not a {REPORT_FORMAT} version {REPORT_VERSION} document "
                             f"(format={data.get('format')!r}, version={data.get('version')!r})")
        names = {f.name for f in fields(LayerReport)}
        layers = [LayerReport(**{key: value for key, value in layer.items() if key in names})
                  for layer in data["layers"]]
        activity = [LayerActivity(**layer) for layer in data.get("activity", [])]
        return cls(data["samples"], data["labeled"], data["ann_correct"], data["snn_correct"], data["agree"],
                   layers, dict(data["meta"]), activity)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        return cls.from_json(json.loads(Path(path).read_text()))

    # --- table ---------------------------------------------------------------------------------
    def table(self) -> str:
        """Summary lines and one row per layer, for a terminal."""
        meta = self.meta
        lines = [f"{meta.get('network', 'network')} on the {meta.get('engine', '?')} engine, {meta.get('code', '')}",
                 (f"{self.samples} samples ({self.labeled} labeled), {meta.get('batches', '?')} batches, "
                  f"{meta.get('world_size', 1)} process(es), device {meta.get('device', '?')}; "
                  f"ANN: {meta.get('ann', '?')}")]
        lines.append(f"ANN accuracy {_percent(self.ann_accuracy)}   SNN accuracy {_percent(self.snn_accuracy)}   "
                     f"prediction agreement {_percent(self.agreement)}")
        output = self.output
        if output is not None:
            lines.append(f"logits ({output.name}): cosine {_number(output.cosine)} (min {_number(output.cosine_min)}), "
                         f"relative error {_percent(output.rel_error)}")
        if self.samples:
            rate = self.spikes / self.neurons if self.neurons else 0.0
            lines.append(f"spikes per sample {self.spikes / self.samples:,.0f} of {self.neurons / self.samples:,.0f} "
                         f"neurons ({rate:.1%}); saturated values {self.saturated:,}")
        lines.append("")
        header = ("layer", "kind", "n", "neurons/sample", "spike rate", "saturated", "cosine", "min cos", "rel. err")
        rows = [header]
        for layer in self.layers:
            per_sample = f"{layer.neurons / self.samples:,.0f}" if self.samples and layer.neurons else "-"
            rate = layer.spike_rate
            rate_text = "-" if rate is None else (f"{rate:.2f} bits" if layer.name == INPUT else f"{rate:.1%}")
            rows.append((layer.name, layer.kind, "-" if layer.index is None else str(layer.index), per_sample,
                         rate_text, f"{layer.saturated:,}" if layer.neurons else "-", _number(layer.cosine),
                         _number(layer.cosine_min), _percent(layer.rel_error)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        lines.append("cosine / rel. err: decoded SNN output vs the folded ANN's at that layer ('-': not observed)")
        return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# --- evaluation -------------------------------------------------------------------------------------------
def evaluate(ann: nn.Module | None, snn: SpikingNetwork | ConvertedModel, loader: Iterable[Any], *,
             device: str | torch.device = "cpu", progress: bool = True, compare_layers: bool = True,
             distributed_reduce: bool | None = None) -> EvaluationReport:
    """Evaluate a converted network against its ANN on ``loader`` (see the module docstring).

    Args:
        ann: the prepared ANN (eval mode is used and the previous mode restored), or None to
            use the folded ANN (the converted network on the ``"ann"`` engine).
        snn: the spiking network (``cm.to_reference("closed")`` or ``"stepped"``), or a
            :class:`ConvertedModel` (run on the closed-form engine).
        loader: batches (``(x, y)``, ``x``, or dicts with ``"labels"``); under torchrun, this
            rank's shard.
        device: where to run; ``ann`` and ``snn`` are moved there (``Module.to``), every batch
            too. ``"cuda"`` without a GPU raises ``RuntimeError``.
        progress: a tqdm bar (rank 0 only).
        compare_layers: per-layer fidelity (holds one batch's activations); False skips it.
        distributed_reduce: combine the ranks' results (default: when a process group of more
            than one rank is initialised).
    Returns:
        :class:`EvaluationReport` of all the data (all ranks), the same on every rank.
    """
    if isinstance(snn, ConvertedModel):
        snn = snn.to_reference("closed")
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"snn must be a SpikingNetwork (ConvertedModel.to_reference()) or a ConvertedModel, "
                        f"got {type(snn).__name__}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False: "
                           "use device='cpu' or a machine with a GPU and a CUDA build of torch")
    snn.to(device)
    was_training = None
    if ann is not None:
        was_training = ann.training
        ann.to(device).eval()
    reduce = distributed.is_distributed() if distributed_reduce is None else distributed_reduce
    rank, world_size = distributed.world()
    state = MetricState()
    synapses: list[Synapse] = []
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = tqdm(loader, total=total, desc=f"evaluate ({snn.engine})", unit="batch",
               disable=not progress or rank != 0)
    try:
        with torch.no_grad():
            for batch in bar:
                synapses = _evaluate_batch(ann, snn, batch, device, compare_layers, state)
                samples = state.count(("", "samples"))
                bar.set_postfix(agreement=f"{state.count(('', 'agree')) / max(samples, 1):.3f}")
    finally:
        if ann is not None:
            ann.train(was_training)
    if reduce:
        state = MetricState.merge(distributed.gather_objects(state))
    meta = {
        "network": type(snn).__name__,
        "engine": snn.engine,
        "code": snn.code.describe() if snn.code is not None else "no spikes",
        "base": snn.code.base if snn.code is not None else None,
        "timesteps": snn.code.timesteps if snn.code is not None else None,
        "convention": snn.code.convention if snn.code is not None else None,
        "ann": "folded ANN (the converted weights on the 'ann' engine)" if ann is None
        else f"given model ({type(ann).__name__})",
        "device": str(device),
        "world_size": world_size if reduce else 1,
        "batches": state.count(("", "batches")),
    }
    return _build_report(snn, state, meta, synapses)


def _evaluate_batch(ann: nn.Module | None, snn: SpikingNetwork, batch: Any, device: torch.device,
                    compare_layers: bool, state: MetricState) -> list[Synapse]:
    """Add one batch to ``state``; returns the network's synapses (empty on the ANN engine)."""
    inputs, labels = split_batch(batch)
    inputs = to_device(inputs, device)
    n = batch_size(inputs)
    reference: dict[str, torch.Tensor] = {}
    density = DensityObserver()
    ann_engine: Engine = AnnEngine(density)
    if compare_layers:
        ann_engine = RecordingEngine(ann_engine, reference.__setitem__)
    folded_logits = snn.run(inputs, ann_engine)
    logits_ann = folded_logits if ann is None else ann_logits(ann, inputs)

    spiking = snn.make_engine()
    engine: Engine = spiking
    if compare_layers:
        def sink(name: str, decoded: torch.Tensor) -> None:
            if name not in reference:
                raise RuntimeError(f"the spiking run reported layer {name!r}, which the folded-ANN run did not")
            _compare(state, name, reference.pop(name), decoded)

        engine = RecordingEngine(spiking, sink)
    logits_snn = snn.run(inputs, engine)
    if compare_layers:
        _compare(state, _readout_name(snn), folded_logits, logits_snn)

    state.add(("", "batches"), 1)
    state.add(("", "samples"), n)
    predicted_ann, predicted_snn = logits_ann.argmax(-1), logits_snn.argmax(-1)
    state.add(("", "agree"), (predicted_ann == predicted_snn).sum())
    if labels is not None:
        labels = torch.as_tensor(labels).to(predicted_ann.device)
        state.add(("", "labeled"), labels.numel())
        state.add(("", "ann_correct"), (predicted_ann == labels).sum())
        state.add(("", "snn_correct"), (predicted_snn == labels).sum())
    for name, stats in spiking.stats.items():
        state.add((name, "neurons"), stats.neurons)
        state.add((name, "spikes"), stats.spikes)
        state.add((name, "saturated"), stats.saturated)
        state.add((name, "active_steps"), stats.active_steps)
    if snn.engine == "ann":
        return []
    synapses = snn.synapses(inputs)
    for synapse in synapses:
        sums = synapse_sums(synapse, spiking.stats, density.density, n, snn.code.timesteps)
        for key, value in sums.items():
            state.add_sum((synapse.name, f"energy.{key}"), value)
    return synapses


def _readout_name(snn: SpikingNetwork) -> str:
    readouts = [layer.name for layer in snn.layers if layer.kind == "readout"]
    return readouts[-1] if readouts else "logits"


def _build_report(snn: SpikingNetwork, state: MetricState, meta: dict[str, Any],
                  synapses: list[Synapse]) -> EvaluationReport:
    rows = [(INPUT, "input", None)] + [(layer.name, layer.kind, layer.index) for layer in snn.layers]
    if _readout_name(snn) == "logits":
        rows.append(("logits", "readout", None))
    layers = []
    for name, kind, index in rows:
        if name == INPUT and not state.count((INPUT, "neurons")):
            continue  # no bit-serial input code (BERT's embedding is computed on the host)
        report = LayerReport(name, kind, index, state.count((name, "neurons")), state.count((name, "spikes")),
                             state.count((name, "saturated")), state.count((name, "active_steps")),
                             state.count((name, "compared")))
        if report.compared:
            report.cosine = state.total((name, "cosine")) / report.compared
            report.cosine_min = state.mins[(name, "cosine_min")]
            error_sq, reference_sq = state.total((name, "error_sq")), state.total((name, "reference_sq"))
            report.rel_error = math.sqrt(error_sq / reference_sq) if reference_sq > 0 else (
                0.0 if error_sq == 0 else None)
        layers.append(report)
    samples = state.count(("", "samples"))
    activity = [layer_activity(synapse, {key: state.total((synapse.name, f"energy.{key}")) for key in ACTIVITY_SUMS},
                               samples) for synapse in synapses]
    return EvaluationReport(samples, state.count(("", "labeled")), state.count(("", "ann_correct")),
                            state.count(("", "snn_correct")), state.count(("", "agree")), layers, meta, activity)
