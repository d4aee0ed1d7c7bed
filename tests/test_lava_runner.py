"""SpikeSource/SpikeSink and the Lava runner (lava_spikedattn.runtime).

Each Lava run costs ~0.3-3 s of start-up, so graphs are tiny.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

# tests/ has no __init__.py: make the test-only Process package `lava_faulty`
# importable under that absolute name (its models.py imports it so).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from lava_faulty.process import Faulty  # noqa: E402

from lava_spikedattn.procs.spike_sink.process import SpikeSink  # noqa: E402
from lava_spikedattn.procs.spike_source.process import SpikeSource  # noqa: E402
from lava_spikedattn.runtime import LavaRunError, live_workers, run_processes  # noqa: E402
from lava_spikedattn.termination import SIGNAL_GUARD, LavaTerminated, handle_termination_signals  # noqa: E402


def _assert_no_lava_children(wait_s: float = 5.0) -> None:
    left = live_workers(wait_s)
    assert not left, f"Lava workers left behind: {left}"


@pytest.fixture(scope="module", autouse=True)
def no_workers_left_after_module():
    yield
    _assert_no_lava_children()


# --------------------------------------------------------------- round trip


def test_round_trip_multidim_same_step_delivery():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 2, 3, 8, 4))
    shape = data.shape[1:]
    src = SpikeSource(data=data)
    direct = SpikeSink(shape=shape, num_steps=6)
    relayed = SpikeSink(shape=shape, num_steps=5)
    relay = Faulty(shape=shape, mode="ok")  # pass-through hop
    src.s_out.connect(direct.a_in)
    src.s_out.connect(relay.a_in)
    relay.s_out.connect(relayed.a_in)

    out = run_processes({"direct": direct, "relayed": relayed}, 5)

    assert set(out) == {"direct", "relayed"}
    for name in ("direct", "relayed"):
        rec = out[name]
        assert rec.dtype == np.float64 and rec.shape == (5, *shape)
        # Lava 0.10.0 LoihiProtocol: a message sent in run_spk at step t is
        # recv()ed by the receiver's run_spk in the SAME step t (no delay per
        # hop), so row t == data[t]; after the data ends the source sends 0.
        np.testing.assert_array_equal(rec[:3], data, err_msg=name)
        np.testing.assert_array_equal(rec[3:], 0.0, err_msg=name)
    # The sink reserved 6 steps; the unrun step stays NaN.
    assert np.isnan(direct.data()[5]).all()
    _assert_no_lava_children()


def test_round_trip_after_threaded_torch_in_parent():
    """Threaded torch ops in the parent do not break numpy-only models in
    Lava's forked workers (torch inside a model would deadlock)."""
    torch = pytest.importorskip("torch")
    a = torch.randn(512, 512)
    assert torch.isfinite((a @ a).sum())
    data = np.arange(8.0).reshape(4, 2)
    src = SpikeSource(data=data)
    sink = SpikeSink(shape=(2,), num_steps=4)
    src.s_out.connect(sink.a_in)
    out = run_processes([sink], 4, timeout=60)
    np.testing.assert_array_equal(out[sink.name], data)


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("where, mode, exc_name", [
    ("upstream", "raise", "FaultyError"),  # the sink then blocks in recv()
    ("leaf", "raise", "FaultyError"),
    # An exception class the parent cannot unpickle still yields its text.
    ("leaf", "raise_odd", "OddError"),
])
def test_model_exception_is_surfaced_and_workers_are_gone(where, mode,
                                                          exc_name):
    shape = (2, 3)
    src = SpikeSource(data=np.ones((4, *shape)))
    bad = Faulty(shape=shape, fail_at=1, mode=mode,
                 message="kaboom-1234 from the model")
    sink = SpikeSink(shape=shape, num_steps=4)
    src.s_out.connect(bad.a_in)
    if where == "upstream":
        bad.s_out.connect(sink.a_in)
    else:
        src.s_out.connect(sink.a_in)

    t0 = time.monotonic()
    with pytest.raises(LavaRunError) as info:
        run_processes([sink], 4, timeout=60)
    assert time.monotonic() - t0 < 30
    text = str(info.value)
    assert "kaboom-1234 from the model" in text
    assert exc_name in text
    assert "lava_faulty" in text and "run_spk" in text  # the real traceback
    assert any("kaboom-1234" in tb for tb in info.value.worker_tracebacks)
    _assert_no_lava_children()


def test_model_build_error_is_surfaced():
    src = SpikeSource(data=np.ones((2, 3)))
    bad = Faulty(shape=(3,), mode="init", message="cannot build me")
    sink = SpikeSink(shape=(3,), num_steps=2)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)
    with pytest.raises(LavaRunError, match="cannot build me") as info:
        run_processes([sink], 2, timeout=60)
    assert "__init__" in str(info.value)
    _assert_no_lava_children()


def test_hung_model_hits_timeout_and_is_killed():
    src = SpikeSource(data=np.ones((3, 2)))
    bad = Faulty(shape=(2,), fail_at=1, mode="hang")
    sink = SpikeSink(shape=(2,), num_steps=3)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)
    t0 = time.monotonic()
    with pytest.raises(LavaRunError, match="did not finish within"):
        run_processes([sink], 3, timeout=1.0)
    assert time.monotonic() - t0 < 20
    _assert_no_lava_children()


def test_hung_stop_hits_stop_timeout_and_is_killed():
    src = SpikeSource(data=np.ones((2, 2)))
    bad = Faulty(shape=(2,), mode="hang_stop")
    sink = SpikeSink(shape=(2,), num_steps=2)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)
    t0 = time.monotonic()
    with pytest.raises(LavaRunError, match="stop"):
        run_processes([sink], 2, timeout=60, stop_timeout=1.0)
    assert time.monotonic() - t0 < 20
    _assert_no_lava_children()


def test_keyboard_interrupt_cleans_up(tmp_path):
    """^C while a worker hangs: KeyboardInterrupt in the parent, every worker gone.

    Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
    non-interactive shell starts background jobs (``cmd &``) with SIGINT ignored: the test
    installs the handler an interactive session has (it failed in background ``make test`` runs).
    """
    marker = tmp_path / "hanging"
    src = SpikeSource(data=np.ones((3, 2)))
    bad = Faulty(shape=(2,), fail_at=0, mode="hang", marker=str(marker))
    sink = SpikeSink(shape=(2,), num_steps=3)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)

    def interrupt_once_hanging():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # only the parent, like ^C

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        thread = threading.Thread(target=interrupt_once_hanging, daemon=True)
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            run_processes([sink], 3, timeout=60)
        thread.join(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert marker.exists()
    _assert_no_lava_children()


#: Runs src -> Faulty(hang at step 0, touches a marker) -> sink in a fresh interpreter.
_HANGING_RUN = textwrap.dedent("""
    import signal, sys
    # The dispositions of an interactive start: a pytest run under nohup or in a background job
    # would hand SIGHUP/SIGINT down ignored, and the runner (rightly) leaves ignored signals alone.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from lava_faulty.process import Faulty
    from lava_spikedattn.runtime import run_processes
    from lava_spikedattn.termination import LavaTerminated
    from lava_spikedattn.procs.spike_sink.process import SpikeSink
    from lava_spikedattn.procs.spike_source.process import SpikeSource

    src = SpikeSource(data=np.ones((3, 2)))
    bad = Faulty(shape=(2,), fail_at=0, mode="hang", marker=sys.argv[2])
    sink = SpikeSink(shape=(2,), num_steps=3)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)
    try:
        run_processes([sink], 3, timeout=60)
    except LavaTerminated as error:
        print(f"caught {type(error).__name__} signum={error.signum}", flush=True)
        raise
    finally:
        print("caller's finally ran", flush=True)
""")


def _shm_segments(procs: list[psutil.Process]) -> set[str]:
    """/dev/shm files mapped by ``procs`` (attributes segments to this run: others share /dev/shm)."""
    found = set()
    for proc in procs:
        try:
            for mapping in proc.memory_maps(grouped=True):
                if mapping.path.startswith("/dev/shm/"):
                    found.add(mapping.path)
        except psutil.Error:
            continue
    return found


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt in /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigCgt line for pid {pid}")


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT-as-reference"])
def test_termination_signal_cleans_up_like_keyboard_interrupt(tmp_path, signum):
    """``kill`` (SIGTERM) or a closed terminal (SIGHUP) during a run: the runner stops every
    worker, Lava's /dev/shm segments and the multiprocessing temp folder go away, and the caller
    sees LavaTerminated (a SystemExit: its finally blocks run, exit status 1 if uncaught).
    SIGINT (^C, KeyboardInterrupt) is the reference that must leave exactly as little behind."""
    marker = tmp_path / "hanging"
    tmpdir = tmp_path / "tmp"  # multiprocessing's pymp-* folder of this run goes here
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    # output to files, not pipes: workers left running would hold a pipe open and block reading it
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HANGING_RUN, str(pathlib.Path(__file__).resolve().parent), str(marker)],
            stdout=out_file, stderr=err_file, env=env)
    workers: list[psutil.Process] = []
    segments: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the run never reached the hanging step: {err_path.read_text()}"
        parent = psutil.Process(proc.pid)
        workers = parent.children(recursive=True)
        segments = _shm_segments([parent, *workers])
        # the run did use what must be cleaned up: workers, /dev/shm segments, a pymp-* folder
        assert len(workers) >= 3 and segments and list(tmpdir.glob("pymp-*")), (workers, segments)
        if signum != signal.SIGINT:
            # the handler is the parent's alone: the forked workers keep the default action
            assert _catches(proc.pid, signum)
            assert not any(_catches(w.pid, signum) for w in workers if not _gone(w))

        os.kill(proc.pid, signum)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [w for w in workers if not _gone(w)]
        left_segments = [path for path in segments if os.path.exists(path)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for worker in workers:  # a failure must not leave hanging workers on the shared machine
            if not _gone(worker):
                worker.kill()
        for path in segments:
            if os.path.exists(path):
                os.unlink(path)
    out, err = out_path.read_text(), err_path.read_text()
    assert not left, f"Lava workers left running: {left}"
    assert not left_segments, f"/dev/shm segments left: {left_segments}"
    assert not list(tmpdir.glob("pymp-*")), "multiprocessing temp folder left"
    assert "caller's finally ran" in out, out
    assert "leaked shared_memory" not in err, err  # cleaned up by the runner, not the resource tracker
    if signum == signal.SIGINT:  # an uncaught KeyboardInterrupt: Python ends itself with SIGINT
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, (proc.returncode, err)
    else:
        assert proc.returncode == 1, (proc.returncode, out, err)
        assert f"caught LavaTerminated signum={int(signum)}" in out, out
        assert f"stopped by {signal.Signals(signum).name}; the Lava workers were stopped" in err, err


@pytest.fixture()
def default_termination_handlers():
    """SIGTERM and SIGHUP at SIG_DFL for the test (as in a fresh interpreter), restored after."""
    previous = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_termination_handler_is_installed_only_over_sig_dfl_and_restored(default_termination_handlers):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGHUP, mine)  # the program's own handler: left alone
    with handle_termination_signals():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        assert signal.getsignal(signal.SIGHUP) is mine
        with handle_termination_signals():  # reentrant: the inner exit restores nothing
            pass
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is mine
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: stays ignored
    with handle_termination_signals():
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_termination_signal_raises_lava_terminated_not_exception(default_termination_handlers, signum):
    with pytest.raises(LavaTerminated) as info, handle_termination_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler runs at the next bytecode boundary; sleep is interrupted
    error = info.value
    assert isinstance(error, SystemExit) and not isinstance(error, Exception)
    assert error.signum == signum and error.signal_name == signal.Signals(signum).name
    assert str(error) == f"stopped by {error.signal_name}; the Lava workers were stopped"
    import pickle
    assert pickle.loads(pickle.dumps(error)).signum == signum
    assert signal.getsignal(signum) == signal.SIG_DFL


def test_termination_signal_during_teardown_is_raised_after_it(default_termination_handlers):
    """Inside the runner's teardown a signal must not cut the killing of the workers short: it
    is raised when the teardown is over; a repeated one while it propagates is ignored."""
    done = []
    with pytest.raises(LavaTerminated), handle_termination_signals(), SIGNAL_GUARD.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        done.append("teardown")
    assert done == ["teardown"]


def test_termination_signal_during_a_hung_stop_gives_up_the_stop(default_termination_handlers):
    """SIGTERM while Lava's stop protocol waits on a hung worker: no waiting out stop_timeout,
    the workers are killed and LavaTerminated is raised after that."""
    src = SpikeSource(data=np.ones((2, 2)))
    bad = Faulty(shape=(2,), mode="hang_stop")
    sink = SpikeSink(shape=(2,), num_steps=2)
    src.s_out.connect(bad.a_in)
    bad.s_out.connect(sink.a_in)
    timings: dict = {}

    def terminate_once_stopping():
        deadline = time.monotonic() + 60
        while "run_s" not in timings and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # inside the stop protocol
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=terminate_once_stopping, daemon=True)
    thread.start()
    t0 = time.monotonic()
    with pytest.raises(LavaTerminated) as info:
        run_processes([sink], 2, timeout=60, stop_timeout=60, timings=timings)
    thread.join(5)
    assert time.monotonic() - t0 < 30  # far below stop_timeout: the stop was given up
    assert "run_s" in timings and "abandoned" in str(info.value.__context__)
    _assert_no_lava_children()


def test_termination_handler_is_not_inherited_by_forked_workers(default_termination_handlers):
    """Lava forks its workers and the runner terminates them with SIGTERM: a forked child gets
    SIG_DFL back at once, and the handler, should it run in a child anyway (a signal between the
    fork and the at-fork hook), ends that child with the default action."""
    with handle_termination_signals():
        pid = os.fork()
        if pid == 0:  # the child: exit status 3 if it has the default action
            os._exit(3 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 4)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3, status

        pid = os.fork()
        if pid == 0:  # the child: the parent's handler, as before the hook ran
            try:
                signal.signal(signal.SIGTERM, SIGNAL_GUARD._handler)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os._exit(5)  # reached only if the handler raised or did not end the child
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_termination_handler_is_a_no_op_off_the_main_thread(default_termination_handlers):
    seen = []

    def worker():
        with handle_termination_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert seen == [signal.SIG_DFL]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("data, match", [
    (np.ones(3), "ndim >= 2"),
    (np.ones((0, 3)), "empty"),
    (np.array([[1.0, np.nan]]), "finite"),
    (np.array([[1.0, np.inf]]), "finite"),
    ([[1.0, 2.0]], "numpy.ndarray"),
    (np.array([["a", "b"]]), "real numeric"),
    (np.ones((2, 2), dtype=complex), "real numeric"),
])
def test_source_validation(data, match):
    with pytest.raises(ValueError, match=match):
        SpikeSource(data=data)


def test_source_copies_data_and_reports_shape():
    data = np.ones((4, 2, 3), dtype=np.float32)
    src = SpikeSource(data=data)
    data[:] = 7
    assert src.shape == (2, 3) and src.num_steps == 4
    assert src.proc_params["data"].dtype == np.float64
    assert (src.proc_params["data"] == 1).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (), "num_steps": 2}, "shape"),
    ({"shape": (2, 0), "num_steps": 2}, "shape"),
    ({"shape": (2, 1.5), "num_steps": 2}, "shape"),
    ({"shape": None, "num_steps": 2}, "shape"),
    ({"shape": (2,), "num_steps": 0}, "num_steps"),
    ({"shape": (2,), "num_steps": 2.0}, "num_steps"),
    ({"shape": (2,), "num_steps": True}, "num_steps"),
])
def test_sink_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikeSink(**kwargs)


def test_sink_before_run_is_nan_and_int_shape_is_accepted():
    sink = SpikeSink(shape=4, num_steps=2)
    assert sink.shape == (4,) and sink.num_steps == 2
    rec = sink.data()
    assert rec.shape == (2, 4) and np.isnan(rec).all()


def test_runner_validation():
    src = SpikeSource(data=np.ones((2, 3)))
    sink = SpikeSink(shape=(3,), num_steps=2)
    src.s_out.connect(sink.a_in)
    other = SpikeSink(shape=(3,), num_steps=2)  # not connected
    with pytest.raises(ValueError, match="num_steps"):
        run_processes([sink], 0)
    with pytest.raises(ValueError, match="fewer than"):
        run_processes([sink], 3)
    with pytest.raises(ValueError, match="empty"):
        run_processes({}, 2)
    with pytest.raises(ValueError, match="not a SpikeSink"):
        run_processes({"src": src}, 2)
    with pytest.raises(ValueError, match="not connected"):
        run_processes({"a": sink, "b": other}, 2)
    with pytest.raises(ValueError, match="mapping or sequence"):
        run_processes(sink, 2)


def test_lava_imports_after_the_start_method_was_fixed():
    """Lava sets the 'fork' start method on import; a start method fixed earlier (a
    get_start_method() call, as torch's DataLoader makes) must not break importing it."""
    import subprocess

    code = ("import multiprocessing as mp; mp.get_start_method(); "
            "from lava_spikedattn.procs import PhaseNeuron; import lava_spikedattn.runtime; "
            "print(mp.get_start_method())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "fork", done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_killed_run_lava_command_leaves_nothing_behind(tmp_path, signum):
    """The issue's probe: `kill` of `spikedattn run-lava` on the shipped model mid-run stops every
    worker, frees the run's /dev/shm segments and removes the pymp folder; exit 1, a named error."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # multiprocessing's pymp-* folder goes here
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "lava_spikedattn.cli", "run-lava",
                                    "weights/swin_fashion_mnist", "--data", "fashion-mnist", "--limit", "200",
                                    "--no-progress"],  # ~40 s of runs: the kill lands mid-run
                                   cwd=pathlib.Path(__file__).resolve().parent.parent, env=env, stdout=out, stderr=err,
                                   # as from a terminal: under nohup (or a CI runner) SIGHUP would be ignored
                                   preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    parent = psutil.Process(process.pid)
    try:
        def running() -> list[psutil.Process]:
            return [child for child in parent.children(recursive=True) if not _gone(child)]

        deadline = time.monotonic() + 120
        while (len(running()) < 10 or not list(tmp_path.glob("pymp-*"))) and time.monotonic() < deadline:
            time.sleep(0.2)  # until a run is under way: the fused shipped Swin has 14 workers
        workers = running()
        segments = _shm_segments([parent, *workers])
        assert len(workers) >= 10 and segments and list(tmp_path.glob("pymp-*"))
        os.kill(process.pid, signum)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert status == 1
    assert f"spikedattn run-lava: error: stopped by {signal.Signals(signum).name}" in (tmp_path / "err").read_text()
    # multiprocessing's resource tracker (a child too) ends on its own once this parent is gone
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert all(_gone(worker) for worker in alive)
    assert not {path for path in segments if os.path.exists(path)}
    assert not list(tmp_path.glob("pymp-*"))
