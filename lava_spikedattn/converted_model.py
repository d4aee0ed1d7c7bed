"""The converted model and its folder: ``config.json`` (family, architecture, code, layer graph,
calibration summary, hashes) and ``weights.safetensors`` (folded weights and per-layer scales).

Writing is atomic (a staging folder renamed into place); reading validates every field, shape
and hash and raises :class:`ConvertedModelError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lava_spikedattn.coding import CONVENTIONS, PhaseCode
from lava_spikedattn.engines import ENGINES, SpikingNetwork
from lava_spikedattn.layers import LayerSpec, layer_count, steps_per_inference
from lava_spikedattn.models import ModelFamily, get_family

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "ConvertedModel", "ConvertedModelError",
           "check_save_folder", "tensor_sha256"]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class ConvertedModelError(ValueError):
    """A converted-model folder is missing, incomplete, inconsistent or corrupt."""


def tensor_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors in a fixed order: sorted names, each with dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_CONFIG_TYPES = {
    "format_version": int, "family": str, "architecture": dict, "base": (int, float), "timesteps": int,
    "convention": str, "layers": list, "n_layers": int, "steps_per_inference": int, "calibration": dict,
    "source_sha256": str, "weights_sha256": str,
}


@dataclass(eq=False)
class ConvertedModel:
    """A converted network: ``config`` (JSON, see ``config.json``) and its ``weights``.

    ``config`` keys: format_version, family, architecture, base, timesteps, convention, layers
    (the ordered layer graph, :meth:`LayerSpec.to_json`), n_layers, steps_per_inference,
    calibration (summary), source_sha256 (the prepared model's state dict, :func:`tensor_sha256`),
    weights_sha256 (of ``weights``). ``weights``: folded weights, biases, attention biases and
    masks, ``input_max``, and ``scale.<layer>`` for every layer with a scale.
    """

    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def family(self) -> ModelFamily:
        return get_family(self.config["family"])

    @property
    def code(self) -> PhaseCode:
        return PhaseCode(self.config["base"], self.config["timesteps"], self.config["convention"])

    @property
    def layers(self) -> list[LayerSpec]:
        return self.family.layer_graph(self.config["architecture"], self.config["convention"])

    @property
    def n_layers(self) -> int:
        return self.config["n_layers"]

    @property
    def steps_per_inference(self) -> int:
        return self.config["steps_per_inference"]

    def with_code(self, base: float | None = None, timesteps: int | None = None) -> ConvertedModel:
        """The same network under another base and/or window (the calibrated scales do not depend
        on either); ``steps_per_inference`` follows T. ``ValueError`` for an invalid B or T."""
        code = PhaseCode(self.config["base"] if base is None else base,
                         self.config["timesteps"] if timesteps is None else timesteps, self.config["convention"])
        return ConvertedModel(dict(self.config, base=code.base, timesteps=code.timesteps,
                                   steps_per_inference=steps_per_inference(self.layers, code.timesteps)),
                              self.weights)

    def to_reference(self, engine: str = "closed") -> SpikingNetwork:
        """The network as an ``nn.Module`` on the reference engine (``"closed"``, ``"stepped"``,
        or ``"ann"`` for the folded ANN without spikes); its input format is the ANN's."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        return self.family.network(self.config["architecture"], self.config["convention"], self.weights,
                                   self.code, engine)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` as the folder ``folder``, atomically.

        ``config["weights_sha256"]`` is recomputed from the weights being written. Both files are
        written into a temporary sibling folder (``.<name>.*.partial``), which one rename then
        makes ``folder``, so ``folder`` never holds new weights with an old config or half a file.
        An error (or ^C) while writing removes the temporary folder and leaves ``folder`` as it
        was. An existing ``folder`` must be a converted-model folder (:func:`check_save_folder`,
        ``FileExistsError`` otherwise); it is replaced as :func:`_move_into_place` describes.
        """
        folder = Path(folder)
        check_save_folder(folder)
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.weights.items()}
        self.config["weights_sha256"] = tensor_sha256(tensors)
        text = json.dumps(self.config, indent=1, allow_nan=False)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = _sibling(folder, "partial")
        staging.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the saved folder's
        try:
            safetensors.torch.save_file(tensors, str(staging / WEIGHTS_FILE),
                                        metadata={"format_version": str(FORMAT_VERSION),
                                                  "family": self.config["family"]})
            (staging / CONFIG_FILE).write_text(text + "\n")
            _move_into_place(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConvertedModel:
        """Read and validate a folder written by :meth:`save`; ``ConvertedModelError`` if broken."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConvertedModelError(f"{folder} is not a folder")
        config = _read_config(folder / CONFIG_FILE)
        family, architecture, layers = _check_config(config)
        weights = _read_weights(folder / WEIGHTS_FILE)
        expected = family.weight_shapes(architecture, config["convention"])
        expected.update({f"scale.{layer.name}": layer.scale_shape for layer in layers if layer.scale_shape is not None})
        _check_weights(weights, expected)
        if tensor_sha256(weights) != config["weights_sha256"]:
            raise ConvertedModelError(f"{folder / WEIGHTS_FILE} does not match the weights_sha256 recorded in "
                                      f"{CONFIG_FILE}: the file was modified or is corrupt")
        return cls(config, weights)

    def summary(self) -> str:
        """One line: family, code, layer count and steps per inference."""
        cal = self.config["calibration"]
        return (f"{self.config['family']} {self.code.describe()}; {self.n_layers} neuron layers, "
                f"{self.steps_per_inference} steps per inference; calibrated ({cal['method']}) on "
                f"{cal['samples']} samples, {cal['zero_count']} zero scale(s)")


def check_save_folder(folder: str | os.PathLike) -> None:
    """Raise ``FileExistsError`` unless :meth:`ConvertedModel.save` may write ``folder``: it does not
    exist, or it is a folder holding nothing but ``config.json`` / ``weights.safetensors``.

    save() replaces the whole folder, so it refuses one with anything else in it rather than
    delete the user's files. Call it before long work (calibration) to fail early.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"cannot save a converted model as {folder}: it is a file; choose a folder path")
    others = sorted(path.name for path in folder.iterdir() if path.name not in (CONFIG_FILE, WEIGHTS_FILE))
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"cannot save a converted model as {folder}: saving replaces the whole folder and it "
                              f"holds {len(others)} other file(s) ({listed}); choose a new or empty folder, or move "
                              f"them away")


def _sibling(folder: Path, kind: str) -> Path:
    """A fresh hidden name beside ``folder``: ``.<name>.<random hex>.<kind>``."""
    return folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.{kind}")


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the complete folder ``staging`` to ``folder``.

    An existing ``folder`` is first renamed aside (``.<name>.<hex>.old`` beside it), then deleted.
    Crash window: between those two renames ``folder`` does not exist and the previous model
    sits, complete, in the ``.old`` folder (rename it back); a failed second rename restores it.
    """
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = _sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConvertedModelError(f"missing {path.name} in {path.parent}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConvertedModelError(f"{path} is not valid JSON (truncated or corrupt): {error}") from None
    if not isinstance(config, dict):
        raise ConvertedModelError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def _check_config(config: dict[str, Any]) -> tuple[ModelFamily, dict[str, Any], list[LayerSpec]]:
    if "format_version" not in config:
        raise ConvertedModelError(f"{CONFIG_FILE} has no 'format_version'")
    version = config["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ConvertedModelError(f"unsupported format_version {version!r} in {CONFIG_FILE}: this version of "
                                  f"lava-spikedattn reads format_version {FORMAT_VERSION}")
    for key, types in _CONFIG_TYPES.items():
        if key not in config:
            raise ConvertedModelError(f"{CONFIG_FILE} is missing the key {key!r}")
        if not isinstance(config[key], types) or isinstance(config[key], bool):
            raise ConvertedModelError(f"{CONFIG_FILE}: {key!r} has type {type(config[key]).__name__}, "
                                      f"expected {getattr(types, '__name__', 'a number')}")
    try:
        family = get_family(config["family"])
    except KeyError as error:
        raise ConvertedModelError(f"{CONFIG_FILE}: {error.args[0]}") from None
    if config["convention"] not in CONVENTIONS:
        raise ConvertedModelError(f"{CONFIG_FILE}: convention must be one of {CONVENTIONS}, "
                                  f"got {config['convention']!r}")
    try:
        PhaseCode(config["base"], config["timesteps"], config["convention"])
        family.check_architecture(config["architecture"])
    except ValueError as error:
        raise ConvertedModelError(f"{CONFIG_FILE}: {error}") from None
    layers = family.layer_graph(config["architecture"], config["convention"])
    derived = [layer.to_json() for layer in layers]
    if config["layers"] != derived:
        first = next((i for i, (a, b) in enumerate(zip(config["layers"], derived)) if a != b),
                     min(len(derived), len(config["layers"])))
        raise ConvertedModelError(
            f"{CONFIG_FILE}: the layer graph does not match the architecture (first difference at layer "
            f"{first}: found {config['layers'][first] if first < len(config['layers']) else 'nothing'}, "
            f"expected {derived[first] if first < len(derived) else 'nothing'})")
    for key, value in (("n_layers", layer_count(layers)),
                       ("steps_per_inference", steps_per_inference(layers, config["timesteps"]))):
        if config[key] != value:
            raise ConvertedModelError(f"{CONFIG_FILE}: {key} is {config[key]}, the layer graph gives {value}")
    return family, config["architecture"], layers


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConvertedModelError(f"missing {path.name} in {path.parent}")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for every malformed file
        raise ConvertedModelError(f"{path} is truncated or corrupt: {error}") from None


def _check_weights(weights: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    missing = [key for key in expected if key not in weights]
    if missing:
        raise ConvertedModelError(f"{WEIGHTS_FILE} is missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        raise ConvertedModelError(f"{WEIGHTS_FILE} has {len(unexpected)} unexpected tensor(s): "
                                  f"{', '.join(unexpected[:8])}")
    for key, shape in expected.items():
        tensor = weights[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ConvertedModelError(f"{WEIGHTS_FILE}: tensor {key!r} has shape {tuple(tensor.shape)}, the "
                                      f"architecture needs {tuple(shape)}")
        if not torch.is_floating_point(tensor):
            raise ConvertedModelError(f"{WEIGHTS_FILE}: tensor {key!r} has dtype {tensor.dtype}, "
                                      f"expected floating point")
    non_finite = {key: int((~torch.isfinite(tensor)).sum()) for key, tensor in weights.items()}
    non_finite = {key: count for key, count in non_finite.items() if count}
    if non_finite:
        listed = ", ".join(f"{key!r} ({count})" for key, count in list(non_finite.items())[:8])
        raise ConvertedModelError(f"{WEIGHTS_FILE} holds NaN/inf values in {len(non_finite)} tensor(s): {listed}; "
                                  f"the file is corrupt or was written from a diverged model: convert again")

