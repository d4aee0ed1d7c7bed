"""`make demo` end to end on the shipped model, with small limits (lava_spikedattn.demo)."""

import json

import matplotlib.image
import pytest

from lava_spikedattn.cli import main
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
    assert reference["samples"] == 32
    assert reference["agreement"] >= 0.9 and reference["snn_accuracy"] >= reference["ann_accuracy"] - 0.1
    for counting in ("official", "complete"):
        energy = reference["energy"][counting]
        assert 0 < energy["snn_mj"] and 0 < energy["ann_mj"]
        assert energy["ratio"] == pytest.approx(energy["snn_mj"] / energy["ann_mj"])
    assert reference["energy"]["complete"]["snn_mj"] > reference["energy"]["official"]["snn_mj"]
    assert [row["timesteps"] for row in summary["sweep"]] == [8, 16]
    assert all(1.0 < row["base"] <= 2.0 and row["samples"] == 16 for row in summary["sweep"])
    port = summary["loihi"]  # the integer (fixed_pt) Lava network and the resource estimate
    assert port["samples"] == port["same_class_as_float"] == 1 and port["clipped_values"] == 0
    assert port["neurons"] > 60_000 and port["cores"] >= 1 and port["chips"] == 1
    assert port["latency_ms"] == pytest.approx(summary["steps_per_inference"] * port["step_time_us"] / 1e3)
    for text in ("ANN accuracy", "SNN accuracy", "prediction agreement", "spikes per inference",
                 "Lava: steps simulated", "energy per inference (official)", "SNN/ANN", "Loihi 2 port"):
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
