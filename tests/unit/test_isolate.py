"""isolate.run_limited's messages for a child that dies, with real child processes."""

import sys

import pytest

from qbench.errors import VariantFailed
from qbench.isolate import run_limited


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
