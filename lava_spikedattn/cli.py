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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lava_spikedattn.checkpoint import check_checkpoint_architecture, load_ann_checkpoint, save_ann_checkpoint
from lava_spikedattn.coding import CONVENTIONS, PhaseCode
from lava_spikedattn.data import RANDOM_SAMPLES, Batches
from lava_spikedattn.models import ModelFamily, family_for_model_name, family_names, get_family

__all__ = ["build_parser", "main"]

#: Every family's data sets, for ``--data``.
ALL_DATASETS = tuple(dict.fromkeys(d for name in family_names() for d in get_family(name).datasets))


class UsageError(Exception):
    """An invalid or inconsistent option found after parsing: exit status 2, like argparse."""


# --- demo ---------------------------------------------------------------------------------------------
def _timesteps_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 8,16,32, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 8,16,32, got {text!r}")
    return values


def cmd_demo(args: argparse.Namespace) -> int:
    from lava_spikedattn.demo import DemoSettings, run_demo

    if args.lava_samples > (args.limit or args.lava_samples):
        raise UsageError(f"--lava-samples {args.lava_samples} is more than --limit {args.limit}")
    _check_output("--out", args.out, folder=True)
    run_demo(DemoSettings(model=args.model, ann=args.ann, out=args.out, lava_samples=args.lava_samples,
                          limit=args.limit, sweep=args.sweep, sweep_limit=args.sweep_limit,
                          threads=args.threads, progress=not args.no_progress))
    return 0


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


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100], got {text!r}") from None
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100], got {value:g}")
    return value


def _resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {text}: CUDA is not available on this machine (torch.cuda.is_available() "
                           f"is False); use --device cpu")
    return device


def _check_output(option: str, path: Path | None, *, folder: bool = False, example: str = "out.json") -> None:
    """Refuse an output path that cannot be written, before any work is done.

    ``folder``: ``path`` names a folder to create or fill (``--out``), else a file to create or
    overwrite. The path itself need not exist; its nearest existing ancestor must be a writable
    folder (missing folders in between are created when the output is written). Raises
    :class:`UsageError` naming the option, the path and the fix. Nothing is created here.
    """
    if path is None:
        return
    if path.exists():
        if folder and not path.is_dir():
            raise UsageError(f"{option} {path} is an existing file, not a folder; name a new folder or an "
                             f"existing one (or remove the file)")
        if not folder and path.is_dir():
            raise UsageError(f"{option} {path} is a folder; name a file, e.g. {path / example}")
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise UsageError(f"{option} {path} is not writable (no permission); choose a path you can write "
                             f"to or change its permissions")
        return
    ancestor = path.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path} cannot be created: {ancestor} is a file, not a folder; choose a "
                         f"path inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} cannot be created: the folder {ancestor} is not writable; choose a "
                         f"path in a folder you can write to")


def _write_text(path: Path, text: str) -> None:
    """Write an output file checked by :func:`_check_output` (its missing folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _say(text: str) -> None:
    """Print on rank 0 only."""
    from lava_spikedattn import distributed

    if distributed.world()[0] == 0:
        print(text, flush=True)


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


# --- convert ------------------------------------------------------------------------------------------------
def _check_dataset(family: ModelFamily, data: str) -> None:
    if data not in family.datasets:
        raise UsageError(f"--data {data} does not fit a {family.name} model; choose one of "
                         f"{', '.join(family.datasets)}")


def _batches(family: ModelFamily, info: dict[str, Any], args: argparse.Namespace, split: str,
             limit: int | None) -> Batches:
    return family.batches(args.data, split, limit=limit, batch_size=args.batch_size, info=info, seed=args.seed,
                          seq_len=args.seq_len)


def _build_ann(args: argparse.Namespace) -> tuple[nn.Module, ModelFamily, str, dict[str, Any]]:
    """(prepared ANN in eval mode, its family, builder name, builder kwargs) from the options."""
    if args.checkpoint is not None:
        if args.num_classes or args.img_size or args.in_chans or args.model_kwargs:
            raise UsageError("--num-classes, --img-size, --in-chans and --model-kwargs describe a --model; a "
                             "--checkpoint carries its own")
        model, metadata = load_ann_checkpoint(args.checkpoint)
        return model, get_family(metadata["family"]), metadata["model"], metadata["model_kwargs"]
    family = family_for_model_name(args.model)
    kwargs = dict(args.model_kwargs or {})
    for option, key in ((args.num_classes, "num_classes"), (args.img_size, "img_size"), (args.in_chans, "in_chans")):
        if option is not None:
            if key not in family.model_options:
                raise UsageError(f"--{key.replace('_', '-')} applies to image models, not {args.model}")
            kwargs[key] = option
    torch.manual_seed(args.seed)
    model, name, stored = family.build_ann(args.model, kwargs)
    return family.prepare(model).eval(), family, name, stored


def cmd_convert(args: argparse.Namespace) -> int:
    from lava_spikedattn import distributed
    from lava_spikedattn.base_search import search_base

    def phase_code(base: float, timesteps: int) -> PhaseCode:
        try:
            return PhaseCode(base, timesteps, args.convention)
        except ValueError as error:
            raise UsageError(str(error)) from None

    numeric_base = args.base if isinstance(args.base, float) else None
    phase_code(2.0 if numeric_base is None else numeric_base, 1)  # bad values are usage errors: before any work
    _check_convert_outputs(args)
    device = distributed.init_from_env(_resolve_device(args.device))
    model, family, name, kwargs = _build_ann(args)
    _check_dataset(family, args.data)
    # "auto": a placeholder B until search_base has run (the scales do not depend on B).
    if numeric_base is None:
        numeric_base = 2.0 if args.base == "auto" else family.default_code[0]
    code = phase_code(numeric_base, family.default_code[1] if args.timesteps is None else args.timesteps)
    model.to(device)
    info = family.model_info(model)
    batches = _batches(family, info, args, "train", args.calib_batches * args.batch_size)
    if len(batches) == 0:
        raise ValueError(f"data set {args.data!r} has no training samples")
    cm = distributed.convert_distributed(model, _OnDevice(distributed.shard(batches), device), code,
                                         method=args.method, percentile=args.percentile, verify=not args.no_verify,
                                         progress=not args.no_progress)
    if args.base == "auto":
        base = None
        if distributed.world()[0] == 0:  # on the whole calibration set, so it does not depend on the ranks
            base = search_base(cm, code.timesteps, batches=batches).base  # runs the folded ANN on the CPU
        cm = cm.with_code(base=distributed.broadcast_object(base))
    if distributed.world()[0] == 0:
        folder = cm.save(args.out)
        if args.save_ann is not None:
            save_ann_checkpoint(model, args.save_ann, family=family.name, model_name=name, model_kwargs=kwargs)
        calibration = cm.config["calibration"]
        parameters = sum(p.numel() for p in model.parameters())
        print(f"converted {family.name} ({name}, {parameters / 1e6:.2f} M parameters) to {folder}")
        print(f"  {cm.summary()}")
        if args.base == "auto":
            print(f"  base B={cm.code.base:g} chosen by search_base on the calibration data")
        if "folding_error" in calibration:
            print(f"  folded network vs prepared model: relative error {calibration['folding_error']:.2e}")
        print(f"  calibration data: {args.data} (train split), {calibration['batches']} batches")
        if args.save_ann is not None:
            print(f"  prepared ANN written to {args.save_ann}")
    return 0


def _check_convert_outputs(args: argparse.Namespace) -> None:
    """``--out`` (a folder) and ``--save-ann`` (a file) can be written and do not collide."""
    from lava_spikedattn.converted_model import CONFIG_FILE, WEIGHTS_FILE, check_save_folder

    _check_output("--out", args.out, folder=True)
    try:
        check_save_folder(args.out)  # save() replaces the folder: never one with other files in it
    except FileExistsError as error:
        raise UsageError(f"--out: {error}") from None
    _check_output("--save-ann", args.save_ann, example="ann.safetensors")
    if args.save_ann is not None:
        save_ann, out = args.save_ann.absolute(), args.out.absolute()
        if save_ann == out or save_ann in (out / CONFIG_FILE, out / WEIGHTS_FILE):
            raise UsageError(f"--save-ann {args.save_ann} would overwrite the converted model in --out {args.out}; "
                             f"name another file, e.g. {args.out.parent / (args.out.name + '_ann.safetensors')}")


class _OnDevice:
    """``batches`` (with their length) moved to ``device`` one at a time, as they are iterated."""

    def __init__(self, batches: Any, device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        from lava_spikedattn.evaluate import to_device

        return (to_device(batch, self.device) for batch in self.batches)


# --- evaluate ------------------------------------------------------------------------------------------------
def _load_for_evaluation(args: argparse.Namespace) -> tuple[Any, nn.Module | None, Batches]:
    """(converted model, ANN checkpoint or None, batches of --data) from the shared options."""
    from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256

    cm = ConvertedModel.load(args.folder)
    family = cm.family
    _check_dataset(family, args.data)
    ann = None
    if getattr(args, "ann", None) is not None:
        ann, metadata = load_ann_checkpoint(args.ann)
        check_checkpoint_architecture(args.ann, ann, metadata["family"], args.folder, cm.config)
        if tensor_sha256(ann.state_dict()) != cm.config["source_sha256"]:
            print(f"spikedattn {args.command}: warning: {args.ann} is not the model {args.folder} was converted "
                  f"from (its weights' sha256 differs from source_sha256 in config.json)", file=sys.stderr)
    info = family.architecture_info(cm.config["architecture"])
    batches = _batches(family, info, args, args.split, args.limit)
    if len(batches) == 0:
        raise ValueError(f"data set {args.data!r} ({args.split} split) has no samples")
    return cm, ann, batches


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lava_spikedattn import distributed
    from lava_spikedattn.evaluate import evaluate

    _check_output("--json", args.json, example="report.json")
    device = distributed.init_from_env(_resolve_device(args.device))
    cm, ann, batches = _load_for_evaluation(args)
    report = evaluate(ann, cm.to_reference(args.engine), distributed.shard(batches), device=device,
                      progress=not args.no_progress, compare_layers=not args.no_layers)
    report.meta.update(folder=str(args.folder), data=args.data, split=args.split)
    if distributed.world()[0] == 0:
        print(report.table())
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            print(f"\nwritten {report.save(args.json)}")
    return 0


# --- energy ----------------------------------------------------------------------------------------------
def cmd_energy(args: argparse.Namespace) -> int:
    from lava_spikedattn import distributed
    from lava_spikedattn.evaluate import evaluate

    _check_output("--json", args.json, example="energy.json")
    device = distributed.init_from_env(_resolve_device(args.device))
    cm, ann, batches = _load_for_evaluation(args)
    report = evaluate(ann, cm.to_reference("closed"), distributed.shard(batches), device=device,
                      progress=not args.no_progress, compare_layers=False)
    countings = ("official", "complete") if args.counting == "both" else (args.counting,)
    energies = {counting: report.energy(counting) for counting in countings}
    if distributed.world()[0] == 0:
        print(f"{args.folder}: {cm.code.describe()}, {report.samples} samples of {args.data} ({args.split})")
        print(f"ANN accuracy {_fraction(report.ann_accuracy)}, SNN accuracy {_fraction(report.snn_accuracy)}, "
              f"agreement {_fraction(report.agreement)}, spikes per inference {report.spikes / report.samples:,.0f}")
        for energy in energies.values():
            print()
            print(energy.table() if args.layers else energy.table().splitlines()[-1])
            if not args.layers:
                print(f"  ANN {energy.ann_total_pj / 1e9:.6f} mJ, SNN {energy.snn_total_pj / 1e9:.6f} mJ per "
                      f"inference ({energy.counting} counting)")
        if args.json is not None:
            _write_text(args.json, json.dumps({"folder": str(args.folder), "data": args.data, "split": args.split,
                                               "samples": report.samples,
                                               **{c: e.to_json() for c, e in energies.items()}}, indent=1) + "\n")
            print(f"\nwritten {args.json}")
    return 0


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


# --- run-lava --------------------------------------------------------------------------------------------
def cmd_run_lava(args: argparse.Namespace) -> int:
    from lava_spikedattn.lava_evaluation import evaluate_lava

    _check_output("--json", args.json, example="lava.json")
    cm, _, batches = _load_for_evaluation(args)
    precision = "integer (fixed_pt)" if args.fixed else "float"
    print(f"{args.folder}: {cm.code.describe()}, {cm.steps_per_inference} steps per inference, {precision} Lava "
          f"{args.mode} network on {args.limit} samples of {args.data} ({args.split})")
    result = evaluate_lava(cm, batches, mode=args.mode, fixed=args.fixed, progress=not args.no_progress)
    samples, same = result.samples, result.same_class
    print(f"  same class as the (float) closed-form reference engine: {same}/{samples}; max logit difference "
          f"{result.max_relative_difference:.1e} (relative)")
    if args.fixed:
        print(f"  logits equal to the in-process integer simulation, bit for bit: {result.equal_to_simulation}/"
              f"{samples}; clipped values: {sum(result.clips.values())}")
    if result.labeled:
        print(f"  Lava accuracy {result.correct}/{result.labeled} ({result.correct / result.labeled:.2%})")
    print(f"  {result.processes} Lava processes, {result.neurons:,} neurons, {result.synapses:,} token-wise "
          f"weights; {result.steps_simulated:,} steps simulated")
    if args.json is not None:
        _write_text(args.json, json.dumps(result.to_json(), indent=1) + "\n")
        print(f"\nwritten {args.json}")
    if args.fixed:
        if result.equal_to_simulation != samples:
            print(f"spikedattn run-lava: error: the Lava integer network differs from the in-process integer "
                  f"simulation on {samples - result.equal_to_simulation} sample(s)", file=sys.stderr)
            return 1
        return 0
    if same != samples:
        print(f"spikedattn run-lava: error: the Lava network predicted another class than the reference engine on "
              f"{samples - same} sample(s)", file=sys.stderr)
        return 1
    return 0


# --- loihi-report ----------------------------------------------------------------------------------------
def _step_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of microseconds, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number of microseconds, got {text!r}")
    return value


def cmd_loihi_report(args: argparse.Namespace) -> int:
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.loihi import quantize_for_loihi, resource_estimate

    _check_output("--json", args.json, example="loihi.json")
    cm = ConvertedModel.load(args.folder)
    inputs = cm.family.example_input(cm.config["architecture"], seq_len=args.seq_len)
    timing = {} if args.step_time_us is None else {"step_time_us": args.step_time_us}
    report = resource_estimate(cm, inputs=inputs, **timing)
    quantization = quantize_for_loihi(cm)
    print(f"{args.folder}: {cm.code.describe()}")
    print(report.table())
    worst = max(quantization.weights, key=lambda w: w.rel_error)
    widest = max(n.threshold_bits for n in quantization.neurons)
    print(f"\n8-bit weights (one exponent per tensor): worst relative error {worst.rel_error:.2e} ({worst.name}), "
          f"{sum(w.zeroed for w in quantization.weights):,} small weights rounded to 0; largest threshold "
          f"{widest} of {quantization.neurons[0].state_bits} state bits")
    if args.quantization:
        print("\n" + quantization.table())
    if args.json is not None:
        _write_text(args.json, json.dumps({**report.to_json(), "quantization": quantization.to_json()}, indent=1)
                    + "\n")
        print(f"\nwritten {args.json}")
    return 0


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

    from lava_spikedattn.demo import DEFAULT_ANN, DEFAULT_MODEL, DemoSettings

    defaults = DemoSettings()
    demo = sub.add_parser(
        "demo", help="the shipped Fashion-MNIST Swin through Lava and the reference engine, with figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the shipped converted Swin (weights/, trained on Fashion-MNIST): a few test images through\n"
            "the Lava network (checked against the reference engine), the whole test set on the closed-form\n"
            "engine (ANN vs SNN accuracy, agreement, spikes, energy of spec §7 from measured activity), and a\n"
            "sweep of the window T; write summary.json, evaluation.json and PNG figures to --out."))
    demo.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="FOLDER",
                      help=f"converted Swin folder (default: {DEFAULT_MODEL})")
    demo.add_argument("--ann", type=Path, default=DEFAULT_ANN, metavar="CHECKPOINT",
                      help=f"the prepared ANN it was converted from (default: {DEFAULT_ANN})")
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
            "  spikedattn convert --checkpoint trained.safetensors --data mnist-5k --base auto --out snn\n\n"
            "--model builds a randomly initialised model (pretrained weights are never downloaded): use it for\n"
            "structure and speed. Bring trained weights with --checkpoint: a safetensors file with the prepared,\n"
            "fine-tuned model's state dict and metadata format=lava-spikedattn-ann, version=1, family,\n"
            "model (timm name or 'bert') and model_kwargs (JSON), as `--save-ann` and\n"
            "lava_spikedattn.checkpoint.save_ann_checkpoint() write it. Grey images are resized to the model's\n"
            "image size and repeated over its channels, without normalisation. Under torchrun the\n"
            "calibration batches are sharded and the maxima all-reduced (the result equals one process)."))
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME",
                        help="a timm Swin model name (e.g. swin_tiny_patch4_window7_224), built with "
                             "pretrained=False; or bert / bert-base (random-init BertForSequenceClassification) "
                             "or minilm (the bundled pre-trained MiniLM) for BERT")
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
                              "calibration data (default: the paper's, 1.15 for Swin, 1.4 for BERT)")
    convert.add_argument("--timesteps", type=_positive_int, metavar="T",
                         help="time steps per window T (default: the paper's, 40 for Swin, 16 for BERT)")
    convert.add_argument("--convention", choices=CONVENTIONS, default="exact",
                         help="exact: BatchNorms folded (7 neuron layers per Swin block); official: the "
                              "release's graph and level set (10 per block) (default: exact)")
    convert.add_argument("--method", choices=("max", "percentile"), default="max",
                         help="scale calibration: max |activation|, or the --percentile of it (keeps every "
                              "sample in memory: small calibration sets only) (default: max)")
    convert.add_argument("--percentile", type=_percentile, default=99.99, metavar="P",
                         help="percentile for --method percentile, in (0, 100] (default: 99.99)")
    convert.add_argument("--no-verify", action="store_true",
                         help="skip the check that the folded network reproduces the prepared model")
    convert.add_argument("--save-ann", type=Path, metavar="PATH",
                         help="also write the prepared ANN as a checkpoint (for `evaluate --ann`)")
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
            "status 1 if they differ) and its classes are reported against the float engine.\n\n"
            "  spikedattn run-lava weights/swin_fashion_mnist --data fashion-mnist --limit 4 [--fixed]"))
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
            "Estimate the Loihi 2 resources of a converted model from its geometry (nothing runs on Loihi):\n"
            "neurons, stored 8-bit weights, unrolled connections, trace-driven products, synaptic memory,\n"
            "neuro-cores and chips per layer and in total, steps per inference, latency at --step-time-us\n"
            "and pipelined throughput; and the 8-bit weight quantisation (quantize_for_loihi). The\n"
            "per-core and per-chip limits and their sources are listed in lava_spikedattn.loihi (some are\n"
            "assumptions, marked there).\n\n"
            "  spikedattn loihi-report weights/swin_fashion_mnist --json loihi.json"))
    loihi.add_argument("folder", type=Path, metavar="FOLDER", help="converted-model folder (from `convert`)")
    loihi.add_argument("--step-time-us", type=_step_time, metavar="US",
                       help="time of one algorithmic step in microseconds (default: 10, "
                            "lava_spikedattn.loihi.DEFAULT_STEP_TIME_US, an assumption; pass the one measured on "
                            "your system)")
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
                        help="data: fashion-mnist, mnist-5k, digits, rt-polarity (BERT), random")
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


#: Commands that run Lava processes: SIGTERM/SIGHUP stop them like ^C (runtime.handle_termination_signals).
RUNS_LAVA = ("run-lava", "demo")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    from lava_spikedattn.ann import UnsupportedModuleError  # after parsing: --help and usage errors stay fast
    from lava_spikedattn.converted_model import ConvertedModelError

    try:
        if args.command in RUNS_LAVA:  # SIGTERM/SIGHUP also between two Lava runs: the same clean exit
            from lava_spikedattn.runtime import handle_termination_signals

            with handle_termination_signals():
                return args.func(args)
        return args.func(args)
    except UsageError as error:
        args.parser.error(str(error))  # exits with 2
    except BrokenPipeError:  # stdout closed early (`spikedattn evaluate ... | head`): nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit; keep it quiet)
        return 1
    except SystemExit as error:  # LavaTerminated: SIGTERM/SIGHUP during a Lava run, its workers already stopped
        lava = sys.modules.get("lava_spikedattn.runtime")
        if lava is None or not isinstance(error, lava.LavaTerminated) or args.traceback:
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
