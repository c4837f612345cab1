"""Child processes that never outlive gawm: each gets its own session (so a terminal's Ctrl-C reaches gawm, which then
stops them in order) and a parent-death signal (so even a killed gawm leaves no orphan)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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
