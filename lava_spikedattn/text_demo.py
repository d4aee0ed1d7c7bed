"""Text demo: MiniLM on Rotten-Tomatoes polarity (SST-2 proxy), ANN vs one-spike SNN.

::

    python -m lava_spikedattn.text_demo            # all stages, cached in .cache/demo-text/
    python -m lava_spikedattn.text_demo --fresh    # redo every stage

Stages, each cached in ``--cache-dir`` and reused when its recorded settings match and its
output loads and has the recorded SHA-256:

1. fine-tune: the pre-trained all-MiniLM-L6-v2, prepared MA-BERT style (``prepare_bert``:
   PowerNorm, ReLU), fine-tuned for sentence polarity on the train split of
   :func:`~lava_spikedattn.data.split_rt_polarity` -> ``ann.safetensors`` (an ANN checkpoint,
   :func:`~lava_spikedattn.checkpoint.load_ann_checkpoint` reloads it) + ``ann.json``;
2. convert: :func:`~lava_spikedattn.convert.convert` with B=1.4, T=16 (exact convention),
   calibrated on train sentences -> ``snn/`` (:class:`~lava_spikedattn.converted_model.ConvertedModel`)
   + ``snn.json``;
3. evaluate: ANN vs the SNN on the closed-form engine over the held-out split ->
   ``summary.json`` (accuracies, agreement, spikes per sentence, stage times, full report);
4. Lava (``--lava N``, not cached): the first N held-out sentences, one at a time, through the
   converted MiniLM as Lava processes (fused, float; :func:`run_lava`), each checked against the
   closed-form engine.

A shorter window: ``--timesteps 8`` converts at T=8 with ``search_base``'s B (T=16 keeps B=1.4),
``--phase-aware EPOCHS`` fine-tunes the prepared ANN through the converted network's rounding
(:func:`~lava_spikedattn.phase_aware.finetune_phase_aware`, on the same train sentences) before
it is converted (the tuned ANN is ``ann_phase_aware.safetensors``), and ``--baseline`` also
fine-tunes the unprepared MiniLM (GELU, LayerNorm) the same way and evaluates it: what the
preparation costs. The T=8 recipe of the README::

    python -m lava_spikedattn.text_demo --cache-dir .cache/demo-text-t8 --limit-train all --epochs 3 \
        --timesteps 8 --phase-aware 1 --baseline

The data set is the Rotten-Tomatoes sentence-polarity corpus SST-2 was built from, not SST-2.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lava_spikedattn.checkpoint import load_ann_checkpoint, save_ann_checkpoint
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.data import Batches
from lava_spikedattn.evaluate import EvaluationReport

DATASET = "Rotten-Tomatoes polarity (SST-2 proxy)"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "demo-text"
BASE, TIMESTEPS, CONVENTION = 1.4, 16, "exact"
PHASE_AWARE_LR = 1e-4  # AdamW, cosine decay to 0 over the phase-aware epochs
# Config keys that are not BertConfig fields (as BertFamily.build_ann drops them).
_NOT_CONFIG = ("transformers_version", "_name_or_path", "architectures", "_attn_implementation_autoset")


def sentence_batches(texts: list[str], labels: list[int], tokenizer: Any, seq_len: int,
                     batch_size: int) -> Batches:
    """Dict batches (input_ids, attention_mask, token_type_ids, labels), padded to the longest
    sentence of the batch and truncated to ``seq_len`` tokens, as the CLI's rt-polarity data."""
    def make(start: int, stop: int) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts[start:stop], padding="longest", truncation=True, max_length=seq_len,
                          return_tensors="pt")
        return {**batch, "labels": torch.tensor(labels[start:stop])}

    return Batches(len(texts), batch_size, make)


def _read_stamp(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON at ``path`` if it records exactly ``settings``, else None."""
    try:
        stamp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("settings") == settings else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(partial, path)


def _length_batched_order(texts: list[str], limit: int | None, batch_size: int, seed: int) -> list[int]:
    """A seeded random ``limit`` of the sentences, arranged so that each batch holds sentences of
    similar length (little padding: sentences average 27 tokens, up to 73) and the batches come in a
    seeded random order (the last, partial batch last)."""
    g = torch.Generator().manual_seed(seed)
    chosen = sorted(torch.randperm(len(texts), generator=g)[:limit].tolist(), key=lambda i: len(texts[i]))
    full = len(chosen) // batch_size
    batches = [chosen[b * batch_size:(b + 1) * batch_size] for b in torch.randperm(full, generator=g).tolist()]
    return [i for batch in batches for i in batch] + chosen[full * batch_size:]


def _train_batches(settings: dict[str, Any]) -> Batches:
    """The fine-tuning batches: ``limit_train`` seeded-random train sentences, length-batched."""
    from lava_spikedattn.data import split_rt_polarity

    texts, labels = split_rt_polarity()[0]
    order = _length_batched_order(texts, settings["limit_train"], settings["batch_size"], settings["seed"])
    return sentence_batches([texts[i] for i in order], [labels[i] for i in order], _tokenizer(),
                            settings["seq_len"], settings["batch_size"])


def _finetune(settings: dict[str, Any], progress: bool, prepared: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(fine-tuned MiniLM, its checkpoint kwargs): seeded head init, data order, dropout;
    ``prepared``: MA-BERT prepared (``prepare_bert``), else the stock model (GELU, LayerNorm)."""
    from lava_spikedattn.ann import finetune, prepare_bert
    from lava_spikedattn.data import load_minilm_classifier

    torch.manual_seed(settings["seed"])
    model, _ = load_minilm_classifier(num_labels=2)
    kwargs = _config_kwargs(model)
    if prepared:
        model = prepare_bert(model)
    finetune(model, _train_batches(settings), epochs=settings["epochs"], lr=settings["lr"], progress=progress)
    return model, kwargs


def _config_kwargs(model: nn.Module) -> dict[str, Any]:
    """The checkpoint kwargs of a Hugging Face BERT: its config without the non-BertConfig keys."""
    return {k: v for k, v in model.config.to_dict().items() if k not in _NOT_CONFIG}


def _accuracy(model: nn.Module, batches: Batches) -> float:
    """Held-out accuracy of an ANN classifier (eval mode, no grad)."""
    from lava_spikedattn.evaluate import ann_logits, split_batch

    correct = total = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            inputs, labels = split_batch(batch)
            correct += int((ann_logits(model, inputs).argmax(-1) == labels).sum())
            total += len(labels)
    return correct / total


def _tokenizer() -> Any:
    """The bundled MiniLM's tokenizer (bert-base-uncased vocabulary)."""
    from transformers import AutoTokenizer

    from lava_spikedattn.data import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def _calibration_batches(settings: dict[str, Any]) -> Batches:
    """The first ``calib_batches`` batches of the (unshuffled) train split."""
    from lava_spikedattn.data import split_rt_polarity

    texts, labels = split_rt_polarity()[0]
    n = settings["calib_batches"] * settings["batch_size"]
    return sentence_batches(texts[:n], labels[:n], _tokenizer(), settings["seq_len"], settings["batch_size"])


def _test_batches(settings: dict[str, Any]) -> Batches:
    """The held-out split (first ``limit_test``), sorted by length so batches pad little."""
    from lava_spikedattn.data import split_rt_polarity

    texts, labels = split_rt_polarity()[1]
    texts, labels = texts[:settings["limit_test"]], labels[:settings["limit_test"]]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return sentence_batches([texts[i] for i in order], [labels[i] for i in order], _tokenizer(),
                            settings["seq_len"], settings["eval_batch_size"])


def run(cache_dir: Path = DEFAULT_CACHE, *, fresh: bool = False, limit_train: int | None = 4000,
        limit_test: int | None = None, seq_len: int = 64, epochs: int = 1, batch_size: int = 32,
        lr: float = 2e-4, calib_batches: int = 8, eval_batch_size: int = 64, seed: int = 0,
        timesteps: int = TIMESTEPS, phase_aware: int = 0, baseline: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) the three stages; returns the summary with ``stages`` = {stage: "ran"/"cached"}.
    ``timesteps``, ``phase_aware`` (epochs, 0: none) and ``baseline``: the module docstring."""
    from lava_spikedattn.base_search import search_base
    from lava_spikedattn.convert import convert
    from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
    from lava_spikedattn.data import fetch_rt_polarity, split_rt_polarity
    from lava_spikedattn.evaluate import evaluate
    from lava_spikedattn.phase_aware import finetune_phase_aware

    if timesteps < 1 or phase_aware < 0:
        raise ValueError(f"timesteps must be >= 1 and phase_aware >= 0, got {timesteps} and {phase_aware}")

    fetch_rt_polarity()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ann_path, ann_stamp_path = cache_dir / "ann.safetensors", cache_dir / "ann.json"
    snn_path, snn_stamp_path = cache_dir / "snn", cache_dir / "snn.json"
    summary_path = cache_dir / "summary.json"
    tune = {"model": "all-MiniLM-L6-v2", "limit_train": limit_train, "seq_len": seq_len, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed}
    calib = {**tune, "base": BASE if timesteps == TIMESTEPS else "search_base", "timesteps": timesteps,
             "convention": CONVENTION, "calib_batches": calib_batches}
    if phase_aware:
        calib["phase_aware"] = {"epochs": phase_aware, "lr": PHASE_AWARE_LR, "alpha": 0.5, "cosine": True}
    test = {**calib, "limit_test": limit_test, "eval_batch_size": eval_batch_size, "engine": "closed",
            "baseline": baseline}
    stages = {}

    stamp = None if fresh else _read_stamp(ann_stamp_path, tune)
    ann = None
    if stamp is not None:
        try:
            ann, _ = load_ann_checkpoint(ann_path)
        except (OSError, ValueError):
            pass
    if ann is not None and tensor_sha256(ann.state_dict()) == stamp["sha256"]:
        stages["finetune"] = "cached"
    else:
        ann_stamp_path.unlink(missing_ok=True)
        start = time.perf_counter()
        ann, kwargs = _finetune(tune, progress)
        stamp = {"settings": tune, "seconds": time.perf_counter() - start, "sha256": tensor_sha256(ann.state_dict())}
        save_ann_checkpoint(ann, ann_path, family="bert", model_name="bert", model_kwargs=kwargs)
        _write_json(ann_stamp_path, stamp)
        stages["finetune"] = "ran"
    ann_stamp = stamp

    tuned_path = cache_dir / "ann_phase_aware.safetensors"
    stamp = None if fresh else _read_stamp(snn_stamp_path, calib)
    cm = tuned = None
    if stamp is not None:
        try:
            cm = ConvertedModel.load(snn_path)
            tuned = load_ann_checkpoint(tuned_path)[0] if phase_aware else ann
        except (OSError, ValueError):  # ConvertedModelError, a missing or bad checkpoint
            cm = None
    if (cm is not None and stamp.get("ann_sha256") == ann_stamp["sha256"]  # made from this ANN
            and cm.config["source_sha256"] == stamp["source_sha256"] == tensor_sha256(tuned.state_dict())):
        stages["convert"] = "cached"
    else:
        snn_stamp_path.unlink(missing_ok=True)
        start = time.perf_counter()
        calibration = _calibration_batches(calib)
        code = PhaseCode(BASE, TIMESTEPS, CONVENTION)
        if timesteps != TIMESTEPS:
            probe = convert(ann, calibration, PhaseCode(2.0, timesteps, CONVENTION))
            code = PhaseCode(round(search_base(probe, timesteps, batches=calibration).base, 2), timesteps, CONVENTION)
        if phase_aware:
            tuned, cm = finetune_phase_aware(copy.deepcopy(ann), code, _train_batches(tune), calibration,
                                             epochs=phase_aware, lr=PHASE_AWARE_LR, alpha=0.5, cosine=True,
                                             progress=progress)
            save_ann_checkpoint(tuned, tuned_path, family="bert", model_name="bert", model_kwargs=_config_kwargs(ann))
        else:
            tuned, cm = ann, convert(ann, calibration, code)
        stamp = {"settings": calib, "seconds": time.perf_counter() - start, "ann_sha256": ann_stamp["sha256"],
                 "source_sha256": cm.config["source_sha256"]}
        cm.save(snn_path)
        _write_json(snn_stamp_path, stamp)
        stages["convert"] = "ran"
    snn_stamp = stamp

    summary = None if fresh else _read_stamp(summary_path, test)
    if summary is not None and summary.get("snn_sha256") == cm.config["weights_sha256"]:
        summary["stages"] = {**stages, "evaluate": "cached"}
        return summary
    summary_path.unlink(missing_ok=True)
    start = time.perf_counter()
    held_out = _test_batches(test)
    report = evaluate(tuned, cm.to_reference("closed"), held_out, progress=progress)
    seconds = time.perf_counter() - start
    result = report.to_json()
    extra: dict[str, Any] = {}
    if phase_aware:  # the ANN the phase-aware tuning started from, on the same sentences
        extra["untuned_ann_accuracy"] = _accuracy(ann, held_out)
    if baseline:  # the stock MiniLM (GELU, LayerNorm) fine-tuned the same way: what the preparation costs
        begin = time.perf_counter()
        stock, _ = _finetune(tune, progress, prepared=False)
        extra["unprepared_ann_accuracy"] = _accuracy(stock, held_out)
        extra["baseline_seconds"] = time.perf_counter() - begin
    summary = {
        "settings": test, "dataset": DATASET, "code": cm.code.describe(),
        "test_sentences": report.samples, "train_sentences": len(split_rt_polarity()[0][0][:limit_train]),
        "ann_accuracy": report.ann_accuracy, "snn_accuracy": report.snn_accuracy, "agreement": report.agreement,
        "spikes_per_sentence": result["spikes_per_sample"],
        "neurons_per_sentence": report.neurons / report.samples if report.samples else None,
        "folding_error": cm.config["calibration"].get("folding_error"),
        "seconds": {"finetune": ann_stamp["seconds"], "convert": snn_stamp["seconds"], "evaluate": seconds},
        "snn_sha256": cm.config["weights_sha256"], "report": result, **extra,
    }
    _write_json(summary_path, summary)
    summary["stages"] = {**stages, "evaluate": "ran"}
    return summary


def run_lava(cache_dir: Path = DEFAULT_CACHE, sentences: int = 3, *, progress: bool = True) -> dict[str, Any]:
    """The first ``sentences`` held-out sentences through the cached converted MiniLM as Lava
    processes (fused, float), one sentence per run, each compared with the closed-form engine
    (:func:`~lava_spikedattn.lava_evaluation.evaluate_lava`). Run :func:`run` first."""
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.data import split_rt_polarity
    from lava_spikedattn.lava_evaluation import evaluate_lava

    summary = json.loads((Path(cache_dir) / "summary.json").read_text())
    cm = ConvertedModel.load(Path(cache_dir) / "snn")
    texts, labels = split_rt_polarity()[1]
    batches = sentence_batches(texts[:sentences], labels[:sentences], _tokenizer(), summary["settings"]["seq_len"], 1)
    start = time.perf_counter()
    result = evaluate_lava(cm, batches, progress=progress)
    seconds = time.perf_counter() - start
    return {**result.to_json(), "seconds_per_sentence": seconds / max(result.samples, 1)}


def lava_line(lava: dict[str, Any]) -> str:
    """One line for the terminal about :func:`run_lava`'s result."""
    return (f"  Lava (fused, float)   {lava['same_class']}/{lava['samples']} sentences the closed-form engine's "
            f"class (max logit difference {lava['max_relative_difference']:.1e}), {lava['correct']}/"
            f"{lava['labeled']} correct; {lava['seconds_per_sentence']:.1f} s per sentence, "
            f"{lava['processes']} processes, {lava['neurons']:,} neurons")


def table(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    seconds = summary["seconds"]
    rows = [
        f"MiniLM (all-MiniLM-L6-v2, MA-BERT prepared) on {summary['dataset']}, SNN: {summary['code']}",
        f"  test sentences        {summary['test_sentences']}",
        f"  ANN accuracy          {percent(summary['ann_accuracy'])}"
        + ("" if "untuned_ann_accuracy" not in summary else
           f" (phase-aware tuned; before tuning {percent(summary['untuned_ann_accuracy'])})"),
        *([] if "unprepared_ann_accuracy" not in summary else
          [f"  unprepared ANN        {percent(summary['unprepared_ann_accuracy'])} (GELU, LayerNorm; fine-tuned "
           f"the same way)"]),
        f"  SNN accuracy          {percent(summary['snn_accuracy'])}",
        f"  agreement             {percent(summary['agreement'])}",
        (f"  spikes per sentence   {summary['spikes_per_sentence']:,.0f} "
         f"(of {summary['neurons_per_sentence']:,.0f} neurons)"),
        (f"  seconds               fine-tune {seconds['finetune']:.0f}, convert {seconds['convert']:.0f}, "
         f"evaluate {seconds['evaluate']:.0f}"),
        "  stages                " + ", ".join(f"{k} {v}" for k, v in summary["stages"].items()),
    ]
    report = EvaluationReport.from_json(summary["report"])
    for counting in ("official", "complete"):
        energy = report.energy(counting)
        rows.append(f"  energy ({counting:8s})   ANN {energy.ann_total_pj / 1e9:.4f} mJ, SNN "
                    f"{energy.snn_total_pj / 1e9:.4f} mJ per sentence, SNN/ANN {energy.ratio:.2f}")
    return "\n".join(rows)


def _limit(text: str) -> int | None:
    """A positive count, or 0 / 'all' for no limit."""
    if text == "all":
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {value}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lava_spikedattn.text_demo",
        description=f"Fine-tune the pre-trained MiniLM (MA-BERT prepared) on {DATASET}, convert it to a "
                    f"one-spike SNN (B={BASE}, T={TIMESTEPS} by default) and compare ANN and SNN on the held-out "
                    "split. "
                    "Each stage is cached and reused when its settings match.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="folder for the fine-tuned ANN, the converted SNN and summary.json "
                             "(default: .cache/demo-text/ in the repository, git-ignored)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage, ignoring the cache")
    parser.add_argument("--limit-train", type=_limit, default=4000, metavar="N",
                        help="fine-tune on N seeded-random train sentences; 'all' for all 8250 (default: 4000)")
    parser.add_argument("--limit-test", type=_limit, default=None, metavar="N",
                        help="evaluate on the first N held-out sentences (default: all 2062)")
    parser.add_argument("--seq-len", type=int, default=64, metavar="N",
                        help="truncate sentences to N tokens (default: 64; cuts 6 of the 10312 sentences)")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="fine-tuning and calibration batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default: 2e-4)")
    parser.add_argument("--calib-batches", type=int, default=8, metavar="N",
                        help="calibrate the SNN's scales on N batches of train sentences (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of head init, data order, dropout (default: 0)")
    parser.add_argument("--timesteps", type=int, default=TIMESTEPS, metavar="T",
                        help=f"window T of the SNN; B from search_base unless T={TIMESTEPS} (B={BASE}) "
                             f"(default: {TIMESTEPS})")
    parser.add_argument("--phase-aware", type=int, default=0, metavar="EPOCHS",
                        help="fine-tune the ANN phase-aware for EPOCHS on the train sentences before converting "
                             "(default: 0, post-training conversion)")
    parser.add_argument("--baseline", action="store_true",
                        help="also fine-tune the unprepared MiniLM (GELU, LayerNorm) the same way and evaluate it")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                        help="torch CPU threads (default: the cores available to this process)")
    parser.add_argument("--lava", type=int, default=3, metavar="N",
                        help="held-out sentences run through Lava (fused, one per run; 0: none) (default: 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    summary = run(args.cache_dir, fresh=args.fresh, limit_train=args.limit_train, limit_test=args.limit_test,
                  seq_len=args.seq_len, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  calib_batches=args.calib_batches, seed=args.seed, timesteps=args.timesteps,
                  phase_aware=args.phase_aware, baseline=args.baseline, progress=not args.no_progress)
    print(table(summary))
    if args.lava > 0:
        lava = run_lava(args.cache_dir, args.lava, progress=not args.no_progress)
        print(lava_line(lava))
        if lava["same_class"] != lava["samples"]:
            print("text_demo: error: the Lava network predicted another class than the reference engine",
                  file=sys.stderr)
            return 1
    print(f"  this run              {time.perf_counter() - start:.1f} s; summary: {args.cache_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
