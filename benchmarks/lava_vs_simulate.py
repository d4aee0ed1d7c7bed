"""The fresh-process measurement behind ``bench_lava_network.py --bars``: a converted model through
Lava and through ``LavaNetwork.simulate``, as a user's script runs it.

It imports only what running a converted model needs (torch, the converted-model file, the Lava
builder), not the benchmark's ANN-side libraries (timm, transformers): Lava forks every worker
from this process, and a fork costs time in proportion to the memory the process holds.

Timed per mode: the first input (build, compile, start the workers, run, stop; its phases are
recorded too: build, compile, init = forking the workers, run, stop) and, per input, the other
inputs through the same compiled graph. Then simulate (build and step in process) on the first
input; then Lava's runtime floor for the same number of processes (:func:`runtime_floor`); then
the largest relative logit difference of any of them against the stepped reference.

Usage: python benchmarks/lava_vs_simulate.py FOLDER MODES  (FOLDER holds ``model`` and
``inputs.pt``; MODES is comma-separated; writes FOLDER/result.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.runtime import LavaSession


def runtime_floor(processes: int, steps: int) -> dict[str, float]:
    """Phases of the same number of Lava processes doing nothing but pass one number along a chain
    (SpikeSource, DelayLines, SpikeSink) for ``steps`` steps: what Lava's runtime itself costs a
    first input (compile, fork, step, stop) in this process, with no model to build or compute."""
    timings: dict[str, float] = {}
    port = SpikeSource(data=np.zeros((steps, 1))).s_out
    for _ in range(processes - 2):
        line = DelayLine(shape=(1,), delay=1)
        port.connect(line.s_in)
        port = line.a_out
    sink = SpikeSink(shape=(1,), num_steps=steps)
    port.connect(sink.a_in)
    with LavaSession([sink], timings=timings) as session:
        session.run(steps, timings=timings)
    return timings


def measure(folder: Path, modes: list[str]) -> dict:
    cm, inputs = ConvertedModel.load(folder / "model"), torch.load(folder / "inputs.pt")
    seconds, phases, logits, floor = {}, {}, [], {}
    for mode in modes:
        start, phases[mode] = time.perf_counter(), {}
        with build_lava_network(cm, mode=mode) as net:
            logits.append(net.run(inputs[0], timings=phases[mode]))
            floor[mode] = net.stats()["processes"]
            first_run = time.perf_counter() - start
            start = time.perf_counter()
            logits.extend(net.run(x) for x in inputs[1:])
            seconds[f"{mode} compiled, per input"] = (time.perf_counter() - start) / max(1, len(inputs) - 1)
            start = time.perf_counter()
        seconds[f"{mode} first input"] = first_run + time.perf_counter() - start  # + stop
    start = time.perf_counter()
    logits.append(build_lava_network(cm).simulate(inputs[0]))
    seconds["simulate"] = time.perf_counter() - start
    floor = {mode: runtime_floor(processes, cm.steps_per_inference) for mode, processes in floor.items()}
    stepped = cm.to_reference("stepped").double()
    with torch.no_grad():
        expected = [stepped(x if isinstance(x, dict) else x.double()) for x in inputs]
    expected = expected * len(modes) + expected[:1]
    worst = max(((got - want).abs().max() / want.abs().max()).item()
                for got, want in zip(logits, expected, strict=True))
    return {"seconds": seconds, "first_input_phases": phases, "runtime_floor_phases": floor, "max_rel_diff": worst}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    (folder / "result.json").write_text(json.dumps(measure(folder, sys.argv[2].split(","))))
