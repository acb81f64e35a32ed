"""Dataset manifests (YAML in datasets/) and loading through Hugging Face ``datasets``.

A manifest names the fields (text, reference, language, label, id) and the splits: local JSON or
Parquet files under datasets/, or a hub dataset (path, name, split) for users who are online.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qbench.errors import ConfigError, DataError


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
    path: str = Field("", exclude=True)


@dataclass(frozen=True)
class Sample:
    id: str
    text: str
    reference: str | None = None
    language: str = "und"
    label: str | None = None


def load_manifest(path: Path) -> Manifest:
    from qbench.config import format_errors

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: dataset manifest not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping")
    try:
        return Manifest(**raw, path=str(Path(path).resolve()))
    except ValidationError as e:
        raise ConfigError("\n".join(format_errors(e, str(path), Manifest))) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_file(m: Manifest, split: str) -> Path:
    if split not in m.splits:
        raise ConfigError(f"{m.path}: splits: no split '{split}' (has: {', '.join(m.splits)})")
    return (Path(m.path).parent / m.splits[split]).resolve()


def load_split(m: Manifest, split: str) -> list[Sample]:
    """Load one split as Samples. Local files are checked against the manifest's sha256."""
    import datasets as hf

    hf.disable_progress_bars()
    if m.source.kind == "local":
        f = split_file(m, split)
        if not f.is_file():
            raise DataError(f"{m.path}: splits.{split}: file not found: {f}")
        want = m.sha256.get(m.splits[split])
        if want and sha256_file(f) != want:
            raise DataError(f"{f}: sha256 does not match the manifest (the file changed)")
        ds = hf.load_dataset(m.source.format, data_files={split: str(f)}, split=split)
    else:
        if split not in m.splits:
            raise ConfigError(f"{m.path}: splits: no split '{split}'")
        ds = hf.load_dataset(m.source.path, m.source.name, split=m.splits[split])
    return _to_samples(ds, m, split)


def _to_samples(ds, m: Manifest, split: str) -> list[Sample]:
    f = m.fields
    cols = set(ds.column_names)
    for key in ("id", "text", "reference", "language", "label"):
        col = getattr(f, key)
        if col is not None and col not in cols:
            raise ConfigError(f"{m.path}: fields.{key}: column '{col}' not in split '{split}' "
                              f"(columns: {', '.join(sorted(cols))})")
    data = ds.to_dict()
    n = len(ds)
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
