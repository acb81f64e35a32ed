"""The transform axis of a sweep: an exact FP32 graph rewrite applied before Q/DQ placement (SmoothQuant).

``sweep.transforms: [none, {name: smoothquant, alpha: 0.5}]``; ``alpha`` may be a list, each value its own
variant (``alpha: [0.5, 0.8]``), or a mapping with one alpha per group kind
(``alpha: {norm: 0.8, attn_out: 0.95, ffn_down: 0.95}``), naming every kind the targets smooth. A variant's id
and signature carry ``smoothquant[alpha=0.5]`` or ``smoothquant[alpha.norm=0.8,alpha.attn_out=0.95,...]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The kinds of linear-layer input SmoothQuant smooths (qbench.quantize.smoothquant finds them from the graph's
# structure): norm outputs, attention outputs (the output projection's input), and the rest (in a transformer the
# FFN down projection's input, GELU's output). They want different alphas (docs/smoothquant.md).
GROUP_KINDS = ("norm", "attn_out", "ffn_down")
_SMOOTHED = {"norm": ("norm",), "all": GROUP_KINDS}


class TransformCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["none", "smoothquant"] = Field("none", description="none, or smoothquant (docs/smoothquant.md)")
    alpha: float | dict[str, float] = Field(
        0.5, description="smoothquant: migration strength, s = a^alpha / w^(1-alpha), in [0, 1]; or one per group "
                         "kind: {norm: ..., attn_out: ..., ffn_down: ...} (each kind the targets smooth)")
    targets: Literal["norm", "all"] = Field(
        "norm", description="smoothquant: norm: the MatMuls a norm feeds (folded into it); all: also the others "
                            "(attention output, FFN down), through an inserted per-channel Mul")

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        for k in [None] if not isinstance(v, dict) else v:
            if k is not None and k not in GROUP_KINDS:
                raise ValueError(f"unknown group '{k}'; the groups are {', '.join(GROUP_KINDS)}")
            a = v if k is None else v[k]
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"alpha{'' if k is None else '.' + k} must be within [0, 1]; got {a}")
        return v if not isinstance(v, dict) else {k: v[k] for k in GROUP_KINDS if k in v}  # one order: one id

    @model_validator(mode="after")
    def _alpha_groups(self) -> TransformCfg:
        if isinstance(self.alpha, dict):
            want = _SMOOTHED[self.targets]
            if set(self.alpha) != set(want):
                raise ValueError(f"alpha per group must name exactly the groups targets: {self.targets} smooths "
                                 f"({', '.join(want)}); got {', '.join(self.alpha) or 'none'}")
        return self

    def signature(self) -> str:
        if self.name == "none":
            return "none"
        if isinstance(self.alpha, dict):
            alpha = ",".join(f"alpha.{k}={a:g}" for k, a in self.alpha.items())
        else:
            alpha = f"alpha={self.alpha:g}"
        return f"{self.name}[{alpha}" + (f",targets={self.targets}" if self.targets != "norm" else "") + "]"


def expand_axis(items: Any, keys: tuple[str, ...]) -> Any:
    """One sweep axis written short, as validation reads it: a string -> {name: it}; a non-empty list under any
    of ``keys`` -> one entry per value (crossed over the keys, in their order). Anything else, an empty list
    included, is left for validation to name. Serves ``sweep.transforms`` (alpha) and ``sweep.formats``
    (block_size, scales)."""
    if not isinstance(items, list):
        return items
    out: list[Any] = []
    for x in items:
        if isinstance(x, str):
            out.append({"name": x})
            continue
        entries = [x]
        for key in keys:
            if isinstance(x, dict) and isinstance(x.get(key), list) and x[key]:
                entries = [{**e, key: v} for e in entries for v in x[key]]
        out += entries
    return out


def expand_transforms(items: Any) -> Any:
    """``none`` -> {name: none}; a list of alphas (numbers or per-group mappings) -> one entry per alpha."""
    return expand_axis(items, ("alpha",))
