"""Issue 14's Lava runtime: one compiled graph for many inputs, quiet ports, no leaked workers."""

import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
import torch
from synthetic import grey_task, sentences

from lava_spikedattn import builder
from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import windows
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.runtime import LavaRunError, LavaSession, live_workers


@pytest.fixture(scope="module")
def swin_cm(lava_swin):
    return convert(lava_swin, [grey_task(32, 50)[0]], PhaseCode(1.25, 12))


def _run(net, x) -> dict:
    """Everything a run leaves: logits, every population's fire steps, the statistics."""
    logits = net.run(x)
    fire_steps = {name: p.recorded_fire_steps() for name, p in net.last_graph.populations.items()}
    return {"logits": logits, "fire_steps": fire_steps, "stats": net.stats()}


def _assert_same(run, expected) -> None:
    assert torch.equal(run["logits"], expected["logits"])
    assert run["fire_steps"].keys() == expected["fire_steps"].keys()
    for name, steps in run["fire_steps"].items():
        assert np.array_equal(steps, expected["fire_steps"][name]), name
    assert run["stats"]["layers"] == expected["stats"]["layers"]
    assert run["stats"].get("clips") == expected["stats"].get("clips")


@pytest.mark.parametrize("mode, fixed", [("fused", False), ("decomposed", False), ("fused", True)],
                         ids=["fused", "decomposed", "fused-fixed_pt"])
def test_a_compiled_graph_runs_input_after_input_as_a_fresh_graph_would(swin_cm, mode, fixed):
    """Inputs a, b, a through one compiled graph: each run equals a fresh graph's run of the same
    input bit for bit (logits, every fire step, spikes, saturation, fixed-point clips), so the
    models' reset between inputs restores everything; only the first run compiles."""
    fmt = FixedFormat() if fixed else None
    a, b = grey_task(2, 301)[0].double(), grey_task(2, 302)[0].double()
    fresh = {}
    for name, x in (("a", a), ("b", b)):
        with build_lava_network(swin_cm, mode=mode, fixed_format=fmt) as net:
            fresh[name] = _run(net, x)
    assert not torch.equal(fresh["a"]["logits"], fresh["b"]["logits"])
    with build_lava_network(swin_cm, mode=mode, fixed_format=fmt) as net:
        timings = []
        for name in ("a", "b", "a"):
            timings.append({})
            x = a if name == "a" else b
            logits = net.run(x, timings=timings[-1])
            run = {"logits": logits, "stats": net.stats(),
                   "fire_steps": {n: p.recorded_fire_steps() for n, p in net.last_graph.populations.items()}}
            _assert_same(run, fresh[name])
    assert "compile_s" in timings[0] and all("compile_s" not in t for t in timings[1:])
    assert not live_workers()


def test_another_layout_compiles_anew_and_stops_the_old_workers(swin_cm):
    x = grey_task(3, 303)[0].double()
    with build_lava_network(swin_cm) as net:
        net.run(x[:2])
        first = net._compiled.session
        net.run(x[2:])  # batch 1: another graph
        assert first.closed and net._compiled.session is not first
        assert torch.equal(net.run(x[:1]), build_lava_network(swin_cm).run(x[:1]))
    assert not live_workers()


def test_bert_reuses_its_graph_for_the_same_padding_only(tiny_bert):
    cm = convert(tiny_bert, [sentences(32, 100)], PhaseCode(1.25, 12))
    x = sentences(4, 304)
    same_padding = {"input_ids": (x["input_ids"] + 7) % 50, "attention_mask": x["attention_mask"]}
    other_padding = sentences(4, 305)
    assert not torch.equal(other_padding["attention_mask"], x["attention_mask"])
    with build_lava_network(cm) as net:
        net.run(x)
        session = net._compiled.session
        reused = net.run(same_padding)
        assert net._compiled.session is session
        recompiled = net.run(other_padding)
        assert session.closed
    for inputs, logits in ((same_padding, reused), (other_padding, recompiled)):
        with build_lava_network(cm) as fresh:
            assert torch.equal(logits, fresh.run(inputs))
    assert not live_workers()


def test_workers_stop_on_close_and_on_garbage_collection(swin_cm):
    x = grey_task(1, 306)[0]
    net = build_lava_network(swin_cm)
    net.run(x)
    assert live_workers(wait_s=0)  # up between inputs
    net.close()
    net.close()  # idempotent
    assert not live_workers()
    net.run(x)  # a closed network compiles again
    del net  # the last reference: its workers go with it
    assert not live_workers()


def test_workers_stop_when_the_interpreter_exits_without_close(tmp_path):
    """A script that runs a network and exits without closing it leaves no process behind."""
    script = tmp_path / "leave_open.py"
    script.write_text(textwrap.dedent("""
        import os, psutil, torch
        from lava_spikedattn.converted_model import ConvertedModel
        from lava_spikedattn.builder import build_lava_network
        from lava_spikedattn.demo import DEFAULT_MODEL
        net = build_lava_network(ConvertedModel.load(DEFAULT_MODEL))
        net.run(torch.zeros(1, 1, 32, 32))
        print(*[child.pid for child in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(child.cmdline())])  # the tracker ends on its own
        keep = net  # still referenced at exit
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert pids  # the workers were up before the exit
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_a_session_runs_input_after_input_and_a_failed_run_closes_it():
    source = SpikeSource(data=np.ones((3, 2)))
    sink = SpikeSink(shape=(2,), num_steps=100_000)
    source.s_out.connect(sink.a_in)
    for process in (source, sink):  # one input is 3 steps: the models restart there
        process.proc_params.overwrite("period", 3)
    session = LavaSession([sink])
    assert np.array_equal(session.run(3)[sink.name], np.ones((3, 2)))
    with pytest.raises(ValueError, match="fewer than"):  # refused before it runs: still open
        session.run(100_001)
    source.load(np.full((3, 2), 2.0))
    assert np.array_equal(session.run(3)[sink.name], np.full((3, 2), 2.0))
    with pytest.raises(LavaRunError, match="timeout"):
        session.run(100_000, timeout=0.0)
    assert session.closed and not live_workers()
    with pytest.raises(RuntimeError, match="closed"):
        session.run(3)


def test_source_load_refuses_another_shape_and_non_finite_data():
    source = SpikeSource(data=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"new data of shape \(3, 4\) does not match the compiled \(3, 2\)"):
        source.load(np.ones((3, 4)))
    with pytest.raises(ValueError, match="finite"):
        source.load(np.full((3, 2), np.nan))
    assert (source.proc_params["data"] == 1).all()


# --- quiet ports -----------------------------------------------------------------------------------------

def test_quiet_ports_change_nothing_and_silence_most_messages(swin_cm, monkeypatch):
    """The run with windows equals the run where every port sends every step, bit for bit, in both
    modes; and the windows leave most (port, step) messages unsent."""
    x = grey_task(2, 307)[0].double()
    quiet = {}
    for mode in builder.MODES:
        with build_lava_network(swin_cm, mode=mode) as net:
            quiet[mode] = _run(net, x)
            graph = net.last_graph
    monkeypatch.setattr(windows, "assign_windows", lambda processes: None)
    for mode in builder.MODES:
        with build_lava_network(swin_cm, mode=mode) as net:
            _assert_same(_run(net, x), quiet[mode])
    steps = swin_cm.steps_per_inference
    for level in ("fused", "decomposed"):  # the Lava processes of each mode and their ports
        processes = graph.processes if level == "fused" else builder._leaves(graph.processes)
        sent = every = 0
        for process in processes:
            for port in process.out_ports:
                window = process.proc_params["windows"][port.name]
                every += steps
                sent += max(0, min(window.end, steps) - window.first)
        assert sent < every / 4, level


def _chain(code: PhaseCode):
    """source → linear → neuron a → linear → neuron b, plus a DelayLine of a's spikes into b."""
    source = SpikeSource(data=np.ones((code.timesteps, 2)))
    a = PhaseNeuron(shape=(2,), scale=1.0, code=code, start=0)
    b = PhaseNeuron(shape=(2,), scale=1.0, code=code, start=2 * code.timesteps)
    into_a = TokenLinear(shape_in=(2,), weight=np.eye(2), bias=np.ones(2), code=code, bias_start=0)
    into_b = TokenLinear(shape_in=(2,), weight=np.eye(2), bias=None, code=code, bias_start=2 * code.timesteps)
    line = DelayLine(shape=(2,), delay=code.timesteps)
    source.s_out.connect(into_a.s_in)
    into_a.a_out.connect(a.a_in)
    a.s_out.connect(line.s_in)
    line.a_out.connect(into_b.s_in)
    into_b.a_out.connect(b.a_in)
    sink = SpikeSink(shape=(2,), num_steps=4 * code.timesteps)
    b.trace_out.connect(sink.a_in)
    return source, a, b, into_a, into_b, line, sink


def test_windows_follow_each_process_timing():
    T = 4
    source, a, b, into_a, into_b, line, sink = _chain(PhaseCode(1.25, T))
    windows.assign_windows([source, a, b, into_a, into_b, line, sink])

    def window(process, port):
        return process.proc_params["windows"][port]

    assert window(source, "s_out") == windows.Window(0, T)
    assert window(into_a, "a_out") == windows.Window(0, T)  # input and bias window
    assert window(a, "a_in") == windows.Window(0, T)
    assert window(a, "s_out") == windows.Window(T, 2 * T)  # the fire window
    assert window(line, "a_out") == windows.Window(2 * T, 3 * T)  # shifted by the delay
    assert window(b, "trace_out") == windows.Window(3 * T, 4 * T, latched=True)
    assert window(sink, "a_in") == window(b, "trace_out")
    assert window(a, "v_out").empty and window(a, "trace_out").empty  # nobody listens


def test_senders_into_one_port_share_a_window_and_outside_listeners_hear_every_step():
    T = 4
    source, a, b, into_a, into_b, line, sink = _chain(PhaseCode(1.25, T))
    a.s_out.connect(into_b.s_in)  # a second, earlier sender into into_b.s_in
    outside = SpikeSink(shape=(2,), num_steps=4 * T)
    b.v_out.connect(outside.a_in)  # a listener not in the processes given
    windows.assign_windows([source, a, b, into_a, into_b, line, sink])
    shared = windows.Window(T, 3 * T)
    assert a.proc_params["windows"]["s_out"] == line.proc_params["windows"]["a_out"] == shared
    assert into_b.proc_params["windows"]["s_in"] == shared
    assert line.proc_params["windows"]["s_in"] == shared  # a's s_out has one window for all its receivers
    assert b.proc_params["windows"]["v_out"] == windows.ALWAYS


def test_a_latched_and_a_plain_sender_into_one_port_send_every_step():
    T = 4
    source, a, b, into_a, into_b, line, sink = _chain(PhaseCode(1.25, T))
    a.trace_out.connect(into_b.s_in)  # latched beside the delayed spikes
    windows.assign_windows([source, a, b, into_a, into_b, line, sink])
    assert a.proc_params["windows"]["trace_out"] == line.proc_params["windows"]["a_out"] == windows.ALWAYS
