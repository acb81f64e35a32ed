"""The format axis of a sweep: the number format of the quantized linear layers.

``sweep.formats: [int8, fp8, int8_wo, {name: int4_wo, block_size: [32, 128], scales: awq}]``; ``block_size`` and
``scales`` may be lists, each value its own variant. The formats (docs/formats.md):

- ``int8``: activations and weights INT8 (the flavor axis picks S8S8 or U8S8); scale = amax / 127.
- ``fp8``: activations and weights FP8 E4M3 (E4M3FN, max 448): activations per tensor, scale = amax / 448 from the
  calibrator's table; weights per output channel, scale = max |W| / 448.
- ``int8_wo``: weight-only INT8, per output channel; activations stay float.
- ``int4_wo``: weight-only INT4, symmetric, one scale per block of ``block_size`` input channels per output channel.

``scales`` (weight-only formats): ``max``, each scale from the block's (or channel's) max |W|; ``awq``, an
activation-aware per-input-channel factor s searched per activation (AWQ), folded into the graph exactly like
SmoothQuant's (qbench.quantize.awq), from the per-channel max |x| of the same statistics pass.

The axis says nothing about the float type of what is not quantized (FP32 here): that is its own choice.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

WEIGHT_ONLY = ("int8_wo", "int4_wo")


class FormatCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["int8", "fp8", "int8_wo", "int4_wo"] = Field(
        "int8", description="int8 (activations and weights), fp8 (E4M3, activations and weights), int8_wo or int4_wo "
                            "(weight-only)")
    block_size: Literal[32, 64, 128] = Field(128, description="int4_wo: input channels per scale (a list: one "
                                                              "variant each)")
    scales: Literal["max", "awq"] = Field("max", description="weight-only: max (max |W| per block or channel) or awq "
                                                             "(activation-aware factors, folded into the graph)")

    @model_validator(mode="after")
    def _applies(self) -> "FormatCfg":
        # Only where it changes something, so that no two spellings name one variant.
        if self.name != "int4_wo" and "block_size" in self.model_fields_set:
            raise ValueError(f"block_size applies to int4_wo only, not to {self.name}")
        if self.name not in WEIGHT_ONLY and self.scales != "max":
            raise ValueError(f"scales: {self.scales} applies to the weight-only formats (int8_wo, int4_wo), "
                             f"not to {self.name}")
        return self

    @property
    def weight_only(self) -> bool:
        return self.name in WEIGHT_ONLY

    @property
    def awq(self) -> bool:
        return self.scales == "awq"

    def signature(self) -> str:
        params = ([f"block={self.block_size}"] if self.name == "int4_wo" else []) + (["awq"] if self.awq else [])
        return self.name + (f"[{','.join(params)}]" if params else "")


def expand_formats(items: Any) -> Any:
    """``fp8`` -> {name: fp8}; a list of block sizes or of scale rules -> one entry per value."""
    from qbench.config.transforms import expand_axis

    return expand_axis(items, ("block_size", "scales"))


def format_problems(cfg, file: str) -> list[str]:
    """The formats a config asks of a task that does not build them, and weight-only extras given a transform: one
    ``<file>: <key>: <problem>`` line each (qbench.config.schema collects them with the rest)."""
    from qbench.config import registry
    from qbench.config.messages import _loc

    task = registry.tasks.get(cfg.task)
    built = getattr(task, "formats", frozenset({"int8"}))  # a plugin task written before the format axis: int8
    used = [(("sweep", "formats", i), f) for i, f in enumerate(cfg.sweep.formats)]
    used += [(("sweep", "extra", i, "format"), v.format) for i, v in enumerate(cfg.sweep.extra)]
    problems = [f"{file}: {_loc(loc)}: the {cfg.task} task builds no {f.name} variants (it builds: "
                f"{', '.join(sorted(built))})" for loc, f in used if f.name not in built]
    problems += [f"{file}: {_loc(('sweep', 'extra', i, 'transform'))}: a weight-only format takes no transform (its "
                 "activation-aware scales are scales: awq)"
                 for i, v in enumerate(cfg.sweep.extra) if v.format.weight_only and v.transform.name != "none"]
    # INT8 over FP16 and ONNX Runtime's fused form are derived from an int8 Q/DQ file (qbench.config.deploy)
    if "fp16" in getattr(cfg.sweep, "float_dtypes", ()) and any(f.name != "int8" for f in cfg.sweep.formats):
        problems.append(f"{file}: sweep.float_dtypes: fp16 is INT8 over FP16: crossed with formats other than int8 "
                        "it has no meaning (give those variants in sweep.extra instead)")
    problems += [f"{file}: {_loc(('sweep', 'extra', i, 'format'))}: float_dtype fp16 and ort_form fused take the int8 "
                 f"format, not {v.format.name}"
                 for i, v in enumerate(cfg.sweep.extra)
                 if v.format.name != "int8" and (getattr(v, "float_dtype", "fp32") != "fp32"
                                                 or getattr(v, "ort_form", "qdq") != "qdq")]
    return problems


class FormatSweepFields(BaseModel):
    """``sweep.formats``, kept here so the schema module stays one screenful per section (SweepCfg inherits it)."""

    formats: Annotated[list[FormatCfg], BeforeValidator(expand_formats)] = Field(
        ["int8"], validate_default=True, description="formats of the quantized linear layers crossed in the grid: "
        "int8, fp8, int8_wo, {name: int4_wo, block_size: 128 or a list, scales: max | awq} (docs/formats.md)")


class FormatVariantField(BaseModel):
    """``sweep.extra[].format`` (VariantCfg inherits it): a name, or {name, block_size, scales}."""

    format: Annotated[FormatCfg, BeforeValidator(lambda v: {"name": v} if isinstance(v, str) else v)] = Field(
        FormatCfg(), description="{name: int8 | fp8 | int8_wo | int4_wo, block_size, scales} (docs/formats.md)")
