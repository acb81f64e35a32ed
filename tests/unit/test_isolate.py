"""isolate.run_limited's messages for a child that dies, with real child processes."""

import sys

import pytest

from qbench.config.errors import VariantFailed
from qbench.run.isolate import run_limited


def test_a_child_aborted_under_a_memory_limit_names_the_limit_as_an_out_of_memory_does():
    # A failed allocation in native code often ends in abort() (an uncaught std::bad_alloc, a Rust
    # "memory allocation failed"): the reason must read as the child's own out-of-memory message does, so
    # one limit gives one reason however the allocator reported it.
    cmd = [sys.executable, "-c", "import sys, os; print('partial', file=sys.stderr, flush=True); os.abort()"]
    with pytest.raises(VariantFailed) as e:
        run_limited(cmd, "variant v's child process", timeout_s=60, memory_mb=900)
    assert str(e.value) == ("variant v's child process killed by SIGABRT (a crash in native code, or out of "
                            "memory (executor.memory_mb: 900 MB)): partial")


def test_a_child_killed_without_a_memory_limit_does_not_invent_one():
    cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(VariantFailed) as e:
        run_limited(cmd, "variant v's child process", timeout_s=60, memory_mb=None)
    assert str(e.value) == "variant v's child process killed by SIGSEGV (a crash in native code, or out of memory)"


def test_a_non_zero_exit_is_returned_for_the_caller_to_explain():
    r = run_limited([sys.executable, "-c", "raise SystemExit(3)"], "x", timeout_s=60, memory_mb=None)
    assert r.returncode == 3


class _RaisesWhenUnpickled:
    """A job whose unpickling, in the child, raises ``exc``: the child dies before it can answer."""

    def __init__(self, exc: str):
        self.exc = exc

    def __reduce__(self):
        return eval, (f"(_ for _ in ()).throw({self.exc})",)


@pytest.mark.parametrize("exc, memory_mb, why", [
    ("MemoryError()", 900, "out of memory (executor.memory_mb: 900 MB)"),
    ("MemoryError()", None, "out of memory"),
    ("OSError('libx.so: failed to map segment from shared object')", 900,
     "out of memory (executor.memory_mb: 900 MB): OSError: libx.so: failed to map segment from shared object"),
    ("ValueError('not memory')", 900, "ValueError: not memory"),
])
def test_a_child_that_dies_before_answering_is_explained_from_its_last_stderr_line(tmp_path, exc, memory_mb, why):
    import pickle

    from qbench.run.isolate import run_job

    with pytest.raises(VariantFailed) as e:
        run_job(pickle.dumps(_RaisesWhenUnpickled(exc)), tmp_path, "variant v's child process", timeout_s=60,
                memory_mb=memory_mb)
    assert str(e.value) == f"variant v's child process ended without a result: {why}"
    # the failed job keeps the child's stderr (the traceback) for the post-mortem, and nothing else
    (job,) = tmp_path.iterdir()
    assert [p.name for p in job.iterdir()] == ["stderr.txt"]
    assert "Traceback" in (job / "stderr.txt").read_text()
