"""Run a Lava Process graph to completion and always tear it down.

Lava 0.10.0 runs every ProcessModel in a forked worker and its own error
handling is fragile:

* an exception inside a ProcessModel surfaces only as
  ``RuntimeError("1 Exception(s) occurred. See output above")`` while the
  traceback goes to a logger at INFO level, i.e. nowhere;
* ``Runtime.stop()`` (also called from ``Process.__del__``) blocks forever in
  ``recv()`` once a worker has died, and a worker that waits on a dead
  neighbour's port blocks forever too, so the parent hangs at exit.

:func:`run_processes` therefore drives the Runtime itself: it starts a
non-blocking run, polls the runtime services and the worker processes, and on
any problem (model exception, worker death, timeout, ``KeyboardInterrupt``)
collects the workers' tracebacks (Lava's ``SystemProcess`` pipes them to the
parent), terminates the workers and raises :class:`LavaRunError` with the
original traceback text. On success it performs Lava's stop protocol with a
deadline, killing the workers as a last resort.

SIGTERM and SIGHUP stop a run like ^C (:mod:`lava_spikedattn.termination`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import io
import logging
import multiprocessing as mp
import multiprocessing.connection
import pickle
import time
import typing as ty
import weakref

import numpy as np
import psutil
from lava.magma.compiler.compiler_graphs import find_processes
from lava.magma.core.process.message_interface_enum import ActorType
from lava.magma.core.process.process import ProcessServer
from lava.magma.core.process.variable import VarServer
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.runtime.mgmt_token_enums import MGMT_COMMAND, MGMT_RESPONSE, enum_equal
from lava.magma.runtime.runtime import Runtime

import lava_spikedattn.procs  # noqa: F401 (first: lets Lava set its start method, see procs/__init__.py)
from lava_spikedattn.procs.spike_sink.process import SpikeSink
from lava_spikedattn.termination import SIGNAL_GUARD, handle_termination_signals

__all__ = ["LavaRunError", "LavaSession", "created_processes", "forget_processes", "live_workers", "run_processes"]

#: Seconds a failing worker gets to report its traceback before the others
#: are terminated.
_REPORT_GRACE_S = 2.0
#: Poll interval of the parent while the workers run.
_POLL_S = 0.002
class LavaRunError(RuntimeError):
    """A Lava run failed; ``str()`` contains the workers' tracebacks.

    Attributes
    ----------
    reason : str
        What the runner observed (e.g. "a Lava worker exited during the run").
    worker_tracebacks : list of str
        Original traceback texts of exceptions raised in worker processes.
    """

    def __init__(self, reason: str,
                 worker_tracebacks: ty.Sequence[str] = ()) -> None:
        self.reason = reason
        self.worker_tracebacks = [tb for tb in worker_tracebacks if tb]
        parts = [reason]
        for i, tb in enumerate(self.worker_tracebacks, 1):
            parts.append(f"--- Lava worker traceback {i} ---\n{tb.rstrip()}")
        super().__init__("\n".join(parts))


def run_processes(
        sinks: ty.Mapping[str, SpikeSink] | ty.Sequence[SpikeSink],
        num_steps: int,
        *,
        select_tag: str = "floating_pt",
        select_sub_proc_model: bool = False,
        timeout: float | None = None,
        stop_timeout: float = 10.0,
        timings: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Compile and run the graph containing ``sinks`` for ``num_steps``.

    Parameters
    ----------
    sinks
        ``{name: SpikeSink}``, or a sequence of sinks (keyed by
        ``sink.name``). All must belong to one connected Process graph.
    num_steps
        Exact number of time steps to run (``<=`` every sink's num_steps).
    select_tag
        ProcessModel tag for ``Loihi2SimCfg``.
    select_sub_proc_model
        Prefer hierarchical SubProcessModels (e.g. a decomposed ``Circuit``) over leaf models.
    timeout
        Seconds the run itself (after the workers are built) may take;
        ``None`` waits indefinitely.
    stop_timeout
        Seconds Lava's stop protocol may take before the workers are killed.
    timings
        Optional dict filled with wall-clock seconds of the phases:
        ``"compile_s"`` (Lava's compiler), ``"init_s"`` (building the runtime
        and forking the workers), ``"run_s"`` (the ``num_steps`` steps) and
        ``"stop_s"`` (stop protocol and teardown). A phase that was not
        reached (the run failed earlier) is missing.

    Returns
    -------
    dict
        ``{name: float64 array of shape (num_steps, *sink.shape)}``; row ``t``
        is what the sink received at 0-based time step ``t``.

    Raises
    ------
    ValueError
        Invalid arguments.
    LavaRunError
        A worker raised (message includes its original traceback), died,
        the run exceeded ``timeout`` or the shutdown exceeded ``stop_timeout``.
        The workers are gone when this is raised; ``KeyboardInterrupt`` is
        re-raised after the same cleanup.
    LavaTerminated
        SIGTERM or SIGHUP arrived during the call (see
        :func:`handle_termination_signals`); raised after the same cleanup.
    """
    _check_steps(_named_sinks(sinks), num_steps)
    with LavaSession(sinks, select_tag=select_tag, select_sub_proc_model=select_sub_proc_model,
                     stop_timeout=stop_timeout, timings=timings) as session:
        return session.run(num_steps, timeout=timeout, timings=timings)


@contextlib.contextmanager
def lean_fork() -> ty.Iterator[None]:
    """Around Lava's fork of the workers, keep them from copying memory of this process they never
    use. Every page is shared copy-on-write, and a worker copies one on its first write:
    - freed heap this process keeps goes back to the OS (glibc ``malloc_trim``; skipped where the C
      library has none), or the workers' allocations would reuse and copy it;
    - this process's objects are frozen out of garbage collection (``gc.freeze``; the workers
      inherit that, this process unfreezes them afterwards), or every collection in every worker
      writes to every inherited object's header.
    Measured on Swin-T (one image, Lava fused, 26 workers): in a process that had run the closed
    form at batch 8, the first image took 30.5 s without the trim and 19.6 s with it; in a fresh
    process that had imported the benchmark's libraries, 20.6-22.1 s without the freeze and
    16.4-17.0 s with it (benchmarks/bench_lava_network.py --bars).
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class LavaSession:
    """A compiled Lava graph whose workers stay up between runs: compile and fork once, then
    :meth:`run` input after input (the models reset their state between inputs, see
    ``TypedProcessModel.begin_step``; ``SpikeSource.load`` gives the next input).

    :meth:`close` stops every worker; so do ``with LavaSession(...)``, a failed run (the session
    is then closed), SIGTERM/SIGHUP while it is open (:class:`LavaTerminated` is raised after the
    cleanup) and the interpreter's exit. Arguments as :func:`run_processes`; ``timings`` gets
    compile_s and init_s here, run_s from :meth:`run`, stop_s from :meth:`close`.
    """

    def __init__(self, sinks: ty.Mapping[str, SpikeSink] | ty.Sequence[SpikeSink], *,
                 select_tag: str = "floating_pt", select_sub_proc_model: bool = False,
                 stop_timeout: float = 10.0, timings: dict[str, float] | None = None) -> None:
        self.sinks = _named_sinks(sinks)
        root = next(iter(self.sinks.values()))
        graph = find_processes(root)
        missing = [n for n, s in self.sinks.items() if s not in graph]
        if missing:
            raise ValueError(f"sinks {missing} are not connected to the graph of "
                             f"sink {next(iter(self.sinks))!r}")
        if mp.get_start_method() != "fork":
            raise RuntimeError("SpikeSink needs the 'fork' start method (Lava "
                               "sets it on import on Linux/macOS)")
        self.stop_timeout, self.timings = stop_timeout, timings
        self.runtime: Runtime | None = None
        self.executable = None
        self._signals = handle_termination_signals()
        self._signals.__enter__()
        clock = _PhaseClock(timings)
        try:
            self.executable = root.compile(Loihi2SimCfg(select_tag=select_tag,
                                                        select_sub_proc_model=select_sub_proc_model))
            clock.lap("compile_s")
            self.runtime = Runtime(self.executable, ActorType.MultiProcessing, loglevel=logging.WARNING)
            self.executable.assign_runtime_to_all_processes(self.runtime)
            try:
                # Forks the workers. A worker's build error is print()ed by Lava
                # and re-raised here with its traceback text in ``exc.trace``.
                # (No stdout redirection here: the workers would inherit it.)
                with lean_fork():
                    self.runtime.initialize()
            except Exception as exc:
                raise _failure(self.runtime, f"building the ProcessModels failed: {type(exc).__name__}: {exc}",
                               fallback=[getattr(exc, "trace", "")]) from exc
            clock.lap("init_s")
        except BaseException:
            self._close(graceful=False)
            raise
        _OPEN_SESSIONS.add(self)

    @property
    def closed(self) -> bool:
        return self._signals is None

    def run(self, num_steps: int, *, timeout: float | None = None,
            timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Run ``num_steps`` more steps; returns ``{name: float64 array (num_steps, *sink.shape)}``
        (what each sink received in these steps). A failure closes the session and raises
        :class:`LavaRunError` (``KeyboardInterrupt``, :class:`LavaTerminated` after the cleanup)."""
        if self.closed:
            raise RuntimeError("this LavaSession is closed; open a new one")
        num_steps = _check_steps(self.sinks, num_steps)
        clock = _PhaseClock(timings)
        try:
            self.runtime.start(RunSteps(num_steps=num_steps, blocking=False))
            _wait_until_done(self.runtime, timeout)
        except BaseException:
            self._close(graceful=False)
            raise
        clock.lap("run_s")
        return {name: sink.data()[:num_steps] for name, sink in self.sinks.items()}

    def close(self) -> None:
        """Stop every worker (Lava's stop protocol, killing them as a last resort); idempotent."""
        self._close(graceful=True)

    def __enter__(self) -> LavaSession:
        return self

    def __exit__(self, exc_type: ty.Any, exc: ty.Any, tb: ty.Any) -> None:
        self._close(graceful=exc_type is None)

    def _close(self, graceful: bool) -> None:
        if self.closed:
            return
        _OPEN_SESSIONS.discard(self)
        # A SIGTERM/SIGHUP from here on is raised when the workers are gone (a graceful stop
        # gives up at once); its exception must not cut their killing short.
        try:
            with SIGNAL_GUARD.deferred():
                clock = _PhaseClock(self.timings)
                try:
                    if self.runtime is not None:
                        _teardown(self.runtime, graceful=graceful, stop_timeout=self.stop_timeout)
                    clock.lap("stop_s")
                finally:
                    # Process.__del__ calls runtime.stop(); make that a no-op.
                    for proc in getattr(self.executable, "process_list", ()):
                        proc.runtime = None
        finally:
            signals, self._signals = self._signals, None
            signals.__exit__(None, None, None)


#: Sessions still open: closed at the interpreter's exit (no worker outlives it).
_OPEN_SESSIONS: weakref.WeakSet[LavaSession] = weakref.WeakSet()


@atexit.register
def _close_open_sessions() -> None:
    for session in list(_OPEN_SESSIONS):
        session._close(graceful=False)


def _check_steps(sinks: dict[str, SpikeSink], num_steps: ty.Any) -> int:
    """``num_steps`` as an int, if every sink records that many steps; else ValueError."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    for name, sink in sinks.items():
        if sink.num_steps < num_steps:
            raise ValueError(f"sink {name!r} records {sink.num_steps} steps, fewer than num_steps={num_steps}")
    return int(num_steps)


class _PhaseClock:
    """Writes the seconds since the previous lap into ``timings[name]``."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def restart(self) -> None:
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = now - self.last
        self.last = now


def _named_sinks(sinks: ty.Any) -> dict[str, SpikeSink]:
    """Validate ``sinks`` and return them as an ordered ``{name: sink}``."""
    if isinstance(sinks, ty.Mapping):
        named = dict(sinks)
    elif isinstance(sinks, ty.Sequence) and not isinstance(sinks, str):
        named = {}
        for sink in sinks:
            name = getattr(sink, "name", None)
            if name in named:
                raise ValueError(f"two sinks are named {name!r}; pass a dict")
            named[name] = sink
    else:
        raise ValueError(f"sinks must be a mapping or sequence of SpikeSink, "
                         f"got {type(sinks).__name__}")
    if not named:
        raise ValueError("sinks must not be empty")
    for name, sink in named.items():
        if not isinstance(sink, SpikeSink):
            raise ValueError(f"sink {name!r} is a {type(sink).__name__}, "
                             f"not a SpikeSink")
    return named


def _actors(runtime: Runtime) -> list[mp.Process]:
    """The forked worker processes (ProcessModels and runtime services)."""
    infra = runtime._messaging_infrastructure
    return list(infra.actors) if infra is not None else []


def _wait_until_done(runtime: Runtime, timeout: float | None) -> None:
    """Poll until every runtime service reported DONE, or raise."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(runtime.service_to_runtime)
    actors = _actors(runtime)
    sentinels = [a.sentinel for a in actors]
    while pending:
        for port in list(pending):
            if port.probe():
                msg = port.recv()
                if not enum_equal(msg, MGMT_RESPONSE.DONE):
                    raise _failure(runtime, f"a Lava runtime service "
                                            f"reported {_response_name(msg)}")
                pending.remove(port)
        if not pending:
            break
        if any(a.exitcode is not None for a in actors):
            raise _failure(runtime, "a Lava worker process exited during the "
                                    "run")
        if deadline is not None and time.monotonic() > deadline:
            raise _failure(runtime, f"the run did not finish within "
                                    f"timeout={timeout} s", wait=False)
        mp.connection.wait(sentinels, timeout=_POLL_S)
    runtime._is_running = False


def _response_name(msg: np.ndarray) -> str:
    for name, value in vars(MGMT_RESPONSE).items():
        if isinstance(value, np.ndarray) and enum_equal(msg, value):
            return name
    return repr(msg)


def _failure(runtime: Runtime, reason: str, *, wait: bool = True,
             fallback: ty.Sequence[str] = ()) -> LavaRunError:
    """Collect worker tracebacks (waiting a short grace period for a failing
    worker to report if ``wait``), kill all workers, return the error to
    raise. ``fallback`` tracebacks are used if no worker reported one."""
    reports = _collect_reports(runtime, wait=wait)
    _kill_workers(runtime)
    reports += _collect_reports(runtime, wait=False)
    return LavaRunError(reason, reports or list(fallback))


def _collect_reports(runtime: Runtime, wait: bool) -> list[str]:
    """Read the (exception, traceback) reports Lava's SystemProcess pipes to
    the parent when a worker raises. With ``wait``, wait up to
    ``_REPORT_GRACE_S`` for the first report (or for all workers to exit)."""
    actors = _actors(runtime)
    reports: list[str] = []
    deadline = time.monotonic() + (_REPORT_GRACE_S if wait else 0.0)
    while True:
        for actor in actors:
            conn = getattr(actor, "_pconn", None)
            try:
                if conn is None or conn.closed or not conn.poll():
                    continue
                payload = conn.recv_bytes()
            except (OSError, EOFError):
                continue
            tb = _traceback_text(payload)
            if tb:
                reports.append(tb)
        done = reports or all(a.exitcode is not None for a in actors)
        if done or time.monotonic() >= deadline:
            return reports
        mp.connection.wait([a.sentinel for a in actors], timeout=0.02)


class _LenientUnpickler(pickle.Unpickler):
    """Unpickles worker reports even when the exception class cannot be
    re-created in the parent (odd ``__init__`` signature, missing module)."""

    def find_class(self, module: str, name: str) -> ty.Any:
        try:
            cls = super().find_class(module, name)
        except Exception:
            cls = None
        if cls is None or (isinstance(cls, type)
                           and issubclass(cls, BaseException)):
            def rebuild(*args: ty.Any) -> BaseException:
                try:
                    return cls(*args)
                except Exception:
                    return RuntimeError(f"{module}.{name}{args!r}")
            return rebuild
        return cls


def _traceback_text(payload: bytes) -> str:
    """Traceback text of a SystemProcess report; "" for a clean exit."""
    try:
        report = _LenientUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # pragma: no cover - defensive
        return f"<unreadable worker report: {type(exc).__name__}: {exc}>"
    if isinstance(report, tuple) and len(report) == 2:
        return str(report[1])
    return ""


def _kill_workers(runtime: Runtime, timeout: float = 2.0) -> None:
    """Terminate (then kill) every worker that is still alive and reap it."""
    actors = [a for a in _actors(runtime) if a.exitcode is None]
    for actor in actors:
        actor.terminate()
    deadline = time.monotonic() + timeout
    for actor in actors:
        mp.Process.join(actor, max(0.0, deadline - time.monotonic()))
    for actor in actors:
        if actor.exitcode is None:
            actor.kill()
            mp.Process.join(actor)


def _graceful_stop(runtime: Runtime, timeout: float) -> str | None:
    """Lava's ``Runtime.stop()`` protocol with a deadline.

    Returns ``None`` on success or a description of what went wrong.
    """
    deadline = time.monotonic() + timeout
    for port in runtime.runtime_to_service:
        if not port.probe():
            return "a runtime service does not accept the STOP command"
        port.send(MGMT_COMMAND.STOP)
    for port in runtime.service_to_runtime:
        while not port.probe():
            if time.monotonic() > deadline:
                return f"stop() did not finish within {timeout} s"
            if SIGNAL_GUARD.pending is not None:
                return "stop() was abandoned: a termination signal arrived"
            time.sleep(_POLL_S)
        msg = port.recv()
        if not enum_equal(msg, MGMT_RESPONSE.TERMINATED):
            return f"a runtime service answered STOP with " \
                   f"{_response_name(msg)}"
    actors = _actors(runtime)
    while any(a.exitcode is None for a in actors):
        left = deadline - time.monotonic()
        if left <= 0:
            return f"the workers did not exit within {timeout} s of STOP"
        if SIGNAL_GUARD.pending is not None:
            return "stop() was abandoned: a termination signal arrived"
        mp.connection.wait([a.sentinel for a in actors], timeout=min(left, 0.05))
    return None


def _teardown(runtime: Runtime, graceful: bool, stop_timeout: float) -> None:
    """Stop the run (gracefully if possible), make sure no worker survives,
    release Lava's shared memory manager; raise if a graceful stop failed."""
    problem = None
    try:
        if graceful and runtime._is_started:
            problem = _graceful_stop(runtime, stop_timeout)
    finally:
        tracebacks = _collect_reports(runtime, wait=False)
        _kill_workers(runtime)
        runtime._is_running = False
        runtime._is_started = False
        try:
            runtime.join()
        finally:
            if runtime._messaging_infrastructure is not None:
                runtime._messaging_infrastructure.stop()
            if runtime._watchdog_manager is not None:
                runtime._watchdog_manager.stop()
    if problem is not None or (graceful and tracebacks):
        raise LavaRunError(problem or "a Lava worker raised during stop()",
                           tracebacks)


def live_workers(wait_s: float = 5.0) -> list[psutil.Process]:
    """Child processes of this interpreter still alive after ``wait_s`` seconds of grace.

    Python's shared-memory resource tracker (a per-interpreter singleton the standard library
    starts for Lava's SharedMemoryManager; it lives until the interpreter exits) is not a worker
    and is left out. An empty list means no Lava worker was left behind.
    """

    def workers() -> list[psutil.Process]:
        found = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "resource_tracker" not in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # it exited meanwhile
                continue
        return found

    deadline = time.monotonic() + wait_s
    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers()


@contextlib.contextmanager
def created_processes() -> ty.Iterator[list]:
    """Collects every Lava Process created inside the block (a Circuit's members too), for
    :func:`forget_processes` once they are no longer needed; forgets them at once if the block
    raises."""
    server = ProcessServer()
    start = len(server.processes)
    created: list = []
    try:
        yield created
    except BaseException:
        forget_processes(server.processes[start:])
        raise
    created.extend(server.processes[start:])


def forget_processes(processes: ty.Iterable) -> None:
    """Drop ``processes`` and their Vars from Lava's ProcessServer and VarServer, which keep every
    Process and Var ever created, with its parameters and shared-memory records: without this a
    long session (a test split through ``LavaNetwork.simulate``, one graph per batch) keeps every
    graph and runs out of memory."""
    ids = {id(process) for process in processes}
    server, var_server = ProcessServer(), VarServer()
    server.processes = [process for process in server.processes if id(process) not in ids]
    var_server.vars = [var for var in var_server.vars if id(var.process) not in ids]

