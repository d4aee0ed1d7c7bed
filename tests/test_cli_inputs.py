"""The command line refuses bad inputs and outputs before any work (lava_spikedattn.cli).

An ``--ann`` checkpoint of another family or architecture than the converted model, and output
paths that cannot be written (``--json``, ``--out``, ``--save-ann``), end the command with a
message naming the option and the problem before a model is evaluated, converted or run.
"""

import json
from pathlib import Path

import pytest
import timm
from test_cli import run
from tiny_models import SWIN

from lava_spikedattn.ann import prepare_bert, prepare_swin
from lava_spikedattn.checkpoint import save_ann_checkpoint

SWIN_KWARGS = json.loads(SWIN[SWIN.index("--model-kwargs") + 1])
BERT_CONFIG = {"vocab_size": 1100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 32}


def _swin_checkpoint(path: Path, **overrides) -> Path:
    """A prepared random tiny Swin (the fixture's architecture with ``overrides``) as a checkpoint."""
    kwargs = {**SWIN_KWARGS, "num_classes": 10, "img_size": 16, **overrides}
    model = prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kwargs)).eval()
    return save_ann_checkpoint(model, path, family="swin", model_name="swin_tiny_patch4_window7_224",
                               model_kwargs=kwargs)


def _bert_checkpoint(path: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**BERT_CONFIG, num_labels=3)
    model = prepare_bert(BertForSequenceClassification(config)).eval()
    return save_ann_checkpoint(model, path, family="bert", model_name="bert",
                               model_kwargs={**BERT_CONFIG, "num_labels": 3})


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A converted tiny BERT (3 classes) folder."""
    folder = tmp_path_factory.mktemp("bert") / "snn"
    status = run_quiet("convert", "--model", "bert", "--num-classes", "3", "--model-kwargs", json.dumps(BERT_CONFIG),
                       "--data", "random", "--seq-len", "8", "--calib-batches", "1", "--batch-size", "2",
                       "--no-verify", "--out", folder, "--no-progress")
    assert status == 0
    return folder


def run_quiet(*argv) -> int:
    from lava_spikedattn.cli import main

    return main([str(a) for a in argv])


def _assert_refused(status: int, out: str, err: str, command: str, *named: str) -> None:
    assert status == 1, err
    assert err.startswith(f"spikedattn {command}: error: --ann ") and "Traceback" not in err, err
    for text in named:
        assert text in err, err
    assert "warning" not in err and "accuracy" not in out  # refused, not evaluated


# --- --ann of another architecture -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "energy"])
def test_an_ann_with_other_classes_is_refused_by_name(cli_converted, tmp_path, capsys, command):
    folder, _ = cli_converted
    other = _swin_checkpoint(tmp_path / "five.safetensors", num_classes=5)
    status, out, err = run(capsys, command, folder, "--data", "random", "--limit", "2", "--ann", other,
                           "--no-progress")
    _assert_refused(status, out, err, command, "is a swin with num_classes=5", "converted from num_classes=10",
                    "spikedattn convert --checkpoint")
    assert "img_size" not in err  # only the keys that differ


def test_an_ann_with_another_input_size_is_refused_by_name(cli_converted, tmp_path, capsys):
    """The old code ran the 32x32 model on 16x16 images: an AssertionError traceback."""
    folder, _ = cli_converted
    other = _swin_checkpoint(tmp_path / "big.safetensors", img_size=32)
    status, out, err = run(capsys, "evaluate", folder, "--data", "digits", "--limit", "2", "--ann", other,
                           "--no-progress")
    _assert_refused(status, out, err, "evaluate", "img_size=[32, 32]", "converted from img_size=[16, 16]")
    assert "num_classes" not in err


def test_every_differing_key_is_named(cli_converted, tmp_path, capsys):
    folder, _ = cli_converted
    other = _swin_checkpoint(tmp_path / "both.safetensors", img_size=32, num_classes=5, in_chans=1)
    status, out, err = run(capsys, "evaluate", folder, "--data", "random", "--limit", "2", "--ann", other,
                           "--no-progress")
    _assert_refused(status, out, err, "evaluate", "img_size=[32, 32], in_chans=1", "num_classes=5",
                    "img_size=[16, 16], in_chans=3", "num_classes=10")


def test_a_bert_ann_against_a_swin_folder_is_refused(cli_converted, tmp_path, capsys):
    folder, _ = cli_converted
    other = _bert_checkpoint(tmp_path / "bert.safetensors")
    status, out, err = run(capsys, "evaluate", folder, "--data", "random", "--limit", "2", "--ann", other,
                           "--no-progress")
    _assert_refused(status, out, err, "evaluate", "is a bert model (family=bert)",
                    "converted from a swin model (family=swin)")


def test_a_swin_ann_against_a_bert_folder_is_refused(cli_converted, bert_folder, capsys):
    _, checkpoint = cli_converted
    status, out, err = run(capsys, "evaluate", bert_folder, "--data", "random", "--seq-len", "8", "--limit", "2",
                           "--ann", checkpoint, "--no-progress")
    _assert_refused(status, out, err, "evaluate", "is a swin model (family=swin)",
                    "converted from a bert model (family=bert)")


def test_same_architecture_other_weights_is_still_only_a_warning(cli_converted, tmp_path, capsys):
    """A re-fine-tuned checkpoint of the same architecture is legitimate: evaluated, with a warning."""
    folder, _ = cli_converted
    other = _swin_checkpoint(tmp_path / "retrained.safetensors")  # same architecture, other random weights
    status, out, err = run(capsys, "evaluate", folder, "--data", "random", "--limit", "2", "--ann", other,
                           "--no-layers", "--no-progress")
    assert status == 0 and "warning" in err and "source_sha256" in err and "ANN accuracy" in out


# --- output paths, checked before any work -------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a test passes only if the command stops first."""
    import lava_spikedattn.builder
    import lava_spikedattn.demo
    import lava_spikedattn.distributed
    import lava_spikedattn.evaluate
    import lava_spikedattn.loihi

    def started(*args, **kwargs):
        raise AssertionError("the command started its work before refusing the output path")

    for module, name in ((lava_spikedattn.evaluate, "evaluate"), (lava_spikedattn.distributed, "convert_distributed"),
                         (lava_spikedattn.builder, "build_lava_network"), (lava_spikedattn.loihi, "resource_estimate"),
                         (lava_spikedattn.demo, "run_demo")):
        monkeypatch.setattr(module, name, started)


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _commands(folder: Path, option: str, path: Path) -> dict[str, list]:
    return {
        "evaluate --json": ["evaluate", folder, "--data", "random", "--limit", "2", "--json", path],
        "energy --json": ["energy", folder, "--data", "random", "--limit", "2", "--json", path],
        "run-lava --json": ["run-lava", folder, "--data", "random", "--limit", "1", "--json", path],
        "loihi-report --json": ["loihi-report", folder, "--json", path],
        "convert --out": ["convert", *SWIN, "--data", "random", "--out", path],
        "convert --save-ann": ["convert", *SWIN, "--data", "random", "--out", folder.parent / "new_snn",
                               "--save-ann", path],
        "demo --out": ["demo", "--out", path],
    }[option]


OUTPUT_OPTIONS = ["evaluate --json", "energy --json", "run-lava --json", "loihi-report --json", "convert --out",
                  "convert --save-ann", "demo --out"]


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
def test_an_output_under_a_file_is_refused_before_any_work(cli_converted, tmp_path, capsys, no_work, option):
    """The path's parent is a regular file (not writable even for root): refused, nothing written."""
    folder, _ = cli_converted
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    target = blocker / "sub" / "result"
    before = _files(tmp_path) | _files(folder.parent)
    status, out, err = run(capsys, *_commands(folder, option, target))
    assert status == 2, err
    flag = option.split()[1]
    assert f"{flag} {target} cannot be created: {blocker} is a file, not a folder" in err, err
    assert "usage: spikedattn" in err and out == ""
    assert _files(tmp_path) | _files(folder.parent) == before  # nothing created


@pytest.mark.parametrize("option", ["evaluate --json", "energy --json", "run-lava --json", "loihi-report --json",
                                    "convert --save-ann"])
def test_a_file_output_that_is_a_folder_is_refused(cli_converted, tmp_path, capsys, no_work, option):
    folder, _ = cli_converted
    status, out, err = run(capsys, *_commands(folder, option, tmp_path))
    assert status == 2 and f"{option.split()[1]} {tmp_path} is a folder; name a file" in err, err
    assert out == ""


@pytest.mark.parametrize("option", ["convert --out", "demo --out"])
def test_a_folder_output_that_is_a_file_is_refused(cli_converted, tmp_path, capsys, no_work, option):
    folder, _ = cli_converted
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me\n")
    status, out, err = run(capsys, *_commands(folder, option, existing))
    assert status == 2 and f"--out {existing} is an existing file, not a folder" in err, err
    assert existing.read_text() == "keep me\n" and out == ""


def test_convert_with_a_bad_save_ann_leaves_out_unwritten(tmp_path, capsys):
    """The old code wrote --out, then failed on --save-ann with a bare [Errno 20]."""
    (tmp_path / "blocker").write_text("")
    good = tmp_path / "good"
    status, _, err = run(capsys, "convert", *SWIN, "--data", "random", "--calib-batches", "1", "--batch-size", "2",
                         "--out", good, "--save-ann", tmp_path / "blocker" / "ann.safetensors", "--no-progress")
    assert status == 2 and "--save-ann" in err and "is a file, not a folder" in err, err
    assert not good.exists()


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors", ""])
def test_convert_refuses_a_save_ann_that_overwrites_out(tmp_path, capsys, no_work, name):
    out = tmp_path / "snn"
    status, _, err = run(capsys, "convert", *SWIN, "--data", "random", "--out", out, "--save-ann", out / name)
    assert status == 2 and "would overwrite the converted model in --out" in err, err
    assert not out.exists()


def test_missing_output_folders_are_created(cli_converted, tmp_path, capsys):
    """A --json whose folders do not exist yet is fine: they are made when the file is written."""
    folder, _ = cli_converted
    target = tmp_path / "reports" / "loihi" / "report.json"
    status, _, err = run(capsys, "loihi-report", folder, "--json", target)
    assert status == 0, err
    assert json.loads(target.read_text())["steps_per_inference"] == 32 * 40


def test_convert_refuses_an_out_folder_with_other_files(tmp_path, capsys):
    """save() replaces the whole folder, so a folder with the user's files is refused up front."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status, stdout, err = run(capsys, "convert", "--model", "swin_tiny_patch4_window7_224", "--data", "random",
                              "--out", out)
    assert status == 2 and "--out" in err and "notes.txt" in err and not stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
