"""A converted model's Lava network checked against its reference engine over a data set.

Each batch runs through the Lava network (:class:`~lava_spikedattn.builder.LavaNetwork`, fused or
decomposed, float or fixed point) and through the closed-form engine in float64; the result
counts the samples where both give the same class, the largest logit difference, the Lava
accuracy on labelled data, and for the integer network whether Lava equals the in-process
integer simulation bit for bit (the port's own oracle) and which Processes clipped values.

Under ``torchrun`` every rank runs its shard of the batches (:func:`distributed.shard`: batches
r, r+N, ...) through its own Lava graph, and the counts are combined exactly (integer sums, the
maximum of the differences, the graph size of the run that took the last batch), so N ranks
report what one process reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from lava_spikedattn import distributed
from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.evaluate import split_batch
from lava_spikedattn.fixed_point import FixedFormat

__all__ = ["LavaEvaluation", "evaluate_lava"]


@dataclass
class LavaEvaluation:
    """Counts of :func:`evaluate_lava`, summed over the batches."""

    samples: int = 0
    same_class: int = 0  # same arg-max as the float closed-form reference engine
    max_relative_difference: float = 0.0  # max |Lava − reference| / max |reference| over batches
    labeled: int = 0
    correct: int = 0
    steps_simulated: int = 0
    processes: int = 0
    neurons: int = 0
    synapses: int = 0
    fixed_point: bool = False
    equal_to_simulation: int = 0  # fixed point: samples whose logits equal the in-process simulation's
    clips: dict[str, int] = field(default_factory=dict)  # fixed point: clipped values per Process

    def add(self, other: LavaEvaluation) -> None:
        """Add another shard's counts to these (graph sizes stay: see :func:`evaluate_lava`)."""
        for name in ("samples", "same_class", "labeled", "correct", "steps_simulated", "equal_to_simulation"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_relative_difference = max(self.max_relative_difference, other.max_relative_difference)
        for name, count in other.clips.items():
            self.clips[name] = self.clips.get(name, 0) + count

    def to_json(self) -> dict[str, Any]:
        result = asdict(self)
        if not self.fixed_point:
            for key in ("fixed_point", "equal_to_simulation", "clips"):
                result.pop(key)
        return result


def evaluate_lava(cm: ConvertedModel, batches: Iterable[Any], *, mode: str = "fused", fixed: bool = False,
                  progress: bool = True) -> LavaEvaluation:
    """Run every batch of ``batches`` (model inputs, optionally with labels) through the Lava
    network of ``cm`` and compare it with the closed-form engine (module docstring); under
    ``torchrun`` this rank's shard, combined over the ranks. ``progress``: a bar (with the time
    left) on rank 0."""
    fmt = FixedFormat() if fixed else None
    net = build_lava_network(cm, mode=mode, fixed_format=fmt)
    simulator = build_lava_network(cm, fixed_format=fmt) if fixed else None
    reference = cm.to_reference("closed").double()
    rank, world_size = distributed.world()
    result = LavaEvaluation(fixed_point=fixed)
    last_batch = -1  # index (over all ranks) of the last batch this rank ran
    bar = tqdm(distributed.shard(batches), desc="Lava", unit="batch", disable=not progress or rank != 0)
    with net:  # one compiled graph for every batch of one size; its workers stop at the end
        for i, batch in enumerate(bar):
            inputs, labels = split_batch(batch)
            logits = net.run(inputs)
            expected = reference(inputs if isinstance(inputs, dict) else inputs.double())
            if fixed:  # the same integer graph stepped in this process must give the same logits
                for name, count in net.stats()["clips"].items():  # this batch's run
                    result.clips[name] = result.clips.get(name, 0) + count
                result.equal_to_simulation += int((logits == simulator.simulate(inputs)).all(-1).sum())
            result.same_class += int((logits.argmax(-1) == expected.argmax(-1)).sum())
            difference = float((logits - expected).abs().max() / expected.abs().max().clamp(min=1e-300))
            result.max_relative_difference = max(result.max_relative_difference, difference)
            result.samples += len(logits)
            result.steps_simulated += len(logits) * net.steps_per_sample
            if labels is not None:
                result.labeled += len(labels)
                result.correct += int((logits.argmax(-1) == torch.as_tensor(labels)).sum())
            last_batch = rank + i * world_size  # shard() gives this rank batches rank, rank + N, ...
        if last_batch >= 0:
            stats = net.stats()
            result.processes, result.neurons, result.synapses = stats["processes"], stats["neurons"], stats["synapses"]
    shards = distributed.gather_objects((last_batch, result))
    combined = max(shards, key=lambda shard: shard[0])[1]  # its graph size: the run of the last batch
    total = LavaEvaluation(fixed_point=fixed, processes=combined.processes, neurons=combined.neurons,
                           synapses=combined.synapses)
    for _, part in shards:
        total.add(part)
    return total
