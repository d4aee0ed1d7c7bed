"""Reliability of inputs and files (issue 12): non-finite inputs refused by every engine with one
named error, calibration batches validated, NaN weights refused by load(), save() atomic for the
folder as a whole (lava_spikedattn.coding, convert, builder, models)."""

import copy
import json
import pathlib
import re
import warnings

import pytest
import safetensors.torch
import torch
from tiny_models import prepared_bert, prepared_swin, tiny_bert_config, tiny_swin_config

from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import NonFiniteInputError, PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel, ConvertedModelError, tensor_sha256
from lava_spikedattn.engines import AnnEngine
from lava_spikedattn.runtime import live_workers

SWIN = tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4)
BERT = tiny_bert_config(hidden_size=16, num_hidden_layers=1)
CODE = PhaseCode(1.25, 12)
ENGINES = ("closed", "stepped", "ann")
BAD = [float("nan"), float("inf"), -float("inf")]


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def spoiled(x: torch.Tensor, bad: float, count: int = 1) -> torch.Tensor:
    """``x`` with its first ``count`` values replaced by ``bad``."""
    x = x.clone()
    x.view(-1)[:count] = bad
    return x


def counts(bad: float, count: int) -> str:
    """The message's breakdown of ``count`` values equal to ``bad``."""
    nan = count if bad != bad else 0
    return re.escape(f"contains {count} NaN/inf value(s) ({nan} NaN, {count - nan} inf)")


@pytest.fixture(scope="module")
def swin_model():
    return prepared_swin(SWIN).eval()


@pytest.fixture(scope="module")
def swin(swin_model):
    return convert(swin_model, [images(8)], CODE)


@pytest.fixture(scope="module")
def bert_model():
    return prepared_bert(BERT).eval()


@pytest.fixture(scope="module")
def tokens():
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


@pytest.fixture(scope="module")
def bert(bert_model, tokens):
    return convert(bert_model, [tokens], CODE)


# --- non-finite inputs: one error on every engine --------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bad", BAD)
def test_every_reference_engine_refuses_nonfinite_images(swin, engine, bad):
    network = swin.to_reference(engine)
    x = spoiled(images(2), bad, count=3)
    with pytest.raises(NonFiniteInputError, match=rf"^input {counts(bad, 3)} among its 512; .*nan_to_num"):
        network(x)
    with pytest.raises(NonFiniteInputError):  # run(x, engine) as evaluate() calls it
        network.run(x, network.make_engine())
    assert torch.isfinite(network(images(2))).all()  # finite images still run


@pytest.mark.parametrize("bad", BAD)
def test_lava_network_refuses_nonfinite_images_before_any_worker(swin, bad):
    net = build_lava_network(swin)
    x = spoiled(images(1), bad)
    for run in (net.run, net.simulate, net.run_batch):
        with pytest.raises(NonFiniteInputError, match=rf"^input {counts(bad, 1)}"):
            run(x)
    assert net.last_graph is None  # nothing was built
    assert not live_workers()
    logits = net.simulate(images(1))  # one finite sample: the same network runs
    assert torch.allclose(logits, swin.to_reference("stepped").double()(images(1).double()), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("bad", BAD)
def test_quantize_refuses_nonfinite_values_with_the_same_error(bad):
    with pytest.raises(NonFiniteInputError, match=rf"^x {counts(bad, 1)} among its 2"):
        CODE.quantize(torch.tensor([0.5, bad]), 1.0)


@pytest.mark.parametrize("key", ["attention_mask", "token_type_ids"])
def test_bert_float_inputs_are_checked_by_key_and_integer_ids_pass(bert, tokens, key):
    ids_only = {"input_ids": tokens["input_ids"]}
    x = dict(tokens, **{key: spoiled(tokens[key].double(), float("nan"), count=2)})
    message = rf"^input\['{key}'\] {counts(float('nan'), 2)} among its 12"
    for engine in ENGINES:
        network = bert.to_reference(engine)
        with pytest.raises(NonFiniteInputError, match=message):
            network(x)
        assert torch.isfinite(network(ids_only)).all()  # integer token ids are not checked as floats
        floats = dict(tokens, **{key: tokens[key].double()})  # finite float fields still run
        assert torch.equal(network(floats), network(tokens))
    net = build_lava_network(bert)
    for run in (net.run, net.simulate, net.run_batch):
        with pytest.raises(NonFiniteInputError, match=message):
            run(x)
    assert not live_workers()


# --- calibration batches --------------------------------------------------------------------------------
def _count_runs(monkeypatch) -> list:
    """Calls of the ANN engine's first layer during convert (one per calibration batch run)."""
    calls = []
    original = AnnEngine.input_layer

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(AnnEngine, "input_layer", counting)
    return calls


@pytest.mark.parametrize("bad", BAD)
def test_nonfinite_calibration_batch_is_named_before_it_runs(swin_model, monkeypatch, bad):
    runs = _count_runs(monkeypatch)
    with pytest.raises(NonFiniteInputError, match=rf"^calibration batch 1 {counts(bad, 5)} among its 1024"):
        convert(swin_model, [images(4), (spoiled(images(4, 1), bad, count=5), torch.zeros(4))], CODE)
    assert len(runs) == 1  # batch 0 calibrated, batch 1 never entered the network


def test_nonfinite_bert_calibration_batch_names_the_key(bert_model, tokens):
    batch = dict(tokens, attention_mask=spoiled(tokens["attention_mask"].float(), float("inf")))
    with pytest.raises(NonFiniteInputError, match=r"^calibration batch 0\['attention_mask'\] contains 1 "):
        convert(bert_model, [batch], CODE)


def test_empty_calibration_batch_is_named_before_it_runs(swin_model, bert_model, tokens, monkeypatch):
    runs = _count_runs(monkeypatch)
    with pytest.raises(ValueError, match=r"^calibration batch 0 holds 0 samples"):
        convert(swin_model, [images(0)], CODE)
    with pytest.raises(ValueError, match=r"^calibration batch 2 holds 0 samples"):
        convert(swin_model, [images(2), images(2, 1), images(0)], CODE)
    assert len(runs) == 2
    with pytest.raises(ValueError, match=r"^calibration batch 0 holds 0 samples"):
        convert(bert_model, [{key: value[:0] for key, value in tokens.items()}], CODE)


def test_all_zero_calibration_input_is_refused(swin_model):
    with pytest.raises(ValueError, match="every calibration input is zero"):
        convert(swin_model, [torch.zeros(4, 1, 16, 16)], CODE)
    # a black image among real ones is data, not an error
    cm = convert(swin_model, [images(4), torch.zeros(2, 1, 16, 16)], CODE)
    assert cm.config["calibration"]["input_max"] == pytest.approx(float(images(4).abs().max()))


def test_layers_that_saw_only_zeros_are_named_counted_and_warned(swin_model, swin):
    assert swin.config["calibration"]["zero_layers"] == {}
    dead = copy.deepcopy(swin_model)
    with torch.no_grad():
        dead.layers[0].blocks[0].mlp.fc1.bias.fill_(-1e4)  # every ReLU neuron of the block silent
    name = "layers.0.blocks.0.mlp_act"
    with pytest.warns(UserWarning, match=re.escape(f"1 layer(s) saw only zeros ({name}; ")):
        cm = convert(dead, [images(8)], CODE)
    neurons = swin.weights[f"scale.{name}"].numel()
    assert cm.config["calibration"]["zero_layers"] == {name: neurons}
    assert bool((cm.weights[f"scale.{name}"] == 1.0).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy calibration does not warn
        convert(swin_model, [images(8)], CODE)


# --- load refuses non-finite weights --------------------------------------------------------------------
def test_load_refuses_nonfinite_weights_even_with_a_matching_sha(swin, tmp_path):
    folder = swin.save(tmp_path / "cm")
    weights = safetensors.torch.load_file(str(folder / "weights.safetensors"))
    weights["head.bias"][1] = float("nan")
    weights["patch_embed.bias"][:3] = float("inf")
    safetensors.torch.save_file(weights, str(folder / "weights.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = tensor_sha256(weights)  # the file is consistent, only its values are bad
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertedModelError, match=r"holds NaN/inf values in 2 tensor\(s\)") as error:
        ConvertedModel.load(folder)
    assert "'head.bias' (1)" in str(error.value) and "'patch_embed.bias' (3)" in str(error.value)


# --- save is atomic for the folder -----------------------------------------------------------------------
def _other(swin: ConvertedModel) -> ConvertedModel:
    """The same network under another base: a different config.json."""
    return swin.with_code(base=1.5)


def test_save_replaces_a_model_folder_and_leaves_nothing_beside_it(swin, tmp_path):
    folder = swin.save(tmp_path / "cm")
    _other(swin).save(folder)
    assert ConvertedModel.load(folder).config["base"] == 1.5
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cm"]
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "weights.safetensors"]
    (tmp_path / "empty").mkdir()
    mode = (tmp_path / "empty").stat().st_mode  # what mkdir gives under this umask
    assert ConvertedModel.load(swin.save(tmp_path / "empty")).config["base"] == CODE.base
    assert folder.stat().st_mode == (tmp_path / "empty").stat().st_mode == mode  # readable as any folder


@pytest.mark.parametrize("crash", ["weights", "config"])
def test_a_crash_while_saving_leaves_the_old_folder_and_no_temporary_folder(swin, tmp_path, monkeypatch, crash):
    folder = swin.save(tmp_path / "cm")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def write_half_then_fail(*args, **kwargs):
        target = pathlib.Path(args[1] if crash == "weights" else args[0])
        target.write_bytes(b"half a file")
        raise OSError("No space left on device")

    if crash == "weights":
        monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        _other(swin).save(folder)
    with pytest.raises(OSError, match="No space left"):
        _other(swin).save(tmp_path / "new")  # a folder that did not exist is not created either
    monkeypatch.undo()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cm"]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert ConvertedModel.load(folder).config == swin.config


def test_save_refuses_to_replace_a_folder_that_is_not_a_converted_model(swin, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=re.escape("holds 1 other file(s) (notes.txt)")):
        swin.save(folder)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "config.json").read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="it is a file"):
        swin.save(tmp_path / "file")
