"""Stepped vs closed-form reference engine vs float attention, on one Swin-T stage-1 attention.

64 windows × 3 heads × 49 tokens × head dim 32, T=40, B=1.15 (exact convention), float64.
Usage: python benchmarks/bench_engines.py [--repeat 3]
"""

from __future__ import annotations

import argparse

import torch
from common import best_time, report

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.reference import functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--convention", choices=("exact", "official"), default="exact")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    windows, heads, tokens, dim = 64, 3, 49, 32
    q, k, v = (torch.randn(windows, heads, tokens, dim, dtype=torch.float64, generator=g) for _ in range(3))
    bias = 0.5 * torch.randn(heads, tokens, tokens, dtype=torch.float64, generator=g)
    logits = q @ k.transpose(-1, -2) * dim**-0.5 + bias
    reference = torch.softmax(logits, -1) @ v
    code = PhaseCode(1.15, 40, args.convention)
    scales = (q.abs().amax(-1, keepdim=True), k.abs().amax(-1, keepdim=True), v.abs().amax(-1, keepdim=True),
              logits.abs().amax(-1, keepdim=True), reference.abs().amax(-1, keepdim=True))

    def float_attention():
        return torch.softmax(q @ k.transpose(-1, -2) * dim**-0.5 + bias, -1) @ v

    def spiking(engine):
        return lambda: F.spiking_attention(q, k, v, code, *scales, bias=bias, engine=engine)

    rows = []
    base = best_time(float_attention, args.repeat)
    outputs = {"closed": spiking("closed")(), "stepped": spiking("stepped")()}
    for name, fn in (("float attention", float_attention), ("closed form", spiking("closed")),
                     ("stepped (5T steps)", spiking("stepped"))):
        seconds = base if name == "float attention" else best_time(fn, args.repeat)
        out = fn() if name == "float attention" else outputs["closed" if "closed" in name else "stepped"]
        rel = ((out - reference).norm() / reference.norm()).item()
        rows.append({"engine": name, "ms": seconds * 1e3, "x float": seconds / base, "rel. error vs float": rel})
    agree = (outputs["closed"] - outputs["stepped"]).abs().max().item()
    print(f"Swin-T stage-1 attention: {windows} windows x {heads} heads x {tokens} tokens x d={dim}, "
          f"{code.describe()}; max |closed - stepped| = {agree:.2e}\n")
    report("bench_engines", rows, {"shape": [windows, heads, tokens, dim], "base": code.base,
                                   "timesteps": code.timesteps, "convention": code.convention,
                                   "max_abs_closed_minus_stepped": agree})


if __name__ == "__main__":
    main()
