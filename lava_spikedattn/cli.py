"""The ``spikedattn`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.reference import functional as F

SHOWCASE_VALUES = (1.0, 0.8, 0.5, 0.3, 0.1, 0.01, 0.003, -0.3, -0.7)
SHOWCASE_CODES = ((1.15, 40), (1.4, 16), (2.0, 8))


def phase_coding_table(values=SHOWCASE_VALUES, codes=SHOWCASE_CODES, convention: str = "exact") -> str:
    """Table of fire steps and decoded values of a few values (scale 1) under a few codes."""
    x = torch.tensor(values, dtype=torch.float64)
    lines = []
    for base, steps in codes:
        code = PhaseCode(base, steps, convention)
        k = code.fire_step(x, 1.0)
        q = code.quantize(x, 1.0)
        lines.append(f"\n{code.describe()}")
        lines.append(f"{'value':>9} {'fire step':>9} {'decoded':>10} {'rel. error':>10}")
        for value, step, decoded in zip(x.tolist(), k.tolist(), q.tolist()):
            error = abs(decoded - value) / abs(value) if value else 0.0
            shown = "silent" if step < 0 else str(step)
            lines.append(f"{value:9.4f} {shown:>9} {decoded:10.6f} {error:10.2%}")
    return "\n".join(lines)


def attention_showcase(seed: int = 0) -> str:
    """One WOSS attention row on both engines next to float softmax attention."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 6, dtype=torch.float64, generator=g) * 1.5
    values = torch.randn(6, 4, dtype=torch.float64, generator=g)
    code = PhaseCode(1.15, 40)
    scale = logits.abs().amax(-1, keepdim=True)
    lines = [f"\nWOSS softmax, {code.describe()}"]
    lines.append("float softmax : " + " ".join(f"{p:.4f}" for p in torch.softmax(logits, -1)[0].tolist()))
    for engine in ("closed", "stepped"):
        p = F.woss_softmax(logits, code, scale, engine=engine)
        lines.append(f"WOSS {engine:8s}: " + " ".join(f"{v:.4f}" for v in p[0].tolist()))
    out = F.woss_attention(logits, values, code, scale, values.abs().max(), 2.0, engine="stepped")
    lines.append("softmax·V float : " + " ".join(f"{v:+.4f}" for v in (torch.softmax(logits, -1) @ values)[0].tolist()))
    lines.append("softmax·V spikes: " + " ".join(f"{v:+.4f}" for v in out[0].tolist()))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    print("One-spike phase coding: a neuron fires once; step k means ±scale·B^-k.")
    print(phase_coding_table(convention=args.convention))
    print(attention_showcase())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikedattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="phase-coding and WOSS attention showcase on the reference engine")
    demo.add_argument("--convention", choices=("exact", "official"), default="exact",
                      help="level convention: exact (top level = scale) or official (the release's)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
