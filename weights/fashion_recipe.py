"""The Fashion-MNIST recipe of the shipped models (seeded, CPU): ``make_swin_fashion.py`` and
``make_vit_fashion.py`` each name one :class:`Recipe` and call :func:`make` (the ViT's then
:func:`tune`); ``make_swin_fashion_phase_aware.py`` calls :func:`tune` at a shorter window.

Steps: build the timm model by name with every hyper-parameter overridden (so
``lava_spikedattn.checkpoint.load_ann_checkpoint`` rebuilds it), apply the family's ``prepare``
(BatchNorm instead of LayerNorm, ReLU MLP), train it from scratch on the first 55 000 training
images (AdamW, linear warm-up then cosine decay), hold out the last 5 000 to choose the time steps
T and the calibration, convert it with the base B from ``search_base``, and evaluate the ANN and
the spiking network (closed-form reference engine) on the whole test split.

Images are fed as ``spikedattn evaluate --data fashion-mnist`` feeds them: grey in [0, 1],
resized bilinearly to the model's size, no normalisation.

Writes ``weights/<stem>/`` (the converted model), ``weights/<stem>_ann.safetensors`` (the prepared
ANN) and ``weights/<stem>_metrics.json``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lava_spikedattn.base_search import search_base
from lava_spikedattn.checkpoint import load_ann_checkpoint, save_ann_checkpoint
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.data import fit_images, load_fashion_mnist
from lava_spikedattn.evaluate import EvaluationReport, evaluate
from lava_spikedattn.models import get_family
from lava_spikedattn.phase_aware import finetune_phase_aware

SEED = 0
THREADS = 1  # on the shared 2-core machine 2 threads ran 7-35x slower than 1 (measured)
OUT = Path(__file__).resolve().parent

VALIDATION = 5000  # last training images: held out to choose T and the calibration
BATCH = 128
WEIGHT_DECAY = 0.05
WARMUP_STEPS = 200

CALIBRATION_SAMPLES = 1024  # first training images
TIMESTEPS = (16, 20, 24)  # tried in order; the first within TOLERANCE of the ANN is kept
# (method, percentile): per-neuron max |x|, or a percentile of it over the calibration images
CALIBRATIONS: tuple[tuple[str, float | None], ...] = (("max", None), ("percentile", 99.9), ("percentile", 99.0))
SELECTION_SAMPLES = 2000  # of the held-out images
TOLERANCE = 0.01  # SNN accuracy at most this far below the ANN's
EVAL_BATCH = 250


@dataclass(frozen=True)
class Recipe:
    """One shipped model: its files are ``weights/<stem>*``; ``model_kwargs`` override every
    default of the timm builder ``model_name`` (so the ANN checkpoint rebuilds it)."""

    stem: str
    family: str
    model_name: str
    model_kwargs: dict[str, Any]
    epochs: int
    lr: float

    @property
    def img_size(self) -> int:
        return self.model_kwargs["img_size"]


def at_model_size(images: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """(n, 1, 28, 28) grey images resized as the command line does (bilinear, no normalisation)."""
    return fit_images(images, (recipe.img_size, recipe.img_size), recipe.model_kwargs["in_chans"])


def batches(images: torch.Tensor, labels: torch.Tensor,
            size: int = EVAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x, y)`` batches."""
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size)]


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> nn.Module:
    """AdamW with a linear warm-up and cosine decay per step; seeded shuffling; returns eval mode."""
    steps_per_epoch = len(images) // BATCH  # the last partial batch is dropped
    epochs = recipe.epochs
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1.0 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            index = order[step * BATCH:(step + 1) * BATCH]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
        print(f"epoch {epoch + 1}/{epochs}: mean loss {loss_sum / steps_per_epoch:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return model.eval()


def convert_with_base(model: nn.Module, calibration: list, timesteps: int, method: str,
                      percentile: float | None) -> ConvertedModel:
    """Convert at T = ``timesteps`` and set B to ``search_base``'s choice (the scales do not depend on B)."""
    options = {} if percentile is None else {"percentile": percentile}
    cm = convert(model, calibration, PhaseCode(2.0, timesteps, "exact"), method=method, **options)
    base = round(search_base(cm, timesteps, batches=calibration).base, 2)  # the grid is 1.01, 1.02, ..., 2.0
    return cm.with_code(base=base)


def select(model: nn.Module, calibration: list, held_out: list) -> tuple[ConvertedModel, list[dict[str, Any]]]:
    """The converted model to ship and every trial: per T, the calibration with the best held-out
    SNN accuracy; the first T within ``TOLERANCE`` of the ANN wins, else the best trial overall."""
    trials: list[dict[str, Any]] = []
    best: tuple[float, ConvertedModel] | None = None
    for timesteps in TIMESTEPS:
        for method, percentile in CALIBRATIONS:
            cm = convert_with_base(model, calibration, timesteps, method, percentile)
            report = evaluate(model, cm.to_reference("closed"), held_out, progress=False, compare_layers=False)
            trials.append({"timesteps": timesteps, "method": method, "percentile": percentile, "base": cm.code.base,
                           "ann_accuracy": report.ann_accuracy, "snn_accuracy": report.snn_accuracy,
                           "agreement": report.agreement})
            label = method if percentile is None else f"{method} {percentile:g}"
            print(f"  T={timesteps} {label}: B={cm.code.base:g}, SNN {report.snn_accuracy:.4f} "
                  f"(ANN {report.ann_accuracy:.4f}), agreement {report.agreement:.4f}", flush=True)
            if best is None or report.snn_accuracy > best[0]:
                best = (report.snn_accuracy, cm)
        at_t = [t for t in trials if t["timesteps"] == timesteps]
        winner = max(at_t, key=lambda t: t["snn_accuracy"])
        if winner["ann_accuracy"] - winner["snn_accuracy"] <= TOLERANCE:
            method, percentile = winner["method"], winner["percentile"]
            return convert_with_base(model, calibration, timesteps, method, percentile), trials
    return best[1], trials


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _start(recipe: Recipe) -> tuple[torch.Tensor, ...]:
    """Seeded, one torch thread; (train images, train labels, test images, test labels) at the
    model's size."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    return at_model_size(train_x, recipe), train_y, at_model_size(test_x, recipe), test_y


def make(recipe: Recipe) -> None:
    """Train, select, convert, write and evaluate ``recipe``'s model (module docstring)."""
    folder = OUT / recipe.stem
    ann_path = OUT / f"{recipe.stem}_ann.safetensors"
    metrics_path = OUT / f"{recipe.stem}_metrics.json"
    train_x, train_y, test_x, test_y = _start(recipe)
    fit_x, fit_y = train_x[:-VALIDATION], train_y[:-VALIDATION]
    held_out = batches(train_x[-VALIDATION:][:SELECTION_SAMPLES], train_y[-VALIDATION:][:SELECTION_SAMPLES])
    calibration = batches(train_x[:CALIBRATION_SAMPLES], train_y[:CALIBRATION_SAMPLES], BATCH)

    family = get_family(recipe.family)
    model = family.prepare(timm.create_model(recipe.model_name, pretrained=False, **recipe.model_kwargs))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{recipe.model_name} {recipe.model_kwargs}: {parameters} parameters; training on {len(fit_x)} images",
          flush=True)
    start = time.perf_counter()
    model = train(model, fit_x, fit_y, recipe)
    training_s = time.perf_counter() - start

    print("choosing T and the calibration on the held-out images:", flush=True)
    cm, trials = select(model, calibration, held_out)
    cm.save(folder)
    save_ann_checkpoint(model, ann_path, family=recipe.family, model_name=recipe.model_name,
                        model_kwargs=recipe.model_kwargs)

    # Evaluate what was written: both files reloaded, the ANN matching the converted model's source.
    cm = ConvertedModel.load(folder)
    ann, _ = load_ann_checkpoint(ann_path)
    if tensor_sha256(ann.state_dict()) != cm.config["source_sha256"]:
        raise RuntimeError(f"{ann_path} is not the model {folder} was converted from")
    start = time.perf_counter()
    report: EvaluationReport = evaluate(ann, cm.to_reference("closed"), batches(test_x, test_y), progress=False)
    evaluation_s = time.perf_counter() - start
    print(report.table())

    calibration_info = cm.config["calibration"]
    metrics = {
        "seed": SEED,
        "torch_threads": THREADS,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "model_name": recipe.model_name,
        "model_kwargs": recipe.model_kwargs,
        "parameters": parameters,
        "data": "fashion-mnist",
        "input": f"grey in [0, 1], bilinear to {recipe.img_size}x{recipe.img_size}, no normalisation",
        "training": {"images": len(fit_x), "held_out": VALIDATION, "epochs": recipe.epochs, "batch_size": BATCH,
                     "lr": recipe.lr,
                     "weight_decay": WEIGHT_DECAY, "warmup_steps": WARMUP_STEPS, "schedule": "linear warm-up, cosine",
                     "seconds": round(training_s, 1)},
        "selection": {"held_out_images": SELECTION_SAMPLES, "tolerance": TOLERANCE, "trials": trials},
        "base": cm.code.base,
        "timesteps": cm.code.timesteps,
        "convention": cm.code.convention,
        "calibration": {"method": calibration_info["method"], "percentile": calibration_info.get("percentile"),
                        "samples": calibration_info["samples"]},
        "n_layers": cm.n_layers,
        "steps_per_inference": cm.steps_per_inference,
        "engine": "closed",
        "test_samples": report.samples,
        "ann_accuracy": report.ann_accuracy,
        "snn_accuracy": report.snn_accuracy,
        "agreement": report.agreement,
        "spikes_per_sample": report.spikes / report.samples,
        "neurons_per_sample": report.neurons / report.samples,
        "saturated": report.saturated,
        "logits_cosine": report.output.cosine,
        "evaluation_seconds": round(evaluation_s, 1),
        "source_sha256": cm.config["source_sha256"],
        "folder_bytes": folder_bytes(folder),
        "ann_checkpoint_bytes": ann_path.stat().st_size,
    }
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"written {folder}, {ann_path.name}, {metrics_path.name}")


def _measured(report: EvaluationReport) -> dict[str, Any]:
    energy = {counting: report.energy(counting) for counting in ("official", "complete")}
    return {"ann_accuracy": report.ann_accuracy, "snn_accuracy": report.snn_accuracy, "agreement": report.agreement,
            "spikes_per_sample": report.spikes / report.samples,
            "energy": {c: {"ann_mj": e.ann_total_pj / 1e9, "snn_mj": e.snn_total_pj / 1e9, "ratio": e.ratio}
                       for c, e in energy.items()}}


def tune(recipe: Recipe, stem: str, *, timesteps: int | None = None, epochs: int, lr: float, alpha: float,
         cosine: bool = True, learn_scales: bool = False) -> None:
    """Phase-aware fine-tuning of ``recipe``'s written model at T = ``timesteps`` (default: its own).

    Starts from ``weights/<recipe.stem>_ann.safetensors`` with its calibration; B is the written
    model's at its own T, else ``search_base``'s. Measures the post-training conversion at that
    code on the test split, fine-tunes the ANN through the converted network's rounding
    (``finetune_phase_aware``: distillation from the untuned ANN plus cross-entropy, one AdamW from
    ``lr``, cosine decay to 0 unless ``cosine`` is False, scales recalibrated after each epoch, or
    learned with ``learn_scales``) on
    the training images the ANN was trained on, and writes ``weights/<stem>*`` (``stem`` may be
    ``recipe.stem``: the tuned model replaces the written one, and the untuned ANN is kept as
    ``<stem>_untuned_ann.safetensors``) with both measurements in the metrics.
    """
    source = json.loads((OUT / f"{recipe.stem}_metrics.json").read_text())
    untuned_path = OUT / f"{recipe.stem}_ann.safetensors"
    ann, _ = load_ann_checkpoint(untuned_path)
    if stem == recipe.stem:  # the tuned files replace the written ones: keep the untuned ANN beside them
        untuned_path = Path(shutil.copyfile(untuned_path, OUT / f"{stem}_untuned_ann.safetensors"))
    folder, ann_path, metrics_path = OUT / stem, OUT / f"{stem}_ann.safetensors", OUT / f"{stem}_metrics.json"
    train_x, train_y, test_x, test_y = _start(recipe)
    fit_x, fit_y = train_x[:-VALIDATION], train_y[:-VALIDATION]
    calibration = batches(train_x[:CALIBRATION_SAMPLES], train_y[:CALIBRATION_SAMPLES], BATCH)
    test = batches(test_x, test_y)
    options = {"method": source["calibration"]["method"]}
    if options["method"] == "percentile":
        options["percentile"] = source["calibration"]["percentile"]
    timesteps = timesteps or source["timesteps"]
    if timesteps == source["timesteps"]:
        code = PhaseCode(source["base"], timesteps)
    else:
        code = convert_with_base(ann, calibration, timesteps, options["method"], options.get("percentile")).code
    post = evaluate(ann, convert(ann, calibration, code, **options).to_reference("closed"), test, progress=False,
                    compare_layers=False)
    print(f"post-training conversion, {code.describe()}: SNN {post.snn_accuracy:.4f} (ANN {post.ann_accuracy:.4f})",
          flush=True)

    order = torch.randperm(len(fit_x), generator=torch.Generator().manual_seed(SEED))
    loader = [(fit_x[index], fit_y[index]) for index in order[:len(order) // BATCH * BATCH].split(BATCH)]
    untuned = copy.deepcopy(ann)
    start = time.perf_counter()
    tuned, cm = finetune_phase_aware(ann, code, loader, calibration, epochs=epochs, lr=lr, alpha=alpha,
                                     cosine=cosine, progress=False, learn_scales=learn_scales, **options)
    training_s = time.perf_counter() - start
    cm.save(folder)
    save_ann_checkpoint(tuned, ann_path, family=recipe.family, model_name=recipe.model_name,
                        model_kwargs=recipe.model_kwargs)
    cm = ConvertedModel.load(folder)
    report = evaluate(tuned, cm.to_reference("closed"), test, progress=False)
    versus_untuned = evaluate(untuned, cm.to_reference("closed"), test, progress=False, compare_layers=False)
    held_out = batches(train_x[-VALIDATION:], train_y[-VALIDATION:])  # not trained on: to choose settings by
    held = evaluate(tuned, cm.to_reference("closed"), held_out, progress=False, compare_layers=False)
    print(report.table())
    print(f"phase-aware, {code.describe()}: SNN {report.snn_accuracy:.4f} (its ANN {report.ann_accuracy:.4f}, the "
          f"untuned ANN {versus_untuned.ann_accuracy:.4f}), {training_s:.0f} s of training; held-out images: SNN "
          f"{held.snn_accuracy:.4f} (ANN {held.ann_accuracy:.4f})", flush=True)
    keep = ("seed", "torch_threads", "versions", "model_name", "model_kwargs", "parameters", "data", "input",
            "training", "selection")
    metrics = {key: source[key] for key in keep if key in source}
    metrics.update({
        "base": code.base, "timesteps": code.timesteps, "convention": code.convention,
        "calibration": {**source["calibration"], "samples": cm.config["calibration"]["samples"]},
        "n_layers": cm.n_layers, "steps_per_inference": cm.steps_per_inference, "engine": "closed",
        "test_samples": report.samples, "ann_accuracy": report.ann_accuracy, "snn_accuracy": report.snn_accuracy,
        "agreement": report.agreement, "spikes_per_sample": report.spikes / report.samples,
        "neurons_per_sample": report.neurons / report.samples, "saturated": report.saturated,
        "logits_cosine": report.output.cosine, "energy": _measured(report)["energy"],
        "post_training": {"ann": f"{untuned_path.name} (untuned)", **_measured(post)},
        "phase_aware": {"epochs": epochs, "lr": lr, "alpha": alpha, "scales": "learned" if learn_scales else
                        "recalibrated after every epoch",
                        "optimizer": f"AdamW, {'cosine decay' if cosine else 'constant lr'}",
                        "images": len(fit_x), "batch_size": BATCH, "seconds": round(training_s, 1),
                        "untuned_ann_accuracy": versus_untuned.ann_accuracy,
                        "agreement_with_untuned_ann": versus_untuned.agreement,
                        "held_out": {"images": held.samples, "ann_accuracy": held.ann_accuracy,
                                     "snn_accuracy": held.snn_accuracy, "agreement": held.agreement}},
        "source_sha256": cm.config["source_sha256"], "folder_bytes": folder_bytes(folder),
        "ann_checkpoint_bytes": ann_path.stat().st_size,
    })
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"written {folder}, {ann_path.name}, {metrics_path.name}")
