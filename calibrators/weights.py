"""Weight quantization rules: which axis gets its own scale, and the int8 weights that follow.

Weights are constants, so their range needs no calibration set: scale = max|W| / 127 over the
reduction axes, symmetric, zero point 0 (what TensorRT requires). The output-channel axis depends on
the op type and its attributes, which is why the rule, not the caller, picks it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from qbench.calib import scale_of


def output_channel_axis(op_type: str, input_index: int, ndim: int, attrs: dict) -> int:
    """The axis of a weight that indexes output channels.

    MatMul B[..., K, N] -> the last axis; Gemm B -> 0 with transB=1 (B is [N, K]) else 1;
    Conv / ConvTranspose W -> 0 / 1. A weight in the A position of MatMul or Gemm (rare) -> its rows.
    """
    if op_type == "Gemm":
        if input_index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    return ndim - 1 if input_index == 1 else ndim - 2


class WeightRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]

    def axis(self, op_type: str, input_index: int, ndim: int, attrs: dict) -> int | None:  # pragma: no cover
        raise NotImplementedError

    def quantize(self, w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(int8 weights, float32 scales): one scale per index of ``axis``, or a scalar when axis is None."""
        if axis is None:
            scale = np.array(scale_of(np.abs(w).max()), dtype=np.float32)
            return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.array([scale_of(a) for a in np.abs(w).max(axis=red)], dtype=np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        return np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale

    def signature(self) -> str:
        from qbench.config.registry import plugin_signature

        return plugin_signature(self)


class PerChannel(WeightRule):
    """One scale per output channel (the default: TensorRT and ONNX Runtime both support it)."""

    name: ClassVar[str] = "per_channel"

    def axis(self, op_type: str, input_index: int, ndim: int, attrs: dict) -> int | None:
        return output_channel_axis(op_type, input_index, ndim, attrs)


class PerTensor(WeightRule):
    """One scale for the whole weight tensor."""

    name: ClassVar[str] = "per_tensor"

    def axis(self, op_type: str, input_index: int, ndim: int, attrs: dict) -> int | None:
        return None
