"""One exception family for everything a user can cause.

``QbenchError`` and its subclasses are *user* errors: the CLI catches them once,
prints ``str(err)`` on a single line and exits with ``err.exit_code``. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class QbenchError(Exception):
    """Base of every user-facing error. ``str()`` is the one line we print."""

    exit_code = 2


class ConfigError(QbenchError):
    """A config, manifest or parameter is wrong. Message: ``file: key.path: problem``."""


class DataError(QbenchError):
    """Input data is unusable: an empty set, an unmet language quota, a non-finite activation."""


class ModelError(QbenchError):
    """A model is missing, corrupt or cannot be exported or quantized."""


class BackendUnavailable(QbenchError):
    """A backend's runtime is not installed here. The message carries the install hint."""


class QuantizationError(QbenchError):
    """A QDQ model does not match its calibration table (a scale not from our table, a missing tensor)."""


class VariantFailed(QbenchError):
    """A single variant failed; the sweep records it as a failed row and goes on."""
