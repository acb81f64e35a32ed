"""A child process under limits: its own process group, a timeout, an address-space cap, and (Linux) death
with the thread that started it. What a variant's isolated job and a TensorRT build both run under; it
knows nothing of sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from qbench.config.errors import VariantFailed

try:
    import resource
except ImportError:  # not on Windows: no memory limit there
    resource = None  # type: ignore[assignment]

_PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's prctl (Linux), looked up here in the parent: between fork and exec, in a parent with threads
    (a pool of children), nothing may import or dlopen."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _limits(memory_mb: int | None):
    """preexec_fn: the address-space limit of the child (and of anything it starts); on Linux the child also
    dies with the thread that started it (a killed sweep, or a Ray worker that was cancelled or died, leaves
    no orphan running on)."""
    def apply() -> None:
        if memory_mb and resource is not None:
            b = int(memory_mb) << 20
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    return apply


class Running:
    """The children running now, so that an executor can kill them all (an interrupted sweep). Thread-safe."""

    def __init__(self):
        self._procs: set = set()
        self._lock = threading.Lock()

    def add(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(p)

    def discard(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(p)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            _kill_group(p)


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_limited(cmd: list[str], what: str, timeout_s: int | None, memory_mb: int | None,
                stderr_file: Path | None = None, env: dict | None = None,
                running: Running | None = None, timeout_key: str = "executor.timeout_s") -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session with a time and memory limit; raise VariantFailed when it dies.

    A timeout kills the whole process group (a child's own children too), and so does anything that
    interrupts the wait (Ctrl-C, SIGTERM, a cancelled Ray task). A signal is named; a memory limit, where
    set, is named with it, since the kernel's answer to exhausting it is often a signal. ``env``: the
    child's environment (default: this process's, CUDA_VISIBLE_DEVICES included). ``running``: where the
    child is registered while it runs. ``stderr_file`` keeps the child's stderr, if it wrote any;
    ``timeout_key``: the config key the timeout message names. A non-zero exit is returned, not raised:
    what it means is the caller's to say.
    """
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_limits(memory_mb), env=env)
    if running is not None:
        running.add(p)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        p.communicate()
        raise VariantFailed(f"{what} timed out after {timeout_s} s ({timeout_key})") from None
    except BaseException:
        _kill_group(p)
        p.wait()
        raise
    finally:
        if running is not None:
            running.discard(p)
    if stderr_file is not None and err:
        stderr_file.parent.mkdir(parents=True, exist_ok=True)
        stderr_file.write_text(err)
    if p.returncode < 0:
        sig = signal.Signals(-p.returncode).name
        # Worded as the child's own out-of-memory message is, so that one limit gives one reason whichever
        # way the kernel or the allocator reported it (a failed malloc in native code often aborts)
        mem = f" (executor.memory_mb: {memory_mb} MB)" if memory_mb else ""
        lines = err.strip().splitlines()
        kept = f"; stderr in {stderr_file}" if stderr_file is not None and err else ""
        raise VariantFailed(f"{what} killed by {sig} (a crash in native code, or out of memory{mem})"
                            + (f": {lines[-1][:300]}" if lines else "") + kept)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
