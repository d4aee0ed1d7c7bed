"""Converted Swin-T, ViT-S and BERT-base: ANN forward vs the SNN on the closed-form and time-stepped engines.

Random init (``pretrained=False``), prepared (``prepare_swin`` / ``prepare_vit`` / ``prepare_bert``),
calibrated on one random batch, exact convention, float32 (the stepped engine simulates in float64
inside):

* Swin-T: timm ``swin_tiny_patch4_window7_224``, 224x224 images, B=1.15, T=40 (the paper's);
* ViT-S: timm ``vit_small_patch16_224``, 224x224 images (197 tokens), B=1.15, T=40 (Swin's code);
* BERT-base: ``BertForSequenceClassification(BertConfig())``, 128 tokens, B=1.4, T=16 (the
  paper's), run only when ``lava_spikedattn.models.bert`` exists.

Seconds per image (sequence) and the ratio to the ANN at the same batch size. The stepped engine
runs ``--stepped-batch`` inputs (default 1: it takes minutes per image on a CPU), so its ratio
is to the ANN at that batch size. The released implementation needs about 56x the ANN's time
on a GPU (issue 4).

Usage: python benchmarks/bench_convert.py [--batch 8] [--repeat 3] [--stepped-batch 1]
                                           [--no-stepped] [--no-bert] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import best_time, report

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert

RELEASED_RATIO = 56.0  # released SpikedAttention vs its ANN, GPU (issue 4)


def _once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_best(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Best wall time of each function over ``repeat`` rounds that run them in turn (after one
    warm-up call each). Interleaving exposes the ANN and the SNN to the same background load on
    a shared machine, so their ratio is more stable than that of back-to-back ``best_time``s."""
    for fn in fns.values():
        fn()
    best = {name: math.inf for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], _once(fn))
    return best


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().cpu(), b.double().cpu(), dim=-1).mean())


def _slice(inputs: Any, n: int) -> Any:
    return {k: v[:n] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[:n]


def bench_model(name: str, model: torch.nn.Module, inputs: Any, ann_call: Callable[[Any], torch.Tensor],
                code: PhaseCode, args: argparse.Namespace) -> list[dict]:
    batch = args.batch
    with torch.no_grad():
        start = time.perf_counter()
        cm = convert(model, [inputs], code)
        convert_seconds = time.perf_counter() - start
        ann_logits = ann_call(inputs)
        closed = cm.to_reference("closed").to(args.device)
        closed_logits = closed(inputs)
        times = interleaved_best({"ann": lambda: ann_call(inputs), "closed": lambda: closed(inputs)}, args.repeat)
        ann_seconds, closed_seconds = times["ann"], times["closed"]
    print(f"{name}: converted in {convert_seconds:.1f} s; {cm.summary()}")
    rows = [
        {"model": name, "engine": "ANN (prepared)", "batch": batch, "s/image": ann_seconds / batch,
         "x ANN": 1.0, "cos vs ANN": 1.0},
        {"model": name, "engine": "SNN closed form", "batch": batch, "s/image": closed_seconds / batch,
         "x ANN": closed_seconds / ann_seconds, "cos vs ANN": _cosine(closed_logits, ann_logits)},
    ]
    if not args.no_stepped:
        n = min(args.stepped_batch, batch)
        small = _slice(inputs, n)
        stepped = cm.to_reference("stepped").to(args.device)
        with torch.no_grad():
            logits = {}
            stepped_seconds = _once(lambda: logits.setdefault("s", stepped(small)))
            ann_small = best_time(lambda: ann_call(small), args.repeat) if n != batch else ann_seconds
        difference = float((logits["s"].double() - closed_logits[:n].double()).abs().max())
        print(f"{name}: stepped (float64 inside) vs float32 closed form on {n} input(s): max |logit difference| "
              f"= {difference:.2e} of max |logit| {float(closed_logits[:n].abs().max()):.2f}")
        if n != batch:
            rows.append({"model": name, "engine": "ANN (prepared)", "batch": n, "s/image": ann_small / n,
                         "x ANN": 1.0, "cos vs ANN": 1.0})
        rows.append({"model": name, "engine": f"SNN stepped ({n} input{'s' if n > 1 else ''}, one run)", "batch": n,
                     "s/image": stepped_seconds / n, "x ANN": stepped_seconds / ann_small,
                     "cos vs ANN": _cosine(logits["s"], ann_logits[:n])})
    return rows


def swin_rows(args: argparse.Namespace) -> list[dict]:
    import timm

    from lava_spikedattn.ann import prepare_swin

    torch.manual_seed(0)
    model = prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)).eval().to(args.device)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(args.device)
    return bench_model("Swin-T", model, x, model, PhaseCode(1.15, 40), args)


def vit_rows(args: argparse.Namespace) -> list[dict]:
    import timm

    from lava_spikedattn.ann import prepare_vit

    torch.manual_seed(0)
    model = prepare_vit(timm.create_model("vit_small_patch16_224", pretrained=False)).eval().to(args.device)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(args.device)
    return bench_model("ViT-S", model, x, model, PhaseCode(1.15, 40), args)


def bert_rows(args: argparse.Namespace) -> list[dict]:
    from transformers import BertConfig, BertForSequenceClassification

    from lava_spikedattn.ann import prepare_bert

    torch.manual_seed(0)
    model = prepare_bert(BertForSequenceClassification(BertConfig(num_labels=2))).eval().to(args.device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, model.config.vocab_size, (args.batch, 128), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    inputs = {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device)}
    return bench_model("BERT-base", model, inputs, lambda batch: model(**batch).logits, PhaseCode(1.4, 16), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="batch of the ANN and closed-form runs (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats after a warm-up (best is kept)")
    parser.add_argument("--stepped-batch", type=int, default=1, help="inputs for the stepped engine (one run)")
    parser.add_argument("--no-stepped", action="store_true", help="skip the time-stepped engine")
    parser.add_argument("--no-bert", action="store_true", help="skip BERT-base")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    rows = swin_rows(args) + vit_rows(args)
    notes = []
    if args.no_bert:
        notes.append("BERT-base skipped (--no-bert)")
    elif importlib.util.find_spec("lava_spikedattn.models.bert") is None:
        notes.append("BERT-base skipped: lava_spikedattn.models.bert does not exist yet")
    else:
        rows += bert_rows(args)
    print()
    for note in notes:
        print(note)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; the released SpikedAttention needs about {RELEASED_RATIO:g}x its ANN's time on a GPU. "
          "Ours ('x ANN' below, same batch size):\n")
    report("bench_convert", rows, {"device": device, "batch": args.batch, "stepped_batch": args.stepped_batch,
                                   "released_ratio_gpu": RELEASED_RATIO, "notes": notes,
                                   "load_average": os.getloadavg(),
                                   "codes": {"Swin-T": "B=1.15 T=40 exact", "ViT-S": "B=1.15 T=40 exact",
                                             "BERT-base": "B=1.4 T=16 exact"}})


if __name__ == "__main__":
    main()
