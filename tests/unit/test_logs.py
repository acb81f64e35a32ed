"""logs.quiet_logger: a library's logger is silenced inside the block and gets its own level back."""

import logging

import pytest

from qbench.util.logs import quiet_logger


def test_quiet_logger_silences_and_restores_even_when_the_block_raises(caplog):
    lib = logging.getLogger("qbench-test-lib")
    lib.setLevel(logging.INFO)
    with pytest.raises(ValueError), quiet_logger("qbench-test-lib", logging.CRITICAL):
        lib.error("said inside")
        raise ValueError
    lib.error("said after")
    assert [r.getMessage() for r in caplog.records if r.name == "qbench-test-lib"] == ["said after"]
    assert lib.level == logging.INFO


def test_quiet_logger_none_is_the_root_logger():
    root = logging.getLogger()
    before = root.level
    with quiet_logger(None, logging.ERROR):
        assert root.level == logging.ERROR
    assert root.level == before
