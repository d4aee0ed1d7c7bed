"""Post-training conversion vs phase-aware fine-tuning of the shipped models, on the whole test split.

For each phase-aware model in ``weights/`` (``*_metrics.json`` with a ``phase_aware`` entry: the
Swin at T=12 and T=8 from ``make_swin_fashion_phase_aware.py``, and the shipped ViT), re-measured here on
the closed-form engine (float32, the 10 000 Fashion-MNIST test images):

* post-training: the untuned ANN it started from, converted at the same code (B, T, calibration);
* phase-aware: the tuned model's converted folder (its scales learned or recalibrated);

with the ANN accuracy, the SNN accuracy, agreement with the ANN and the energy per inference (spec
§7, both countings); models without fine-tuning (the shipped Swin at T=24) as reference points.

Usage: python benchmarks/bench_phase_aware.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import report

from lava_spikedattn.checkpoint import load_ann_checkpoint
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.data import fit_images, load_fashion_mnist
from lava_spikedattn.evaluate import evaluate

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
CALIBRATION_SAMPLES = 1024  # the recipes' (first training images)
BATCH = 250


def _row(name: str, kind: str, ann: torch.nn.Module, cm: ConvertedModel, test: list) -> dict:
    result = evaluate(ann, cm.to_reference("closed"), test, progress=False, compare_layers=False)
    energy = {counting: result.energy(counting) for counting in ("official", "complete")}
    return {"model": name, "conversion": kind, "B": cm.code.base, "T": cm.code.timesteps,
            "steps": cm.steps_per_inference, "ANN acc.": result.ann_accuracy, "SNN acc.": result.snn_accuracy,
            "agreement": result.agreement, "SNN/ANN energy official": energy["official"].ratio,
            "SNN/ANN energy complete": energy["complete"].ratio,
            "SNN mJ complete": energy["complete"].snn_total_pj / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="test images (default: all 10 000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for metrics_path in sorted(WEIGHTS.glob("*_metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        stem = metrics_path.name.removesuffix("_metrics.json")
        tuned_cm = ConvertedModel.load(WEIGHTS / stem)
        arch = tuned_cm.config["architecture"]
        images, labels = load_fashion_mnist("test", args.limit)
        images = fit_images(images, arch["img_size"], arch["in_chans"])
        test = list(zip(images.split(BATCH), labels.split(BATCH)))
        ann, _ = load_ann_checkpoint(WEIGHTS / f"{stem}_ann.safetensors")
        if "phase_aware" not in metrics:
            rows.append(_row(stem, "post-training (shipped)", ann, tuned_cm, test))
            continue
        source = metrics["post_training"]["ann"].split(" ")[0]
        untuned, _ = load_ann_checkpoint(WEIGHTS / source)
        train, train_labels = load_fashion_mnist("train", CALIBRATION_SAMPLES)
        train = fit_images(train, arch["img_size"], arch["in_chans"])
        calibration = [(train[i:i + 128], train_labels[i:i + 128]) for i in range(0, len(train), 128)]
        options = {"method": metrics["calibration"]["method"]}
        if options["method"] == "percentile":
            options["percentile"] = metrics["calibration"]["percentile"]
        code = PhaseCode(metrics["base"], metrics["timesteps"])
        rows.append(_row(stem, "post-training", untuned, convert(untuned, calibration, code, **options), test))
        scales = metrics["phase_aware"]["scales"]
        rows.append(_row(stem, "phase-aware, learned scales" if scales == "learned" else "phase-aware", ann, tuned_cm,
                         test))
    report("bench_phase_aware", rows, {"engine": "closed", "dtype": "float32", "test_images": args.limit or 10000,
                                       "data": "Fashion-MNIST test split"})


if __name__ == "__main__":
    main()
