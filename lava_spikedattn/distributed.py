"""Data-set-scale calibration and evaluation under ``torchrun`` (``torch.distributed``).

Every process (rank) runs the same network on its own shard of the batches; what the ranks
learn is combined so that the result does not depend on how many ranks there are::

    torchrun --nproc_per_node 4 -m lava_spikedattn.cli convert ... --out folder
    torchrun --nproc_per_node 4 -m lava_spikedattn.cli evaluate folder --data ...

* Sharding is by whole batches: rank r takes batches r, r+N, r+2N, … of the batches a single
  process would see (:func:`shard`, :class:`ShardedBatchSampler`). Every batch is therefore the
  same tensor with the same shape as in a 1-process run, so every activation is bitwise the
  same. (``torch.utils.data.DistributedSampler`` is not used: it pads the data set with
  repeated samples to equal shard sizes, which would change the maxima's data and the metrics.)
* Calibration (:func:`convert_distributed`): the per-neuron maxima and the input maximum are
  all-reduced with MAX, which is exact, so the scales equal those of one process on all the
  data. The released code calibrates each GPU on its own shard without a reduction (spec §5.2),
  so its scales depend on the GPU count. ``method="percentile"`` keeps every sample: the
  samples are *gathered* (``all_gather_object``) onto every rank, and as the percentile sorts
  them, the result is again exactly the 1-process one (memory: each rank holds what one process
  would hold; percentile calibration is meant for small calibration sets anyway).
* Metrics (``lava_spikedattn.evaluate``) are counts (exact integer sums) and float64 sums kept
  as per-batch partial sums and added with ``math.fsum`` (correctly rounded, so independent of
  the order); the states are combined with :func:`gather_objects`.
* Fine-tuning (``ann.finetune``, ``phase_aware.finetune_phase_aware``, ``convert --phase-aware``) is
  data-parallel: each rank trains on its shard, one batch per rank and optimiser step, with gradients
  and norm statistics combined over the ranks (see ``ann.finetune``; its collectives live in
  :mod:`lava_spikedattn.training`, as ``ann`` cannot import this module without an import circle).

Without an initialised process group every helper is the 1-process identity.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from lava_spikedattn.calibrate import Calibrator, batch_size, calibration_input
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel, tensor_sha256
from lava_spikedattn.engines import AnnEngine

__all__ = [
    "ShardedBatchSampler",
    "all_reduce_max",
    "broadcast_object",
    "convert_distributed",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "reduce_calibrator",
    "shard",
    "world",
]

T = TypeVar("T")


# --- process group ------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    With ``WORLD_SIZE`` > 1 and no process group yet, initialises one (``nccl`` for a CUDA
    ``device``, ``gloo`` otherwise, rendezvous from ``MASTER_ADDR``/``MASTER_PORT``). Returns the
    device this rank should use: ``cuda:LOCAL_RANK`` for a CUDA device under torchrun (and makes
    it the current device), ``device`` otherwise.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda" and world_size > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_process_group)
    return device


def _leave_process_group() -> None:
    """Destroy the process group before the interpreter tears down: left to the interpreter's
    shutdown, gloo's threads can abort a rank at exit ("terminate called without an active
    exception", seen once in a loaded full test run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors must live for collectives: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``tensor`` over the ranks (a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_collective_device()).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return buffer.to(tensor.device)


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order (picklable objects); ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects); ``obj`` in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- sharding -------------------------------------------------------------------------------------------
class _Shard:
    """Batches ``rank``, ``rank + world``, … of ``batches`` (indexed when it is a sequence)."""

    def __init__(self, batches: Iterable[T], rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def _indexable(self) -> bool:
        return isinstance(self.batches, Sequence) or (
            hasattr(self.batches, "__getitem__") and hasattr(self.batches, "__len__"))

    def __len__(self) -> int:
        total = len(self.batches)  # type: ignore[arg-type]  (TypeError for a plain iterator, as len())
        return max(0, (total - self.rank + self.world_size - 1) // self.world_size)

    def __iter__(self) -> Iterator[T]:
        if self._indexable():
            return (self.batches[i] for i in range(self.rank, len(self.batches), self.world_size))
        return itertools.islice(iter(self.batches), self.rank, None, self.world_size)


def shard(batches: Iterable[T], rank: int | None = None, world_size: int | None = None) -> Iterable[T]:
    """This rank's share of ``batches``: items ``rank``, ``rank + world_size``, … (see module doc).

    A sequence (a list, or any object with ``__len__`` and ``__getitem__``) is indexed, so the
    other ranks' batches are never built; any other iterable is iterated and the other ranks'
    items skipped (a ``DataLoader`` would still load them: give it a
    :class:`ShardedBatchSampler` instead). ``rank``/``world_size`` default to :func:`world`.
    The result has a length when ``batches`` has one.
    """
    current_rank, current_world = world()
    rank = current_rank if rank is None else rank
    world_size = current_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size == 1:
        return batches
    return _Shard(batches, rank, world_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """Batch sampler for a ``DataLoader``: the 1-process batches of ``range(n)``, sharded.

    The batches are ``[0..b-1], [b..2b-1], …`` (the last one partial, as ``drop_last=False``);
    this rank gets every ``world_size``-th one starting at ``rank``. Use
    ``DataLoader(dataset, batch_sampler=ShardedBatchSampler(len(dataset), b))``.
    """

    def __init__(self, n: int, batch_size: int, rank: int | None = None, world_size: int | None = None) -> None:
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        current_rank, current_world = world()
        self.n, self.batch_size = n, batch_size
        self.rank = current_rank if rank is None else rank
        self.world_size = current_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")

    def __iter__(self) -> Iterator[list[int]]:
        starts = range(self.rank * self.batch_size, self.n, self.world_size * self.batch_size)
        return (list(range(start, min(start + self.batch_size, self.n))) for start in starts)

    def __len__(self) -> int:
        batches = (self.n + self.batch_size - 1) // self.batch_size
        return max(0, (batches - self.rank + self.world_size - 1) // self.world_size)


# --- calibration -----------------------------------------------------------------------------------------
def reduce_calibrator(calibrator: Calibrator) -> None:
    """Combine a :class:`Calibrator`'s observations over the ranks, in place (module doc).

    ``max``: MAX all-reduce of every layer's maxima and of the input maximum (exact).
    ``percentile``: every layer's samples gathered from all ranks (exact, see module doc).
    Every rank must have observed every layer (run at least one batch).
    """
    if not is_distributed():
        return
    names = sorted(calibrator.specs)
    observed = calibrator.maxima if calibrator.method == "max" else calibrator.samples
    missing = [name for name in names if name not in observed]
    if missing:
        raise RuntimeError(f"rank {dist.get_rank()} never reached {len(missing)} layer(s), e.g. {missing[0]}")
    seen = getattr(calibrator, "seen", None)  # neurons that got a sample (padding-aware calibrators)
    if calibrator.method == "max":
        for name in names:
            calibrator.maxima[name] = all_reduce_max(calibrator.maxima[name])
            if seen is not None and name in seen:
                seen[name] = all_reduce_max(seen[name].to(torch.uint8)).bool()
    else:
        for name in names:
            calibrator.samples[name] = gather_objects(torch.cat(calibrator.samples[name]))
    if calibrator.input_max is not None:  # None (the same on every rank) for networks without a bit-serial input
        calibrator.input_max = float(all_reduce_max(torch.tensor(calibrator.input_max, dtype=torch.float64)))


def convert_distributed(model: torch.nn.Module, calibration_batches: Iterable[Any], code: PhaseCode, *,
                        method: str = "max", percentile: float = 99.99, verify: bool = True,
                        progress: bool = False) -> ConvertedModel:
    """:func:`lava_spikedattn.convert.convert` on this rank's shard, calibrated over all ranks.

    Every rank passes its own ``calibration_batches`` (e.g. ``shard(all_batches)``) and gets the
    same :class:`ConvertedModel`: the scales of one process run on the union of the shards
    (bitwise, when the shards are whole batches of that run), ``calibration.batches`` and
    ``samples`` summed over the ranks, ``folding_error`` measured by rank 0 on its first batch.
    In one process (no process group) it equals ``convert(model, calibration_batches, code)``.

    Raises ``ValueError`` on every rank if any rank has no calibration batch.
    """
    rank, world_size = world()
    iterator = iter(calibration_batches)
    first = next(iterator, None)
    empty = [r for r, has_batch in enumerate(gather_objects(first is not None)) if not has_batch]
    if empty:
        what = "calibration_batches is empty" if world_size == 1 else (
            f"rank(s) {', '.join(map(str, empty))} of {world_size} got no calibration batch")
        raise ValueError(f"{what}: convert needs at least one batch per process (use more calibration batches "
                         f"or fewer processes)")
    # convert() folds, verifies and packages; its own calibration on `first` is replaced below.
    converted = convert(model, [first], code, method="max", verify=verify)
    family = converted.family
    device = next(model.parameters()).device
    network = converted.to_reference("ann").to(device)
    calibrator = Calibrator(converted.layers, method, percentile)
    engine = AnnEngine(calibrator)
    batches = samples = 0
    try:
        total = len(calibration_batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = tqdm(itertools.chain([first], iterator), total=total, desc="calibrate", unit="batch",
               disable=not progress or rank != 0)
    with torch.no_grad():
        for index, batch in enumerate(bar):
            x = calibration_input(family, batch, index)
            network.run(x, engine)
            batches += 1
            samples += batch_size(x)
    reduce_calibrator(calibrator)
    counts = gather_objects((batches, samples))
    scales, summary = calibrator.finish(next(iter(converted.weights.values())).dtype)  # the folded weights' dtype
    summary.update(batches=sum(c[0] for c in counts), samples=sum(c[1] for c in counts))
    if verify:
        summary["folding_error"] = broadcast_object(converted.config["calibration"]["folding_error"])
    weights = {**converted.weights, **{key: value.detach().cpu() for key, value in scales.items()}}
    config = dict(converted.config, calibration=summary, weights_sha256=tensor_sha256(weights))
    return ConvertedModel(json.loads(json.dumps(config, allow_nan=False)), weights)
