"""One exception family for everything a user can cause.

``QbenchError`` and its subclasses are *user* errors: the CLI catches them once, prints ``str(err)``
(one line; a config with several problems gets one line per problem) without a traceback, and exits
with ``err.exit_code``. Anything else is a bug and keeps its traceback.

Exit codes of ``qbench`` (``python -m qbench``):

====  ======================  =================================================================
code  raised as               meaning
====  ======================  =================================================================
0                             done (``qbench gate``: the variant passes)
1                             ``qbench gate`` only: the variant fails its gate (or failed)
2     ``ConfigError``         a config, manifest, calibration table/cache or command line is
                              wrong; also ``qbench gate``'s "cannot tell" (no such run or
                              variant, no gate); argparse's usage errors; bare ``QbenchError``
3     ``DataError``           the data is unusable: an empty split or calibration set, an unmet
                              language quota, a non-finite activation
4     ``ModelError``          a model is missing, corrupt, of an unsupported opset, or has
                              nothing to quantize; an export failed
5     ``BackendUnavailable``  a backend's runtime is not installed here
6     ``QuantizationError``   a calibration table does not match the model, or a Q/DQ scale did
                              not come from the table
7     ``VariantFailed``       one variant failed (inside a sweep it becomes a failed row instead,
                              and the sweep goes on)
8     ``StorageError``        a file could not be written (a full disk, a file-size limit, no
                              permission); the files written before it are intact
10                            ``qbench gate`` only: INCONCLUSIVE, the data cannot decide yet (the
                              line says how many test sentences would); not an error
130                           ``qbench sweep`` interrupted by SIGINT (Ctrl-C); the run is resumable
143                           ``qbench sweep`` stopped by SIGTERM; the run is resumable
====  ======================  =================================================================

Inside ``qbench sweep`` a per-variant error of any kind becomes that variant's failed row and a
``variant <id> failed: <message>`` warning line on stderr; the sweep itself goes on.
"""

from __future__ import annotations


class QbenchError(Exception):
    """Base of every user-facing error. ``str()`` is the one line we print: line breaks and other control
    characters that user input (a key, a column, a tensor name) brought into the message are escaped."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(QbenchError):
    """A config, manifest or parameter is wrong. Message: ``file: key.path: problem``; a config with several
    problems has one such line each, joined by ``\\n`` (other control characters are escaped)."""

    exit_code = 2

    def __str__(self) -> str:
        return "\n".join(one_line(line) for line in Exception.__str__(self).split("\n"))


class DataError(QbenchError):
    """Input data is unusable: an empty set, an unmet language quota, a non-finite activation."""

    exit_code = 3


class ModelError(QbenchError):
    """A model is missing, corrupt or cannot be exported or quantized."""

    exit_code = 4


class BackendUnavailable(QbenchError):
    """A backend's runtime is not installed here. The message carries the install hint."""

    exit_code = 5


class QuantizationError(QbenchError):
    """A QDQ model does not match its calibration table (a scale not from our table, a missing tensor)."""

    exit_code = 6


class VariantFailed(QbenchError):
    """A single variant failed; the sweep records it as a failed row and goes on."""

    exit_code = 7


class StorageError(QbenchError):
    """A file could not be written. Writes are atomic, so what was there before is intact."""

    exit_code = 8


def one_line(text: object) -> str:
    """``text`` with line breaks and other control characters escaped as ``repr`` writes them (``\\n``,
    ``\\x1e``, ``\\u2028``), everything else kept: a message quoting user input (a key, a column, a tensor
    name) stays one line however the CLI splits it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def first_line(err: object, limit: int | None = 300) -> str:
    """The first non-blank line of ``str(err)``, at most ``limit`` characters (None: all of it); an
    exception whose text is empty is named by its type. What a message quotes of a library's error, which
    may run to pages."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(err).__name__ if isinstance(err, BaseException) else ""


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (QbenchError, ConfigError, DataError, ModelError,
                                                     BackendUnavailable, QuantizationError, VariantFailed,
                                                     StorageError)}

