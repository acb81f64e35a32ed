"""Config of deployment forms: what computes outside INT8 (``float_dtypes`` / ``float_dtype``: INT8 over FP16, as
TensorRT deploys it) and ONNX Runtime CPU's fused form of a u8s8 variant (``ort_form``). Their own module, so the
grid's other axes (qbench.config.schema) stay apart from them.

Imports nothing of qbench beyond pydantic, so ``qbench.config.schema`` may use it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FloatDtype = Literal["fp32", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploySweepFields(_Strict):
    """The fields of ``sweep`` this module owns (qbench.config.schema.SweepCfg inherits them)."""

    float_dtypes: list[FloatDtype] = Field(
        ["fp32"], description="retrieval: what runs outside INT8, crossed in the grid; fp16: INT8 over FP16, "
                              "sweep.fp16_keep_fp32 still in FP32, as TensorRT deploys it (docs/deployment.md)")


class DeployVariantFields(_Strict):
    """The fields of one ``sweep.extra`` variant this module owns (qbench.config.schema.VariantCfg inherits them)."""

    float_dtype: FloatDtype = Field("fp32", description="retrieval: what runs outside INT8; fp16 keeps "
                                                        "sweep.fp16_keep_fp32 in FP32 (INT8 over FP16)")
    ort_form: Literal["qdq", "fused"] = Field(
        "qdq", description="retrieval: fused: ONNX Runtime CPU's deployment form of a u8s8 variant (linear layers "
                           "as MatMulIntegerToFloat, bias fused; ORT only, TensorRT refuses it; docs/deployment.md)")

    @model_validator(mode="after")
    def _one_form(self):
        if self.ort_form == "fused" and (self.float_dtype == "fp16" or getattr(self, "flavor", "u8s8") != "u8s8"):
            raise ValueError("ort_form: fused is ONNX Runtime CPU's form of a u8s8, fp32 variant "
                             "(flavor: u8s8, float_dtype: fp32)")
        return self
