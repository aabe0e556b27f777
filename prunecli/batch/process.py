"""One child process of a batch, under a time and a memory limit, with its peak resident memory measured.

    outcome = run_limited(command, env=environment, timeout_s=600, memory_limit_gb=4.0, stop=event)
    outcome.returncode, outcome.stderr, outcome.peak_rss_bytes, outcome.killed   # killed: None, "timeout", "memory"

The parent polls the resident memory (RSS) of the child's whole process tree every ``POLL_S``
seconds (the tree's members listed again every ``LIST_S``: listing scans every process of the
machine) and kills the tree once the sum passes the limit. RSS rather than ``RLIMIT_AS``: torch and
OpenMP reserve far more virtual address space than they ever touch, so an address-space limit
kills healthy runs. The peak is the largest sum seen, or the kernel's own peak of the child
(``wait4``'s ``ru_maxrss``) when that is larger, so runs shorter than a poll are measured too.
When ``stop`` is set (the batch was interrupted) the tree is killed and :class:`BatchStopped` raised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import psutil

POLL_S = 0.05
LIST_S = 1.0
GB = 1024**3  # --memory-limit is in GB of 2^30 bytes, as the peaks reported


class BatchStopped(Exception):
    """The batch was interrupted (Ctrl-C or SIGTERM) while this child ran; the child was killed."""


@dataclass(frozen=True)
class ProcessOutcome:
    """How a child process ended: exit code, output, peak RSS of its tree, and why it was killed, if it was."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    killed: str | None = None  # "timeout" or "memory"


def run_limited(
    command: list[str],
    *,
    env: dict[str, str],
    timeout_s: float | None = None,
    memory_limit_gb: float | None = None,
    stop: threading.Event | None = None,
) -> ProcessOutcome:
    """Run ``command`` to its end, or kill its process tree past ``timeout_s`` or ``memory_limit_gb``."""
    limit = None if memory_limit_gb is None else int(memory_limit_gb * GB)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        tree = TreeMemory(process.pid)
        peak, killed, kernel_peak = 0, None, 0
        while True:
            ended = _reap(process)
            if ended is not None:
                kernel_peak = ended
                break
            rss = tree.rss()
            peak = max(peak, rss)
            if killed is None:
                killed = _why_kill(rss, limit, deadline, stop)
                if killed is not None:
                    kill_tree(process.pid)
            time.sleep(POLL_S)
        if killed == "stopped":
            raise BatchStopped(f"stopped {command[0]}")
        return ProcessOutcome(returncode=process.returncode, stdout=_text(out), stderr=_text(err),
                              peak_rss_bytes=max(peak, kernel_peak), killed=killed)  # fmt: skip


class TreeMemory:
    """The resident memory of process ``pid`` and its descendants, listed again at most every ``LIST_S``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.members: list[psutil.Process] = []
        self.listed_at = -LIST_S

    def rss(self) -> int:
        """Resident bytes of the tree now (0 once it is gone)."""
        if time.monotonic() - self.listed_at >= LIST_S:
            self.members = _tree(self.pid)
            self.listed_at = time.monotonic()
        total = 0
        for process in self.members:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and its descendants (all listed first, so none is missed)."""
    for process in _tree(pid):
        with contextlib.suppress(psutil.Error):
            process.kill()


def _tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and its descendants ([] once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt (as Ctrl-C does) so the batch can stop its children.

    Only the main thread can set signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _why_kill(
    rss: int, limit: int | None, deadline: float | None, stop: threading.Event | None
) -> str | None:
    if limit is not None and rss > limit:
        return "memory"
    if deadline is not None and time.monotonic() > deadline:
        return "timeout"
    if stop is not None and stop.is_set():
        return "stopped"
    return None


def _reap(process: subprocess.Popen[bytes]) -> int | None:
    """None while ``process`` runs; once it has ended, its kernel-measured peak RSS in bytes (0 if unknown).

    ``wait4`` reaps the child and gives its resource usage; Popen's returncode is set from it.
    """
    if not hasattr(os, "wait4"):  # Windows: no rusage
        return None if process.poll() is None else 0
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _text(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace")
