"""The Lava attention core (``wiring.attention_core``) at three sizes: process count and wall times.

Sizes (tokens, heads, head dim): (8, 1, 8), (16, 3, 8), (49, 3, 32) — the last is one Swin-T
stage-1 window — with 1 window, T=40, B=1.15 (exact convention), 5T = 200 steps per run.

Per size and repeat a fresh graph is built (Lava compiles a graph once) and run with
``run_processes(..., timings=...)``; the table gives the best of ``--repeat`` runs (after one
warm-up run that pays the one-off imports) for every phase:

* build: creating the Processes and connecting them (``attention_core``);
* compile: Lava's compiler; init: building the runtime and forking one worker per Process;
* run: the 5T steps (steps/s = 5T / run); stop: Lava's stop protocol and teardown;
* total: build + compile + init + run + stop.

The decoded output is compared with the closed form (``reference.closed.spiking_attention``):
max |Lava − closed| must be float64 rounding; ``rel. err vs float`` is the quantisation error
of the phase code against float softmax attention.

Usage: python benchmarks/bench_lava_attention.py [--repeat 3] [--timesteps 40]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import report

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.reference import closed
from lava_spikedattn.runtime import run_processes
from lava_spikedattn.wiring import attention_core

SIZES = ((8, 1, 8), (16, 3, 8), (49, 3, 32))  # (tokens, heads, head dim)
PHASES = ("build_s", "compile_s", "init_s", "run_s", "stop_s")


def inputs(tokens: int, heads: int, dim: int, seed: int = 0):
    """q, k, v (1, heads, tokens, dim), a relative-position-style bias, calibrated per-row scales."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, tokens, dim, dtype=torch.float64, generator=g) for _ in range(3))
    bias = 0.3 * torch.randn(heads, tokens, tokens, dtype=torch.float64, generator=g)
    logits = q @ k.transpose(-1, -2) * dim**-0.5 + bias
    reference = torch.softmax(logits, -1) @ v

    def scale(x):
        return x.abs().amax(-1, keepdim=True)

    return (q, k, v), (scale(q), scale(k), scale(v), scale(logits), scale(reference)), bias, reference


def run_once(q, k, v, code: PhaseCode, scales, bias) -> tuple[dict, int, torch.Tensor]:
    """Build and run one attention core; phase timings, process count, decoded output."""
    start = time.perf_counter()
    core = attention_core(q, k, v, code, *scales, bias=bias)
    timings = {"build_s": time.perf_counter() - start}
    records = run_processes(core.sinks, core.num_steps, timeout=600, timings=timings)
    out = code.decode_spike_train(records["out"], core.processes["out"].fire_start)
    return timings, core.process_count, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=40)
    parser.add_argument("--base", type=float, default=1.15)
    parser.add_argument("--convention", choices=("exact", "official"), default="exact")
    args = parser.parse_args()
    code = PhaseCode(args.base, args.timesteps, args.convention)
    steps = 5 * code.timesteps
    print(f"Lava attention core, 1 window, {code.describe()}, {steps} steps per run, "
          f"{os.cpu_count()} CPU(s), best of {args.repeat} after 1 warm-up\n")
    rows = []
    for tokens, heads, dim in SIZES:
        (q, k, v), scales, bias, reference = inputs(tokens, heads, dim)
        expected = closed.spiking_attention(q, k, v, code, *scales, bias=bias)
        best = {phase: float("inf") for phase in PHASES + ("total_s",)}
        worst_gap = 0.0
        for _ in range(args.repeat + 1):  # the first run is the warm-up
            timings, processes, out = run_once(q, k, v, code, scales, bias)
            worst_gap = max(worst_gap, (out - expected).abs().max().item())
            timings["total_s"] = sum(timings[p] for p in PHASES)
            for phase, seconds in timings.items():
                best[phase] = min(best[phase], seconds)
            rel = ((out - reference).norm() / reference.norm()).item()
        rows.append({
            "tokens x heads x dim": f"{tokens}x{heads}x{dim}",
            "processes": processes,
            **{phase: best[phase] for phase in PHASES},
            "total_s": best["total_s"],
            "steps/s": steps / best["run_s"],
            "max |lava-closed|": worst_gap,
            "rel. err vs float": rel,
        })
    report("bench_lava_attention", rows, {
        "sizes": [list(s) for s in SIZES], "windows": 1, "base": code.base, "timesteps": code.timesteps,
        "convention": code.convention, "steps": steps, "repeat": args.repeat, "cpus": os.cpu_count(),
        "timing": "best of repeat runs after one warm-up, per phase; fresh graph per run",
    })


if __name__ == "__main__":
    main()
