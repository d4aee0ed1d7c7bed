"""Re-make every measured number of the README: run the commands, keep their results in
``docs/results.json`` (committed), and rewrite the README's result blocks from that file.

Each step runs the command a user would run (the demo, the text demo, a benchmark script) in a
subprocess, then reads what it wrote. ``docs/results.json`` records per step the command, the
engine, dtype and data behind its numbers, the date it ran, its run time, and the numbers; its ``environment``
records the machine and the locked versions they were measured with. The README holds each
block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; ``tests/test_results.py``
checks that every block equals what :func:`render` makes of the JSON, and that the JSON was made
with the versions in requirements.lock.

Usage: python benchmarks/make_results.py [--only demo,text,...] [--render-only]
       (``make results`` runs every step: 24 min on this 2-core machine on 2026-12-05, the sum of
       the steps' recorded times)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "docs" / "results.json"
README = ROOT / "README.md"
WORK = ROOT / ".cache" / "results"
BENCH_RESULTS = ROOT / "benchmarks" / "results"
#: The locked packages whose versions the numbers are recorded with.
VERSIONED = ("torch", "timm", "transformers", "numpy", "lava-nc", "tokenizers", "safetensors")
SPIKEDATTN = [sys.executable, "-m", "lava_spikedattn.cli"]
#: MiniLM at T=8 (``make demo-text-t8``); its stages are cached in .cache/demo-text-t8 and reused
#: when their settings and checksums match (a first run takes about 45 min on 2 cores).
TEXT_T8 = ["--cache-dir", ".cache/demo-text-t8", "--limit-train", "all", "--epochs", "3", "--timesteps", "8",
           "--phase-aware", "1", "--baseline"]


@dataclass(frozen=True)
class Step:
    """One command and where its numbers come from."""

    command: str  # as a user types it (shown in the README)
    argv: list[str] | None  # what runs here; None: ``collect`` computes the numbers itself
    engine: str
    dtype: str
    data: str
    collect: Callable[[], dict[str, Any]]


# --- collecting what the commands wrote ------------------------------------------------------------------
def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _bench(name: str) -> Callable[[], dict[str, Any]]:
    def collect() -> dict[str, Any]:
        result = _read(BENCH_RESULTS / f"{name}.json")
        return {"rows": result["rows"], "meta": {k: v for k, v in result["meta"].items()
                                                 if k not in ("profiles", "worker_cpu")}}
    return collect


def _collect_demo(folder: str) -> Callable[[], dict[str, Any]]:
    def collect() -> dict[str, Any]:
        summary = _read(WORK / folder / "summary.json")
        return {key: summary[key] for key in ("base", "timesteps", "layers", "steps_per_inference", "lava",
                                              "reference", "sweep", "loihi")}
    return collect


def _collect_text(folder: str = "demo-text") -> dict[str, Any]:
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.evaluate import EvaluationReport

    summary = _read(ROOT / ".cache" / folder / "summary.json")
    report = EvaluationReport.from_json(summary["report"])
    energy = {counting: report.energy(counting) for counting in ("official", "complete")}
    settings = summary["settings"]
    code = ConvertedModel.load(ROOT / ".cache" / folder / "snn").code  # B: searched unless T=16
    return {"base": code.base, "timesteps": code.timesteps, "train_sentences": summary["train_sentences"],
            "epochs": settings["epochs"], "samples": summary["test_sentences"],
            "ann_accuracy": summary["ann_accuracy"], "snn_accuracy": summary["snn_accuracy"],
            "agreement": summary["agreement"], "spikes_per_inference": summary["spikes_per_sentence"],
            "seconds": summary["seconds"],
            **{key: summary[key] for key in ("untuned_ann_accuracy", "unprepared_ann_accuracy") if key in summary},
            "energy": {c: {"ann_mj": e.ann_total_pj / 1e9, "snn_mj": e.snn_total_pj / 1e9, "ratio": e.ratio}
                       for c, e in energy.items()}}


ESTIMATED = ("shipped Swin", "shipped ViT", "Swin-T", "ViT-S", "MiniLM")


def _collect_estimate() -> dict[str, Any]:
    rows = {}
    for name in ESTIMATED:
        report = _read(WORK / f"loihi_{name.replace(' ', '_')}.json")
        rows[name] = {"timesteps": report["timesteps"], "design": report["design"],
                      **{key: report["totals"][key] for key in ("neurons", "weights", "trace_products")},
                      "bounds": {bound: {key: value[key] for key in ("cores", "chips", "step_ns", "chip_steps",
                                                                       "latency_us", "energy_uj")}
                                 for bound, value in report["bounds"].items()}}
    return rows


def _collect_structure() -> dict[str, Any]:
    """Neuron layers and steps per inference of full-size models, both conventions (no data)."""
    import timm
    from transformers import BertConfig, BertForSequenceClassification

    from lava_spikedattn.ann import prepare_bert, prepare_swin, prepare_vit
    from lava_spikedattn.data import load_minilm_classifier
    from lava_spikedattn.layers import layer_count, steps_per_inference
    from lava_spikedattn.models import family_of

    models = {"Swin-T": (prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)), 40),
              "ViT-S": (prepare_vit(timm.create_model("vit_small_patch16_224", pretrained=False)), 40),
              "all-MiniLM-L6-v2": (prepare_bert(load_minilm_classifier(num_labels=2)[0]), 16),
              "BERT-base": (prepare_bert(BertForSequenceClassification(BertConfig())), 16)}
    rows = []
    for name, (model, timesteps) in models.items():
        family = family_of(model)
        architecture = family.architecture(model)
        for convention in ("exact", "official"):
            layers = family.layer_graph(architecture, convention)
            rows.append({"model": name, "convention": convention, "timesteps": timesteps,
                         "layers": layer_count(layers), "steps": steps_per_inference(layers, timesteps)})
    return {"rows": rows}


STEPS: dict[str, Step] = {
    "demo": Step("spikedattn demo", [*SPIKEDATTN, "demo", "--out", str(WORK / "demo"), "--no-progress"],
                 "closed-form reference engine (whole test set, T sweep); Lava fused and decomposed (first images); "
                 "Lava fixed_pt (the port's images)", "float32 (closed form), float64 (Lava)",
                 "Fashion-MNIST test split, 10 000 images (sweep: first 1 000)", _collect_demo("demo")),
    "demo_vit": Step("spikedattn demo --model vit",
                     [*SPIKEDATTN, "demo", "--model", "vit", "--out", str(WORK / "demo_vit"), "--no-progress"],
                     "as spikedattn demo", "float32 (closed form), float64 (Lava)",
                     "Fashion-MNIST test split, 10 000 images (sweep: first 1 000)", _collect_demo("demo_vit")),
    "text_t8": Step(f"python -m lava_spikedattn.text_demo {' '.join(TEXT_T8)}",
                    [sys.executable, "-m", "lava_spikedattn.text_demo", *TEXT_T8, "--no-progress"],
                    "closed-form reference engine; Lava fused (3 sentences)", "float32",
                    "Rotten-Tomatoes polarity (SST-2 proxy): all 8 250 train sentences, 2 062 held out",
                    lambda: _collect_text("demo-text-t8")),
    "text": Step("python -m lava_spikedattn.text_demo --fresh",
                 [sys.executable, "-m", "lava_spikedattn.text_demo", "--fresh", "--no-progress"],
                 "closed-form reference engine", "float32",
                 "Rotten-Tomatoes polarity (SST-2 proxy), 2 062 held-out sentences", _collect_text),
    "port": Step("python benchmarks/bench_loihi_port.py", [sys.executable, "benchmarks/bench_loihi_port.py"],
                 "closed-form engine (float rows); integer network stepped in process by LavaNetwork.simulate; "
                 "Lava fixed_pt (first 4 images)", "float64 / integer", "Fashion-MNIST test split, 10 000 images",
                 _bench("bench_loihi_port")),
    "estimate": Step("spikedattn loihi-report weights/swin_fashion_mnist (and weights/vit_fashion_mnist); "
                     "spikedattn convert --model swin_tiny_patch4_window7_224 --data random --calib-batches 1 "
                     "--batch-size 1 --base 1.15 --timesteps 40 --out swin_t && spikedattn loihi-report swin_t "
                     "(and vit_small_patch16_224); spikedattn convert --model minilm --data rt-polarity "
                     "--calib-batches 1 --base 1.4 --timesteps 16 --out minilm && spikedattn loihi-report minilm "
                     "--seq-len 64",
                     ["sh", "-c", " && ".join(
                         [" ".join([*SPIKEDATTN, "loihi-report", f"weights/{shipped}_fashion_mnist", "--json",
                                    str(WORK / f"loihi_shipped_{label}.json")])
                          for shipped, label in (("swin", "Swin"), ("vit", "ViT"))]
                         + [" ".join([*SPIKEDATTN, "convert", "--model", model, "--data", "random", "--calib-batches",
                                      "1", "--batch-size", "1", "--base", "1.15", "--timesteps", "40",
                                      "--no-progress", "--out", str(WORK / label), "&&", *SPIKEDATTN, "loihi-report",
                                      str(WORK / label), "--json", str(WORK / f"loihi_{label}.json")])
                            for model, label in (("swin_tiny_patch4_window7_224", "Swin-T"),
                                                 ("vit_small_patch16_224", "ViT-S"))]
                         + [" ".join([*SPIKEDATTN, "convert", "--model", "minilm", "--data", "rt-polarity",
                                      "--calib-batches", "1", "--base", "1.4", "--timesteps", "16", "--no-progress",
                                      "--out", str(WORK / "MiniLM"), "&&", *SPIKEDATTN, "loihi-report",
                                      str(WORK / "MiniLM"), "--seq-len", "64", "--json",
                                      str(WORK / "loihi_MiniLM.json")])])],
                     "resource model (lava_spikedattn.loihi, docs/loihi2_mapping.md), no run", "-",
                     "shipped Swin and ViT; Swin-T, ViT-S (random init, converted on 1 random image); the bundled "
                     "pre-trained all-MiniLM-L6-v2 (converted on one batch of rt-polarity sentences, 64 tokens)",
                     _collect_estimate),
    "structure": Step("python benchmarks/make_results.py --only structure", None,
                      "layer graph (no run)", "-", "none (random init; the bundled MiniLM)", _collect_structure),
    "convert": Step("python benchmarks/bench_convert.py", [sys.executable, "benchmarks/bench_convert.py"],
                    "ANN, closed-form and stepped engines", "float32 (stepped: float64 inside)",
                    "random inputs, random-init models", _bench("bench_convert")),
    "engines": Step("python benchmarks/bench_engines.py", [sys.executable, "benchmarks/bench_engines.py"],
                    "float attention, closed form, stepped", "float64", "Gaussian q, k, v", _bench("bench_engines")),
    "lava_attention": Step("python benchmarks/bench_lava_attention.py",
                           [sys.executable, "benchmarks/bench_lava_attention.py"], "Lava floating_pt vs closed form",
                           "float64", "Gaussian q, k, v", _bench("bench_lava_attention")),
    "phase_aware": Step("python benchmarks/bench_phase_aware.py", [sys.executable, "benchmarks/bench_phase_aware.py"],
                        "closed-form reference engine", "float32", "Fashion-MNIST test split, 10 000 images",
                        _bench("bench_phase_aware")),
    "lava_network": Step("python benchmarks/bench_lava_network.py --no-profile",
                         [sys.executable, "benchmarks/bench_lava_network.py", "--no-profile"],
                         "Lava floating_pt (fused, decomposed) vs stepped reference", "float64",
                         "synthetic inputs, tiny models trained 30 steps", _bench("bench_lava_network")),
}


# --- rendering the README blocks ------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _int(value: float) -> str:
    return f"{round(value):,}".replace(",", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _caption(results: dict[str, Any], *names: str) -> str:
    parts = []
    for name in names:
        step = results["steps"][name]
        parts.append(f"`{step['command']}` ({step['engine']}; {step['dtype']}; {step['data']})")
    dates = " and ".join(sorted({results["steps"][name]["date"] for name in names}))
    return "Made by " + "; ".join(parts) + f" on {dates}; re-made by `make results`."


def _render_demo(results: dict[str, Any]) -> list[str]:
    text = results["steps"]["text"]["result"]
    rows = []
    for step, name in (("demo", "shipped Swin (`weights/`)"), ("demo_vit", "shipped ViT (`weights/`)")):
        demo = results["steps"][step]["result"]
        ref = demo["reference"]
        rows.append([name, f"Fashion-MNIST ({_int(ref['samples'])})", f"{demo['base']:g}, {demo['timesteps']}",
                     _pct(ref["ann_accuracy"]), _pct(ref["snn_accuracy"]), _pct(ref["agreement"]),
                     _int(ref["spikes_per_inference"]),
                     f"{ref['energy']['official']['ratio']:.2f} / {ref['energy']['complete']['ratio']:.2f}"])
    rows += [["all-MiniLM-L6-v2, fine-tuned", f"Rotten-Tomatoes polarity, SST-2 proxy ({_int(text['samples'])})",
             f"{text['base']:g}, {text['timesteps']}", _pct(text["ann_accuracy"]), _pct(text["snn_accuracy"]),
             _pct(text["agreement"]), _int(text["spikes_per_inference"]),
             f"{text['energy']['official']['ratio']:.2f} / {text['energy']['complete']['ratio']:.2f}"]]
    lines = _table(["model", "data (test)", "B, T", "ANN acc.", "SNN acc.", "agreement", "spikes",
                    "SNN/ANN energy official / complete"], rows)
    saturated = [_int(results["steps"][step]["result"]["reference"]["saturated"]) for step in ("demo", "demo_vit")]
    return [*lines, "", f"{saturated[0]} (Swin) and {saturated[1]} (ViT) values of the whole Fashion-MNIST test set "
                        f"exceed their calibrated scale and are clipped (counted in `evaluation.json`).",
            "", _caption(results, "demo", "demo_vit", "text")]


def _render_demo_lava(results: dict[str, Any]) -> list[str]:
    rows = []
    for step, model in (("demo", "shipped Swin"), ("demo_vit", "shipped ViT")):
        lava = results["steps"][step]["result"]["lava"]
        for mode, run in (("fused", lava), ("decomposed", lava["decomposed"])):
            rows.append([model, mode, run["processes"], run["samples"], _pct(run["correct"] / run["samples"]),
                         f"{run['same_class_as_reference']}/{run['samples']}",
                         f"{run['max_relative_logit_difference']:.1e}", f"{run['seconds_per_image']:.2f} s"])
    return [*_table(["model", "Lava network", "processes", "images", "accuracy", "same class as the closed-form engine",
                     "max logit difference (relative)", "wall per image (compile included)"], rows), "",
            _caption(results, "demo", "demo_vit")]


def _render_sweep(results: dict[str, Any]) -> list[str]:
    sweep = results["steps"]["demo"]["result"]["sweep"]
    header = ["T", *(str(row["timesteps"]) for row in sweep)]
    rows = [["B", *(f"{row['base']:.2f}" for row in sweep)],
            [f"SNN accuracy (ANN {_pct(sweep[0]['ann_accuracy'])})", *(_pct(row["snn_accuracy"]) for row in sweep)],
            ["SNN/ANN energy (complete)", *(f"{row['energy']['complete']['ratio']:.2f}" for row in sweep)],
            ["steps per inference", *(str(row["steps_per_inference"]) for row in sweep)]]
    return [*_table(header, rows), "", f"On the first {_int(sweep[0]['samples'])} test images, B chosen by "
            "`search_base` for each T. " + _caption(results, "demo")]


def _render_port(results: dict[str, Any]) -> list[str]:
    port = results["steps"]["port"]["result"]
    rows = [[row["network"], f"{row['accuracy_%']:.2f} %", f"{row['agreement_with_ANN_%']:.2f} %",
             f"{row['same_class_as_float_SNN_%']:.2f} %", f"{row['logit_diff_vs_float_SNN']:.3f}"]
            for row in port["rows"]]
    meta = port["meta"]
    clips = {label: _int(sum(counts.values())) for label, counts in meta["integer_port_clipped_values"].items()}
    return [*_table(["network", "accuracy", "agreement with the ANN", "same class as the float SNN",
                     "‖logits − float SNN‖ / ‖float SNN‖"], rows), "",
            f"Integer port: {meta['integer_port_seconds_per_image']:.2f} s per image in process; values clipped at "
            f"their width (24-bit state, 40-bit accumulators, 48-bit products): {clips['default widths']}. With "
            f"32-bit accumulators and 13-bit payloads, first {_int(meta['narrow_images'])} images: "
            f"{clips['32-bit accumulators']} clipped, same class as the integer port on "
            f"{meta['narrow_same_class_as_integer_port']}. Lava fixed_pt vs in process on the same images: "
            f"same class "
            f"{meta['lava_same_class_as_integer_port']}, max |logit difference| "
            f"{meta['lava_max_abs_logit_difference_vs_integer_port']:g}. " + _caption(results, "port")]


def _render_estimate(results: dict[str, Any]) -> list[str]:
    def both(row: dict[str, Any], key: str, fmt: Callable[[float], str]) -> str:
        cells = [fmt(row["bounds"][bound][key]) for bound in ("optimistic", "pessimistic")]
        return cells[0] if cells[0] == cells[1] else " – ".join(cells)

    def mj(uj: float) -> str:
        return f"{uj / 1e3:.2f}" if uj < 1e5 else _int(uj / 1e3)

    rows = [[name, f"{row['timesteps']}", _int(row["neurons"]), _int(row["trace_products"]),
             both(row, "cores", _int), both(row, "chips", str), both(row, "chip_steps", _int),
             both(row, "step_ns", lambda ns: f"{ns / 1e3:.1f}"), both(row, "latency_us", lambda us: f"{us / 1e3:.1f}"),
             both(row, "energy_uj", mj)]
            for name, row in results["steps"]["estimate"]["result"].items()]
    return [*_table(["model", "T", "neurons", "trace-product terms", "cores", "chips", "steps on chip",
                     "µs per step", "latency (ms)", "energy per inference (mJ)"], rows), "",
            "Each cell: optimistic – pessimistic bound, trace products as product neurons (design A1). "
            + _caption(results, "estimate")]


def _render_structure(results: dict[str, Any]) -> list[str]:
    rows = [[row["model"], row["convention"], row["timesteps"], row["layers"], _int(row["steps"])]
            for row in results["steps"]["structure"]["result"]["rows"]]
    return [*_table(["model", "convention", "T", "neuron layers", "steps per inference"], rows), "",
            _caption(results, "structure")]


def _render_convert(results: dict[str, Any]) -> list[str]:
    rows = [[row["model"], row["engine"], row["batch"], f"{row['s/image']:.3g}", f"{row['x ANN']:.1f}",
             f"{row['cos vs ANN']:.4f}"] for row in results["steps"]["convert"]["result"]["rows"]]
    return [*_table(["model", "engine", "batch", "s per input", "× ANN time", "logit cosine vs ANN"], rows), "",
            _caption(results, "convert")]


def _render_engines(results: dict[str, Any]) -> list[str]:
    rows = [[row["engine"], f"{row['ms']:.1f}", f"{row['x float']:.2f}", f"{row['rel. error vs float']:.3f}"]
            for row in results["steps"]["engines"]["result"]["rows"]]
    return [*_table(["engine", "ms", "× float", "rel. error vs float attention"], rows), "",
            _caption(results, "engines")]


def _render_lava_attention(results: dict[str, Any]) -> list[str]:
    rows = [[row["tokens x heads x dim"], row["processes"], f"{row['total_s']:.2f}", f"{row['steps/s']:.0f}",
             f"{row['max |lava-closed|']:.1e}"] for row in results["steps"]["lava_attention"]["result"]["rows"]]
    return [*_table(["tokens × heads × dim", "processes", "total s", "steps/s", "max abs(Lava − closed)"], rows),
            "", _caption(results, "lava_attention")]


def _render_lava_network(results: dict[str, Any]) -> list[str]:
    rows = []
    for row in results["steps"]["lava_network"]["result"]["rows"]:
        timed = isinstance(row.get("run_s"), float)
        rows.append([row["model"], row["mode"], row["batch"], row["processes"], row["steps/sample"],
                     f"{row['wall/sample_s']:.2f} s" if timed else "–",
                     f"{row['steps/s']:.0f}" if timed else "–",
                     f"{row['max rel diff']:.1e}" if timed else "–"])
    return [*_table(["model", "mode", "batch", "Lava processes", "steps per sample", "wall per sample",
                     "steps/s", "max rel. logit diff vs stepped"], rows), "", _caption(results, "lava_network")]


def _render_text_t8(results: dict[str, Any]) -> list[str]:
    text = results["steps"]["text_t8"]["result"]
    energy = f"{text['energy']['official']['ratio']:.2f} / {text['energy']['complete']['ratio']:.2f}"
    rows = [["unprepared MiniLM (GELU, LayerNorm)", "-", _pct(text["unprepared_ann_accuracy"]), "-", "-", "-"],
            ["prepared ANN (MA-BERT: running-affine norms, ReLU)", "-", _pct(text["untuned_ann_accuracy"]), "-", "-",
             "-"],
            ["prepared ANN, tuned phase-aware at T=8 (1 epoch)", f"{text['base']:g}, {text['timesteps']}",
             _pct(text["ann_accuracy"]), _pct(text["snn_accuracy"]), _pct(text["agreement"]), energy]]
    return [*_table(["network", "B, T", "ANN acc.", "SNN acc.", "agreement", "SNN/ANN energy official / complete"],
                    rows), "",
            f"SNN − its ANN: {100 * (text['snn_accuracy'] - text['ann_accuracy']):+.2f} points; all "
            f"{_int(text['train_sentences'])} train sentences, {text['epochs']} epochs each fine-tuning, "
            f"{_int(text['samples'])} held-out sentences. " + _caption(results, "text_t8")]


def _render_phase_aware(results: dict[str, Any]) -> list[str]:
    rows = [[row["model"], row["conversion"], f"{row['B']:g}, {row['T']}", row["steps"], _pct(row["ANN acc."]),
             _pct(row["SNN acc."]), _pct(row["agreement"]),
             f"{row['SNN/ANN energy official']:.2f} / {row['SNN/ANN energy complete']:.2f}",
             f"{row['SNN mJ complete']:.4f}"] for row in results["steps"]["phase_aware"]["result"]["rows"]]
    return [*_table(["model", "conversion", "B, T", "steps", "ANN acc.", "SNN acc.", "agreement",
                     "SNN/ANN energy official / complete", "SNN mJ (complete)"], rows), "",
            _caption(results, "phase_aware")]


BLOCKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "demo": _render_demo, "demo_lava": _render_demo_lava, "sweep": _render_sweep, "port": _render_port,
    "estimate": _render_estimate, "structure": _render_structure, "convert": _render_convert,
    "engines": _render_engines, "lava_attention": _render_lava_attention, "lava_network": _render_lava_network,
    "phase_aware": _render_phase_aware, "text_t8": _render_text_t8,
}
BLOCK_RE = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def render(results: dict[str, Any]) -> dict[str, str]:
    """{block name: the README text between its markers}."""
    return {name: "\n".join(make(results)) + "\n" for name, make in BLOCKS.items()}


def readme_blocks(text: str) -> dict[str, str]:
    """{block name: text between its markers} of a README."""
    return {match.group(2): match.group(3) for match in BLOCK_RE.finditer(text)}


def rewrite_readme(results: dict[str, Any]) -> None:
    blocks = render(results)
    text = README.read_text()
    missing = set(blocks) - set(readme_blocks(text))
    if missing:
        raise SystemExit(f"README.md lacks the result block(s) {sorted(missing)}: add "
                         f"'<!-- results:NAME -->' / '<!-- /results:NAME -->' lines where each belongs")
    README.write_text(BLOCK_RE.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(4), text))


# --- running ---------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    from importlib import metadata

    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "versions": {name: metadata.version(name) for name in VERSIONED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated steps, of {','.join(STEPS)} (default: all)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the README from docs/results.json")
    args = parser.parse_args()
    names = list(STEPS) if args.only is None else args.only.split(",")
    unknown = [name for name in names if name not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    results = _read(RESULTS_JSON) if RESULTS_JSON.is_file() else {"steps": {}}
    if not args.render_only:
        env = environment()
        if results["steps"] and results.get("environment", {}).get("versions") != env["versions"] and \
                set(names) != set(STEPS):
            parser.error("docs/results.json was made with other package versions: re-make every step "
                         "(no --only)")
        WORK.mkdir(parents=True, exist_ok=True)
        for name in names:
            step = STEPS[name]
            print(f"== {name}: {step.command}", flush=True)
            start = time.perf_counter()
            if step.argv is not None:
                subprocess.run(step.argv, cwd=ROOT, check=True)
            results["steps"][name] = {"command": step.command, "engine": step.engine, "dtype": step.dtype,
                                      "data": step.data, "date": time.strftime("%Y-%m-%d"),
                                      "seconds": round(time.perf_counter() - start, 1), "result": step.collect()}
            results["environment"] = env
            RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    rewrite_readme(json.loads(RESULTS_JSON.read_text()))  # as written (sorted keys): as the tests render it
    print(f"written {RESULTS_JSON.relative_to(ROOT)} and the README's result blocks")


if __name__ == "__main__":
    main()
