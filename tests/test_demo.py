"""`make demo` end to end on the shipped model, with small limits (lava_spikedattn.demo)."""

import json

import matplotlib.image
import pytest
import torch

from lava_spikedattn.checkpoint import load_ann_checkpoint
from lava_spikedattn.cli import main
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.data import fit_images, load_image_dataset
from lava_spikedattn.demo import DEFAULT_ANN, DEFAULT_MODEL, DemoSettings, run_demo

FIGURES = ("spike_raster.png", "attention_maps.png", "activation_scatter.png", "accuracy_energy_vs_T.png")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    lines = []
    summary = run_demo(DemoSettings(out=out, lava_samples=1, limit=32, sweep=(8, 16), sweep_limit=16,
                                    calibration_images=32, batch_size=16, progress=False, say=lines.append))
    return out, summary, "\n".join(lines)


@pytest.mark.slow
def test_demo_runs_lava_and_the_reference_and_reports_the_numbers(demo):
    out, summary, printed = demo
    assert DEFAULT_MODEL.is_dir() and DEFAULT_ANN.is_file()  # the shipped model
    lava, reference = summary["lava"], summary["reference"]
    assert lava["samples"] == lava["same_class_as_reference"] == 1
    assert lava["max_relative_logit_difference"] < 1e-9  # Lava equals the reference engine
    assert lava["steps_simulated"] == summary["steps_per_inference"]
    decomposed = lava["decomposed"]  # the porting path: every population its own Lava process
    assert decomposed["samples"] == decomposed["same_class_as_reference"] == 1
    assert decomposed["max_relative_logit_difference"] < 1e-9 and decomposed["processes"] > lava["processes"]
    assert reference["samples"] == 32
    # The demo's accuracies, recomputed here from the shipped models on the same 32 test images.
    cm = ConvertedModel.load(DEFAULT_MODEL)
    images, labels = load_image_dataset("fashion-mnist", "test", 32)
    images = fit_images(images, cm.config["architecture"]["img_size"], cm.config["architecture"]["in_chans"])
    ann, _ = load_ann_checkpoint(DEFAULT_ANN)
    with torch.no_grad():
        ann_class = ann(images).argmax(-1)
        snn_class = cm.to_reference("closed")(images).argmax(-1)
    assert reference["ann_accuracy"] == pytest.approx(float((ann_class == labels).double().mean()))
    assert reference["snn_accuracy"] == pytest.approx(float((snn_class == labels).double().mean()))
    assert reference["agreement"] == pytest.approx(float((snn_class == ann_class).double().mean()))
    for counting in ("official", "complete"):
        energy = reference["energy"][counting]
        assert energy["snn_mj"] > 0 and energy["ann_mj"] > 0
    # complete counting adds every MLP's fc2 and the residual additions to both sides
    assert reference["energy"]["complete"]["snn_mj"] > reference["energy"]["official"]["snn_mj"]
    assert reference["energy"]["complete"]["ann_mj"] > reference["energy"]["official"]["ann_mj"]
    assert [row["timesteps"] for row in summary["sweep"]] == [8, 16]
    assert all(1.0 < row["base"] <= 2.0 and row["samples"] == 16 for row in summary["sweep"])
    tuned = summary["phase_aware"]  # the shipped Swin fine-tuned phase-aware at T=12 and 8, on the sweep's images
    assert [(row["timesteps"], row["samples"]) for row in tuned] == [(12, 16), (8, 16)]
    assert [row["model"].rsplit("_", 1)[1] for row in tuned] == ["t12", "t8"]
    port = summary["loihi"]  # the integer (fixed_pt) Lava network and the resource estimate
    assert port["samples"] == port["same_class_as_float"] == 1 and port["clipped_values"] == 0
    assert port["neurons"] > 60_000 and port["design"] == "A1"
    for bound in port["bounds"].values():  # the chip adds a step per layer and per WOSS hop, T per QKᵀ (stagger)
        assert bound["chips"] == 1 and bound["chip_steps"] > summary["steps_per_inference"]
        assert bound["latency_ms"] == pytest.approx(bound["chip_steps"] * bound["step_us"] / 1e3)
    assert port["bounds"]["optimistic"]["latency_ms"] < port["bounds"]["pessimistic"]["latency_ms"]
    for text in ("ANN accuracy", "SNN accuracy", "prediction agreement", "spikes per inference",
                 "Lava: steps simulated", "Lava decomposed", "energy per inference (official)", "SNN/ANN",
                 "Loihi 2 port"):
        assert text in printed
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert json.loads((out / "evaluation.json").read_text())["samples"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("name", FIGURES)
def test_demo_writes_the_figures(demo, name):
    out, summary, _ = demo
    image = matplotlib.image.imread(out / name)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0.01  # not a blank canvas
    assert str(out / name) in summary["figures"]


def test_demo_refuses_another_ann(tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a checkpoint")
    status = main(["demo", "--ann", str(other), "--out", str(tmp_path / "o"), "--no-progress"])
    assert status == 1 and "not a readable safetensors file" in capsys.readouterr().err
