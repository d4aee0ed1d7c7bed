"""Fixtures shared by the test modules: tiny models that several modules convert or run.

All are module-scoped, so each module that requests one builds its own, from the same seeds, as
when each module defined it. The factories and configurations they use are in tiny_models.py, the
data in synthetic.py. Library imports are made inside the fixtures, so collecting a module that
uses none of them imports nothing more.
"""

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread. Float sums round by the thread count: the tiny Swin
    trained on two threads got a scale that the 16-bit fixed-point payload cannot hold, so
    test_fixed_network alone failed on a 2-core machine while the whole suite (one thread from
    the demo's test on, which sets it) passed. Now neither the cores nor the test order matter."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def converted(tiny, calibration):
    """The requesting module's ``tiny`` model converted with its ``calibration`` batches at the
    paper's Swin code, B=1.15, T=40, exact convention (tiny_models.PAPER_CODE)."""
    from tiny_models import PAPER_CODE

    from lava_spikedattn.convert import convert

    return convert(tiny, calibration, PAPER_CODE)


@pytest.fixture(scope="module")
def converted_official(tiny, calibration):
    """As ``converted``, in the official convention (tiny_models.PAPER_CODE_OFFICIAL)."""
    from tiny_models import PAPER_CODE_OFFICIAL

    from lava_spikedattn.convert import convert

    return convert(tiny, calibration, PAPER_CODE_OFFICIAL)


@pytest.fixture(scope="module")
def lava_swin():
    """The tiny Swin of the Lava tests (16x16 grey images, 4 classes; two stages, patch merging
    between them, a shifted block in each stage's second block), trained 30 steps (lr 3e-3) on
    synthetic.grey_task, in eval mode."""
    from synthetic import grey_task
    from tiny_models import tiny_swin_config, train_tiny_swin

    config = tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4)
    return train_tiny_swin(config, (grey_task(64, step) for step in range(30)), lr=3e-3)


@pytest.fixture(scope="module")
def tiny_bert():
    """A 2-layer prepared BERT (tiny_models.tiny_bert_config()), briefly trained to separate two
    token sets of synthetic.sentences (real logit margins)."""
    from synthetic import sentences
    from tiny_models import prepared_bert, tiny_bert_config

    from lava_spikedattn.ann import finetune

    model = prepared_bert(tiny_bert_config())
    batches = []
    for seed in range(20):
        batch = sentences(16, seed)
        batch["labels"] = (batch["input_ids"][:, 0] < 25).long()
        batches.append(batch)
    return finetune(model, batches, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def cli_converted(tmp_path_factory):
    """(converted folder, ANN checkpoint) of ``spikedattn convert`` of the command-line tests'
    tiny Swin (tiny_models.SWIN) on random data."""
    from tiny_models import SWIN

    from lava_spikedattn.cli import main

    folder = tmp_path_factory.mktemp("cli")
    argv = ["convert", *SWIN, "--data", "random", "--calib-batches", "2", "--batch-size", "8",
            "--out", folder / "snn", "--save-ann", folder / "ann.safetensors", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    return folder / "snn", folder / "ann.safetensors"
