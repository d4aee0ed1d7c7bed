"""What :func:`lava_spikedattn.ann.finetune` needs beyond one process's training loop: resumable
checkpoints and the data-parallel step (its docstring describes both).

A checkpoint is a folder: ``epoch-NNNN.safetensors`` holds the tensors -- ``student.<key>`` (the
student's state dict: parameters and buffers, e.g. norm statistics), ``optimizer.<index>.<name>``
(AdamW's moments and step counts) and ``rng.<rank>.torch`` / ``rng.<rank>.cuda.<device>`` (every
process's torch generators); ``finetune.json`` holds the rest -- format, version, ``epochs_done``,
``step`` (global optimiser steps), ``settings`` (epochs, lr, temperature, alpha, max_steps, cosine,
teacher, steps_per_epoch, processes), ``start_sha256`` (of the weights the run started from), the
optimiser's ``param_groups``, the scheduler's state, every process's Python and NumPy generator
states, and ``tensors``, the name of the tensor file. Each file is written to a temporary file,
flushed and renamed over the old one, the JSON last, and the tensor file it replaces is removed after:
an interrupted write leaves the previous checkpoint whole.

Kept apart from :mod:`lava_spikedattn.distributed`, which imports ``convert`` and so (through it)
``ann``; this module imports no other module of the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_RECORD", "CHECKPOINT_VERSION", "all_reduce_sum", "all_reduce_with_grad",
           "average_gradients", "resume", "save_checkpoint", "set_rng_state", "state_sha256", "steps_per_epoch",
           "world"]

CHECKPOINT_FORMAT = "lava-spikedattn-finetune"
CHECKPOINT_VERSION = 1
#: The checkpoint folder's JSON record, written last: a folder holds a checkpoint when it has this file.
CHECKPOINT_RECORD = "finetune.json"


# --- data-parallel steps ---------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(value: float, device: torch.device | str) -> float:
    """The sum of ``value`` over the ranks (float64 on ``device``, which the backend must take)."""
    buffer = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(buffer)
    return float(buffer)


def steps_per_epoch(loader: Iterable, world_size: int, device: torch.device | str) -> int | None:
    """Optimiser steps per epoch: the (longest) rank's batch count, None if any loader has no length."""
    try:
        count = len(loader)  # type: ignore[arg-type]
    except TypeError:
        count = -1
    if world_size > 1:  # max of the counts and of their negatives: a -1 anywhere shows as a min of -1
        counts = torch.tensor([count, -count], device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        count = int(counts[0]) if int(counts[1]) <= 0 else -1
    return None if count < 0 else count


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the incoming gradients over the ranks too: each rank's
    share then gets the gradient of every rank's loss (as torch.distributed.nn.functional.all_reduce,
    which is deprecated)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, differentiable (backward: the sum of the ranks' gradients)."""
    return _AllReduceSum.apply(tensor)


def average_gradients(parameters: list[nn.Parameter], samples: float) -> None:
    """Each gradient := the sum of the ranks' gradients over the sum of their ``samples`` (one all-reduce;
    each rank back-propagated its loss times its ``samples``, so this is the gradient of the mean loss of
    all the step's samples). A parameter without a gradient on every rank with samples keeps none."""
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    flags = [0.0 if p.grad is None else samples for p in parameters]
    flat = torch.cat([g.flatten() for g in grads] + [grads[0].new_tensor([*flags, samples])])
    dist.all_reduce(flat)
    offset, total = 0, flat[-1]
    for p, flag in zip(parameters, flat[-1 - len(parameters):-1].tolist()):
        p.grad = (flat[offset:offset + p.numel()] / total).view_as(p) if flag else None
        offset += p.numel()


# --- checkpoints -----------------------------------------------------------------------------------------
def state_sha256(module: nn.Module) -> str:
    """sha256 of ``module``'s state dict (names and raw bytes, in order)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rng_state() -> dict[str, Any]:
    """This process's generators: torch's (CPU, and CUDA once initialised), Python's and NumPy's global ones."""
    version, state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "python": [version, list(state), gauss], "numpy": [name, keys.tolist(), position, has_gauss, cached]}


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore this process's generators from what :func:`resume` returned."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, flush it to disk, then rename it to ``path``."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_checkpoint(folder: Path, student: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler | None, record: dict[str, Any]) -> None:
    """Write the checkpoint (module docstring) with ``record``'s entries (epochs_done, step, settings,
    start_sha256) into ``folder``. Called by every rank: rank 0 writes, with every rank's generator
    states gathered to it; the others wait until it has written."""
    rank, world_size = world()
    rngs: list[Any] = [_rng_state()]
    if world_size > 1:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, _rng_state())
    if rank == 0:
        tensors = {f"student.{key}": value.detach().cpu().contiguous().clone()
                   for key, value in student.state_dict().items()}
        state = optimizer.state_dict()
        saved_state: dict[str, dict[str, Any]] = {}
        for index, entries in state["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    saved_state.setdefault(str(index), {})[key] = value
        for r, rng in enumerate(rngs):
            tensors[f"rng.{r}.torch"] = rng.pop("torch")
            tensors.update({f"rng.{r}.cuda.{i}": value for i, value in enumerate(rng["cuda"])})
            rng["cuda"] = len(rng["cuda"])
        name = f"epoch-{record['epochs_done']:04d}.safetensors"
        record.update(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, tensors=name,
                      optimizer={"param_groups": state["param_groups"], "state": saved_state},
                      scheduler=None if schedule is None else schedule.state_dict(), rng=rngs)
        folder.mkdir(parents=True, exist_ok=True)
        _replace(folder / name, lambda path: safetensors.torch.save_file(tensors, str(path)))
        _replace(folder / CHECKPOINT_RECORD, lambda path: path.write_text(json.dumps(record, indent=1) + "\n"))
        for old in folder.glob("epoch-*.safetensors"):
            if old.name != name:
                old.unlink()
    if world_size > 1:
        dist.barrier()


def resume(folder: Path, settings: dict[str, Any], start: str, student: nn.Module,
           optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler | None,
           ) -> tuple[int, int, dict[str, Any]]:
    """Load the checkpoint in ``folder`` into the student, optimiser and schedule, after checking that
    it belongs to this run (the same ``settings``, state-dict names and shapes, and starting weights'
    sha256 ``start``); returns (epochs done, steps done, this process's generator states).

    Raises ``ValueError`` naming what differs, or why the checkpoint cannot be read, and the fix.
    """
    path = folder / CHECKPOINT_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"fine-tuning checkpoint {path} cannot be read ({error}); delete {folder} to start "
                         f"afresh") from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fine-tuning checkpoint (no format {CHECKPOINT_FORMAT!r}); name another "
                         f"folder")
    if record.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"fine-tuning checkpoint {path} has version {record.get('version')!r}, this library reads "
                         f"{CHECKPOINT_VERSION}; delete {folder} to start afresh")
    try:
        tensors = safetensors.torch.load_file(str(folder / record["tensors"]))
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as error:
        raise ValueError(f"fine-tuning checkpoint {path}: its tensor file cannot be read ({error}); delete "
                         f"{folder} to start afresh") from None
    saved = {key.removeprefix("student."): value for key, value in tensors.items() if key.startswith("student.")}
    current = student.state_dict()
    settings = json.loads(json.dumps(settings))
    differ = [f"{key} {record['settings'].get(key)!r} there, {value!r} here" for key, value in settings.items()
              if record["settings"].get(key) != value]
    names = sorted(saved.keys() ^ current.keys())
    if names:
        differ.append(f"the models' state dicts differ ({len(names)} names, e.g. {names[0]})")
    differ += [f"{key} has shape {list(saved[key].shape)} there, {list(value.shape)} here"
               for key, value in current.items() if key in saved and saved[key].shape != value.shape][:1]
    if not differ and record["start_sha256"] != start:
        differ.append("the run started from other weights")
    if differ:
        raise ValueError(f"fine-tuning checkpoint {folder} was written by another run: {'; '.join(differ)}; delete "
                         f"{folder} to start afresh, or pass the settings it was written with")
    student.load_state_dict(saved)
    state: dict[int, dict[str, Any]] = {}
    for index, entries in record["optimizer"]["state"].items():
        state.setdefault(int(index), {}).update(entries)
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["optimizer"]["param_groups"]})
    if schedule is not None:
        schedule.load_state_dict(record["scheduler"])
    rank = world()[0]
    rng = dict(record["rng"][rank], torch=tensors[f"rng.{rank}.torch"])
    rng["cuda"] = [tensors[f"rng.{rank}.cuda.{i}"] for i in range(rng["cuda"])]
    return record["epochs_done"], record["step"], rng
