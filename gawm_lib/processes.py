"""Child processes that never outlive gawm: each gets its own session (so a terminal's Ctrl-C reaches gawm, which then
stops them in order) and a parent-death signal (so even a killed gawm leaves no orphan). :class:`ExitWatch` notes a
child that exits on its own (a crashed replica, a killed Prometheus) with the time; :func:`interruptible` makes SIGTERM
and SIGHUP (batch schedulers, ``timeout``, a closed terminal) an interruption like Ctrl-C."""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _child_setup(parent: int, cpus: tuple[int, ...] | None = None):
    """preexec_fn: a new session, SIGTERM when the spawning thread dies (Linux), and the CPU affinity ``cpus`` where
    given (set before exec, so every thread of the program inherits it); prctl is resolved before fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    stdout: int | None = None,
    cpus: Sequence[int] | None = None,
) -> subprocess.Popen:
    """Start ``cmd`` with stderr (and stdout unless given) appended to ``log_path``, pinned to the CPU cores ``cpus``
    where given."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child holds it; closed by our handle's finaliser
    try:
        return subprocess.Popen(
            list(cmd),
            stdout=log if stdout is None else stdout,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=_child_setup(os.getpid(), tuple(cpus) if cpus is not None else None),
            close_fds=True,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except BaseException:  # a timeout, or Ctrl-C while waiting: still no orphan
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
    # children the child left behind in its group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_record(name: str, proc: subprocess.Popen, at_unix_ns: int | None = None) -> dict[str, Any]:
    """How ``proc`` ended, for a manifest: its ``name``, pid, ``exit_code`` (None when a signal ended it), ``signal``
    (e.g. ``SIGKILL``, None for an exit) and when it was seen gone (``at_utc``, ``at_unix_ns`` [ns])."""
    at_unix_ns = time.time_ns() if at_unix_ns is None else at_unix_ns
    code = proc.returncode
    killed_by = None
    if code is not None and code < 0:
        try:
            killed_by = signal.Signals(-code).name
        except ValueError:
            killed_by = f"signal {-code}"
    return {
        "name": name,
        "pid": proc.pid,
        "exit_code": code if code is None or code >= 0 else None,
        "signal": killed_by,
        "at_utc": dt.datetime.fromtimestamp(at_unix_ns / 1e9, dt.UTC).isoformat(),
        "at_unix_ns": at_unix_ns,
    }


class ExitWatch:
    """Watches children that should live until we stop them, and notes each one that exits first (in ``exits``,
    :func:`exit_record`, seen within ``interval_s``). :meth:`expect` before stopping them on purpose."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.exits: list[dict[str, Any]] = []
        self._watched: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, proc: subprocess.Popen) -> None:
        with self._lock:
            self._watched[name] = proc
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="gawm-exit-watch")
            self._thread.start()

    def check(self) -> list[dict[str, Any]]:
        """Note the watched children that have exited by now; return every exit noted so far."""
        with self._lock:
            for name, proc in list(self._watched.items()):
                if proc.poll() is not None:
                    self.exits.append(exit_record(name, proc))
                    del self._watched[name]
            return list(self.exits)

    def expect(self) -> None:
        """From now on exits are expected (we are stopping them): note those that came before, then stop watching."""
        self.check()
        with self._lock:
            self._watched.clear()
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            self.check()


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C; ``signal`` names it."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal = signal_name


class Signals(list):
    """The names of the signals received inside :func:`interruptible`; :meth:`settle` once the work has stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[threading.Timer] = []

    def settle(self) -> None:
        """The work has stopped (its failure is being handled): no late KeyboardInterrupt from the grace timer."""
        for timer in self.timers:
            timer.cancel()


@contextlib.contextmanager
def interruptible(
    hand_on: Callable[[int], bool] | None = None,
    grace_s: float = 30.0,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP),
) -> Iterator[Signals]:
    """While inside, the first of ``signals`` raises :class:`Interrupted` (a KeyboardInterrupt, so every
    ``except KeyboardInterrupt`` cleans up as for Ctrl-C); later ones are only noted, so that the clean-up itself is
    not cut short. Yields the names of the signals received. Outside the main thread (where Python cannot handle
    signals) it does nothing.

    ``hand_on(signum)``, where given, may pass the interruption on to a child that does the work (a notebook's
    kernel) and return True: then nothing is raised here at once, the child stops on its own and the caller sees
    its failure (check the names yielded), and only if nothing has come after ``grace_s`` [s] is KeyboardInterrupt
    raised here after all (call ``settle()`` on what is yielded when the child's failure has come)."""
    received = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        if len(received) > 1:
            return
        handed = False
        if hand_on is not None:
            with contextlib.suppress(Exception):
                handed = bool(hand_on(signum))
        if not handed:
            raise Interrupted(received[0])
        timer = threading.Timer(grace_s, _thread.interrupt_main)
        timer.daemon = True
        received.timers.append(timer)
        timer.start()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        received.settle()
        for sig, old in previous.items():
            signal.signal(sig, old)
