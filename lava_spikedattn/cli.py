"""The ``spikedattn`` command line: ``demo``, ``convert`` and ``evaluate``.

Convert a timm Swin (random init, or a saved prepared checkpoint) and measure how faithful the
spiking network is::

    spikedattn convert --model swin_tiny_patch4_window7_224 --num-classes 10 --data fashion-mnist \\
        --calib-batches 8 --out swin_t_snn --save-ann swin_t_ann.safetensors
    spikedattn evaluate swin_t_snn --data fashion-mnist --limit 500 --ann swin_t_ann.safetensors \\
        --json report.json
    torchrun --nproc_per_node 4 -m lava_spikedattn.cli evaluate swin_t_snn --data fashion-mnist

Under ``torchrun`` both commands shard the batches over the processes and combine the results
exactly (calibration maxima all-reduced, metrics summed; see ``lava_spikedattn.distributed``);
rank 0 writes the files and prints.

ANN checkpoints (``--checkpoint``, ``--ann``, written by ``convert --save-ann``): see
:mod:`lava_spikedattn.checkpoint`. Model names, data sets and defaults come from the family
registry (:mod:`lava_spikedattn.models`); this module only parses arguments and calls the library.

Data (``--data``): images (fashion-mnist, mnist-5k, digits; grey, in [0, 1]) are resized
bilinearly to the model's image size and repeated over its input channels, no normalisation;
``rt-polarity`` sentences (BERT) are tokenised with the bundled MiniLM (bert-base-uncased)
vocabulary; ``random`` is seeded Gaussian images or random token ids with random labels.
``convert`` calibrates on the train split, ``evaluate`` uses the test split by default.

Exit status: 0 success; 2 a usage error (an invalid or inconsistent option, reported by
argparse with the usage line; output paths -- ``--json``, ``--out``, ``--save-ann`` -- that cannot
be written are refused this way before any work); 1 any other failure (a missing or corrupt file,
a missing data set, a model the converter cannot handle, an ``--ann`` of another family or
architecture than the converted model), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lava_spikedattn.coding import CONVENTIONS
from lava_spikedattn.commands import (
    PHASE_AWARE_LR,
    UsageError,
    cmd_convert,
    cmd_demo,
    cmd_energy,
    cmd_evaluate,
    cmd_loihi_report,
    cmd_run_lava,
)
from lava_spikedattn.data import RANDOM_SAMPLES
from lava_spikedattn.models import family_names, get_family
from lava_spikedattn.termination import LavaTerminated, handle_termination_signals

__all__ = ["build_parser", "main"]

FAMILIES = [get_family(name) for name in family_names()]
#: Every family's data sets, for ``--data``.
ALL_DATASETS = tuple(dict.fromkeys(d for family in FAMILIES for d in family.datasets))


def _per_family(describe) -> str:
    """``describe(family)`` for every registered family, as help text."""
    return "; ".join(f"{describe(family)} ({family.name})" for family in FAMILIES)


# --- demo ---------------------------------------------------------------------------------------------
def _timesteps_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 8,16,32, got {text!r}")
    return values


# --- shared option handling ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"embed_dim\": 32}}', got {text!r}")
    return value


def _base(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (1, 2] or 'auto', got {text!r}") from None


def _positive_float(expected: str, most: float = float("inf")) -> Callable[[str], float]:
    """An argparse type: a finite number in (0, ``most``]; refused as "expected ``expected``, got ..."."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (0.0 < value <= most and value != float("inf")):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _add_common(parser: argparse.ArgumentParser, batch_size: int = 16, device: bool = True) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="N",
                        help=f"samples per batch (per process under torchrun) (default: {batch_size})")
    parser.add_argument("--seq-len", type=_positive_int, default=128, metavar="N",
                        help="BERT only: tokens per sequence (truncation / random length) (default: 128)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random model initialisation and of --data random (default: 0)")
    if device:
        parser.add_argument("--device", default="auto",
                            help="auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N; under torchrun "
                                 "cuda means cuda:LOCAL_RANK (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


# --- parser and entry point -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikedattn", description="SpikedAttention: convert PyTorch transformers into one-spike "
        "phase-coded spiking networks and evaluate them on the reference engine.",
        epilog="Exit status: 0 success, 2 usage error, 1 other failure. Run `spikedattn COMMAND --help` for "
               "the options of a command.")
    parser.add_argument("--traceback", action="store_true",
                        help="on a failure, show the Python traceback instead of a one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from lava_spikedattn.demo import SHIPPED, DemoSettings

    defaults = DemoSettings()
    demo = sub.add_parser(
        "demo", help="a shipped Fashion-MNIST model through Lava and the reference engine, with figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a shipped converted model (weights/, trained on Fashion-MNIST; the Swin by default): a few\n"
            "test images through the Lava network (checked against the reference engine), the whole test set\n"
            "on the closed-form engine (ANN vs SNN accuracy, agreement, spikes, energy of spec §7 from\n"
            "measured activity), and a sweep of the window T; write summary.json, evaluation.json and PNG\n"
            "figures to --out."))
    demo.add_argument("--model", default="swin", metavar="NAME|FOLDER",
                      help=f"a shipped model ({', '.join(SHIPPED)}: weights/<name>_fashion_mnist) or a converted "
                           f"image model's folder (default: swin)")
    demo.add_argument("--ann", type=Path, metavar="CHECKPOINT",
                      help="the prepared ANN it was converted from (default: <FOLDER>_ann.safetensors beside it)")
    demo.add_argument("--out", type=Path, default=defaults.out, metavar="FOLDER",
                      help=f"where to write the figures and JSON (default: {defaults.out})")
    demo.add_argument("--lava-samples", type=_positive_int, default=defaults.lava_samples, metavar="N",
                      help=f"test images run through Lava, one Lava run each (default: {defaults.lava_samples})")
    demo.add_argument("--limit", type=_positive_int, metavar="N",
                      help="test images on the closed-form engine (default: the whole test set, 10 000)")
    demo.add_argument("--sweep", type=_timesteps_list, default=defaults.sweep, metavar="T,T,...",
                      help="windows T of the accuracy/energy sweep (default: "
                           f"{','.join(map(str, defaults.sweep))})")
    demo.add_argument("--sweep-limit", type=_positive_int, default=defaults.sweep_limit, metavar="N",
                      help=f"test images per sweep point (default: {defaults.sweep_limit})")
    demo.add_argument("--threads", type=_positive_int, default=defaults.threads, metavar="N",
                      help=f"torch threads of the reference engine (default: {defaults.threads}; more threads than "
                           f"idle cores slow it down many times)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    demo.set_defaults(func=cmd_demo, parser=demo)

    convert = sub.add_parser(
        "convert", help="calibrate and convert a prepared ANN into a converted-model folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build or load an ANN, prepare it (BatchNorm-style norms, ReLU), calibrate the per-neuron scales\n"
            "on --calib-batches batches of --data (train split), fold the norms and write the converted model\n"
            "(config.json + weights.safetensors) to --out.\n\n"
            "  spikedattn convert --model swin_tiny_patch4_window7_224 --num-classes 10 \\\n"
            "      --data fashion-mnist --out swin_t_snn --save-ann swin_t_ann.safetensors\n"
            "  spikedattn convert --checkpoint trained.safetensors --data mnist-5k --base auto --out snn\n"
            "  spikedattn convert --checkpoint trained.safetensors --data mnist-5k --timesteps 12 --phase-aware 3 \\\n"
            "      --out snn_t12 --save-ann tuned_t12.safetensors\n\n"
            "--model builds a randomly initialised model (pretrained weights are never downloaded): use it for\n"
            "structure and speed. Bring trained weights with --checkpoint: a safetensors file with the prepared,\n"
            "fine-tuned model's state dict and metadata format=lava-spikedattn-ann, version=1, family,\n"
            "model (timm name or 'bert') and model_kwargs (JSON), as `--save-ann` and\n"
            "lava_spikedattn.checkpoint.save_ann_checkpoint() write it. Grey images are resized to the model's\n"
            "image size and repeated over its channels, without normalisation. Under torchrun the\n"
            "calibration batches are sharded and the maxima all-reduced (the result equals one process).\n"
            "--phase-aware first fine-tunes the ANN through the converted network's rounding at the requested\n"
            "code, on the CPU, data-parallel under torchrun (lava_spikedattn.phase_aware.finetune_phase_aware)."))
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME",
                        help="the model to build (pretrained weights are never downloaded): "
                             + _per_family(lambda family: family.model_names))
    source.add_argument("--checkpoint", metavar="PATH", type=Path,
                        help="a prepared ANN checkpoint (safetensors state dict + builder metadata, see above)")
    convert.add_argument("--num-classes", type=_positive_int, metavar="N",
                         help="classifier outputs of --model (default: the model's, 1000 for timm Swin, 2 for BERT)")
    convert.add_argument("--img-size", type=_positive_int, metavar="N",
                         help="image side of --model (Swin; default: the model's, 224)")
    convert.add_argument("--in-chans", type=_positive_int, metavar="N",
                         help="input channels of --model (Swin; default: 3); grey data is repeated over them")
    convert.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                         help="more keyword arguments for the model builder as a JSON object, e.g. "
                              "'{\"embed_dim\": 32, \"depths\": [2, 2], \"num_heads\": [2, 4], \"window_size\": 4}' "
                              "(timm) or BertConfig fields (BERT)")
    convert.add_argument("--data", required=True, choices=ALL_DATASETS,
                         help="calibration data (train split): fashion-mnist, mnist-5k, digits (images), "
                              "rt-polarity (BERT), random (seeded noise, always available)")
    convert.add_argument("--calib-batches", type=_positive_int, default=8, metavar="N",
                         help="calibration batches, in all processes together (default: 8)")
    convert.add_argument("--base", type=_base, metavar="B",
                         help="phase-code base B in (1, 2], or 'auto' to pick it with search_base on the "
                              "calibration data (default: the paper's, "
                              + _per_family(lambda family: f"{family.default_code[0]:g}") + ")")
    convert.add_argument("--timesteps", type=_positive_int, metavar="T",
                         help="time steps per window T (default: the paper's, "
                              + _per_family(lambda family: f"{family.default_code[1]}") + ")")
    convert.add_argument("--convention", choices=CONVENTIONS, default="exact",
                         help="exact: BatchNorms folded (7 neuron layers per Swin block); official: the "
                              "release's graph and level set (10 per block) (default: exact)")
    convert.add_argument("--method", choices=("max", "percentile"), default="max",
                         help="scale calibration: max |activation|, or the --percentile of it (keeps every "
                              "sample in memory: small calibration sets only) (default: max)")
    convert.add_argument("--percentile", type=_positive_float("a number in (0, 100]", 100.0), default=99.99,
                         metavar="P", help="percentile for --method percentile, in (0, 100] (default: 99.99)")
    convert.add_argument("--no-verify", action="store_true", help="skip checking the fold against the prepared model")
    convert.add_argument("--phase-aware", type=_positive_int, metavar="EPOCHS",
                         help="fine-tune the ANN for EPOCHS epochs through the SNN's rounding first (default: off)")
    convert.add_argument("--phase-aware-lr", type=_positive_float("a positive learning rate like 5e-4"),
                         metavar="LR", help=f"AdamW learning rate of --phase-aware (default: {PHASE_AWARE_LR:g})")
    convert.add_argument("--train-batches", type=_positive_int, metavar="N",
                         help="--phase-aware trains on the first N batches of the train split (default: all)")
    convert.add_argument("--learn-scales", action="store_true", help="--phase-aware learns the scales (LSQ)")
    convert.add_argument("--phase-aware-checkpoint", type=Path, metavar="FOLDER",
                         help="--phase-aware checkpoints here after every epoch, and resumes from it (default: none)")
    convert.add_argument("--save-ann", type=Path, metavar="PATH",
                         help="also write the prepared ANN (tuned, with --phase-aware) for `evaluate --ann`")
    convert.add_argument("--out", required=True, type=Path, metavar="FOLDER",
                         help="folder to write config.json and weights.safetensors to (created if needed)")
    _add_common(convert)
    convert.set_defaults(func=cmd_convert, parser=convert)

    evaluate = sub.add_parser(
        "evaluate", help="compare a converted model with its ANN: accuracy, agreement, per-layer fidelity, spikes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a converted model on the spiking reference engine and on its folded ANN, and print ANN and\n"
            "SNN accuracy, prediction agreement, per-layer cosine similarity and relative error of the\n"
            "decoded activations, spike counts and saturation.\n\n"
            "  spikedattn evaluate swin_t_snn --data fashion-mnist --limit 500 --json report.json\n"
            "  torchrun --nproc_per_node 4 -m lava_spikedattn.cli evaluate swin_t_snn --data mnist-5k\n\n"
            "Without --ann the ANN is the folded network itself (equal to the prepared model up to float\n"
            "rounding). Under torchrun the batches are sharded and the metrics combined exactly."))
    _add_evaluation_inputs(evaluate)
    evaluate.add_argument("--engine", choices=("closed", "stepped"), default="closed",
                          help="closed: closed-form phase code (fast); stepped: time-stepped dynamics (the "
                               "oracle, slow) (default: closed)")
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    evaluate.add_argument("--no-layers", action="store_true",
                          help="skip the per-layer fidelity (less memory; spike counts are kept)")
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate, parser=evaluate)

    energy = sub.add_parser(
        "energy", help="energy per inference of a converted model vs its ANN, from measured activity (spec §7)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a converted model on the closed-form engine and its folded ANN over --data, measure every\n"
            "synapse's input spike rate, neuron activity and the ANN's activation density, and print the\n"
            "energy per inference of spec §7 (45 nm, 32-bit: add 0.9 pJ, multiply 3.7 pJ, memory access\n"
            "5.0 pJ; Horowitz, ISSCC 2014, as the release uses them).\n\n"
            "  spikedattn energy weights/swin_fashion_mnist --data fashion-mnist --limit 1000 --layers\n\n"
            "official counting reproduces the release's bookkeeping (it leaves out every MLP's fc2 and the\n"
            "residual additions; compare with the paper's 42 %% / 58 %% savings); complete counts every layer."))
    _add_evaluation_inputs(energy)
    energy.add_argument("--counting", choices=("official", "complete", "both"), default="both",
                        help="which bookkeeping to print (default: both)")
    energy.add_argument("--layers", action="store_true", help="print one row per synapse, not only the totals")
    energy.add_argument("--json", type=Path, metavar="PATH", help="also write the energy reports as JSON to PATH")
    _add_common(energy)
    energy.set_defaults(func=cmd_energy, parser=energy)

    run_lava = sub.add_parser(
        "run-lava", help="run a converted model as Lava Processes on Lava's CPU simulator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build the Lava network of a converted model (one Process per layer-level operator) and run\n"
            "--limit samples of --data through Lava's CPU simulator (Loihi2SimCfg), comparing every\n"
            "prediction and logit with the closed-form reference engine. Exit status 1 if any prediction\n"
            "differs. Lava costs about 1 ms per process and step: keep --limit small.\n"
            "--fixed runs the integer network of the Loihi 2 port (fixed_pt models: 24-bit state, 8-bit\n"
            "weights); it is compared bit for bit with the same integer graph stepped in process (exit\n"
            "status 1 if they differ) and its classes are reported against the float engine. Under torchrun\n"
            "each process runs its share of the batches through its own Lava graph; the counts are exact.\n\n"
            "  spikedattn run-lava weights/swin_fashion_mnist --data fashion-mnist --limit 4 [--fixed]\n"
            "  torchrun --nproc_per_node 2 -m lava_spikedattn.cli run-lava weights/swin_fashion_mnist \\\n"
            "      --data fashion-mnist --limit 16 --batch-size 4"))
    _add_evaluation_inputs(run_lava, limit=4, ann=False)
    run_lava.add_argument("--mode", choices=("fused", "decomposed"), default="fused",
                          help="fused: one OS process per block (fast); decomposed: every population and "
                               "synapse its own Process, the porting path (about 7x slower) (default: fused)")
    run_lava.add_argument("--fixed", action="store_true",
                          help="run the integer (fixed_pt) network of the Loihi 2 port instead of the float one")
    run_lava.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    _add_common(run_lava, batch_size=1, device=False)
    run_lava.set_defaults(func=cmd_run_lava, parser=run_lava)

    loihi = sub.add_parser(
        "loihi-report", help="what a converted model needs on Loihi 2: neurons, synapses, memory, cores, chips, time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Estimate the Loihi 2 resources of a converted model from its geometry, in the mapping of\n"
            "docs/loihi2_mapping.md (nothing runs on Loihi): per layer neurons, stored 8-bit weights,\n"
            "synaptic operations, trace-product terms, WOSS inhibitors and neuro-cores; then, in an optimistic\n"
            "and a pessimistic bound (each figure sourced or marked an assumption in that document): cores,\n"
            "chips, memory, step time, steps, latency, pipelined throughput and energy per inference; and the\n"
            "8-bit weight quantisation (quantize_for_loihi).\n\n"
            "  spikedattn loihi-report weights/swin_fashion_mnist --json loihi.json"))
    loihi.add_argument("folder", type=Path, metavar="FOLDER", help="converted-model folder (from `convert`)")
    loihi.add_argument("--design", choices=("A1", "B"), default="A1",
                       help="how the spike x spike products hold their terms: A1 product neurons (default), B "
                            "synapses written by the learning engine (docs/loihi2_mapping.md section 3)")
    loihi.add_argument("--seq-len", type=_positive_int, default=128, metavar="N",
                       help="BERT only: tokens per sentence the estimate is made for (default: 128)")
    loihi.add_argument("--quantization", action="store_true",
                       help="also print the fixed-point parameters: each weight tensor's exponent and error, each "
                            "neuron layer's payload and current units (quantize_for_loihi)")
    loihi.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    loihi.set_defaults(func=cmd_loihi_report, parser=loihi)
    return parser


def _add_evaluation_inputs(parser: argparse.ArgumentParser, limit: int | None = None, ann: bool = True) -> None:
    """The converted-model folder and the data options shared by evaluate, energy and run-lava."""
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="converted-model folder (from `convert`)")
    parser.add_argument("--data", required=True, choices=ALL_DATASETS,
                        help="data: " + _per_family(lambda family: ", ".join(family.datasets)))
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="which split of --data (default: test)")
    default = f"{limit}" if limit is not None else f"all; {RANDOM_SAMPLES} for random"
    parser.add_argument("--limit", type=_positive_int, default=limit, metavar="N",
                        help=f"use the first N samples only (default: {default})")
    if ann:
        parser.add_argument("--ann", type=Path, metavar="CHECKPOINT",
                            help="the prepared ANN checkpoint the model was converted from (ANN accuracy and "
                                 "agreement against the real model; an error if its family or architecture "
                                 "differs, a warning if only its weights' sha256 does)")


#: Commands that run Lava processes: SIGTERM/SIGHUP stop them like ^C (termination.handle_termination_signals).
RUNS_LAVA = ("run-lava", "demo")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    from lava_spikedattn.converted_model import ConvertedModelError  # after parsing: --help stays fast
    from lava_spikedattn.models.folding import UnsupportedModuleError

    try:
        if args.command in RUNS_LAVA:  # SIGTERM/SIGHUP also between two Lava runs: the same clean exit
            with handle_termination_signals():
                return args.func(args)
        return args.func(args)
    except UsageError as error:
        args.parser.error(str(error))  # exits with 2
    except BrokenPipeError:  # stdout closed early (`spikedattn evaluate ... | head`): nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit; keep it quiet)
        return 1
    except LavaTerminated as error:  # SIGTERM/SIGHUP during a Lava run, its workers already stopped
        if args.traceback:
            raise
        print(f"spikedattn {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ConvertedModelError, UnsupportedModuleError, FileNotFoundError, OSError, ValueError, TypeError,
            RuntimeError, KeyError) as error:
        if args.traceback:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"spikedattn {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 1  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
