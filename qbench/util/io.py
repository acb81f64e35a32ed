"""Atomic file writes (write a sibling temp file, fsync, then rename over the target), and reading the
files a user names (one ConfigError line when they cannot be read; YAML configs and manifests)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move tmp over ``path``; a crash leaves the old file intact.

    A failing write (a full disk, a file-size limit, no permission) is a StorageError naming the file: the
    user's to fix, not a bug, and nothing already on disk is lost.
    """
    from qbench.config.errors import StorageError

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as readable as any other file
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write ({e.strerror or type(e).__name__}); what was written before "
                           "is intact") from e
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def read_user_bytes(path: Path, what: str, not_found: str | None = None) -> bytes:
    """The bytes of a file the user named; ``ConfigError('<path>: cannot read <what>: <reason>')`` when it
    cannot be read (``not_found``: the message after ``<path>: `` for a missing file instead)."""
    from qbench.config.errors import ConfigError, one_line

    try:
        return Path(path).read_bytes()
    except (OSError, ValueError) as e:  # missing, a directory, no permission, a NUL byte in the name
        if isinstance(e, FileNotFoundError) and not_found is not None:
            raise ConfigError(one_line(f"{path}: {not_found}")) from None
        raise ConfigError(one_line(f"{path}: cannot read {what}: {getattr(e, 'strerror', None) or e}")) from None


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The top-level mapping of the YAML file ``path`` (``what`` names the kind of file in messages, e.g.
    "config file"). A missing or unreadable file, text that is not UTF-8 or not YAML, and a document that is
    not a mapping are each one ConfigError line naming the file and, where known, the line. Keys are not
    checked: that is the caller's schema."""
    import yaml

    from qbench.config.errors import ConfigError, first_line, one_line

    data = read_user_bytes(path, what, not_found=f"{what} not found")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(one_line(f"{path}: line {line}: not UTF-8 text (byte {e.start}); a {what} is YAML")) from None
    try:
        raw = yaml.safe_load(text)  # safe_load: a config never constructs Python objects or runs code
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        problem = first_line(getattr(e, "problem", None) or e, 200)
        raise ConfigError(one_line(f"{path}: {where}: malformed YAML: {problem}")) from None
    except RecursionError:
        raise ConfigError(one_line(f"{path}: (parse): malformed YAML: nested too deeply")) from None
    if not isinstance(raw, dict):
        raise ConfigError(one_line(f"{path}: (top level): expected a mapping of keys, got {type(raw).__name__}"))
    return raw


def safe_name(s: str) -> str:
    """``s`` as a file name: anything but letters, digits and ``-_.=`` becomes ``_`` (variant ids hold ``+``, ``[``)."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)
