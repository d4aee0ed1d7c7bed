"""The fresh-process measurement behind ``bench_lava_network.py --bars``: a converted model through
Lava and through ``LavaNetwork.simulate``, as a user's script runs it.

It imports only what running a converted model needs (torch, the converted-model file, the Lava
builder), not the benchmark's ANN-side libraries (timm, transformers): Lava forks every worker
from this process, and a fork costs time in proportion to the memory the process holds. Timed per
mode: the first input (build, compile, start the workers, run, stop) and, per input, the other
inputs through the same compiled graph (with the first input's phases: build, compile, init = forking
the workers, run, stop); then simulate (build and step in process) on the first
input; then the largest relative logit difference of any of them against the stepped reference.

Usage: python benchmarks/lava_vs_simulate.py FOLDER MODES  (FOLDER holds ``model`` and
``inputs.pt``; MODES is comma-separated; writes FOLDER/result.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.converted_model import ConvertedModel


def measure(folder: Path, modes: list[str]) -> dict:
    cm, inputs = ConvertedModel.load(folder / "model"), torch.load(folder / "inputs.pt")
    seconds, phases, logits = {}, {}, []
    for mode in modes:
        start, phases[mode] = time.perf_counter(), {}
        with build_lava_network(cm, mode=mode) as net:
            logits.append(net.run(inputs[0], timings=phases[mode]))
            first_run = time.perf_counter() - start
            start = time.perf_counter()
            logits.extend(net.run(x) for x in inputs[1:])
            seconds[f"{mode} compiled, per input"] = (time.perf_counter() - start) / max(1, len(inputs) - 1)
            start = time.perf_counter()
        seconds[f"{mode} first input"] = first_run + time.perf_counter() - start  # + stop
    start = time.perf_counter()
    logits.append(build_lava_network(cm).simulate(inputs[0]))
    seconds["simulate"] = time.perf_counter() - start
    stepped = cm.to_reference("stepped").double()
    with torch.no_grad():
        expected = [stepped(x if isinstance(x, dict) else x.double()) for x in inputs]
    expected = expected * len(modes) + expected[:1]
    worst = max(((got - want).abs().max() / want.abs().max()).item()
                for got, want in zip(logits, expected, strict=True))
    return {"seconds": seconds, "first_input_phases": phases, "max_rel_diff": worst}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    (folder / "result.json").write_text(json.dumps(measure(folder, sys.argv[2].split(","))))
