"""Accuracy of the Loihi 2 port: the shipped model as an integer (fixed_pt) network vs float vs the ANN.

Model: the shipped ``weights/swin_fashion_mnist`` (B = 1.29, T = 24, exact) and its ANN; data:
the Fashion-MNIST test split (``--limit`` images, default all 10,000).

Rows (every one over the same images):

* ANN: the trained timm Swin;
* float SNN: the closed-form reference engine (what Lava's floating_pt network computes; logits
  equal to 1e-16, tests/test_builder.py);
* float SNN, 8-bit weights: the same with every weight tensor rounded to 8-bit mantissas with one
  exponent (``loihi.quantize_for_loihi``): what weight quantisation alone costs;
* integer port: the whole network in fixed point (``build_lava_network(cm, fixed_format=
  FixedFormat())``): 24-bit state, 8-bit weights, 16-bit payloads, 40-bit synaptic accumulators,
  48-bit products, division-free normalisation, integer convert neuron; run in this process by
  ``LavaNetwork.simulate`` (the Lava graph's fixed_pt updates stepped without the Lava runtime)
  in batches of ``--batch``;
* (not a row) 32-bit accumulators: the first ``--narrow`` images also through the integer network
  with ``FixedFormat(payload_bits=13, accumulator_bits=32)``, the widest payload whose trace
  products fit a 32-bit accumulator (|Σ of 3·16 products| < 3·16·2^24 < 2^31; 16-bit payloads
  need 37 bits): its clipped values and its agreement with the default integer port;
* Lava fixed_pt: the first ``--lava`` images through the Lava runtime (fused blocks), one at a
  time; its logits must equal the in-process ones of the same images run one at a time, bit for
  bit (max |difference| reported).

Columns: accuracy, agreement with the ANN's class, same class as the float SNN, logit difference
‖logits − float SNN‖/‖float SNN‖, and for the integer port the clipped values (saturated, never
wrapped: every state, accumulator and product against its ``FixedFormat`` width) and the seconds
per image.

Usage: python benchmarks/bench_loihi_port.py [--limit 10000] [--batch 200] [--lava 4] [--narrow 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import report

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.checkpoint import load_ann_checkpoint
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.data import fit_images, load_image_dataset
from lava_spikedattn.demo import DATASET, DEFAULT_ANN, DEFAULT_MODEL
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.loihi import quantize_for_loihi


def in_batches(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--batch", type=int, default=200, help="images per in-process integer run")
    parser.add_argument("--lava", type=int, default=4, help="images through the Lava fixed_pt runtime")
    parser.add_argument("--narrow", type=int, default=1000, help="images through the 32-bit-accumulator network")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cm = ConvertedModel.load(DEFAULT_MODEL)
    ann, _ = load_ann_checkpoint(DEFAULT_ANN)
    arch = cm.config["architecture"]
    images, labels = load_image_dataset(DATASET, "test", args.limit)
    x = fit_images(images, arch["img_size"], arch["in_chans"])
    fmt = FixedFormat()
    narrow = FixedFormat(payload_bits=13, accumulator_bits=32)

    with torch.no_grad():
        logits = {"ANN": in_batches(lambda c: ann(c.float()).double(), x, 500)}
        logits["float SNN"] = in_batches(cm.to_reference("closed").double(), x.double(), 500)
        logits["float SNN, 8-bit weights"] = in_batches(
            quantize_for_loihi(cm, fmt).quantized.to_reference("closed").double(), x.double(), 500)
    clips: dict[str, dict[str, int]] = {}
    for label, integer_format, images in (("default widths", fmt, x), ("32-bit accumulators", narrow, x[:args.narrow])):
        net = build_lava_network(cm, fixed_format=integer_format)
        clips[label] = {}
        start = time.perf_counter()
        chunks = []
        for i, chunk in enumerate(images.double().split(args.batch)):
            chunks.append(net.simulate(chunk))
            for name, count in net.stats()["clips"].items():
                clips[label][name] = clips[label].get(name, 0) + count
            print(f"  integer port, {label}: {min((i + 1) * args.batch, len(images))}/{len(images)} images", flush=True)
        if integer_format is fmt:
            seconds = time.perf_counter() - start
            logits["integer port"] = torch.cat(chunks)
        else:
            narrow_logits = torch.cat(chunks)
    net = build_lava_network(cm, fixed_format=fmt)

    lava = build_lava_network(cm, fixed_format=fmt).run_batch(x[:args.lava].double(), batch_size=1, progress=False)
    # the same images one at a time in process (the read-out's float decode sums per batch shape)
    alone = torch.cat([net.simulate(image) for image in x[:args.lava].double().split(1)])
    lava_difference = float((lava - alone).abs().max())

    classes = {name: value.argmax(-1) for name, value in logits.items()}
    reference = logits["float SNN"]
    rows = []
    for name, value in logits.items():
        rows.append({
            "network": name,
            "accuracy_%": round(100 * float((classes[name] == labels).float().mean()), 2),
            "agreement_with_ANN_%": round(100 * float((classes[name] == classes["ANN"]).float().mean()), 2),
            "same_class_as_float_SNN_%": round(100 * float((classes[name] == classes["float SNN"]).float().mean()), 2),
            "logit_diff_vs_float_SNN": round(float((value - reference).norm() / reference.norm()), 4),
        })
    same_lava = int((lava.argmax(-1) == classes["integer port"][:args.lava]).sum())
    rows.append({"network": f"Lava fixed_pt, first {args.lava} images", "accuracy_%": round(
        100 * float((lava.argmax(-1) == labels[:args.lava]).float().mean()), 2),
        "agreement_with_ANN_%": round(100 * float((lava.argmax(-1) == classes["ANN"][:args.lava]).float().mean()), 2),
        "same_class_as_float_SNN_%": round(100 * float((lava.argmax(-1) == classes["float SNN"][:args.lava])
                                                       .float().mean()), 2),
        "logit_diff_vs_float_SNN": round(float((lava - reference[:args.lava]).norm()
                                               / reference[:args.lava].norm()), 4)})
    narrow_same = int((narrow_logits.argmax(-1) == classes["integer port"][:args.narrow]).sum())
    meta = {"model": str(DEFAULT_MODEL), "images": len(x), "code": cm.code.describe(),
            "formats": {"default widths": vars(fmt), "32-bit accumulators": vars(narrow)},
            "narrow_images": len(narrow_logits), "narrow_same_class_as_integer_port": narrow_same,
            "integer_port_seconds_per_image": seconds / len(x), "integer_port_clipped_values": clips,
            "lava_same_class_as_integer_port": f"{same_lava}/{args.lava}",
            "lava_max_abs_logit_difference_vs_integer_port": lava_difference}
    report("bench_loihi_port", rows, meta)
    print(f"\nLava fixed_pt vs in-process integer run: same class {same_lava}/{args.lava}, max |logit difference| "
          f"{lava_difference:.3g}; integer port {seconds / len(x):.3f} s per image; clipped values {clips}")


if __name__ == "__main__":
    main()
