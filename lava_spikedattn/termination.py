"""SIGTERM and SIGHUP during a Lava run: stop the workers like ^C does, then exit cleanly.

SIGTERM (``kill``, process managers, ``Popen.terminate()``) and SIGHUP (a
closed terminal) would end the parent at once and leave the workers, Lava's
``/dev/shm`` segments and multiprocessing's ``/tmp/pymp-*`` folder behind.
While a run is active (or inside :func:`handle_termination_signals`) they
raise :class:`LavaTerminated` in the parent instead, after the same cleanup as
``KeyboardInterrupt``; the forked workers keep the default action.
"""

from __future__ import annotations

import os
import signal
import threading
import typing as ty

__all__ = ["SIGNAL_GUARD", "TERMINATION_SIGNALS", "LavaTerminated", "handle_termination_signals"]

#: Signals that stop a run the way ^C does: ``kill``/process managers, a closed terminal.
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)




class LavaTerminated(SystemExit):
    """SIGTERM or SIGHUP stopped a Lava run; raised once no worker of it is left.

    A ``SystemExit`` rather than an ``Exception``: a request to terminate must not be swallowed
    by an ``except Exception`` between the runner and the top level, while ``finally`` blocks and
    ``atexit`` handlers (multiprocessing removes its ``/tmp/pymp-*`` folder there) still run. If
    nobody catches it, Python prints the message and exits with status 1, as ``sys.exit(message)``
    does. (Not a ``KeyboardInterrupt``: an uncaught one makes Python end itself with SIGINT, i.e.
    report a ^C that never happened.)

    Attributes
    ----------
    signum : int
        The signal received.
    signal_name : str
        Its name, e.g. ``"SIGTERM"``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {self.signal_name}; the Lava workers were stopped")

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return type(self), (self.signum,)


class _SignalGuard:
    """While entered (reentrant, main thread only): TERMINATION_SIGNALS raise LavaTerminated in
    the process that entered it. Only signals whose handler is SIG_DFL are taken over (a handler
    of the program, or SIG_IGN as ``nohup`` sets it, stays), and SIG_DFL is restored on the last
    exit. Forked children get SIG_DFL back at once (an at-fork hook), so Lava workers still die
    of the SIGTERM the runner sends them; a signal that reaches a child before that hook ran is
    re-sent to it with the default action.

    Inside :meth:`deferred` (the runner's teardown) a signal is only recorded and raised when the
    deferral ends: an exception must not cut the killing of the workers short. A repeated signal
    while a LavaTerminated propagates is ignored for the same reason.
    """

    def __init__(self) -> None:
        self._reset()
        self._handler = self._handle  # one bound method: compared with signal.getsignal()

    def _reset(self) -> None:
        self.depth = 0
        self.pid: int | None = None
        self.installed: list[int] = []
        self.deferring = 0
        self.pending: int | None = None
        self.raised = False

    def active_here(self) -> bool:
        return (self.depth > 0 and self.pid == os.getpid()
                and threading.current_thread() is threading.main_thread())

    def enter(self) -> bool:
        """Take over the signals if this is the outermost entry; False (no-op) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self.depth += 1
        self.raised = False  # a new run: a termination before it was handled by the caller
        if self.depth == 1:
            self.pid = os.getpid()
            for signum in TERMINATION_SIGNALS:
                if signal.getsignal(signum) == signal.SIG_DFL:
                    self.installed.append(signum)  # first: exit() restores it even if a signal cuts in
                    signal.signal(signum, self._handler)
        return True

    def exit(self) -> None:
        """Leave one level; the last restores SIG_DFL (a signal meanwhile is raised after that)."""
        if self.depth > 1:
            self.depth -= 1
            return
        self.deferring += 1
        for signum in self.installed:
            if signal.getsignal(signum) == self._handler:  # else the program replaced it: keep
                signal.signal(signum, signal.SIG_DFL)
        pending, raised = self.pending, self.raised
        self._reset()
        if pending is not None and not raised:
            raise LavaTerminated(pending)

    def _handle(self, signum: int, frame: ty.Any) -> None:
        if os.getpid() != self.pid:  # a forked child, before the at-fork hook: die as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.raised:  # already stopping: a repeated signal must not interrupt the cleanup
            return
        if self.deferring:
            self.pending = signum
            return
        self.raised = True
        raise LavaTerminated(signum)

    def after_fork_in_child(self) -> None:
        for signum in self.installed:
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (ValueError, OSError):  # pragma: no cover - a fork from a non-main thread
                pass
        self._reset()

    def deferred(self) -> _Deferred:
        return _Deferred(self)


class _Deferred:
    """Context of :meth:`_SignalGuard.deferred`; raises LavaTerminated on exit for a deferred
    signal (replacing an exception in flight, which becomes its ``__context__``)."""

    def __init__(self, guard: _SignalGuard) -> None:
        self.guard = guard
        self.active = False

    def __enter__(self) -> None:
        self.active = self.guard.active_here()
        if self.active:
            self.guard.deferring += 1

    def __exit__(self, exc_type: ty.Any, exc: ty.Any, tb: ty.Any) -> None:
        if not self.active:
            return
        guard = self.guard
        guard.deferring -= 1
        if guard.deferring or guard.pending is None:
            return
        signum, guard.pending = guard.pending, None
        if not guard.raised and not isinstance(exc, LavaTerminated):
            guard.raised = True
            raise LavaTerminated(signum)


SIGNAL_GUARD = _SignalGuard()
os.register_at_fork(after_in_child=SIGNAL_GUARD.after_fork_in_child)


class handle_termination_signals:  # noqa: N801 (used like a function: ``with handle_termination_signals():``)
    """Context manager: inside it, SIGTERM and SIGHUP raise :class:`LavaTerminated` in this process.

    :func:`run_processes` enters it itself. Wrap a whole program that runs Lava (e.g. a command
    that runs many samples one after another) in it as well, so that a signal between two runs
    also ends the program through ``finally`` blocks and ``atexit`` instead of the default action
    (which skips them and leaves multiprocessing's ``/tmp/pymp-*`` folder). Reentrant; main
    thread only (a no-op elsewhere); a signal whose handler is not SIG_DFL is left alone; the
    previous handlers are restored on exit.
    """

    def __enter__(self) -> handle_termination_signals:
        depth = SIGNAL_GUARD.depth
        try:
            self._entered = SIGNAL_GUARD.enter()
        except BaseException:  # a signal cut in while taking over: leave the guard as it was
            if SIGNAL_GUARD.depth > depth:
                SIGNAL_GUARD.exit()
            raise
        return self

    def __exit__(self, exc_type: ty.Any, exc: ty.Any, tb: ty.Any) -> None:
        if self._entered:
            SIGNAL_GUARD.exit()
