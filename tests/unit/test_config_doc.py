"""docs/config.md is generated from the config schema, and must stay what the generator renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qbench.config import doc as config_doc
from qbench.config.schema import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"


def _row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_docs_config_md_is_current():
    assert DOC.read_text(encoding="utf-8") == config_doc.render(), \
        "docs/config.md is stale: run `qbench config-reference > docs/config.md`"


def test_known_fields_appear_with_type_default_and_allowed_values():
    text = config_doc.render()
    assert _row(text, "search.granularity")[:4] == ["`search.granularity`", "string", "`block`", "`block`, `node`"]
    assert _row(text, "gate.max_drop")[:4] == ["`gate.max_drop`", "number", "`1.0`", "≥ 0"]
    assert _row(text, "model.max_length")[1:4] == ["integer", "`128`", "≥ 8, ≤ 4096"]
    assert _row(text, "model.source")[2] == "required"
    assert _row(text, "gate")[1:3] == ["section [`gate`](#gate) or null", "`null`"]
    assert _row(text, "measure.latency.batch_sizes")[1:3] == ["list of integer", "`[1, 32]`"]
    assert "`task: translation`" in _row(text, "sweep.baselines")[4]  # a note the schema cannot give
    assert "base_dir" not in text  # set by load_config, not a user key


def test_every_field_of_every_section_is_listed():
    text = config_doc.render()
    sections: list = []
    config_doc._collect(SweepConfig, "", sections, {})
    for path, model in sections:
        assert f"## `{path}`" in text or path == ""
        for name, _ in config_doc._fields(model):
            assert f"| `{config_doc._join(path, name)}` |" in text


class _Leaf(BaseModel):
    """A leaf: ``kind`` picks.

    Second paragraph."""

    kind: Literal["a", "b"] = "a"
    size: int | None = Field(None, ge=1, le=9, description="how big <n>, in `units|bits`")


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z]+$")
    leaf: _Leaf = _Leaf()
    leaves: dict[str, _Leaf] = {}
    items: list[_Leaf] = Field([], description="a list")
    spec: dict[str, Any] = {"name": "x y"}
    hidden: str = Field("", exclude=True)


def test_render_walks_nested_models_once_each():
    text = config_doc.render(_Root)
    assert text.count("## `leaf`") == 1 and "Also at `leaves.<name>`, `items[]`." in text
    assert "A leaf: `kind` picks.\n\nSecond paragraph." in text
    assert _row(text, "name")[2:4] == ["required", "matches `^[a-z]+$`"]
    assert _row(text, "leaf")[1:] == ["section [`leaf`](#leaf)", "the section's defaults", "", "A leaf: `kind` picks."]
    assert _row(text, "leaves")[1] == "mapping of names to section [`leaf`](#leaf)"
    assert _row(text, "items")[1] == "list of section [`leaf`](#leaf)"
    assert _row(text, "spec")[1:3] == ["mapping", '`{name: "x y"}`']
    assert _row(text, "leaf.kind")[1:4] == ["string", "`a`", "`a`, `b`"]
    size = _row(text, "leaf.size")
    assert size[1:4] == ["integer or null", "`null`", "≥ 1, ≤ 9"]
    assert size[4] == r"how big &lt;n&gt;, in `units\|bits`"  # no stray HTML tag, no broken table cell
    assert "hidden" not in text
