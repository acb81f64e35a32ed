"""The transform axis of a sweep: an exact FP32 graph rewrite applied before Q/DQ placement (SmoothQuant).

``sweep.transforms: [none, {name: smoothquant, alpha: 0.5}]``; ``alpha`` may be a list, each value its own
variant (``alpha: [0.5, 0.8]``). A variant's id and signature carry ``smoothquant[alpha=0.5]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TransformCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["none", "smoothquant"] = Field("none", description="none, or smoothquant (docs/smoothquant.md)")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="smoothquant: migration strength; s = a^alpha / w^(1-alpha)")
    targets: Literal["norm", "all"] = Field(
        "norm", description="smoothquant: norm: the MatMuls a norm feeds (folded into it); all: also the others "
                            "(attention output, FFN down), through an inserted per-channel Mul")

    def signature(self) -> str:
        if self.name == "none":
            return "none"
        return f"{self.name}[alpha={self.alpha:g}" + (f",targets={self.targets}" if self.targets != "norm" else "") + "]"


def expand_transforms(items: Any) -> Any:
    """``none`` -> {name: none}; a list of alphas -> one entry per alpha. Anything else is left for validation."""
    if not isinstance(items, list):
        return items
    out: list[Any] = []
    for x in items:
        if isinstance(x, str):
            out.append({"name": x})
        elif isinstance(x, dict) and isinstance(x.get("alpha"), list):
            out += [{**x, "alpha": a} for a in x["alpha"]] or [x]
        else:
            out.append(x)
    return out
