"""Config of models qbench did not quantize: external variants (``sweep.external``) and the peer quantizers run
as baselines (``sweep.baselines: [nncf, modelopt_int8]`` with their options).

- ``sweep.external``: ``{name, path}`` each. ``path`` is a Q/DQ ONNX file (a single-graph task), or a folder
  holding ``encoder.onnx`` and ``decoder.onnx`` (translation), relative to the config file. The model must take
  what the task feeds (as an ONNX ``model.source`` does: docs/onnx-models.md); its variant id is ``name``.
- ``nncf``: NNCF's post-training quantization (``nncf.quantize``) of the FP32 ONNX, ``preset: performance``
  (symmetric) or ``mixed`` (asymmetric activations). ``modelopt_int8``: ModelOpt's ONNX INT8 PTQ
  (``modelopt.onnx.quantization.quantize``) with ``calibration_method: max`` or ``entropy``. Both run in a child
  process, under ``python`` (an interpreter whose environment has the package; default: this one).

Imports nothing of qbench beyond pydantic, so ``qbench.config.schema`` may use it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

Baseline = Literal["fp32", "fp16", "ort_dynamic", "ort_static"]
PEERS = ("nncf", "modelopt_int8")
INSTALL = {"nncf": "pip install nncf==3.4.0 (it quantizes ONNX through onnx and onnxruntime; docs/external.md)",
           "modelopt_int8": "pip install 'nvidia-modelopt[onnx]==0.47.0' in a separate environment (it installs "
                            "onnxruntime-gpu and onnx 1.21) and name its interpreter in python: (docs/external.md)"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerBaselineCfg(_Strict):
    """A peer quantizer's INT8 model of the sweep's FP32 ONNX, calibrated on the sweep's first calibration set."""

    name: Literal["nncf", "modelopt_int8"] = Field(description="nncf: NNCF's nncf.quantize; modelopt_int8: "
                                                                 "ModelOpt's ONNX INT8 PTQ")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="nncf: performance = symmetric INT8 (NNCF's default for ONNX); mixed = "
                                   "asymmetric activations")
    calibration_method: Literal["max", "entropy"] = Field(
        "entropy", description="modelopt_int8: ModelOpt's calibration method (its default for INT8: entropy)")
    high_precision_dtype: Literal["fp16", "fp32"] = Field(
        "fp16", description="modelopt_int8: the type of what stays unquantized (ModelOpt's default: fp16)")
    model_type: Literal["transformer"] | None = Field(
        None, description="nncf: model_type (transformer: NNCF's ignored patterns for attention)")
    python: str | None = Field(None, description="the interpreter to run the quantizer under (its environment "
                                                 "has the package); null: this one")
    timeout_s: int = Field(1800, ge=10, description="the quantizer still running after this fails its variant")

    @property
    def id(self) -> str:
        """The variant id: the name, with the option that differs between its rows."""
        if self.name == "nncf":
            return f"nncf[{self.preset}{',transformer' if self.model_type else ''}]"
        return f"modelopt[{self.calibration_method}{',fp32' if self.high_precision_dtype == 'fp32' else ''}]"

    def options(self) -> dict:
        if self.name == "nncf":
            return {"preset": self.preset, **({"model_type": self.model_type} if self.model_type else {})}
        return {"calibration_method": self.calibration_method, "high_precision_dtype": self.high_precision_dtype}


class ExternalCfg(_Strict):
    """A quantized model made elsewhere, measured like any variant."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+\[\]=@-]+$", description="its variant id in the report")
    path: str = Field(description="a Q/DQ .onnx file, or (translation) a folder holding encoder.onnx and "
                                  "decoder.onnx; relative to the config file")

    def resolved(self, base_dir: str) -> Path:
        p = Path(self.path).expanduser()
        return (p if p.is_absolute() else Path(base_dir) / p).resolve()


def _baseline_kind(v: Any) -> str:
    return "builtin" if isinstance(v, str) else "peer"


# A name, or a peer quantizer with its options: the tag picks the branch, so an error names one branch only.
BaselineEntry = Annotated[Union[Annotated[Baseline, Tag("builtin")], Annotated[PeerBaselineCfg, Tag("peer")]],
                          Discriminator(_baseline_kind)]


class ForeignSweepFields(_Strict):
    """The fields of ``sweep`` this module owns (qbench.config.schema.SweepCfg inherits them)."""

    baselines: list[BaselineEntry] = Field(
        ["fp32", "ort_dynamic", "ort_static"], description="also the peer quantizers nncf and modelopt_int8, by "
        "name or as {name: ..., <options>} (docs/external.md).")
    external: list[ExternalCfg] = Field([], description="quantized models made elsewhere, as variants: {name, "
                                        "path} each (docs/external.md)")

    @field_validator("baselines", mode="before")
    @classmethod
    def _known_names(cls, v: Any) -> Any:
        """Unknown names with a did-you-mean; a peer quantizer by name becomes its entry with default options."""
        names = [*Baseline.__args__, *PEERS]
        for x in v if isinstance(v, list) else []:
            if isinstance(x, str) and x not in names:
                close = difflib.get_close_matches(x, names, n=1)
                raise ValueError(f"unknown baseline '{x}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                                 + f"; known: {', '.join(names)}")
        return [{"name": x} if isinstance(x, str) and x in PEERS else x for x in v] if isinstance(v, list) else v


def problems(cfg) -> list[str]:
    """``key: message`` lines for external models and peer baselines, before any model loads."""
    out: list[str] = []
    seen = set(b if isinstance(b, str) else b.id for b in cfg.sweep.baselines)
    for i, e in enumerate(cfg.sweep.external):
        key = f"sweep.external[{i}]"
        if e.name in seen:
            out.append(f"{key}.name: '{e.name}' names another variant too")
        seen.add(e.name)
        p = e.resolved(cfg.base_dir)
        if cfg.task == "translation":
            lacking = [g for g in ("encoder.onnx", "decoder.onnx") if not (p / g).is_file()]
            if lacking:
                out.append(f"{key}.path: {p} has no {lacking[0]} (a translation variant is a folder holding "
                           "encoder.onnx and decoder.onnx)")
        elif not p.is_file():
            out.append(f"{key}.path: ONNX file not found: {p}")
    for i, b in enumerate(cfg.sweep.baselines):
        if isinstance(b, str):
            continue
        if cfg.task != "retrieval":
            out.append(f"sweep.baselines[{i}]: {b.name} runs on a single-graph model (task retrieval); "
                       f"task {cfg.task} is not supported")
        if b.python is not None:
            py = Path(b.python).expanduser()
            py = py if py.is_absolute() else Path(cfg.base_dir) / py
            if not py.is_file():
                out.append(f"sweep.baselines[{i}].python: interpreter not found: {py}")
    ids = [b if isinstance(b, str) else b.id for b in cfg.sweep.baselines]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        out.append(f"sweep.baselines: '{dup}' is listed twice")
    return out
