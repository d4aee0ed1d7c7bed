"""The ``spikedattn`` command line: convert, evaluate, help, exit codes (lava_spikedattn.cli)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny_models import SWIN

from lava_spikedattn.checkpoint import load_ann_checkpoint, save_ann_checkpoint
from lava_spikedattn.cli import build_parser, main
from lava_spikedattn.evaluate import EvaluationReport

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``spikedattn argv`` run in this process."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


# cli_converted: (converted folder, ANN checkpoint) of a convert of SWIN (tests/conftest.py)


def test_convert_writes_a_loadable_folder_and_checkpoint(cli_converted):
    from lava_spikedattn.converted_model import ConvertedModel

    folder, checkpoint = cli_converted
    cm = ConvertedModel.load(folder)
    assert cm.config["family"] == "swin" and cm.n_layers == 32
    assert (cm.config["base"], cm.config["timesteps"], cm.config["convention"]) == (1.15, 40, "exact")
    assert cm.config["calibration"]["batches"] == 2 and cm.config["calibration"]["samples"] == 16
    model, metadata = load_ann_checkpoint(checkpoint)
    assert metadata["family"] == "swin" and metadata["model"] == "swin_tiny_patch4_window7_224"
    assert metadata["model_kwargs"]["img_size"] == 16 and metadata["model_kwargs"]["num_classes"] == 10
    from lava_spikedattn.converted_model import tensor_sha256

    assert tensor_sha256(model.state_dict()) == cm.config["source_sha256"]  # the model that was converted


def test_convert_prints_a_summary(tmp_path, capsys):
    status, out, err = run(capsys, "convert", *SWIN, "--data", "digits", "--calib-batches", "1", "--batch-size",
                           "4", "--convention", "official", "--base", "1.4", "--timesteps", "16", "--out",
                           tmp_path / "official", "--no-progress", "--no-verify")
    assert status == 0, err
    assert "45 neuron layers, 720 steps per inference" in out and "B=1.4, T=16, official" in out
    assert "calibration data: digits (train split), 1 batches" in out


def test_convert_can_search_the_base(tmp_path, capsys):
    from lava_spikedattn.converted_model import ConvertedModel

    status, out, err = run(capsys, "convert", *SWIN, "--data", "random", "--calib-batches", "1", "--batch-size", "4",
                           "--base", "auto", "--timesteps", "8", "--out", tmp_path / "auto", "--no-progress")
    assert status == 0, err
    assert "chosen by search_base" in out
    cm = ConvertedModel.load(tmp_path / "auto")
    assert 1.0 < cm.config["base"] <= 2.0 and cm.config["timesteps"] == 8


def test_evaluate_prints_the_table_and_writes_json(cli_converted, tmp_path, capsys):
    folder, checkpoint = cli_converted
    status, out, err = run(capsys, "evaluate", folder, "--data", "random", "--limit", "12", "--batch-size", "8",
                           "--ann", checkpoint, "--json", tmp_path / "report.json", "--no-progress")
    assert status == 0, err
    assert "warning" not in err
    assert "prediction agreement" in out and "layers.0.blocks.1.mlp_act" in out and "given model" in out
    report = EvaluationReport.load(tmp_path / "report.json")
    assert report.samples == report.labeled == 12 and report.meta["batches"] == 2
    assert report.meta["data"] == "random" and report.meta["engine"] == "closed"
    assert report.output.cosine > 0.9


def _expected_counts(folder: Path, checkpoint: Path, limit: int, batch_size: int) -> dict[str, int]:
    """ANN correct, SNN correct and agreeing predictions of the first ``limit`` digits test images,
    computed here: the checkpoint's prepared Swin and the closed-form engine called directly on
    images resized as the CLI documents (bilinear to 16x16, grey repeated over 3 channels)."""
    import torch.nn.functional as F

    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.data import load_digits_images

    ann, _ = load_ann_checkpoint(checkpoint)
    snn = ConvertedModel.load(folder).to_reference("closed")
    images, labels = load_digits_images("test", limit)
    counts = {"ann_correct": 0, "snn_correct": 0, "agree": 0}
    with torch.no_grad():
        for start in range(0, limit, batch_size):  # the CLI's batches: argmax ties could depend on them
            x = F.interpolate(images[start:start + batch_size], size=(16, 16), mode="bilinear",
                              align_corners=False).expand(-1, 3, -1, -1)
            y = labels[start:start + batch_size]
            ann_class, snn_class = ann(x).argmax(-1), snn(x).argmax(-1)
            counts["ann_correct"] += int((ann_class == y).sum())
            counts["snn_correct"] += int((snn_class == y).sum())
            counts["agree"] += int((ann_class == snn_class).sum())
    return counts


def test_evaluate_counts_equal_an_independent_run_of_the_ann_and_the_snn(cli_converted, tmp_path, capsys):
    """Accuracies and agreement are the exact counts of the checkpoint's and the engine's own
    predictions (integers out of 12: no tolerance), printed and written alike."""
    folder, checkpoint = cli_converted
    status, out, err = run(capsys, "evaluate", folder, "--data", "digits", "--limit", "12", "--batch-size", "8",
                           "--ann", checkpoint, "--no-layers", "--json", tmp_path / "report.json", "--no-progress")
    assert status == 0, err
    expected = _expected_counts(folder, checkpoint, 12, 8)
    report = EvaluationReport.load(tmp_path / "report.json")
    assert (report.samples, report.labeled) == (12, 12)
    assert {key: getattr(report, key) for key in expected} == expected
    printed = " ".join(out.split())
    for label, key in (("ANN accuracy", "ann_correct"), ("SNN accuracy", "snn_correct"),
                       ("prediction agreement", "agree")):
        assert f"{label} {100 * expected[key] / 12:.2f} %" in printed, out


def test_evaluate_on_image_data_with_the_stepped_engine(cli_converted, capsys):
    folder, _ = cli_converted
    status, out, err = run(capsys, "evaluate", folder, "--data", "digits", "--limit", "2", "--engine", "stepped",
                           "--no-layers", "--no-progress")
    assert status == 0, err
    assert "stepped engine" in out and "2 samples (2 labeled)" in out and "folded ANN" in out


def test_evaluate_warns_about_another_ann(cli_converted, tmp_path, capsys):
    folder, checkpoint = cli_converted
    model, metadata = load_ann_checkpoint(checkpoint)
    with torch.no_grad():
        model.head.fc.bias.add_(1.0)
    other = save_ann_checkpoint(model, tmp_path / "other.safetensors", family="swin", model_name=metadata["model"],
                                model_kwargs=metadata["model_kwargs"])
    status, _, err = run(capsys, "evaluate", folder, "--data", "random", "--limit", "4", "--ann", other,
                         "--no-layers", "--no-progress")
    assert status == 0 and "is not the model" in err and "source_sha256" in err


def test_energy_prints_both_countings_and_writes_json(cli_converted, tmp_path, capsys):
    folder, checkpoint = cli_converted
    status, out, err = run(capsys, "energy", folder, "--data", "digits", "--limit", "12", "--ann", checkpoint,
                           "--json", tmp_path / "energy.json", "--no-progress")
    assert status == 0, err
    assert "official counting" in out and "complete counting" in out and "SNN/ANN ratio" in out
    data = json.loads((tmp_path / "energy.json").read_text())
    assert data["samples"] == 12 and set(data) >= {"official", "complete"}
    official, complete = data["official"], data["complete"]
    assert complete["snn_total_pj"] > official["snn_total_pj"] > 0  # complete adds fc2 and the residuals
    assert any(row["name"].endswith("fc2") for row in complete["layers"])
    assert not any(row["name"].endswith("fc2") for row in official["layers"])
    status, out, _ = run(capsys, "energy", folder, "--data", "digits", "--limit", "4", "--counting", "complete",
                         "--layers", "--no-progress")
    assert status == 0 and "layers.0.blocks.0.qk " in out and "official counting" not in out


def test_run_lava_checks_every_prediction_against_the_reference(tmp_path, capsys):
    folder = tmp_path / "snn"
    assert main([str(a) for a in ["convert", *SWIN, "--data", "random", "--calib-batches", "1", "--batch-size", "8",
                                  "--timesteps", "8", "--base", "1.3", "--out", folder, "--no-progress"]]) == 0
    capsys.readouterr()
    status, out, err = run(capsys, "run-lava", folder, "--data", "digits", "--limit", "2", "--batch-size", "2",
                           "--json", tmp_path / "lava.json", "--no-progress")
    assert status == 0, err
    assert "same class as the (float) closed-form reference engine: 2/2" in out and "Lava accuracy" in out
    data = json.loads((tmp_path / "lava.json").read_text())
    assert data["samples"] == data["same_class"] == 2 and data["max_relative_difference"] < 1e-9
    assert data["steps_simulated"] == 2 * 32 * 8  # 32 layers of T = 8 steps per image
    # the integer network: equal to its in-process simulation bit for bit, classes reported
    status, out, err = run(capsys, "run-lava", folder, "--data", "digits", "--limit", "2", "--batch-size", "2",
                           "--fixed", "--json", tmp_path / "fixed.json", "--no-progress")
    assert status == 0, err
    assert "integer (fixed_pt) Lava fused network" in out and "bit for bit: 2/2" in out
    data = json.loads((tmp_path / "fixed.json").read_text())
    assert data["fixed_point"] and data["equal_to_simulation"] == 2 and data["clips"] == {}
    assert 0 < data["max_relative_difference"] < 0.5  # 8-bit weights: close to, not equal to, the float engine


def test_loihi_report_prints_the_resources_and_writes_json(cli_converted, tmp_path, capsys):
    folder, _ = cli_converted
    status, out, err = run(capsys, "loihi-report", folder, "--json", tmp_path / "loihi.json")
    assert status == 0, err
    data = json.loads((tmp_path / "loihi.json").read_text())
    assert data["design"] == "A1" and data["steps_per_inference"] == 32 * 40
    assert set(data["bounds"]) == {"optimistic", "pessimistic"}
    assert "optimistic:" in out and "pessimistic:" in out and "8-bit weights" in out
    assert data["quantization"]["weights"] and data["quantization"]["neurons"]
    status, out, _ = run(capsys, "loihi-report", folder, "--design", "B", "--quantization", "--json",
                         tmp_path / "b.json")
    assert "payload exp" in out and "design B" in out
    b = json.loads((tmp_path / "b.json").read_text())
    assert status == 0 and b["totals"]["weight_writes"] == b["totals"]["trace_products"] > 0


# --- help ---------------------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_explains_every_option(capsys):
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "convert", "evaluate", "energy", "run-lava", "loihi-report"}
    status, out, _ = run(capsys, "--help")
    assert status == 0 and all(name in out for name in commands)
    for name, sub in commands.items():
        status, out, _ = run(capsys, name, "--help")
        assert status == 0 and out.startswith("usage: spikedattn " + name)
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
            for option in action.option_strings:
                assert option in out


# --- exit codes ---------------------------------------------------------------------------------------------------
BAD_USAGE = {
    "no --out": (["convert", *SWIN, "--data", "random"], "the following arguments are required: --out"),
    "model and checkpoint": (["convert", *SWIN, "--checkpoint", "x", "--data", "random", "--out", "o"],
                             "not allowed with argument"),
    "no model": (["convert", "--data", "random", "--out", "o"], "one of the arguments --model --checkpoint"),
    "bad base": (["convert", *SWIN, "--data", "random", "--out", "o", "--base", "3"], "base must be in (1, 2]"),
    "zero base": (["convert", *SWIN, "--data", "random", "--out", "o", "--base", "0"], "base must be in (1, 2]"),
    "base not a number": (["convert", *SWIN, "--data", "random", "--out", "o", "--base", "big"],
                          "expected a number in (1, 2] or 'auto'"),
    "zero timesteps": (["convert", *SWIN, "--data", "random", "--out", "o", "--timesteps", "0"],
                       "expected a positive integer, got 0"),
    "bad kwargs": (["convert", "--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "[1]", "--data", "random",
                    "--out", "o"], "expected a JSON object"),
    "bad percentile": (["convert", *SWIN, "--data", "random", "--out", "o", "--percentile", "101"],
                       "expected a number in (0, 100]"),
    "unknown data": (["evaluate", "folder", "--data", "imagenet"], "invalid choice: 'imagenet'"),
    "unknown engine": (["evaluate", "folder", "--data", "random", "--engine", "lava"], "invalid choice: 'lava'"),
    "unknown command": (["train"], "invalid choice: 'train'"),
    "bad sweep": (["demo", "--sweep", "8,x"], "expected comma-separated positive integers"),
    "more Lava samples than the limit": (["demo", "--lava-samples", "5", "--limit", "2"],
                                         "--lava-samples 5 is more than --limit 2"),
    "unknown counting": (["energy", "folder", "--data", "random", "--counting", "all"], "invalid choice: 'all'"),
    "unknown Lava mode": (["run-lava", "folder", "--data", "random", "--mode", "loihi"], "invalid choice: 'loihi'"),
    "no device for Lava": (["run-lava", "folder", "--data", "random", "--device", "cpu"],
                           "unrecognized arguments: --device"),
    "unknown design": (["loihi-report", "folder", "--design", "C"], "invalid choice: 'C'"),
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_arguments_exit_2_with_a_message(case, capsys):
    argv, message = BAD_USAGE[case]
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert message in err and "usage: spikedattn" in err


def test_data_that_does_not_fit_the_family_is_a_usage_error(cli_converted, capsys):
    folder, _ = cli_converted
    status, _, err = run(capsys, "evaluate", folder, "--data", "rt-polarity")
    assert status == 2 and "--data rt-polarity does not fit a swin model" in err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,message", [
    (lambda f: _truncate(f / "weights.safetensors"), "truncated or corrupt"),
    (lambda f: (f / "config.json").unlink(), "missing config.json"),
    (lambda f: (f / "config.json").write_text("{}"), "no 'format_version'"),
])
def test_a_corrupt_folder_exits_1_with_the_converted_model_error(cli_converted, tmp_path, capsys, damage, message):
    folder, _ = cli_converted
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "weights.safetensors"):
        (broken / name).write_bytes((folder / name).read_bytes())
    damage(broken)
    status, out, err = run(capsys, "evaluate", broken, "--data", "random")
    assert status == 1 and out == ""
    assert err.startswith("spikedattn evaluate: error: ") and message in err


def test_failures_exit_1_with_what_to_do(cli_converted, tmp_path, capsys, monkeypatch):
    folder, _ = cli_converted
    status, _, err = run(capsys, "evaluate", tmp_path / "nowhere", "--data", "random")
    assert status == 1 and "is not a folder" in err
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    status, _, err = run(capsys, "evaluate", folder, "--data", "random", "--ann", plain)
    assert status == 1 and "not a lava-spikedattn ANN checkpoint" in err and "--save-ann" in err
    status, _, err = run(capsys, "convert", "--checkpoint", tmp_path / "missing.safetensors", "--data", "random",
                         "--out", tmp_path / "o")
    assert status == 1 and "does not exist" in err
    status, _, err = run(capsys, "convert", "--model", "resnet18", "--data", "random", "--out", tmp_path / "o")
    assert status == 1 and "SwinTransformer" in err
    import lava_spikedattn.data

    monkeypatch.setattr(lava_spikedattn.data, "FASHION_MNIST_DIR", tmp_path / "no-fashion")
    status, _, err = run(capsys, "evaluate", folder, "--data", "fashion-mnist")
    assert status == 1 and "apt-get install dataset-fashion-mnist" in err
    status, _, err = run(capsys, "evaluate", folder, "--data", "random", "--device", "cuda:0")
    if not torch.cuda.is_available():
        assert status == 1 and "CUDA is not available" in err


def test_the_installed_entry_point_returns_the_exit_status(cli_converted, tmp_path):
    """One real process: the status reaches the shell (1 for a broken folder, 2 for bad usage)."""
    folder, _ = cli_converted
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((folder / "config.json").read_bytes())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "lava_spikedattn.cli", "evaluate", str(broken), "--data", "random"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 1 and "missing weights.safetensors" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "lava_spikedattn.cli", "train"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 2 and "invalid choice: 'train'" in done.stderr, done.stderr


# --- BERT through the same commands -------------------------------------------------------------------------------
def test_bert_converts_and_evaluates_through_the_family_registry(tmp_path, capsys):
    pytest.importorskip("lava_spikedattn.models.bert")
    config = {"vocab_size": 1100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 32}
    status, out, err = run(capsys, "convert", "--model", "bert", "--num-classes", "3", "--model-kwargs",
                           json.dumps(config), "--data", "random", "--seq-len", "12", "--calib-batches", "2",
                           "--batch-size", "4", "--out", tmp_path / "bert", "--save-ann", tmp_path / "bert.safetensors",
                           "--no-progress")
    assert status == 0, err
    assert "converted bert" in out and "B=1.4, T=16" in out  # the paper's BERT code by default
    model, metadata = load_ann_checkpoint(tmp_path / "bert.safetensors")
    assert metadata["model"] == "bert" and model.config.num_labels == 3
    status, out, err = run(capsys, "evaluate", tmp_path / "bert", "--data", "random", "--seq-len", "12", "--limit",
                           "6", "--ann", tmp_path / "bert.safetensors", "--no-progress")
    assert status == 0, err
    assert "6 samples (6 labeled)" in out and "warning" not in err
    status, _, err = run(capsys, "convert", "--model", "bert", "--img-size", "16", "--data", "random", "--out",
                         tmp_path / "x")
    assert status == 2 and "--img-size applies to image models" in err
