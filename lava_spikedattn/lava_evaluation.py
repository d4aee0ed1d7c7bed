"""A converted model's Lava network checked against its reference engine over a data set.

Each batch runs through the Lava network (:class:`~lava_spikedattn.builder.LavaNetwork`, fused or
decomposed, float or fixed point) and through the closed-form engine in float64; the result
counts the samples where both give the same class, the largest logit difference, the Lava
accuracy on labelled data, and for the integer network whether Lava equals the in-process
integer simulation bit for bit (the port's own oracle) and which Processes clipped values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

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

    def to_json(self) -> dict[str, Any]:
        result = asdict(self)
        if not self.fixed_point:
            for key in ("fixed_point", "equal_to_simulation", "clips"):
                result.pop(key)
        return result


def evaluate_lava(cm: ConvertedModel, batches: Iterable[Any], *, mode: str = "fused", fixed: bool = False,
                  progress: bool = True) -> LavaEvaluation:
    """Run every batch of ``batches`` (model inputs, optionally with labels) through the Lava
    network of ``cm`` and compare it with the closed-form engine (module docstring)."""
    fmt = FixedFormat() if fixed else None
    net = build_lava_network(cm, mode=mode, fixed_format=fmt)
    simulator = build_lava_network(cm, fixed_format=fmt) if fixed else None
    reference = cm.to_reference("closed").double()
    result = LavaEvaluation(fixed_point=fixed)
    for batch in tqdm(batches, desc="Lava", unit="batch", disable=not progress):
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
    stats = net.stats()
    result.processes, result.neurons, result.synapses = stats["processes"], stats["neurons"], stats["synapses"]
    return result
