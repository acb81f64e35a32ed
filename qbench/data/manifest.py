"""Dataset manifests (YAML in datasets/) and loading through Hugging Face ``datasets``.

A manifest names the fields (text, reference, language, label, id) and the splits: local JSON or
Parquet files under datasets/, or a hub dataset (path, name, split) for users who are online.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qbench.config.errors import ConfigError, DataError, first_line, one_line
from qbench.util.io import read_yaml_mapping
from qbench.util.logs import quiet_logger


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceCfg(_Strict):
    kind: Literal["local", "hub"] = "local"
    format: Literal["parquet", "json"] = "parquet"
    path: str | None = Field(None, description="hub dataset path (kind: hub)")
    name: str | None = Field(None, description="hub dataset config name")


class FieldsCfg(_Strict):
    id: str | None = None
    text: str = "text"
    reference: str | None = None
    language: str | None = None
    label: str | None = None


class Manifest(_Strict):
    name: str
    description: str = ""
    license: str = ""
    task: str = ""
    source: SourceCfg = SourceCfg()
    fields: FieldsCfg = FieldsCfg()
    splits: dict[str, str] = Field(description="split name -> local file (kind: local) or hub split name")
    sha256: dict[str, str] = {}
    language_groups: dict[str, dict[str, str]] = Field(
        {}, description="grouping name -> {language: group}, e.g. {script: {de: Latn, ru: Cyrl}}: the report's "
                        "calibration-set effects per group")
    path: str = Field("", exclude=True)


@dataclass(frozen=True)
class Sample:
    id: str
    text: str
    reference: str | None = None
    language: str = "und"
    label: str | None = None


def load_manifest(path: Path) -> Manifest:
    """Read and validate a dataset manifest. Every problem is a ``ConfigError('<file>: <key>: <problem>')``."""
    from qbench.config.messages import format_errors

    raw = read_yaml_mapping(Path(path), "dataset manifest")
    bad = [k for k in raw if not isinstance(k, str)]  # YAML allows null, number and list keys
    if bad or "path" in raw:  # 'path' is set here, by the loader
        raise _config_error(f"{path}: {repr(bad[0])[:40] if bad else 'path'}: unknown key")
    try:
        return Manifest(**raw, path=str(Path(path).resolve()))
    except ValidationError as e:
        raise ConfigError("\n".join(map(one_line, format_errors(e, str(path), Manifest)))) from None


def _config_error(msg: str) -> ConfigError:
    """A one-problem ConfigError: a line break in the user's text (a key, a split name) cannot split it in two."""
    return ConfigError(one_line(msg))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_file(m: Manifest, split: str) -> Path:
    if split not in m.splits:
        raise _config_error(f"{m.path}: splits: no split '{split}' (has: {', '.join(m.splits) or 'none'})")
    try:
        return (Path(m.path).parent / m.splits[split]).resolve()
    except (OSError, ValueError) as e:  # a NUL byte, a symlink loop
        raise _config_error(f"{m.path}: splits.{split}: not a usable path: {m.splits[split][:80]!r} ({e})") from None


def _is_file(f: Path) -> bool:
    try:
        return f.is_file()
    except (OSError, ValueError):  # a name too long for the file system
        return False


def load_split(m: Manifest, split: str) -> list[Sample]:
    """Load one split as Samples. Local files are checked against the manifest's sha256.

    An unreadable file, a file with no rows, or a row with no text is a ``DataError`` naming the file.
    """
    import datasets as hf

    hf.disable_progress_bars()
    if m.source.kind == "local":
        f = split_file(m, split)
        if not _is_file(f):
            raise DataError(f"{m.path}: splits.{split}: file not found: {f}")
        want = m.sha256.get(m.splits[split])
        if want and sha256_file(f) != want:
            raise DataError(f"{f}: sha256 does not match the manifest (the file changed)")
        if f.stat().st_size < 4096 and not f.read_bytes().strip() or _parquet_rows(m, f) == 0:
            raise DataError(f"{m.path}: splits.{split}: {f} is empty (no samples)")
        try:
            # datasets logs a parse failure itself (several lines) before raising it: we report it once
            with quiet_logger("datasets", logging.CRITICAL):
                ds = hf.load_dataset(m.source.format, data_files={split: str(f)}, split=split)
        except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many types for a file they cannot parse
            raise DataError(f"{f}: cannot read split '{split}' as {m.source.format} ({_root_cause(e)})") from None
        where = str(f)
    else:
        if split not in m.splits:
            raise _config_error(f"{m.path}: splits: no split '{split}' (has: {', '.join(m.splits) or 'none'})")
        try:
            with quiet_logger("datasets", logging.CRITICAL):
                ds = hf.load_dataset(m.source.path, m.source.name, split=m.splits[split])
        except Exception as e:  # noqa: BLE001 - offline, no such dataset, no such split: the user's to fix
            raise DataError(f"{m.path}: splits.{split}: cannot load hub dataset {m.source.path!r} "
                            f"split {m.splits[split]!r} ({_root_cause(e)})") from None
        where = f"hub dataset {m.source.path!r} split {m.splits[split]!r}"
    if len(ds) == 0:
        raise DataError(f"{m.path}: splits.{split}: {where} has no samples")
    return _to_samples(ds, m, split, where)


def _parquet_rows(m: Manifest, f: Path) -> int | None:
    """The row count a Parquet file's footer declares; None when it is not Parquet or has no readable footer
    (load_dataset then names the parse error). A 0-row file must be caught here: datasets would fail on it
    inside Arrow ("BatchSize must be greater than 0"), a message that names neither the split nor the file."""
    if m.source.format != "parquet":
        return None
    try:
        import pyarrow.parquet as pq

        return pq.read_metadata(f).num_rows
    except Exception:  # noqa: BLE001 - not Parquet at all: the loader below reports it with its cause
        return None


def _root_cause(e: BaseException) -> str:
    """``Type: first line`` of the innermost cause: ``datasets`` wraps pyarrow's precise error in a vague one."""
    seen = {id(e)}
    while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
        e = e.__cause__ or e.__context__
        seen.add(id(e))
    return f"{type(e).__name__}: {first_line(e, 200)}" if str(e).strip() else type(e).__name__


def _to_samples(ds, m: Manifest, split: str, where: str = "") -> list[Sample]:
    f = m.fields
    cols = set(ds.column_names)
    for key in ("id", "text", "reference", "language", "label"):
        col = getattr(f, key)
        if col is not None and col not in cols:
            raise _config_error(f"{m.path}: fields.{key}: column '{col}' not in split '{split}' "
                                f"(columns: {', '.join(sorted(cols)) or 'none'})")
    data = ds.to_dict()
    n = len(ds)
    for key in ("text", "reference"):  # a missing text would silently become the string 'None'
        col = getattr(f, key)
        if col is not None:
            row = next((i for i, v in enumerate(data[col]) if v is None), None)
            if row is not None:
                raise DataError(f"{where or m.path}: split '{split}' row {row}: column '{col}' (fields.{key}) "
                                "is null")
    get = lambda col, i, default=None: data[col][i] if col else default  # noqa: E731
    return [
        Sample(
            id=str(get(f.id, i, f"{split}-{i}")),
            text=str(data[f.text][i]),
            reference=None if f.reference is None else str(data[f.reference][i]),
            language=str(get(f.language, i, "und")),
            label=None if f.label is None else str(data[f.label][i]),
        )
        for i in range(n)
    ]


def data_hashes(m: Manifest) -> dict[str, str]:
    if m.source.kind != "local":
        return {}
    return {split: sha256_file(split_file(m, split)) for split in m.splits if split_file(m, split).is_file()}
