"""``make demo``: a shipped Fashion-MNIST model through Lava and the reference engine, with figures.

:func:`run_demo` loads a shipped converted model (``weights/swin_fashion_mnist``, the default, or
``weights/vit_fashion_mnist``: :data:`SHIPPED`) or any converted image model and its prepared
ANN, then

1. runs a handful of real test images through the Lava network (Lava's CPU simulator, one
   fused process per block), and the first of them also through the decomposed network (every
   population and synapse its own process), and checks each prediction and logit against the
   closed-form reference engine;
2. evaluates the whole test set on the closed-form engine: ANN and SNN accuracy, agreement,
   spikes per inference and the energy of spec §7 (measured activity, official and complete
   counting);
3. sweeps the window T (B re-chosen by ``search_base`` for each T, the calibrated scales kept)
   on a subset for accuracy and energy vs T, and measures the model's phase-aware fine-tuned
   versions shipped beside it (``<model>_t<T>``, ``lava_spikedattn.phase_aware``) on the same
   subset;
4. the Loihi 2 port: the same handful of images through the integer (fixed_pt) Lava network,
   its classes against the float network's, and the resource estimate on Loihi 2;
5. writes ``summary.json`` and PNG figures to the output folder: a spike raster of one attention
   block from the Lava run, ANN vs SNN attention maps, decoded SNN vs ANN activations per stage
   (Swin) or block (ViT), accuracy and energy vs T.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.evaluate import EvaluationReport

# The converter and the engines are imported where they are used, so that importing this module
# (the command line's parser does, for the defaults) stays fast.

__all__ = ["DEFAULT_ANN", "DEFAULT_MODEL", "SHIPPED", "DemoSettings", "ann_beside", "run_demo", "shipped_model"]

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
#: The shipped models by short name (weights/README.md): their converted folders in weights/.
SHIPPED = {"swin": "swin_fashion_mnist", "vit": "vit_fashion_mnist"}
DEFAULT_MODEL = WEIGHTS / SHIPPED["swin"]
DATASET = "fashion-mnist"
DECOMPOSED_SAMPLES = 4  # images also run decomposed (one Lava process per population and synapse)
RASTER_LAYERS = ("q_if", "k_if", "v_if", "stdp_qk", "softmax_if", "stdp_av")
SCATTER_POINTS = 4000  # per stage, sampled evenly
SEARCH_VALUES = 4096  # activations per layer search_base scores at each candidate B (its cost)


def shipped_model(name: str | Path) -> Path:
    """The folder of shipped model ``name`` (a key of :data:`SHIPPED`), or ``name`` as a path."""
    return WEIGHTS / SHIPPED[name] if name in SHIPPED else Path(name)


def ann_beside(folder: Path) -> Path:
    """The prepared ANN a converted folder was made from, as the shipped files name it:
    ``<folder>_ann.safetensors`` beside the folder."""
    return folder.with_name(f"{folder.name}_ann.safetensors")


DEFAULT_ANN = ann_beside(DEFAULT_MODEL)


@dataclass
class DemoSettings:
    """What :func:`run_demo` runs (defaults: the README's ``make demo``)."""

    model: Path = DEFAULT_MODEL
    ann: Path | None = None  # None: ann_beside(model)
    out: Path = Path("demo_out")
    lava_samples: int = 100
    limit: int | None = None  # test images on the closed-form engine (None: all 10 000)
    sweep: tuple[int, ...] = (8, 12, 16, 24, 32)
    sweep_limit: int = 1000
    calibration_images: int = 512  # train images for search_base in the T sweep
    batch_size: int = 250
    # torch threads of the reference engine: 1, because on a busy 2-core machine 2 threads were
    # measured 15-30x slower than 1 (oversubscription); raise it on an idle many-core machine.
    threads: int = 1
    progress: bool = True
    say: Callable[[str], None] = field(default=print, repr=False)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary also written as JSON."""
    from lava_spikedattn.checkpoint import load_ann_checkpoint
    from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
    from lava_spikedattn.data import fit_images, load_image_dataset
    from lava_spikedattn.evaluate import evaluate
    from lava_spikedattn.models import family_names, get_family

    say, out = settings.say, Path(settings.out)
    torch.set_num_threads(settings.threads)
    cm = ConvertedModel.load(settings.model)
    if DATASET not in cm.family.datasets:
        readers = [name for name in family_names() if DATASET in get_family(name).datasets]
        raise ValueError(f"{settings.model} is a converted {cm.family.name} model, which does not read {DATASET}; "
                         f"the demo runs a model of a family that does ({', '.join(readers)})")
    ann_path = ann_beside(Path(settings.model)) if settings.ann is None else settings.ann
    ann, _ = load_ann_checkpoint(ann_path)
    if tensor_sha256(ann.state_dict()) != cm.config["source_sha256"]:
        raise ValueError(f"{ann_path} is not the ANN {settings.model} was converted from (sha256 differs)")
    arch = cm.config["architecture"]
    images, labels = load_image_dataset(DATASET, "test", settings.limit)
    images = fit_images(images, arch["img_size"], arch["in_chans"])
    out.mkdir(parents=True, exist_ok=True)
    say(f"shipped model {settings.model}: {cm.summary()}")
    say(f"data: {DATASET} test split, {len(images)} images\n")

    summary: dict[str, Any] = {"model": str(settings.model), "code": cm.code.describe(),
                               "base": cm.code.base, "timesteps": cm.code.timesteps,
                               "layers": cm.n_layers, "steps_per_inference": cm.steps_per_inference}
    summary["lava"], net = _lava_run(cm, images[:settings.lava_samples], labels[:settings.lava_samples],
                                     settings.progress, say)
    batches = list(zip(images.split(settings.batch_size), labels.split(settings.batch_size)))
    say("\nclosed-form reference engine, whole test set")
    report = evaluate(ann, cm.to_reference("closed"), batches, progress=settings.progress, compare_layers=False)
    report.save(out / "evaluation.json")
    summary["reference"] = _report_summary(report)
    summary["sweep"], subset = _sweep(cm, ann, batches, settings, say)
    summary["phase_aware"] = _phase_aware(Path(settings.model), subset, say)
    summary["loihi"] = _loihi_port(cm, images[:settings.lava_samples], say)

    say("\nfigures")
    sample = images[settings.lava_samples - 1:settings.lava_samples]
    figures = [_plot_raster(cm, net.fire_steps(), out / "spike_raster.png"),
               _plot_attention_maps(cm, sample, out / "attention_maps.png"),
               _plot_scatter(cm, images[:16], out / "activation_scatter.png"),
               _plot_sweep(summary["sweep"], summary["phase_aware"], cm.code.timesteps,
                           out / "accuracy_energy_vs_T.png")]
    summary["figures"] = [str(path) for path in figures]
    for path in figures:
        say(f"  {path}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    say("\n" + summary_table(summary))
    say(f"\nwritten {out / 'summary.json'}, {out / 'evaluation.json'}")
    return summary


# --- the steps -------------------------------------------------------------------------------------------
def _lava_run(cm: ConvertedModel, images: torch.Tensor, labels: torch.Tensor, progress: bool,
              say: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """The images through Lava one at a time in one compiled graph (fused blocks), the first
    ``DECOMPOSED_SAMPLES`` also decomposed (every population and synapse its own Lava process,
    messages through real ports: the porting path); predictions and logits vs the closed-form
    engine. The networks are closed; their records (fire steps of the last image) stay readable."""
    from lava_spikedattn.builder import build_lava_network

    closed = cm.to_reference("closed").double()(images.double())
    runs = {}
    for mode, count in (("fused", len(images)), ("decomposed", min(len(images), DECOMPOSED_SAMPLES))):
        say(f"Lava (CPU simulator, {mode} blocks): {count} test image(s), {cm.steps_per_inference} steps each, "
            f"one compiled graph")
        start = time.perf_counter()
        with build_lava_network(cm, mode=mode) as net:
            logits = net.run_batch(images[:count], batch_size=1, progress=progress)
        seconds = time.perf_counter() - start
        lava_class, closed_class = logits.argmax(-1), closed[:count].argmax(-1)
        difference = float((logits - closed[:count]).abs().max() / closed[:count].abs().max())
        if mode == "fused":
            for i in range(min(count, 4)):
                say(f"  image {i}: label {int(labels[i])}, Lava predicts {int(lava_class[i])}, "
                    f"closed-form engine {int(closed_class[i])}")
            say(f"  Lava accuracy on the {count} images: {float((lava_class == labels[:count]).float().mean()):.2%}")
        processes = net.stats()["processes"]
        say(f"  Lava vs closed form: same class on {int((lava_class == closed_class).sum())}/{count}, "
            f"max logit difference {difference:.1e} (relative); {processes} Lava processes, "
            f"{seconds / count:.2f} s per image (compile and start included)")
        runs[mode] = ({"samples": count, "correct": int((lava_class == labels[:count]).sum()),
                       "same_class_as_reference": int((lava_class == closed_class).sum()),
                       "max_relative_logit_difference": difference,
                       "steps_simulated": count * net.steps_per_sample, "processes": processes,
                       "seconds_per_image": seconds / count}, net)
    fused, net = runs["fused"]
    return {**fused, "decomposed": runs["decomposed"][0]}, net


def _loihi_port(cm: ConvertedModel, images: torch.Tensor, say: Callable[[str], None]) -> dict[str, Any]:
    """The images through the integer (fixed_pt) Lava network in one run, against the float
    network (the closed-form engine, which the float Lava network equals); the Loihi 2
    resource estimate."""
    from lava_spikedattn.builder import build_lava_network
    from lava_spikedattn.fixed_point import FixedFormat
    from lava_spikedattn.loihi import resource_estimate

    say(f"\nLoihi 2 port: the {len(images)} images through the integer (fixed_pt) Lava network "
        f"(24-bit state, 8-bit weights)")
    clips = 0
    with build_lava_network(cm, fixed_format=FixedFormat()) as net:
        logits = []
        for image in images.double().split(1):
            logits.append(net.run(image))
            clips += sum(net.stats()["clips"].values())
    logits = torch.cat(logits)
    same = int((logits.argmax(-1) == cm.to_reference("closed").double()(images.double()).argmax(-1)).sum())
    estimate = resource_estimate(cm)
    result = {"samples": len(images), "same_class_as_float": same, "clipped_values": clips,
              "neurons": estimate.total("neurons"), "design": estimate.design,
              "bounds": {b.costs.bound: {"cores": b.cores, "chips": b.chips, "step_us": b.step_ns / 1e3,
                                         "chip_steps": b.chip_steps, "latency_ms": b.latency_us / 1e3,
                                         "energy_uj": b.energy_uj} for b in estimate.bounds}}
    say(f"  same class as the float network: {same}/{len(images)}; clipped integer values: {clips}")
    say(f"  on Loihi 2 (estimate, docs/loihi2_mapping.md): {result['neurons']:,} neurons, " + _bounds(result))
    return result


def _bounds(port: dict[str, Any]) -> str:
    """The Loihi 2 estimate's bounds in one line."""
    return "; ".join(f"{name}: {b['cores']} cores, {b['chips']} chip(s), {b['latency_ms']:.1f} ms and "
                     f"{b['energy_uj'] / 1e3:.2f} mJ per image" for name, b in port["bounds"].items())


def _report_summary(report: EvaluationReport) -> dict[str, Any]:
    energy = {counting: report.energy(counting) for counting in ("official", "complete")}
    return {"samples": report.samples, "ann_accuracy": report.ann_accuracy, "snn_accuracy": report.snn_accuracy,
            "agreement": report.agreement, "spikes_per_inference": report.spikes / report.samples,
            "neurons": report.neurons / report.samples, "saturated": report.saturated,
            "energy": {counting: {"ann_mj": e.ann_total_pj / 1e9, "snn_mj": e.snn_total_pj / 1e9, "ratio": e.ratio}
                       for counting, e in energy.items()}}


def _sweep(cm: ConvertedModel, ann: torch.nn.Module, batches: list, settings: DemoSettings,
           say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list]:
    """Accuracy and energy vs T on the first ``sweep_limit`` test images (B from search_base);
    the rows and those images' batches."""
    from lava_spikedattn.base_search import search_base
    from lava_spikedattn.data import fit_images, load_image_dataset
    from lava_spikedattn.evaluate import evaluate

    arch = cm.config["architecture"]
    train = fit_images(load_image_dataset(DATASET, "train", settings.calibration_images)[0], arch["img_size"],
                       arch["in_chans"])
    subset, count = [], 0
    for x, y in batches:
        if count >= settings.sweep_limit:
            break
        subset.append((x[:settings.sweep_limit - count], y[:settings.sweep_limit - count]))
        count += len(subset[-1][0])
    say(f"\nwindow sweep on {count} test images (B chosen by search_base for each T)")
    rows = []
    for timesteps in settings.sweep:
        base = search_base(cm, timesteps, batches=train.split(settings.batch_size),
                           max_values=SEARCH_VALUES).base
        recoded = cm.with_code(base=base, timesteps=timesteps)
        report = evaluate(ann, recoded.to_reference("closed"), subset, progress=False, compare_layers=False)
        row = {"timesteps": timesteps, "base": base, **_report_summary(report),
               "steps_per_inference": recoded.steps_per_inference}
        rows.append(row)
        say(f"  T={timesteps:3d} B={base:.3f}: SNN accuracy {row['snn_accuracy']:.2%}, agreement "
            f"{row['agreement']:.2%}, SNN/ANN energy {row['energy']['complete']['ratio']:.2f} (complete)")
    return rows, subset


def _phase_aware(model: Path, subset: list, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The phase-aware fine-tuned versions of ``model`` beside it (``<name>_t<T>`` folders with
    their tuned ANN), each on the sweep's images against its own ANN."""
    from lava_spikedattn.checkpoint import load_ann_checkpoint
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.evaluate import evaluate

    rows = []
    for folder in sorted(model.parent.glob(f"{model.name}_t*")):
        if not (folder / "config.json").is_file() or not ann_beside(folder).is_file():
            continue
        tuned = ConvertedModel.load(folder)
        report = evaluate(load_ann_checkpoint(ann_beside(folder))[0], tuned.to_reference("closed"), subset,
                          progress=False, compare_layers=False)
        rows.append({"model": str(folder), "timesteps": tuned.code.timesteps, "base": tuned.code.base,
                     **_report_summary(report), "steps_per_inference": tuned.steps_per_inference})
        say(f"  phase-aware {folder.name} (B={tuned.code.base:g}): SNN accuracy {report.snn_accuracy:.2%}, "
            f"its ANN {report.ann_accuracy:.2%}")
    return rows


def summary_table(summary: dict[str, Any]) -> str:
    """The demo's result table."""
    ref, lava, port = summary["reference"], summary["lava"], summary["loihi"]
    lines = [f"{Path(summary['model']).name + ', Fashion-MNIST test':<40} {summary['code']}",
             f"{'ANN accuracy':<40} {ref['ann_accuracy']:.2%}",
             f"{'SNN accuracy (closed-form engine)':<40} {ref['snn_accuracy']:.2%}",
             f"{'prediction agreement':<40} {ref['agreement']:.2%}  ({ref['samples']} images)",
             f"{'spikes per inference':<40} {ref['spikes_per_inference']:,.0f} of {ref['neurons']:,.0f} neurons",
             f"{'saturated values (whole test set)':<40} {ref['saturated']:,}",
             f"{'steps per inference':<40} {summary['steps_per_inference']} ({summary['layers']} layers)",
             f"{'Lava: steps simulated':<40} {lava['steps_simulated']} ({lava['samples']} images, "
             f"{lava['same_class_as_reference']}/{lava['samples']} same class as the reference)",
             f"{'Lava decomposed (porting path)':<40} {lava['decomposed']['same_class_as_reference']}/"
             f"{lava['decomposed']['samples']} same class as the reference, {lava['decomposed']['processes']} "
             f"processes",
             f"{'Loihi 2 port (integer Lava network)':<40} {port['same_class_as_float']}/{port['samples']} same class "
             f"as float; estimate {_bounds(port)}"]
    for counting, e in ref["energy"].items():
        lines.append(f"{'energy per inference (' + counting + ')':<40} ANN {e['ann_mj']:.4f} mJ, "
                     f"SNN {e['snn_mj']:.4f} mJ, SNN/ANN {e['ratio']:.2f}")
    return "\n".join(lines)


# --- figures ---------------------------------------------------------------------------------------------
def _code(cm: ConvertedModel) -> str:
    return f"B={cm.code.base:g}, T={cm.code.timesteps}"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_raster(cm: ConvertedModel, fire_steps: dict[str, Any], path: Path) -> Path:
    """Spike times of the first attention block (first window, first head) on the run's time axis."""
    plt = _figure()
    index = {layer.name: layer.index for layer in cm.layers}
    block = next(layer.name for layer in cm.layers if layer.name.endswith(".q_if")).removesuffix(".q_if")
    T = cm.code.timesteps
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    offset, ticks = 0, []
    for i, suffix in enumerate(RASTER_LAYERS):
        name = f"{block}.{suffix}"
        steps = fire_steps[name][0, 0, 0].reshape(-1)  # image 0, window 0, head 0
        fired = steps >= 0
        neuron = torch.arange(len(steps)).numpy() + offset
        ax.scatter((index[name] + 1) * T + steps[fired], neuron[fired], s=2, color=f"C{i}")
        ticks.append((offset + len(steps) / 2, f"{suffix}\n({int(fired.sum())}/{len(steps)} fired)"))
        offset += len(steps) + 10
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_xlabel("time step of the Lava run")
    ax.set_title(f"Spike raster from the Lava run: {block}, window 0, head 0 ({_code(cm)})", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _attention_maps(cm: ConvertedModel, x: torch.Tensor, engine: str) -> dict[str, torch.Tensor]:
    from lava_spikedattn.engines import AnnEngine

    net = cm.to_reference(engine).double()
    runner = AnnEngine() if engine == "ann" else net.make_engine()
    runner.attention_maps = {}
    with torch.no_grad():
        net.run(x.double(), runner)
    return runner.attention_maps


def _plot_attention_maps(cm: ConvertedModel, x: torch.Tensor, path: Path) -> Path:
    """Softmax (ANN) vs WOSS (SNN) attention of the first and last block, window 0, head 0."""
    plt = _figure()
    ann, snn = _attention_maps(cm, x, "ann"), _attention_maps(cm, x, "closed")
    blocks = [next(iter(ann)), list(ann)[-1]]
    fig, axes = plt.subplots(len(blocks), 3, figsize=(11, 3.6 * len(blocks)), layout="constrained")
    for row, block in zip(axes, blocks):
        a, s = ann[block][0, 0, 0], snn[block][0, 0, 0]
        vmax = float(max(a.max(), s.max()))
        for ax, data, title in ((row[0], a, "ANN softmax"), (row[1], s, "SNN WOSS")):
            image = ax.imshow(data.numpy(), cmap="viridis", vmin=0, vmax=vmax)
            ax.set_title(f"{block}: {title}", fontsize=8)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        fig.colorbar(image, ax=row[:2].tolist(), shrink=0.8)
        row[2].scatter(a.flatten().numpy(), s.flatten().numpy(), s=3)
        row[2].plot([0, vmax], [0, vmax], color="grey", linewidth=0.8)
        row[2].set_xlabel("ANN probability")
        row[2].set_ylabel("SNN probability")
        row[2].set_title("per entry", fontsize=8)
    fig.suptitle(f"Attention maps of one test image, window 0, head 0 ({_code(cm)})", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panel_of(name: str, panels: int) -> int:
    """The panel of layer ``name``: its stage (Swin ``layers.i.``) or block (ViT ``blocks.i.``);
    the input layer the first, the head the last."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return int(parts[1])
    return 0 if name == "patch_embed_if" else panels - 1


def _plot_scatter(cm: ConvertedModel, x: torch.Tensor, path: Path) -> Path:
    """Decoded SNN activation vs the folded ANN's, every neuron layer, one panel per stage (Swin)
    or block (ViT)."""
    from lava_spikedattn.engines import AnnEngine
    from lava_spikedattn.evaluate import RecordingEngine

    plt = _figure()
    net = cm.to_reference("closed").double()
    recorded: dict[str, dict[str, torch.Tensor]] = {"ann": {}, "snn": {}}
    with torch.no_grad():
        net.run(x.double(), RecordingEngine(AnnEngine(), recorded["ann"].__setitem__))
        net.run(x.double(), RecordingEngine(net.make_engine(), recorded["snn"].__setitem__))
    numbered = [name.split(".") for name in recorded["snn"]]
    numbered = [parts for parts in numbered if len(parts) > 2 and parts[1].isdigit()]
    panels = 1 + max(int(parts[1]) for parts in numbered)
    unit = "stage" if numbered[0][0] == "layers" else "block"  # Swin's layers.i are stages
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.2), squeeze=False, layout="constrained")
    for panel, ax in enumerate(axes[0]):
        names = [n for n in recorded["snn"] if _panel_of(n, panels) == panel and n in recorded["ann"]]
        a = torch.cat([recorded["ann"][n].flatten() for n in names])
        s = torch.cat([recorded["snn"][n].flatten() for n in names])
        pick = torch.linspace(0, len(a) - 1, min(SCATTER_POINTS, len(a))).long()
        cosine = float(torch.nn.functional.cosine_similarity(a, s, dim=0))
        ax.scatter(a[pick].numpy(), s[pick].numpy(), s=2, alpha=0.5)
        low, high = float(a.min()), float(a.max())
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set_title(f"{unit} {panel}: {len(names)} layers, cosine {cosine:.4f}", fontsize=9)
        ax.set_xlabel("ANN activation")
        ax.set_ylabel("decoded SNN activation")
    fig.suptitle(f"Decoded SNN vs ANN activations, {len(x)} test images ({_code(cm)})", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_sweep(rows: list[dict[str, Any]], tuned: list[dict[str, Any]], shipped_t: int, path: Path) -> Path:
    plt = _figure()
    t = [row["timesteps"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    ax.plot(t, [100 * row["snn_accuracy"] for row in rows], "o-", color="C0", label="SNN accuracy (post-training)")
    if tuned:
        ax.plot([row["timesteps"] for row in tuned], [100 * row["snn_accuracy"] for row in tuned], "D", color="C2",
                markersize=7, label="SNN accuracy (phase-aware)")
    ax.axhline(100 * rows[0]["ann_accuracy"], color="C0", linestyle="--", linewidth=0.8, label="ANN accuracy")
    ax.set_xlabel("window T (time steps per layer)")
    ax.set_ylabel("accuracy (%)", color="C0")
    ax.axvline(shipped_t, color="grey", linewidth=0.6)
    energy = ax.twinx()
    for counting, style in (("complete", "s-"), ("official", "^:")):
        energy.plot(t, [row["energy"][counting]["ratio"] for row in rows], style, color="C3",
                    label=f"SNN/ANN energy ({counting})")
    energy.axhline(1.0, color="C3", linestyle="--", linewidth=0.6)
    energy.set_ylabel("SNN energy / ANN energy", color="C3")
    lines = ax.get_legend_handles_labels()
    more = energy.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    ax.set_title(f"Accuracy and energy vs T ({rows[0]['samples']} test images)", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

