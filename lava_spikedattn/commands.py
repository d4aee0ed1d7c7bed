"""What each ``spikedattn`` command does, once :mod:`lava_spikedattn.cli` has parsed its options:
check the inputs and outputs up front, call the library, print its report.

Errors: :class:`UsageError` (an invalid or inconsistent option, or an output path that cannot be
written: exit status 2, like argparse); any other exception the command line reports with exit
status 1 (see :func:`lava_spikedattn.cli.main`).
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
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.data import Batches
from lava_spikedattn.models import ModelFamily, family_for_model_name, get_family

__all__ = ["PHASE_AWARE_LR", "UsageError", "cmd_convert", "cmd_demo", "cmd_energy", "cmd_evaluate", "cmd_loihi_report",
           "cmd_run_lava"]


#: AdamW learning rate of ``convert --phase-aware`` without ``--phase-aware-lr``.
PHASE_AWARE_LR = 5e-4


class UsageError(Exception):
    """An invalid or inconsistent option found after parsing: exit status 2, like argparse."""


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
    _check_phase_aware(args)
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
    if args.phase_aware is None or args.base == "auto":  # phase-aware tuning calibrates on its own
        cm = distributed.convert_distributed(model, _OnDevice(distributed.shard(batches), device), code,
                                             method=args.method, percentile=args.percentile,
                                             verify=not args.no_verify, progress=not args.no_progress)
    if args.base == "auto":  # B of the untuned model; phase-aware tuning then trains at that B
        base = None
        if distributed.world()[0] == 0:  # on the whole calibration set, so it does not depend on the ranks
            base = search_base(cm, code.timesteps, batches=batches).base  # runs the folded ANN on the CPU
        cm = cm.with_code(base=distributed.broadcast_object(base))
        code = cm.code
    if args.phase_aware is not None:
        model, cm, train_batches = _finetune_phase_aware(model, code, family, info, batches, args)
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
        if args.phase_aware is not None:
            lr = args.phase_aware_lr or PHASE_AWARE_LR
            ann_option = "" if args.save_ann is None else f" --ann {args.save_ann}"
            processes = distributed.world()[1]
            scales = "the scales learned" if args.learn_scales else "the last epoch's scales"
            print(f"  phase-aware fine-tuning: {args.phase_aware} epoch(s) of {train_batches} batches of {args.data} "
                  f"(train split), AdamW lr {lr:g}, on the CPU"
                  f"{f' in {processes} processes' if processes > 1 else ''}; converted with {scales}")
            if args.phase_aware_checkpoint is not None:
                print(f"  fine-tuning checkpoint in {args.phase_aware_checkpoint} (the same command resumes from it)")
            print(f"  how faithful the SNN is to the tuned ANN: spikedattn evaluate {args.out} --data {args.data}"
                  f"{ann_option}")
        if "folding_error" in calibration:
            print(f"  folded network vs prepared model: relative error {calibration['folding_error']:.2e}")
        print(f"  calibration data: {args.data} (train split), {calibration['batches']} batches")
        if args.save_ann is not None:
            print(f"  {'tuned' if args.phase_aware else 'prepared'} ANN written to {args.save_ann}")
    return 0


def _check_phase_aware(args: argparse.Namespace) -> None:
    """``--phase-aware`` and its options are consistent; under torchrun it runs on the CPU (gloo)."""
    if args.phase_aware is None:
        given = [option for option, value in (("--phase-aware-lr", args.phase_aware_lr),
                                              ("--train-batches", args.train_batches),
                                              ("--learn-scales", args.learn_scales),
                                              ("--phase-aware-checkpoint", args.phase_aware_checkpoint))
                 if value not in (None, False)]
        if given:
            raise UsageError(f"{' and '.join(given)}: only for phase-aware fine-tuning; add --phase-aware EPOCHS or "
                             f"leave out {' and '.join(given)}")
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and _resolve_device(args.device).type == "cuda":
        raise UsageError(f"--phase-aware under torchrun trains on the CPU, whose processes communicate through "
                         f"gloo, not the GPUs' nccl; add --device cpu (--device {args.device} means cuda here)")
    checkpoint = args.phase_aware_checkpoint
    _check_output("--phase-aware-checkpoint", checkpoint, folder=True)
    if checkpoint is not None and args.out.absolute() in (checkpoint.absolute(), *checkpoint.absolute().parents):
        raise UsageError(f"--phase-aware-checkpoint {checkpoint} lies in --out {args.out}, which the converted model "
                         f"replaces; name a folder outside it")
    if args.no_verify:
        raise UsageError("--no-verify does not apply to --phase-aware (its conversions always verify the folded "
                         "network); leave out --no-verify")


def _finetune_phase_aware(model: nn.Module, code: PhaseCode, family: ModelFamily, info: dict[str, Any],
                          calibration: Batches, args: argparse.Namespace) -> tuple[nn.Module, Any, int]:
    """(tuned ANN, its converted model, training batches): ``finetune_phase_aware`` of ``model`` at
    ``code`` on the first ``--train-batches`` batches of the train split (all by default), the
    scales recalibrated on ``calibration`` after each epoch (or learned, ``--learn-scales``). On the
    CPU, where the library trains; under torchrun each process trains on its share of the batches and
    calibrates on all of them."""
    from lava_spikedattn import distributed
    from lava_spikedattn.phase_aware import finetune_phase_aware

    limit = None if args.train_batches is None else args.train_batches * args.batch_size
    loader = _batches(family, info, args, "train", limit)
    tuned, cm = finetune_phase_aware(model.cpu(), code, distributed.shard(loader), calibration,
                                     epochs=args.phase_aware, lr=args.phase_aware_lr or PHASE_AWARE_LR,
                                     method=args.method, percentile=args.percentile, progress=not args.no_progress,
                                     checkpoint=args.phase_aware_checkpoint, learn_scales=args.learn_scales)
    return tuned, cm, len(loader)


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
    from lava_spikedattn import distributed
    from lava_spikedattn.lava_evaluation import evaluate_lava

    _check_output("--json", args.json, example="lava.json")
    distributed.init_from_env("cpu")  # under torchrun: each rank runs its shard through its own Lava graph
    rank0 = distributed.world()[0] == 0
    say = print if rank0 else (lambda *_, **__: None)
    cm, _, batches = _load_for_evaluation(args)
    precision = "integer (fixed_pt)" if args.fixed else "float"
    say(f"{args.folder}: {cm.code.describe()}, {cm.steps_per_inference} steps per inference, {precision} Lava "
          f"{args.mode} network on {args.limit} samples of {args.data} ({args.split})")
    result = evaluate_lava(cm, batches, mode=args.mode, fixed=args.fixed, progress=not args.no_progress)
    samples, same = result.samples, result.same_class
    say(f"  same class as the (float) closed-form reference engine: {same}/{samples}; max logit difference "
          f"{result.max_relative_difference:.1e} (relative)")
    if args.fixed:
        say(f"  logits equal to the in-process integer simulation, bit for bit: {result.equal_to_simulation}/"
              f"{samples}; clipped values: {sum(result.clips.values())}")
    if result.labeled:
        say(f"  Lava accuracy {result.correct}/{result.labeled} ({result.correct / result.labeled:.2%})")
    say(f"  {result.processes} Lava processes, {result.neurons:,} neurons, {result.synapses:,} token-wise "
          f"weights; {result.steps_simulated:,} steps simulated")
    if args.json is not None and rank0:
        report = {**result.to_json(), "ranks": distributed.world()[1]}
        _write_text(args.json, json.dumps(report, indent=1) + "\n")
        say(f"\nwritten {args.json}")
    if args.fixed:
        if result.equal_to_simulation != samples:
            say(f"spikedattn run-lava: error: the Lava integer network differs from the in-process integer "
                  f"simulation on {samples - result.equal_to_simulation} sample(s)", file=sys.stderr)
            return 1
        return 0
    if same != samples:
        say(f"spikedattn run-lava: error: the Lava network predicted another class than the reference engine on "
              f"{samples - same} sample(s)", file=sys.stderr)
        return 1
    return 0


# --- demo ---------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from lava_spikedattn.demo import DemoSettings, run_demo, shipped_model

    if args.lava_samples > (args.limit or args.lava_samples):
        raise UsageError(f"--lava-samples {args.lava_samples} is more than --limit {args.limit}")
    _check_output("--out", args.out, folder=True)
    run_demo(DemoSettings(model=shipped_model(args.model), ann=args.ann, out=args.out, lava_samples=args.lava_samples,
                          limit=args.limit, sweep=args.sweep, sweep_limit=args.sweep_limit,
                          threads=args.threads, progress=not args.no_progress))
    return 0



# --- loihi-report ----------------------------------------------------------------------------------------
def cmd_loihi_report(args: argparse.Namespace) -> int:
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.loihi import quantize_for_loihi, resource_estimate

    _check_output("--json", args.json, example="loihi.json")
    cm = ConvertedModel.load(args.folder)
    inputs = cm.family.example_input(cm.config["architecture"], seq_len=args.seq_len)
    report = resource_estimate(cm, inputs=inputs, design=args.design)
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
