"""The sweep config reference (``docs/config.md``), rendered from the pydantic schema in ``qbench.config.schema``.

Every section (a nested model) becomes a heading with a table of its keys: dotted path, type, default,
allowed values (Literal choices, numeric bounds, patterns) and the field's description. A model used at
several places (``data.calibration`` and ``data.calibration_sets.<name>``) is described once, at the
first place it appears in file order, and the others point to it. Nothing here is written by hand
but ``NOTES``, for what the schema cannot say (defaults a validator fills in).

``qbench config-reference > docs/config.md`` regenerates the file; tests/unit/test_config_doc.py fails
when the committed file differs from what this renders.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# Things a validator decides, keyed by dotted path: appended to that key's description.
NOTES = {
    "sweep.baselines": "With `task: translation` the default is `[fp32, ort_dynamic]` (ONNX Runtime's static "
                       "quantizer takes one graph); with `task: causal_lm` it is `[fp32]`.",
}

HEADER = """\
# Sweep config reference

<!-- Generated from qbench/config/schema.py by `qbench config-reference > docs/config.md`; do not edit by hand.
     tests/unit/test_config_doc.py fails when this file is stale. -->

A sweep config is one YAML file; `qbench validate CONFIG` checks it without loading a model, and
`qbench sweep CONFIG --dry-run` prints the variants it expands to. Unknown keys are errors (with a
did-you-mean). Relative paths are resolved from the config file's folder. Keys are written here as
dotted paths: `measure.latency.runs` is `runs:` under `latency:` under `measure:`. `<name>` is a key
you choose, `[]` an item of a list.

Calibrator, sampler, weight-rule and backend parameters belong to their plugins, which may come from
other packages: `qbench ls calibrators` (or `samplers`, `weights`, `backends`) lists them with their
types and defaults, and `qbench ls metrics` the metrics a sweep writes.
"""


def render(root: type[BaseModel] | None = None) -> str:
    """The whole reference as Markdown (ends with a newline)."""
    if root is None:
        from qbench.config.schema import SweepConfig as root  # noqa: N813 - the default root model

    sections: list[tuple[str, type[BaseModel]]] = []
    where: dict[type[BaseModel], list[str]] = {}
    _collect(root, "", sections, where)
    out = [HEADER]
    for path, model in sections:
        out.append(_section(path, model, where))
    return "\n".join(out).rstrip("\n") + "\n"


def _collect(model: type[BaseModel], path: str, sections: list, where: dict) -> None:
    """Sections in file order (depth first), and every path each model appears at."""
    if model in where:
        where[model].append(path)
        return
    where[model] = [path]
    sections.append((path, model))
    for name, f in _fields(model):
        for sub, sub_path in _models_in(f.annotation, _join(path, name)):
            _collect(sub, sub_path, sections, where)


def _fields(model: type[BaseModel]):
    return [(n, f) for n, f in model.model_fields.items() if not f.exclude]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _models_in(ann: Any, path: str) -> list[tuple[type[BaseModel], str]]:
    """The models reachable from one annotation, with the path each lives at (``[]`` list item, ``<name>``
    mapping value)."""
    ann = _bare(ann)
    if _is_model(ann):
        return [(ann, path)]
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is list:
        return _models_in(args[0], path + "[]")
    if origin is dict:
        return _models_in(args[1], path + ".<name>")
    if origin in (Union, types.UnionType):
        return [m for a in args for m in _models_in(a, path)]
    return []


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


# ---------------------------------------------------------------------------------------------- a section


def _section(path: str, model: type[BaseModel], where: dict) -> str:
    title = f"`{path}`" if path else "Top level"
    lines = [f"## {title}", ""]
    doc = _doc(model)
    if doc:
        lines += [doc, ""]
    others = where[model][1:]
    if others:
        lines += ["Also at " + ", ".join(f"`{p}`" for p in others) + ".", ""]
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, f in _fields(model):
        key = _join(path, name)
        desc = " ".join(x for x in (f.description or _first_paragraph(_sub_doc(f.annotation)), NOTES.get(key)) if x)
        cells = [f"`{key}`", _type(f.annotation, where), _default(f), _allowed(f), _md(desc)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _doc(model: type[BaseModel]) -> str:
    raw = model.__dict__.get("__doc__") or ""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw.strip()) if p.strip()]
    return _md("\n\n".join(paras))


def _sub_doc(ann: Any) -> str:
    models = _models_in(ann, "")
    return _doc(models[0][0]) if models else ""


def _first_paragraph(text: str) -> str:
    return text.split("\n\n")[0]


def _md(text: str) -> str:
    """reST literals (double backticks) as Markdown code spans; ``<`` and ``>`` outside them as entities, so
    that ``<python package>`` is not taken for an HTML tag."""
    parts = text.replace("``", "`").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _slug(title: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _bare(ann: Any) -> Any:
    """The type inside ``Annotated[...]`` (a tagged union's branches), else the annotation itself."""
    return typing.get_args(ann)[0] if typing.get_origin(ann) is Annotated else ann


def _type(ann: Any, where: dict) -> str:
    ann = _bare(ann)
    if ann is type(None):
        return "null"
    if ann is Any:
        return "any"
    if _is_model(ann):
        home = where[ann][0]
        return f"section [`{home}`](#{_slug(home)})"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        kinds = dict.fromkeys(_scalar(type(a)) for a in args)
        return " or ".join(kinds)
    if origin is list:
        return f"list of {_type(args[0], where)}"
    if origin is dict:
        if args[1] is Any:
            return "mapping"
        return f"mapping of {'names' if args[0] is str else _type(args[0], where)} to {_type(args[1], where)}"
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a, where) for a in args)
    return _scalar(ann)


def _scalar(t: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(t, getattr(t, "__name__", str(t)))


def _literals(ann: Any) -> list:
    ann = _bare(ann)
    if typing.get_origin(ann) is Literal:
        return list(typing.get_args(ann))
    return [v for a in typing.get_args(ann) for v in _literals(a)]


def _allowed(f) -> str:
    parts = [", ".join(f"`{_yaml(v)}`" for v in _literals(f.annotation))] if _literals(f.annotation) else []
    for m in f.metadata:
        for cls, attr, sym in ((at.Ge, "ge", "≥"), (at.Gt, "gt", ">"), (at.Le, "le", "≤"), (at.Lt, "lt", "<")):
            if isinstance(m, cls):
                parts.append(f"{sym} {getattr(m, attr)}")
        if isinstance(m, at.MinLen):
            parts.append(f"length ≥ {m.min_length}")
        if isinstance(m, at.MaxLen):
            parts.append(f"length ≤ {m.max_length}")
        if getattr(m, "pattern", None):
            parts.append(f"matches `{m.pattern}`")
    return ", ".join(parts)


def _default(f) -> str:
    if f.is_required():
        return "required"
    v = f.get_default(call_default_factory=True) if f.default is PydanticUndefined else f.default
    if isinstance(v, BaseModel):
        changed = v.model_dump(exclude_defaults=True)
        return f"`{_yaml(changed)}`" if changed else "the section's defaults"
    return f"`{_yaml(v)}`"


def _yaml(v: Any) -> str:
    """A value as it would be written in the YAML config (flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        plain = re.fullmatch(r"[A-Za-z_./][\w./+-]*", v) and v.lower() not in ("null", "true", "false", "yes", "no")
        return v if plain else json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    return json.dumps(v, default=str)
