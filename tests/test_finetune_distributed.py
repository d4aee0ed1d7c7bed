"""ann.finetune's checkpoints (a resumed run equals an uninterrupted one bit for bit; a checkpoint of
another run is refused; an interrupted write leaves the previous checkpoint whole) and data-parallel
fine-tuning under torchrun: 2 gloo ranks against one process on the ranks' batches put together.

Run as a script (``torchrun ... tests/test_finetune_distributed.py FOLDER``), this file is the
torchrun worker of the data-parallel test.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from synthetic import grey_task, sentences
from tiny_models import prepared_bert, prepared_swin, tiny_bert_config, tiny_swin_config

from lava_spikedattn import training
from lava_spikedattn.ann import finetune
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.phase_aware import finetune_phase_aware

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A Swin of 10k parameters on 16x16 grey images, 4 classes; timm's default drop path (0.1) draws from
# torch's generator, which a resumed run must therefore restore.
SWIN = dict(tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4), embed_dim=8)
SETTINGS = dict(epochs=2, lr=1e-3, cosine=True, progress=False)


class KilledError(Exception):
    """Stands for the process being killed."""


class KilledInEpoch:
    """``batches``, with a length; the iteration of pass ``epoch`` (from 1) raises ``KilledError``."""

    def __init__(self, batches, epoch: int = 2) -> None:
        self.batches, self.epoch, self.passes = batches, epoch, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.passes += 1
        if self.passes == self.epoch:
            raise KilledError
        return iter(self.batches)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _interrupted_then_resumed(run, folder):
    """``run(loader_wrapper, checkpoint)`` killed in its second epoch, then called again to resume."""
    with pytest.raises(KilledError):
        run(KilledInEpoch, folder)
    torch.manual_seed(99)  # the resumed process starts with other generator states
    return run(lambda batches: batches, folder)


# --- checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swin():
    return prepared_swin(SWIN)


@pytest.fixture(scope="module")
def loader():
    return [grey_task(8, seed) for seed in range(3)]


def _finetune(swin, loader, wrap, checkpoint, **settings):
    torch.manual_seed(5)
    return finetune(copy.deepcopy(swin), wrap(loader), copy.deepcopy(swin).eval(), checkpoint=checkpoint,
                    **{**SETTINGS, **settings})


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(swin, loader, tmp_path):
    """2 epochs (teacher, cosine schedule, drop path) straight, against epoch 1 with a checkpoint, a
    kill during epoch 2, and a new call that resumes: equal weights and buffers (torch.equal)."""
    straight = _state(_finetune(swin, loader, lambda batches: batches, None))
    assert not _equal(straight, swin.state_dict())
    resumed = _interrupted_then_resumed(lambda wrap, folder: _finetune(swin, loader, wrap, folder), tmp_path)
    assert _equal(_state(resumed), straight)
    record = json.loads((tmp_path / training.CHECKPOINT_RECORD).read_text())
    assert (record["epochs_done"], record["step"], record["tensors"]) == (2, 6, "epoch-0002.safetensors")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch-0002.safetensors", "finetune.json"]
    # A finished run resumes to its end: nothing left to train, the same weights.
    assert _equal(_state(_finetune(swin, loader, lambda batches: batches, tmp_path)), straight)


def test_a_checkpoint_of_another_run_is_refused(swin, loader, tmp_path):
    _finetune(swin, loader, lambda batches: batches, tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"another run: lr 0\.001 there, 0\.002 here; delete .* to start afresh"):
        _finetune(swin, loader, lambda batches: batches, tmp_path, epochs=1, lr=2e-3)
    with pytest.raises(ValueError, match="epochs 1 there, 2 here; steps_per_epoch 3 there, 2 here"):
        _finetune(swin, loader[:2], lambda batches: batches, tmp_path)
    wider = prepared_swin(dict(SWIN, embed_dim=16))
    with pytest.raises(ValueError, match=r"patch_embed.proj.weight has shape \[8, 1, 2, 2\] there, \[16, 1, 2, 2\]"):
        _finetune(wider, loader, lambda batches: batches, tmp_path, epochs=1)
    with pytest.raises(ValueError, match="the run started from other weights"):
        _finetune(prepared_swin(SWIN, seed=1), loader, lambda batches: batches, tmp_path, epochs=1)
    headless = copy.deepcopy(swin)
    headless.head.fc = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"state dicts differ \(2 names, e\.g\. head\.fc\.bias\)"):
        _finetune(headless, loader, lambda batches: batches, tmp_path, epochs=1)
    (tmp_path / "finetune.json").write_text('{"format": "lava-spikedattn-finetune", "version": 2}')
    with pytest.raises(ValueError, match="has version 2, this library reads 1; delete"):
        _finetune(swin, loader, lambda batches: batches, tmp_path, epochs=1)
    (tmp_path / "finetune.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not a fine-tuning checkpoint"):
        _finetune(swin, loader, lambda batches: batches, tmp_path, epochs=1)


def test_an_interrupted_write_leaves_the_previous_checkpoint_whole(swin, loader, tmp_path, monkeypatch):
    """A kill while epoch 2's tensor file is written: the folder still holds epoch 1, complete, and a
    resumed run ends as an uninterrupted one."""
    import safetensors.torch

    save_file = safetensors.torch.save_file

    def killed_after_half(tensors, path):
        if "epoch-0002" in path:
            save_file(dict(list(tensors.items())[:5]), path)  # a part of the file reaches the disk
            raise KilledError
        save_file(tensors, path)

    monkeypatch.setattr(safetensors.torch, "save_file", killed_after_half)
    with pytest.raises(KilledError):
        _finetune(swin, loader, lambda batches: batches, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch-0001.safetensors", "finetune.json"]
    assert json.loads((tmp_path / "finetune.json").read_text())["epochs_done"] == 1
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    resumed = _finetune(swin, loader, lambda batches: batches, tmp_path)
    assert _equal(_state(resumed), _state(_finetune(swin, loader, lambda batches: batches, None)))


# --- data parallel: the torchrun worker and its reference -------------------------------------------------------
CODE = PhaseCode(1.6, 6)


def _cases():
    """name -> (model, batches as one process sees them in order, how to fine-tune it). Models without
    dropout and drop path: those draw from each rank's own generator, not one process's."""
    swin = prepared_swin(dict(SWIN, drop_path_rate=0.0))
    swin_batches = [grey_task(8, seed) for seed in range(5)]  # 5 batches: rank 0 gets 3, rank 1 gets 2
    bert = prepared_bert(dict(tiny_bert_config(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).double()
    bert_batches = []
    for seed in range(4):
        batch = sentences(8, seed)
        bert_batches.append(dict(batch, labels=(batch["input_ids"][:, 0] < 25).long()))
    calibration = [grey_task(16, 100)[0]]

    def plain(model, batches, checkpoint=None):
        return finetune(model, batches, copy.deepcopy(model).eval(), checkpoint=checkpoint, **SETTINGS)

    def phase_aware(model, batches, checkpoint=None):
        return finetune_phase_aware(model, CODE, batches, calibration, epochs=2, lr=1e-3, progress=False,
                                    checkpoint=checkpoint)[0]

    return {"swin": (copy.deepcopy(swin).double(), [(x.double(), y) for x, y in swin_batches], plain),
            "bert": (bert, bert_batches, plain), "phase-aware swin": (swin, swin_batches[:4], phase_aware)}


def _together(batches: list, ranks: int) -> list:
    """The batches of each data-parallel step, concatenated: what one process trains on instead."""
    steps = [batches[i:i + ranks] for i in range(0, len(batches), ranks)]
    if isinstance(batches[0], dict):
        return [{key: torch.cat([b[key] for b in step]) for key in step[0]} for step in steps]
    return [tuple(torch.cat(parts) for parts in zip(*step)) for step in steps]


def _worker(folder: pathlib.Path) -> None:
    """One torchrun rank: every case on this rank's shard, the Swin case once more killed in epoch 2 and
    resumed from a checkpoint, and two refusals; the weights go to rank<r>.pt."""
    from lava_spikedattn import distributed

    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    rank, world_size = distributed.world()
    results = {}
    for name, (model, batches, tune) in _cases().items():
        results[name] = _state(tune(copy.deepcopy(model), distributed.shard(batches)))
    model, batches, tune = _cases()["swin"]
    with pytest.raises(KilledError):
        tune(copy.deepcopy(model), KilledInEpoch(distributed.shard(batches)), folder / "checkpoint")
    results["resumed swin"] = _state(tune(copy.deepcopy(model), distributed.shard(batches), folder / "checkpoint"))
    # Refused on every rank alike (no rank left waiting in a collective): a shard without a batch, and a
    # BatchNorm whose statistics would stay per rank.
    with pytest.raises(ValueError, match="only 1 of 2 processes got a training batch: use more batches or fewer"):
        tune(copy.deepcopy(model), distributed.shard(batches[:1]))
    with pytest.raises(ValueError, match=r"student\.1: BatchNorm1d would normalise with each process's own batch"):
        finetune(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(256)), distributed.shard(batches))
    results["world"] = (rank, world_size)
    torch.save(results, folder / f"rank{rank}.pt")


def _largest_difference(got: dict, expected: dict) -> tuple[float, str]:
    """(max |got - expected| over the floating tensors, the tensor where it is)."""
    return max((float((got[key] - expected[key]).abs().max()), key) for key in expected
               if expected[key].is_floating_point())


# One process on the concatenated batches takes the same steps as 2 ranks up to float rounding (the batch
# sums, statistics and gradients are added in another order). In float32 AdamW turns that rounding into
# visible differences where a gradient is rounding noise: the biases that feed a BatchNorm through the
# residual stream have a gradient of 0 in exact arithmetic (a batch-statistics norm removes any shift),
# and AdamW moves a weight by about lr per step whatever the size of its gradient, when it is above eps
# (1e-8) -- measured on the Swin in float32: up to 2.4e-3 on these biases (3.2e-3 on the running means that
# follow them) after 6 steps of lr 1e-3, against at most 1.7e-7 on every weight matrix and BatchNorm weight
# (BERT: 3.6e-7 everywhere). So the plain fine-tunings run in float64, where the noise stays below eps: measured
# (torch 2.14, CPU, one thread) 2.3e-11 (Swin) and 6.7e-16 (BERT), against changes of the weights of about
# lr * steps = 6e-3 and differences of 0.16 and 5e-3 when the norms' statistics are left per rank. The
# phase-aware one runs in float32, as the command line does (its norms use frozen statistics): 6.0e-8.
TOLERANCE = {"swin": 1e-9, "bert": 1e-9, "phase-aware swin": 1e-6}


@pytest.mark.slow
def test_two_ranks_train_as_one_process_on_their_batches_together(tmp_path):
    """Per case: the 2 ranks end bitwise equal, and within TOLERANCE of one process on the concatenated
    batches; the Swin killed in epoch 2 and resumed on both ranks ends bitwise as the uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(pathlib.Path(__file__)), str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [r.pop("world") for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert _equal(ranks[0][name], ranks[1][name]), name  # every rank ends with the same weights
    assert _equal(ranks[0]["resumed swin"], ranks[0]["swin"])  # resuming under torchrun is exact too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (model, batches, tune) in _cases().items():
            start = _state(model)
            expected = _state(tune(copy.deepcopy(model), _together(batches, 2)))
            assert _largest_difference(expected, start)[0] > 1e-3  # the weights did change
            difference, where = _largest_difference(ranks[0][name], expected)
            assert difference <= TOLERANCE[name], (name, where, difference)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]))
