"""Config of bias correction after Q/DQ (``sweep.bias_correction`` / ``sweep.extra[].bias_correction``): after NNCF's
FastBiasCorrection, each quantized linear layer's bias shifted by the mean over the calibration set of its
FP32 output minus its fake-quantized output (qbench.quantize.bias_correction). Its own module, so the grid's other
axes (qbench.config.schema) stay apart from it.

Imports nothing of qbench beyond pydantic, so ``qbench.config.schema`` may use it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BiasSweepFields(_Strict):
    """The field of ``sweep`` this module owns (qbench.config.schema.SweepCfg inherits it)."""

    bias_correction: list[bool] = Field(
        [False], min_length=1, description="retrieval, int8 format: crossed in the grid; true shifts each quantized "
                                           "linear layer's bias by the calibration set's mean of FP32 output minus "
                                           "Q/DQ output (as NNCF's FastBiasCorrection; variant id +bc)")


class BiasVariantField(_Strict):
    """The field of one ``sweep.extra`` variant this module owns (qbench.config.schema.VariantCfg inherits it)."""

    bias_correction: bool = Field(False, description="retrieval, int8 format: shift each quantized linear layer's "
                                                     "bias by the mean Q/DQ output error on the calibration set")


def bias_problems(cfg, file: str) -> list[str]:
    """Bias correction asked of a task that does not build it, or of an extra variant whose format it does not
    fake-quantize: one ``<file>: <key>: <problem>`` line each (qbench.config.schema collects them)."""
    from qbench.config import registry
    from qbench.config.messages import _loc

    extras = [(("sweep", "extra", i, "bias_correction"), v) for i, v in enumerate(cfg.sweep.extra)
              if v.bias_correction]
    used = ([("sweep", "bias_correction")] if True in cfg.sweep.bias_correction else []) + [loc for loc, _ in extras]
    if used and not getattr(registry.tasks.get(cfg.task), "bias_correction", False):
        return [f"{file}: {_loc(used[0])}: the {cfg.task} task has no bias correction (retrieval has)"]
    # The grid crosses it with int8 formats only (qbench.run.variants); an extra is one variant, so it says.
    return [f"{file}: {_loc(loc)}: bias correction fake-quantizes int8 activations and weights; the format is "
            f"{v.format.name}" for loc, v in extras if v.format.name != "int8"]
