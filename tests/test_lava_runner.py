"""SpikeSource/SpikeSink and the Lava runner (lava_spikedattn.lava).

Each Lava run costs ~0.3-3 s of start-up, so graphs are tiny.
"""

import os
import pathlib
import signal
import sys
import threading
import time

import numpy as np
import pytest

# tests/ has no __init__.py: make the test-only Process package `lava_faulty`
# importable under that absolute name (its models.py imports it so).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from lava_faulty.process import Faulty  # noqa: E402

from lava_spikedattn.lava import LavaRunError, live_workers, run_processes  # noqa: E402
from lava_spikedattn.procs.spike_sink.process import SpikeSink  # noqa: E402
from lava_spikedattn.procs.spike_source.process import \
    SpikeSource  # noqa: E402


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
            "from lava_spikedattn.procs import PhaseNeuron; import lava_spikedattn.lava; "
            "print(mp.get_start_method())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "fork", done.stderr
