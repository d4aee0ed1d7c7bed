"""``spikedattn convert --phase-aware``: phase-aware fine-tuning from the command line
(lava_spikedattn.commands.cmd_convert calling lava_spikedattn.phase_aware.finetune_phase_aware)."""

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from test_cli import run
from test_finetune_distributed import KilledError
from tiny_models import SWIN

from lava_spikedattn.checkpoint import load_ann_checkpoint
from lava_spikedattn.cli import main
from lava_spikedattn.commands import PHASE_AWARE_LR
from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.phase_aware import PhaseAwareModel

# The fast setting: the tiny Swin, one calibration batch, two training batches of 8 random images.
FAST = [*SWIN, "--data", "random", "--calib-batches", "1", "--batch-size", "8", "--timesteps", "6", "--no-progress"]


@pytest.fixture(scope="module")
def tuned_and_untuned(tmp_path_factory):
    """{"tuned", "untuned"}: (exit status, stdout, converted folder, ANN checkpoint) of the same
    convert (seed 0, B=1.6, T=6) with ``--phase-aware 1 --train-batches 2`` and without."""
    folder = tmp_path_factory.mktemp("phase_aware")
    runs = {}
    for key, extra in (("tuned", ["--phase-aware", "1", "--train-batches", "2"]), ("untuned", [])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main([str(a) for a in ["convert", *FAST, "--base", "1.6", *extra, "--out", folder / key,
                                            "--save-ann", folder / f"{key}.safetensors"]])
        runs[key] = (status, out.getvalue(), folder / key, folder / f"{key}.safetensors")
    return runs


def test_the_written_ann_is_tuned_and_the_written_snn_is_its_training_forward(tuned_and_untuned):
    """The converted model's closed-form logits equal the training forward of the tuned ANN with
    that model's scales, bit for bit (rtol = atol = 0: the same fold of the same float32
    parameters through the same kernels, as tests/test_phase_aware.py checks for the library);
    with the untuned ANN's parameters they differ, so the check tells the two apart."""
    (status, out, folder, checkpoint), (untuned_status, _, _, untuned_checkpoint) = (
        tuned_and_untuned["tuned"], tuned_and_untuned["untuned"])
    assert status == untuned_status == 0
    tuned, _ = load_ann_checkpoint(checkpoint)
    untuned, _ = load_ann_checkpoint(untuned_checkpoint)
    assert tuned.state_dict().keys() == untuned.state_dict().keys()
    assert tensor_sha256(tuned.state_dict()) != tensor_sha256(untuned.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), untuned.state_dict().values()))
    cm = ConvertedModel.load(folder)
    assert (cm.config["base"], cm.config["timesteps"], cm.config["convention"]) == (1.6, 6, "exact")
    assert cm.config["source_sha256"] == tensor_sha256(tuned.state_dict())  # converted from the tuned ANN
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = cm.to_reference("closed")(x)
        torch.testing.assert_close(PhaseAwareModel.from_converted(tuned, cm)(x), logits, rtol=0, atol=0)
        assert not torch.equal(PhaseAwareModel.from_converted(untuned, cm)(x), logits)
    assert "phase-aware fine-tuning: 1 epoch(s) of 2 batches of random (train split)" in out
    assert f"AdamW lr {PHASE_AWARE_LR:g}" in out and f"tuned ANN written to {checkpoint}" in out
    assert f"spikedattn evaluate {folder} --data random --ann {checkpoint}" in out


@pytest.fixture
def recorded(monkeypatch):
    """Calls of finetune_phase_aware and search_base, recorded; neither does its work (the
    fine-tuning returns the model untouched, converted at the code it was asked for; the search
    answers B = 1.7), so that only what the command line passes is tested here."""
    import lava_spikedattn.base_search
    import lava_spikedattn.phase_aware
    from lava_spikedattn.base_search import BaseSearch
    from lava_spikedattn.convert import convert

    calls = {}

    def finetune_phase_aware(model, code, loader, calibration, **options):
        calls["finetune"] = dict(options, code=code, loader=len(loader), calibration=len(calibration),
                                 sha256=tensor_sha256(model.state_dict()))
        return model, convert(model, calibration, code, method=options["method"], percentile=options["percentile"])

    def search_base(cm, timesteps, **_):
        assert "finetune" not in calls  # B is chosen on the untuned model, before the fine-tuning
        calls["search"] = dict(sha256=cm.config["source_sha256"], timesteps=timesteps)
        return BaseSearch(base=1.7, bases=torch.tensor([1.7]), errors=torch.tensor([0.0]))

    monkeypatch.setattr(lava_spikedattn.phase_aware, "finetune_phase_aware", finetune_phase_aware)
    monkeypatch.setattr(lava_spikedattn.base_search, "search_base", search_base)
    return calls


def test_the_options_reach_finetune_phase_aware_at_the_searched_base(recorded, tmp_path, capsys):
    status, out, err = run(capsys, "convert", *FAST, "--base", "auto", "--convention", "official", "--method",
                           "percentile", "--percentile", "99.5", "--phase-aware", "3", "--phase-aware-lr", "2e-3",
                           "--train-batches", "2", "--phase-aware-checkpoint", tmp_path / "tuning",
                           "--learn-scales", "--out", tmp_path / "snn")
    assert status == 0, err
    call = recorded["finetune"]
    assert (call["code"].base, call["code"].timesteps, call["code"].convention) == (1.7, 6, "official")
    assert (call["epochs"], call["lr"], call["method"], call["percentile"]) == (3, 2e-3, "percentile", 99.5)
    assert call["learn_scales"] is True and "scales learned" in out
    assert call["checkpoint"] == tmp_path / "tuning" and f"fine-tuning checkpoint in {tmp_path / 'tuning'}" in out
    assert (call["loader"], call["calibration"], call["progress"]) == (2, 1, False)
    assert recorded["search"] == {"sha256": call["sha256"], "timesteps": 6}  # searched on the model given to tuning
    assert ConvertedModel.load(tmp_path / "snn").config["base"] == 1.7
    assert "base B=1.7 chosen by search_base" in out and "3 epoch(s) of 2 batches" in out and "lr 0.002" in out


def test_by_default_it_trains_on_every_batch_of_the_train_split_at_the_default_rate(recorded, tmp_path, capsys):
    from lava_spikedattn.data import RANDOM_SAMPLES

    status, _, err = run(capsys, "convert", *FAST, "--base", "1.6", "--phase-aware", "1", "--out", tmp_path / "snn")
    assert status == 0, err
    call = recorded["finetune"]
    assert call["loader"] == RANDOM_SAMPLES // 8 and call["lr"] == PHASE_AWARE_LR and "search" not in recorded
    assert call["checkpoint"] is None and call["learn_scales"] is False
    assert (call["code"].base, call["code"].convention, call["method"]) == (1.6, "exact", "max")


BAD_USAGE = {
    "zero epochs": (["--phase-aware", "0"], "argument --phase-aware: expected a positive integer, got 0"),
    "negative lr": (["--phase-aware", "1", "--phase-aware-lr", "-0.001"],
                    "argument --phase-aware-lr: expected a positive learning rate like 5e-4, got '-0.001'"),
    "lr not a number": (["--phase-aware", "1", "--phase-aware-lr", "nan"],
                        "argument --phase-aware-lr: expected a positive learning rate like 5e-4, got 'nan'"),
    "zero train batches": (["--phase-aware", "1", "--train-batches", "0"],
                           "argument --train-batches: expected a positive integer, got 0"),
    "lr without tuning": (["--phase-aware-lr", "1e-3"],
                          "--phase-aware-lr: only for phase-aware fine-tuning; add --phase-aware EPOCHS"),
    "train batches without tuning": (["--train-batches", "2"],
                                     "--train-batches: only for phase-aware fine-tuning; add --phase-aware EPOCHS"),
    "learned scales without tuning": (["--learn-scales"],
                                      "--learn-scales: only for phase-aware fine-tuning; add --phase-aware EPOCHS"),
    "no verify": (["--phase-aware", "1", "--no-verify"], "--no-verify does not apply to --phase-aware"),
    "checkpoint without tuning": (["--phase-aware-checkpoint", "tuning"],
                                  "--phase-aware-checkpoint: only for phase-aware fine-tuning; add --phase-aware"),
    "checkpoint in --out": (["--phase-aware", "1", "--phase-aware-checkpoint", "{out}/tuning"],
                            "--phase-aware-checkpoint {out}/tuning lies in --out {out}, which the converted model "
                            "replaces; name a folder outside it"),
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_values_exit_2_before_any_work(case, tmp_path, capsys, monkeypatch):
    import lava_spikedattn.distributed

    def no_work(*_, **__):
        raise AssertionError("convert started working before refusing the options")

    monkeypatch.setattr(lava_spikedattn.distributed, "init_from_env", no_work)
    options, message = BAD_USAGE[case]
    out_folder = tmp_path / "snn"
    options = [option.format(out=out_folder) for option in options]
    status, out, err = run(capsys, "convert", *FAST, *options, "--out", out_folder)
    assert status == 2 and out == ""
    assert message.format(out=out_folder) in " ".join(err.split()) and "usage: spikedattn convert" in err
    assert not out_folder.exists()


def test_torchrun_on_the_gpus_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) --phase-aware trains on the CPU: a CUDA device (here what auto
    means when CUDA is available) is refused before the process group is joined."""
    import lava_spikedattn.distributed

    def no_work(*_, **__):
        raise AssertionError("convert joined the process group before refusing --phase-aware")

    monkeypatch.setattr(lava_spikedattn.distributed, "init_from_env", no_work)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, _, err = run(capsys, "convert", *FAST, "--phase-aware", "1", "--out", tmp_path / "snn")
    assert status == 2 and "usage: spikedattn convert" in err
    assert "--phase-aware under torchrun trains on the CPU" in err and "add --device cpu" in err


# Digits (fixed images), B=1.6, T=6: 2 epochs of 2 batches of 16 in one process.
DIGITS = [*SWIN, "--data", "digits", "--timesteps", "6", "--base", "1.6", "--no-progress", "--phase-aware", "2"]
ONE_PROCESS = ["--calib-batches", "1", "--batch-size", "16", "--train-batches", "2"]


def _ann(path: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_ann_checkpoint(path)[0].state_dict()


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    """Killed after epoch 1's checkpoint, the same command again ends with the uninterrupted run's tuned
    ANN, bit for bit; other settings are refused (exit status 1) naming the difference."""
    import lava_spikedattn.training

    command = ["convert", *DIGITS, *ONE_PROCESS, "--phase-aware-checkpoint", tmp_path / "tuning"]
    status, _, err = run(capsys, *command[:-2], "--out", tmp_path / "straight", "--save-ann", tmp_path / "straight.st")
    assert status == 0, err
    save_checkpoint = lava_spikedattn.training.save_checkpoint

    def killed_after_epoch_1(*args):
        save_checkpoint(*args)
        raise KilledError

    monkeypatch.setattr(lava_spikedattn.training, "save_checkpoint", killed_after_epoch_1)
    with pytest.raises(KilledError):
        run(capsys, *command, "--out", tmp_path / "snn", "--save-ann", tmp_path / "tuned.st")
    assert json.loads((tmp_path / "tuning" / "finetune.json").read_text())["epochs_done"] == 1
    monkeypatch.setattr(lava_spikedattn.training, "save_checkpoint", save_checkpoint)
    status, out, err = run(capsys, *command, "--out", tmp_path / "snn", "--save-ann", tmp_path / "tuned.st")
    assert status == 0, err
    assert f"fine-tuning checkpoint in {tmp_path / 'tuning'}" in out
    tuned, straight = _ann(tmp_path / "tuned.st"), _ann(tmp_path / "straight.st")
    assert all(torch.equal(tuned[key], straight[key]) for key in straight)
    status, out, err = run(capsys, *command, "--phase-aware-lr", "1e-3", "--out", tmp_path / "other")
    assert status == 1 and out == ""
    assert f"was written by another run: lr 0.0005 there, 0.001 here; delete {tmp_path / 'tuning'}" in err


@pytest.mark.slow
def test_two_torchrun_processes_tune_as_one_on_their_batches_together(tmp_path):
    """2 processes with batches of 8 against one with batches of 16 (the same samples, in the same
    order, each step): the tuned ANNs agree within 1e-6 (float32 rounding of the sums in another
    order; measured 2.2e-7, torch 2.14, CPU); the checkpoint records the 2 processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = pathlib.Path(__file__).resolve().parent.parent
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "lava_spikedattn.cli", "convert", *DIGITS, "--calib-batches", "2", "--batch-size", "8", "--train-batches",
           "4", "--phase-aware-checkpoint", tmp_path / "tuning", "--out", tmp_path / "two", "--save-ann",
           tmp_path / "two.st"]
    done = subprocess.run([str(a) for a in two], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 epoch(s) of 4 batches of digits (train split), AdamW lr 0.0005, on the CPU in 2 processes" in done.stdout
    assert json.loads((tmp_path / "tuning" / "finetune.json").read_text())["settings"]["processes"] == 2
    assert main([str(a) for a in ["convert", *DIGITS, *ONE_PROCESS, "--out", tmp_path / "one", "--save-ann",
                                  tmp_path / "one.st"]]) == 0
    two, one = _ann(tmp_path / "two.st"), _ann(tmp_path / "one.st")
    assert max(float((two[key] - one[key]).abs().max()) for key in one if one[key].is_floating_point()) <= 1e-6


def test_help_of_convert_explains_phase_aware_fine_tuning(capsys):
    status, out, _ = run(capsys, "convert", "--help")
    text = " ".join(out.split())
    assert status == 0
    for option in ("--phase-aware EPOCHS", "--phase-aware-lr LR", "--train-batches N",
                   "--phase-aware-checkpoint FOLDER"):
        assert option in text
    assert f"(default: {PHASE_AWARE_LR:g})" in text and "finetune_phase_aware" in text

