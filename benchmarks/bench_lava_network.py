"""A whole converted network on Lava's CPU simulator: graph size, phase times, where the time goes.

Model: the tiny Swin of tests/test_builder.py (img 16, patch 2, 1 channel, window 4, embed 16,
depths (2, 2), heads (2, 2), 4 classes), trained with the same 30-step recipe and converted with
``PhaseCode(--base, --timesteps, --convention)`` (default B=1.25, T=12, exact).

For each builder mode (``fused``: one OS process per Swin block; ``decomposed``: one per
population and synapse, the porting path) and for batch 1 and batch ``--batch`` (one graph each,
Lava compiles a graph once) the table gives:

* processes / neurons / synapses / steps per sample (``LavaNetwork.stats()``);
* build: ``net.build(x)`` (creating and connecting the Processes, encoding the input);
* compile / init / run / stop: ``run_processes(..., timings=...)`` phases (init = building the
  runtime and forking one worker per process; run = the steps; stop = stop protocol, teardown);
* wall/sample: (build + compile + init + run + stop) / batch; steps/s = steps / run;
* ms/step/proc: run / steps / processes, the simulator's cost per process and step;
* worker_cpu_s / cpu_util: CPU seconds of all workers during the run phase (psutil, sampled when
  the run starts and just before stop) and (workers + parent) CPU / (run wall x CPUs);
* max rel diff: max |Lava - stepped reference| / max |stepped reference| over the logits.

The last rows build (do not run) full-size Swin-T (timm ``swin_tiny_patch4_window7_224``,
pretrained=False, ``ann.prepare_swin``, converted on 1 random image at T=40, B=1.15, exact) in
each mode and report the OS process count (parsed from the LavaBuildError when a mode is over
``builder.MAX_PROCESSES``).

"Where the time goes" profiles one more batch-1 run per mode (not used for the table): cProfile in
the parent (compile, init, waiting) and cProfile with a thread-CPU timer inside every forked worker
(Lava's ``ProcessModel.start`` / ``RuntimeService.start`` are wrapped before the fork; each worker
writes its profile when it stops), split into neuron/synapse math (our ``run_spk`` code), data-port
I/O, the runtime service's commands and the rest of Lava's loop; plus CPU per
Process class from psutil. cProfile inflates Python call costs: the profile gives shares, psutil
the absolute CPU. Timings depend on machine load (printed): the workers share the CPUs.

``--bars`` measures instead, side by side in one run, the real-size bars of issue 14 (each row:
what is measured, the target, the value, whether it is met): Swin-T (random init, T=40, B=1.15)
and a MiniLM-sized BERT (random init, 6 layers, hidden 384, 12 heads, 32 tokens, T=16, B=1.4)
through Lava fused (the first input: build, compile, start the workers, run, stop; then per input
through the same compiled graph) and through ``LavaNetwork.simulate`` (the in-process stepper);
the shipped Swin at batch 1 likewise, fused and decomposed; the closed-form engine vs the ANN on
Swin-T at batch 8; and every Lava run's logits against the stepped reference (1e-9 relative).
Lava and simulate run in a fresh Python process per model that loads the converted model, as a
user's run does (the workers fork from it). About 2 minutes on 2 cores; writes
benchmarks/results/bench_lava_bars.json.

Usage: python benchmarks/bench_lava_network.py [--timesteps 12] [--base 1.25] [--batch 8]
       [--convention exact] [--modes fused,decomposed] [--no-profile] [--no-swin-t] [--bars]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
import typing as ty
from collections import defaultdict
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from common import best_time, report
from lava.magma.compiler.builders.py_builder import PyProcessBuilder
from lava.magma.core.model.py.model import AbstractPyProcessModel
from lava.magma.runtime.runtime_services.runtime_service import PyRuntimeService
from timm.models.swin_transformer import SwinTransformer

from lava_spikedattn import builder as lava_builder
from lava_spikedattn import runtime as lava_runner
from lava_spikedattn.ann import prepare_bert, prepare_swin
from lava_spikedattn.builder import LavaBuildError, build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert

# tests/test_builder.py: two stages, a shifted block in each stage's second block.
TINY = {"img_size": 16, "patch_size": 2, "in_chans": 1, "window_size": 4, "embed_dim": 16, "depths": (2, 2),
        "num_heads": (2, 2), "num_classes": 4}
PHASES = ("build_s", "compile_s", "init_s", "run_s", "stop_s")
SERVICE = "RuntimeService"


# --- the tiny Swin (recipe of tests/test_builder.py) -------------------------------------------

def task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-class task of smooth class prototypes plus noise (gives the model real margins)."""
    prototypes = F.interpolate(torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(7)), size=16,
                               mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    return prototypes[labels] + 0.3 * torch.randn(n, 1, 16, 16, generator=g), labels


def tiny_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    net = prepare_swin(SwinTransformer(**TINY)).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for step in range(30):
        x, y = task(64, step)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


# --- instrumentation ---------------------------------------------------------------------------

def _actor_kinds(runtime) -> dict[int, str]:
    """pid → Lava Process class of every forked worker (the runtime services included).

    Lava forks one worker per ProcessBuilder in ``executable.proc_builders`` order, then one per
    runtime service (``Runtime._build_processes`` / ``_build_runtime_services``)."""
    kinds = [type(proc).__name__ for proc, b in runtime._executable.proc_builders.items()
             if isinstance(b, PyProcessBuilder)]
    actors = runtime._messaging_infrastructure.actors
    kinds += [SERVICE] * (len(actors) - len(kinds))
    return {actor.pid: kind for actor, kind in zip(actors, kinds)}


def _cpu(pids: ty.Iterable[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            seconds[pid] = times.user + times.system
        except psutil.Error:
            continue
    return seconds


@contextlib.contextmanager
def worker_cpu(record: dict):
    """While active, every ``run_processes`` fills ``record`` with the CPU seconds each worker
    (and the parent) spent in the run phase: sampled when the run starts and when every runtime
    service reported DONE, just before the stop protocol."""
    original = lava_runner._wait_until_done

    def sampled(runtime, timeout):
        kinds = _actor_kinds(runtime)
        parent = psutil.Process()
        before, parent_before, start = _cpu(kinds), sum(parent.cpu_times()[:2]), time.perf_counter()
        original(runtime, timeout)
        after, parent_after = _cpu(kinds), sum(parent.cpu_times()[:2])
        by_kind, count = defaultdict(float), defaultdict(int)
        for pid, kind in kinds.items():
            if pid in before and pid in after:
                by_kind[kind] += after[pid] - before[pid]
                count[kind] += 1
        record.clear()
        record.update(wall_s=time.perf_counter() - start, by_kind=dict(by_kind), count=dict(count),
                      parent_s=parent_after - parent_before)

    lava_runner._wait_until_done = sampled
    try:
        yield record
    finally:
        lava_runner._wait_until_done = original


@contextlib.contextmanager
def worker_profiles(folder: Path):
    """While active, workers forked by Lava run their ProcessModel / RuntimeService loop under
    cProfile (thread CPU time of the worker's main thread) and dump it to ``folder`` on stop."""
    originals = {cls: cls.start for cls in (AbstractPyProcessModel, PyRuntimeService)}

    def wrap(original):
        def start(self):
            profile = cProfile.Profile(time.thread_time)
            profile.enable()
            try:
                return original(self)
            finally:
                profile.disable()
                profile.dump_stats(str(folder / f"{type(self).__name__}-{os.getpid()}.prof"))
        return start

    for cls, original in originals.items():
        cls.start = wrap(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.start = original


def _entering(stats: pstats.Stats, region, caller_ok=lambda caller: True) -> float:
    """Inclusive seconds spent in ``region`` functions called from outside the region."""
    total = 0.0
    for func, (_, _, _, _, callers) in stats.stats.items():
        if region(func):
            total += sum(info[3] for caller, info in callers.items() if not region(caller) and caller_ok(caller))
    return total


def split_worker_profiles(folder: Path) -> dict[str, float]:
    """Main-thread CPU of the ProcessModel workers split into math / ports / sync / Lava loop,
    and the runtime service's main-thread CPU.

    math: our ``run_spk`` code (numpy included) minus the port calls it makes; ports: data-port
    ``send``/``recv`` (channel copies included), entered from our code or Lava's loop (a builtin
    caller such as ``functools.reduce`` inside ``PyInPort.recv`` is not an entry); sync: the
    channel calls of Lava's model loop itself (the runtime service's run commands and the DONE
    answers); loop: the rest."""
    def in_model(f): return "lava_spikedattn/procs/" in f[0]
    def in_ports(f): return f[0].endswith("core/model/py/ports.py")
    def in_channel(f): return f[0].endswith("channels/pypychannel.py")
    def in_loop(f): return f[0].endswith("core/model/py/model.py")

    service = [str(p) for p in folder.glob("*.prof") if "RuntimeService" in p.name]
    models = [str(p) for p in folder.glob("*.prof") if "RuntimeService" not in p.name]
    stats = pstats.Stats(*models)
    total = sum(row[2] for row in stats.stats.values())
    math = _entering(stats, in_model) - _entering(stats, in_ports, in_model)
    ports = _entering(stats, in_ports, lambda caller: in_model(caller) or in_loop(caller))
    sync = _entering(stats, in_channel, in_loop)
    service_total = sum(row[2] for row in pstats.Stats(*service).stats.values()) if service else 0.0
    return {"workers": len(models), "total_s": total, "math_s": math, "ports_s": ports, "sync_s": sync,
            "loop_s": total - math - ports - sync, "service_s": service_total}


def _cumulative(stats: pstats.Stats, file_end: str, name: str) -> float:
    return sum(row[3] for (file, _, func), row in stats.stats.items() if file.endswith(file_end) and func == name)


def parent_init_split(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of the parent's ``Runtime.initialize``: channels, forking, waiting for the workers."""
    runtime = "magma/runtime/runtime.py"
    parts = {
        "channels_s": _cumulative(stats, runtime, "_build_channels") + _cumulative(stats, runtime,
                                                                                   "_build_sync_channels"),
        "fork_models_s": _cumulative(stats, runtime, "_build_processes"),
        "fork_services_s": _cumulative(stats, runtime, "_build_runtime_services"),
        "shm_manager_s": _cumulative(stats, runtime, "_build_message_infrastructure"),
    }
    parts["wait_worker_builds_s"] = _cumulative(stats, runtime, "initialize") - sum(parts.values())
    parts["fork_calls_s"] = _cumulative(stats, "multiprocessing/popen_fork.py", "_launch")
    return parts


# --- runs --------------------------------------------------------------------------------------

#: Builder modes: "fused" (one OS process per block) and "decomposed" (one per population/synapse).
MODES: tuple[str, ...] = lava_builder.MODES


def run_once(cm, x: ty.Any, mode: str) -> tuple[dict, dict, torch.Tensor]:
    """One Lava run of a batch: phase timings, stats, logits."""
    timings: dict = {}
    with build_lava_network(cm, mode=mode) as net:
        logits = net.run(x, timings=timings)
        stats = net.stats()
    return timings, stats, logits  # stop_s: written when the network closes


def swin_t() -> dict:
    """Build (not run) full-size Swin-T; OS processes per mode (parsed from the LavaBuildError
    when a mode is over the simulator limit), neurons and synapses."""
    import timm

    torch.manual_seed(0)
    model = prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)).eval()
    x = torch.randn(1, 3, 224, 224)
    cm = convert(model, [x], PhaseCode(1.15, 40, "exact"))
    del model
    result = {"steps": cm.steps_per_inference, "processes": {}, "over_limit": {}, "neurons": "-", "synapses": "-"}
    for mode in MODES:
        start = time.perf_counter()
        net = build_lava_network(cm, mode=mode)
        try:
            graph, _, _ = net.build(x)
        except LavaBuildError as error:
            found = re.search(r"has (\d+) Lava processes", str(error))
            if not found:
                raise
            result["processes"][mode], result["over_limit"][mode] = int(found.group(1)), True
        else:
            size = net.graph_size(graph)
            result["processes"][mode], result["over_limit"][mode] = size["processes"], False
            result["neurons"], result["synapses"] = size["neurons"], size["synapses"]
        result.setdefault("build_s", {})[mode] = time.perf_counter() - start
    return result


def sentences(n: int, seed: int) -> dict:
    """Token batches of 8 positions with padding at the end (as in tests/test_builder.py)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g)
    return {"input_ids": torch.randint(0, 50, (n, 8), generator=g),
            "attention_mask": (torch.arange(8) < lengths[:, None]).long()}


def tiny_bert() -> torch.nn.Module:
    """The 2-layer prepared BERT of tests/test_builder.py (norm statistics from 3 batches)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = prepare_bert(BertForSequenceClassification(config)).train()
    with torch.no_grad():
        for seed in range(3):
            model(**sentences(16, seed))
    return model.eval()


def row(model: str, mode: str, batch: int, timings: dict, stats: dict, cpu: dict, rel: float, cpus: int) -> dict:
    steps, processes = stats["steps_per_sample"], stats["processes"]
    worker_cpu_s = sum(cpu["by_kind"].values())
    return {
        "model": model, "mode": mode, "batch": batch, "processes": processes,
        "neurons": stats["neurons"], "synapses": stats["synapses"], "steps/sample": steps,
        **{phase: timings[phase] for phase in PHASES},
        "wall/sample_s": sum(timings[p] for p in PHASES) / batch,
        "steps/s": steps / timings["run_s"],
        "ms/step/proc": 1e3 * timings["run_s"] / steps / processes,
        "worker_cpu_s": worker_cpu_s,
        "cpu_util": (worker_cpu_s + cpu["parent_s"]) / (cpu["wall_s"] * cpus),
        "max rel diff": rel,
    }


def profiled_run(cm, x: torch.Tensor, mode: str) -> dict:
    """One run with cProfile in the parent and in every worker, plus psutil worker CPU."""
    parent, cpu = cProfile.Profile(), {}
    with tempfile.TemporaryDirectory() as folder, worker_profiles(Path(folder)), worker_cpu(cpu):
        parent.enable()
        timings, stats, _ = run_once(cm, x, mode)
        parent.disable()
        profile = split_worker_profiles(Path(folder))
    parent_stats = pstats.Stats(parent)
    profile.update(timings=timings, processes=stats["processes"], steps=stats["steps_per_sample"], psutil=cpu,
                   init=parent_init_split(parent_stats),
                   parent_wait_s=_cumulative(parent_stats, "lava_spikedattn/runtime.py", "_wait_until_done"))
    return profile


# --- issue 14's bars, at real size ------------------------------------------------------------------

def _lava_vs_simulate(cm, inputs: list, modes: ty.Sequence[str]) -> dict:
    """Per mode: wall seconds of the first input through Lava (build, compile, start the workers,
    run, stop) and per input once compiled; of simulate for the first input; and the largest
    relative logit difference against the stepped reference. Measured by ``lava_vs_simulate.py`` in
    a fresh Python process that loads the converted model, as a user's run starts: Lava forks its
    workers from the measuring process, and nothing this benchmark imported or ran before (timm,
    transformers, models, engines, freed allocations) is theirs to inherit."""
    with tempfile.TemporaryDirectory() as folder:
        cm.save(Path(folder) / "model")
        torch.save(inputs, Path(folder) / "inputs.pt")
        subprocess.run([sys.executable, str(Path(__file__).with_name("lava_vs_simulate.py")), folder, ",".join(modes)],
                       check=True)
        return json.loads((Path(folder) / "result.json").read_text())


def _bar(what: str, target: str, value: float, met: bool) -> dict:
    return {"bar": what, "target": target, "measured": float(f"{value:.4g}"), "met": "yes" if met else "no"}


def bars() -> None:
    """Issue 14's bars, measured side by side in one run (module docstring)."""
    import timm
    from transformers import BertConfig, BertForSequenceClassification

    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.data import fit_images, load_fashion_mnist
    from lava_spikedattn.demo import DEFAULT_MODEL

    start, load, rows, meta = time.perf_counter(), os.getloadavg()[0], [], {}
    # smallest model first: forking the workers costs more once this process has grown (Swin-T's
    # simulation leaves GBs mapped), and each first input includes that fork
    shipped = ConvertedModel.load(DEFAULT_MODEL)
    architecture = shipped.config["architecture"]
    images = fit_images(load_fashion_mnist("test")[0][:5], architecture["img_size"], architecture["in_chans"])
    meta["shipped_swin"] = _lava_vs_simulate(shipped, [images[i:i + 1] for i in range(5)], ["fused", "decomposed"])
    shipped_s = meta["shipped_swin"]["seconds"]
    for mode, target in (("fused", 1.0), ("decomposed", 20.0)):
        for kind in ("first input", "compiled, per input"):
            value = shipped_s[f"{mode} {kind}"]
            rows.append(_bar(f"shipped Swin batch 1: Lava {mode} s, {kind.replace('input', 'image')}",
                             f"<= {target:g}", value, value <= target))
    ratio = shipped_s["fused compiled, per input"] / shipped_s["simulate"]
    rows.append(_bar("shipped Swin: Lava fused (compiled, per image) / simulate", "<= 4", ratio, ratio <= 4))

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    bert = prepare_bert(BertForSequenceClassification(config)).train()
    tokens = {"input_ids": torch.randint(1000, config.vocab_size, (8, 32)), "attention_mask": torch.ones(8, 32,
                                                                                                         dtype=torch.long)}
    with torch.no_grad():
        bert(**tokens)  # running statistics of the norms
    bert_cm = convert(bert.eval(), [tokens], PhaseCode(1.4, 16, "exact"))
    sentences = [{k: v[i:i + 1] for k, v in tokens.items()} for i in range(4)]
    meta["minilm_sized_bert"] = _lava_vs_simulate(bert_cm, sentences, ["fused"])
    bert_s = meta["minilm_sized_bert"]["seconds"]
    rows.append(_bar("MiniLM-sized BERT 1 sentence: Lava fused s (build, compile, run, stop)", "<= 1.0",
                     bert_s["fused first input"], bert_s["fused first input"] <= 1.0))
    rows.append(_bar("MiniLM-sized BERT: Lava fused s per sentence, compiled", "<= 1.0",
                     bert_s["fused compiled, per input"], bert_s["fused compiled, per input"] <= 1.0))
    ratio = bert_s["fused compiled, per input"] / bert_s["simulate"]
    rows.append(_bar("MiniLM-sized BERT: Lava fused (compiled, per sentence) / simulate", "<= 1.5", ratio,
                     ratio <= 1.5))

    torch.manual_seed(0)
    swin = prepare_swin(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10)).eval()
    images = torch.randn(8, 3, 224, 224)
    swin_cm = convert(swin, [images[:2]], PhaseCode(1.15, 40, "exact"))
    closed = swin_cm.to_reference("closed")
    with torch.no_grad():
        ann_s = best_time(lambda: swin(images), repeat=5)
        closed_s = best_time(lambda: closed(images), repeat=5)
    rows.append(_bar("Swin-T batch 8: closed-form / ANN time", "<= 2.0", closed_s / ann_s, closed_s / ann_s <= 2.0))
    meta["swin_t"] = {"ann_s": ann_s, "closed_s": closed_s,
                      **_lava_vs_simulate(swin_cm, [images[:1], images[1:2]], ["fused"])}
    swin_t = meta["swin_t"]["seconds"]
    rows.append(_bar("Swin-T 1 image: Lava fused s (build, compile, run, stop)", "<= 25", swin_t["fused first input"],
                     swin_t["fused first input"] <= 25))
    rows.append(_bar("Swin-T: Lava fused s per image, compiled", "<= 25", swin_t["fused compiled, per input"],
                     swin_t["fused compiled, per input"] <= 25))
    ratio = swin_t["fused first input"] / swin_t["simulate"]
    rows.append(_bar("Swin-T: Lava fused (first image) / simulate", "<= 1.5", ratio, ratio <= 1.5))
    ratio = swin_t["fused compiled, per input"] / swin_t["simulate"]
    rows.append(_bar("Swin-T: Lava fused (compiled, per image) / simulate", "<= 1.5", ratio, ratio <= 1.5))

    worst = max(meta[key]["max_rel_diff"] for key in ("swin_t", "minilm_sized_bert", "shipped_swin"))
    rows.append(_bar("every Lava run vs the stepped reference (max rel. logit diff)", "<= 1e-9", worst, worst <= 1e-9))
    meta.update(cpus=len(os.sched_getaffinity(0)), load_average_at_start=load,
                timing=("wall; Lava and simulate in a fresh process per model (Lava first); Lava first input: "
                        "build, compile, start, run, stop; compiled: the other inputs through the same graph, "
                        "per input; simulate: build and step in process, first input; closed/ANN best of 5 "
                        "after warm-up"))
    report("bench_lava_bars", rows, meta)
    print("\nfirst input by phase (s); Lava's runtime floor for as many processes (lava_vs_simulate.py):")
    for model in ("shipped_swin", "minilm_sized_bert", "swin_t"):
        for mode, phases in meta[model]["first_input_phases"].items():
            floor = meta[model]["runtime_floor_phases"][mode]
            print(f"  {model} {mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items())
                  + "; floor: " + ", ".join(f"{k} {v:.3f}" for k, v in floor.items()))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=12)
    parser.add_argument("--base", type=float, default=1.25)
    parser.add_argument("--batch", type=int, default=8, help="the second batch size (the first is 1)")
    parser.add_argument("--convention", choices=("exact", "official"), default="exact")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated builder modes, of {MODES}")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument("--no-swin-t", action="store_true", help="skip building full-size Swin-T")
    parser.add_argument("--bars", action="store_true", help="measure issue 14's real-size bars instead")
    args = parser.parse_args()
    if args.bars:
        bars()
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: give one or more of {MODES}, got {args.modes!r}")
    cpus = len(os.sched_getaffinity(0))
    code = PhaseCode(args.base, args.timesteps, args.convention)
    load = os.getloadavg()[0]
    start = time.perf_counter()

    cm = convert(tiny_swin(), [task(32, 50)[0]], code)
    inputs = task(max(args.batch, 1), 100)[0].double()
    expected = cm.to_reference("stepped").double()(inputs)
    rss = psutil.Process().memory_info().rss / 2**20
    print(f"Lava network: tiny Swin {TINY['img_size']}x{TINY['img_size']}, depths {TINY['depths']}, "
          f"{code.describe()}, {cm.n_layers} layers, {cm.steps_per_inference} steps per sample; {cpus} CPU(s), "
          f"load average {load:.1f} at start; parent RSS {rss:.0f} MiB (setup {time.perf_counter() - start:.0f} s)\n")

    rows, cpu_records = [], {}
    for mode in modes:
        for batch in sorted({1, args.batch}):
            cpu: dict = {}
            with worker_cpu(cpu):
                timings, stats, logits = run_once(cm, inputs[:batch], mode)
            reference = expected[:batch]
            rel = ((logits - reference).abs().max() / reference.abs().max()).item()
            rows.append(row("tiny Swin", mode, batch, timings, stats, cpu, rel, cpus))
            cpu_records[f"{mode}/{batch}"] = cpu

    bert_cm = convert(tiny_bert(), [sentences(32, 50)], code)
    bert_inputs = sentences(max(args.batch, 1), 100)
    bert_expected = bert_cm.to_reference("stepped").double()(bert_inputs)
    for mode in modes:
        for batch in sorted({1, args.batch}):
            cpu = {}
            with worker_cpu(cpu):
                timings, stats, logits = run_once(bert_cm, {k: v[:batch] for k, v in bert_inputs.items()}, mode)
            reference = bert_expected[:batch]
            rel = ((logits - reference).abs().max() / reference.abs().max()).item()
            rows.append(row("tiny BERT", mode, batch, timings, stats, cpu, rel, cpus))

    profiles = {} if args.no_profile else {mode: profiled_run(cm, inputs[:1], mode)
                                           for mode in modes}

    big = None if args.no_swin_t else swin_t()
    if big is not None:
        for mode, processes in big["processes"].items():
            rows.append({"model": "Swin-T (build only)", "mode": mode, "batch": 1, "processes": processes,
                         "neurons": big["neurons"], "synapses": big["synapses"], "steps/sample": big["steps"],
                         "build_s": big["build_s"][mode], **{key: "-" for key in list(rows[0])[8:]}})

    meta = {"tiny": TINY, "base": code.base, "timesteps": code.timesteps, "convention": code.convention,
            "steps_per_sample": cm.steps_per_inference, "cpus": cpus, "load_average_at_start": load,
            "parent_rss_mib": rss, "max_processes": lava_builder.MAX_PROCESSES, "worker_cpu": cpu_records,
            "timing": "one run per mode and batch size (fresh graph each), phases from run_processes(timings=...); "
                      "worker CPU from psutil over the run phase"}
    if big is not None:
        meta["swin_t"] = big
    if profiles:
        meta["profiles"] = profiles
    report("bench_lava_network", rows, meta)
    where_the_time_goes(rows, cpu_records, profiles, big, cpus)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s (after imports)")


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def where_the_time_goes(rows: list[dict], cpu_records: dict, profiles: dict, big: dict | None, cpus: int) -> None:
    """The short paragraph: phases, per-process cost, CPU by class, worker profiles, fused vs decomposed."""
    print("\nWhere the time goes (batch 1):")
    firsts = {r["mode"]: r for r in rows if r["model"] == "tiny Swin" and r["batch"] == 1}
    for mode, first in firsts.items():
        steps, processes, run_s = first["steps/sample"], first["processes"], first["run_s"]
        wall = sum(first[p] for p in PHASES)
        cpu = cpu_records[f"{mode}/1"]
        by_kind, count = cpu["by_kind"], cpu["count"]
        worker_s = sum(by_kind.values())
        service_s = by_kind.get(SERVICE, 0.0)
        print(f"[{mode}] {processes} processes, {wall:.1f} s wall = build {_pct(first['build_s'], wall)}, compile "
              f"{_pct(first['compile_s'], wall)}, init {_pct(first['init_s'], wall)} "
              f"({1e3 * first['init_s'] / processes:.0f} ms per process), run {_pct(run_s, wall)}, stop "
              f"{_pct(first['stop_s'], wall)}.")
        print(f"  Run: {steps} steps, {1e3 * run_s / steps:.1f} ms per step = {first['ms/step/proc'] * 1e3:.0f} us "
              f"per process-step; workers {worker_s:.1f} CPU-s + parent polling {cpu['parent_s']:.1f} CPU-s in "
              f"{cpu['wall_s']:.1f} s on {cpus} CPU(s) ({_pct(worker_s + cpu['parent_s'], cpu['wall_s'] * cpus)} "
              f"busy).")
        ranked = sorted(by_kind.items(), key=lambda kv: -kv[1])
        print("  Worker CPU by Process class (CPU-s, share, us per process-step): " + "; ".join(
            f"{kind} x{count[kind]}: {seconds:.2f} s, {_pct(seconds, worker_s)}, "
            f"{1e6 * seconds / steps / count[kind]:.0f} us" for kind, seconds in ranked) + ".")
        if service_s:
            print(f"  The runtime service (AsyncProtocol: a run command to and a DONE from every worker per run) used "
                  f"{service_s:.2f} CPU-s = {_pct(service_s, worker_s)} of worker CPU, "
                  f"{1e6 * service_s / steps:.0f} us per step = {1e6 * service_s / steps / processes:.0f} us per "
                  f"process-step, serially.")
        profile = profiles.get(mode)
        if profile:
            total, init = profile["total_s"], profile["init"]
            psutil_s = sum(v for k, v in profile["psutil"]["by_kind"].items() if k != SERVICE)
            print(f"  Inside the {profile['workers']} ProcessModel workers (cProfile on each worker's main thread, "
                  f"thread CPU, {total:.1f} s; profiled run, slower): neuron/synapse math (our run_spk + numpy) "
                  f"{_pct(profile['math_s'], total)}, data-port send/recv {_pct(profile['ports_s'], total)}, step "
                  f"sync with the runtime service {_pct(profile['sync_s'], total)}, rest of Lava's loop "
                  f"{_pct(profile['loop_s'], total)}; psutil counted {psutil_s:.1f} CPU-s for the same workers "
                  f"(the difference: one channel helper thread per port, interpreter).")
            print(f"  Parent (cProfile, wall): init {profile['timings']['init_s']:.1f} s = shared-memory channels "
                  f"{init['channels_s']:.1f} s + forking the models {init['fork_models_s']:.1f} s (fork() "
                  f"{init['fork_calls_s']:.1f} s) + services {init['fork_services_s']:.1f} s + waiting for the "
                  f"workers' model builds {init['wait_worker_builds_s']:.1f} s; during the run the parent only "
                  f"polls ({profile['parent_wait_s']:.1f} s in _wait_until_done).")
    if "fused" in firsts and "decomposed" in firsts:
        fused, decomposed = firsts["fused"], firsts["decomposed"]
        wall = {m: sum(r[p] for p in PHASES) for m, r in firsts.items()}
        print(f"Fused vs decomposed (batch 1): {decomposed['processes']} -> {fused['processes']} processes, run "
              f"{decomposed['run_s']:.1f} -> {fused['run_s']:.1f} s ({decomposed['run_s'] / fused['run_s']:.1f}x), "
              f"init {decomposed['init_s']:.1f} -> {fused['init_s']:.1f} s, wall {wall['decomposed']:.1f} -> "
              f"{wall['fused']:.1f} s ({wall['decomposed'] / wall['fused']:.1f}x).")
    if big is not None:
        for mode, processes in big["processes"].items():
            limit = "over" if big["over_limit"][mode] else "under"
            line = (f"Full Swin-T, {mode}: {processes} processes ({limit} the builder limit of "
                    f"{lava_builder.MAX_PROCESSES}), {big['steps']} steps per sample")
            print(line + " (run at real size by --bars).")

if __name__ == "__main__":
    main()
