"""One line per pydantic validation error, as ``file: key.path: message``, with did-you-mean on unknown keys.

Shared by the sweep config and the dataset manifest loaders.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


UNION_TAGS = ("builtin", "peer")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part in UNION_TAGS:  # a tagged union's branch (sweep.baselines), not a key the user wrote
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model that ``loc`` points into, for did-you-mean on unknown keys."""
    cur: Any = model
    skip_key = False
    for part in loc[:-1]:
        if skip_key or isinstance(part, int):  # a dict key or a list index: same model below it
            skip_key = False
            continue
        f = cur.model_fields.get(part)
        if f is None:
            return []
        ann = f.annotation
        skip_key = typing.get_origin(ann) is dict
        cur = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if cur is None:
            return []
    return [k for k in cur.model_fields if k != "base_dir"]


def format_errors(err: ValidationError, file: str, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            known = _fields_at(model, tuple(e["loc"]))
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"]
        lines.append(f"{file}: {_loc(loc)}: {msg}")
    return lines
