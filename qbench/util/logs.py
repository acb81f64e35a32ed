"""Silencing a library's own logging for the length of one call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str | None, level: int) -> Iterator[None]:
    """Raise logger ``name`` (None: the root logger) to ``level`` inside the block, and put its own level
    back after it, even when the block raises: for a library that logs what we report ourselves."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def log(msg: str, warning: bool = False) -> None:
    """A timestamped line on stderr, drawn above the progress bars; ``--quiet`` keeps only warnings."""
    import time

    from qbench.util import progress

    progress.echo(f"[qbench {time.strftime('%H:%M:%S')}] {msg}", important=warning)
