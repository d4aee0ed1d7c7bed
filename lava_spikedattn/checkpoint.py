"""ANN checkpoints: a prepared ANN in one safetensors file that rebuilds itself, no pickle.

Written by ``spikedattn convert --save-ann`` or :func:`save_ann_checkpoint`, read by
``--checkpoint`` / ``--ann`` and :func:`load_ann_checkpoint`. The file holds the *prepared*
model's state dict, with string metadata ``format`` = ``lava-spikedattn-ann``, ``version`` =
``1``, ``family`` (a registered family, e.g. ``swin``/``bert``), ``model`` (the name the family
builds it from: a timm model name for Swin, ``bert`` for BERT) and ``model_kwargs`` (JSON: the
builder's keyword arguments, e.g. ``num_classes``, ``img_size``; for BERT the ``BertConfig``
fields). Loading builds the model through its family (``build_ann``, random init), prepares it
(``prepare``) and loads the state dict strictly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import nn

from lava_spikedattn.models import get_family

__all__ = ["ANN_CHECKPOINT_FORMAT", "ANN_CHECKPOINT_VERSION", "check_checkpoint_architecture", "load_ann_checkpoint",
           "save_ann_checkpoint"]

ANN_CHECKPOINT_FORMAT = "lava-spikedattn-ann"
ANN_CHECKPOINT_VERSION = "1"


def save_ann_checkpoint(model: nn.Module, path: str | os.PathLike, *, family: str, model_name: str,
                        model_kwargs: Mapping[str, Any]) -> Path:
    """Write a prepared ANN as an ANN checkpoint (format in the module docstring), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    metadata = {"format": ANN_CHECKPOINT_FORMAT, "version": ANN_CHECKPOINT_VERSION, "family": family,
                "model": model_name, "model_kwargs": json.dumps(dict(model_kwargs)), "prepared": "true"}
    partial = path.with_name(f".{path.name}.partial")
    safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def load_ann_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(prepared model in eval mode, metadata with ``model_kwargs`` decoded) of an ANN checkpoint.

    Raises ``FileNotFoundError`` or ``ValueError`` naming what is wrong with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ANN checkpoint {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state = safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own types for malformed files
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    if metadata.get("format") != ANN_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lava-spikedattn ANN checkpoint (metadata format="
                         f"{metadata.get('format')!r}); write one with `spikedattn convert ... --save-ann PATH` "
                         f"or lava_spikedattn.checkpoint.save_ann_checkpoint()")
    if metadata.get("version") != ANN_CHECKPOINT_VERSION:
        raise ValueError(f"{path}: ANN checkpoint version {metadata.get('version')!r} is not supported "
                         f"(this version reads {ANN_CHECKPOINT_VERSION})")
    for key in ("family", "model", "model_kwargs"):
        if key not in metadata:
            raise ValueError(f"{path}: the checkpoint metadata is missing {key!r}")
    try:
        kwargs = json.loads(metadata["model_kwargs"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: model_kwargs is not valid JSON: {error}") from None
    try:
        family = get_family(metadata["family"])
    except KeyError as error:
        raise ValueError(f"{path}: {error.args[0]}") from None
    model, _, _ = family.build_ann(metadata["model"], kwargs)
    if metadata.get("prepared", "true") == "true":
        model = family.prepare(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit {metadata['model']} with {kwargs}: {error}") from None
    return model.eval(), {**metadata, "model_kwargs": kwargs}


def check_checkpoint_architecture(path: Path, ann: nn.Module, family: str, folder: Path,
                                  config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every differing key if the ANN checkpoint at ``path`` (a
    ``family`` model) is not of the architecture the converted model in ``folder`` was made from.

    Weights may differ (a re-fine-tuned checkpoint: the caller warns); the family and every
    architecture key (classes, input size, depths, ...) must not.
    """
    fix = (f"pass the checkpoint {folder} was converted from (its `convert --save-ann` file), or convert "
           f"this one with `spikedattn convert --checkpoint {path} ...`")
    if family != config["family"]:
        raise ValueError(f"--ann {path} is a {family} model (family={family}) but {folder} was converted from a "
                         f"{config['family']} model (family={config['family']}); {fix}")
    expected = config["architecture"]
    found = json.loads(json.dumps(get_family(family).architecture(ann)))  # as config.json holds it
    differing = [key for key in dict.fromkeys([*expected, *found]) if found.get(key) != expected.get(key)]
    if differing:
        def describe(architecture: Mapping[str, Any]) -> str:
            return ", ".join(f"{key}={json.dumps(architecture.get(key))}" for key in differing)

        raise ValueError(f"--ann {path} is a {family} with {describe(found)} but {folder} was converted from "
                         f"{describe(expected)}; {fix}")
