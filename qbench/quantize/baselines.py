"""What users get today: ONNX Runtime's one-liners with default settings, as baseline rows.

``ort_static`` is fed the same calibration samples as qbench, one sample per call and unpadded:
padded batches make ORT's MinMax see the additive -inf attention mask and collapse the model
(DESIGN.md section 7), which would be an unfair baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from qbench.util.logs import quiet_logger


# ORT's quantizer logs 'consider pre-processing' on the root logger; we run it as users do, on purpose.
_QUIET_ORT = (None, logging.ERROR)


def ort_dynamic(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    with quiet_logger(*_QUIET_ORT):
        quantize_dynamic(str(fp32), str(out))
    return out


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - ORT calls it only for some calibrators
        pass


def ort_static(fp32: Path, out: Path, tokenizer, texts: list[str]) -> Path:
    from onnxruntime.quantization import quantize_static

    feeds = [tokenizer.encode_batch([t]) for t in texts]
    # CalibMaxIntermediateOutputs only bounds memory (MinMax merges every k samples); results are unchanged.
    # ORT 1.32 raises "No data is collected" when k divides the sample count exactly, so avoid that.
    k = 64 if len(feeds) % 64 else 63
    with quiet_logger(*_QUIET_ORT):
        quantize_static(str(fp32), str(out), _Reader(feeds), extra_options={"CalibMaxIntermediateOutputs": k})
    return out


def fp16(fp32_model, keep, out: Path) -> tuple[Path, dict]:
    """FP16 everywhere except the nodes ``keep`` (an ExclusionCfg) matches, which stay FP32.

    The strongly typed TensorRT baseline INT8 variants must beat: TensorRT 11 builds what the ONNX
    types say, so "FP16 with LayerNorm and Softmax in FP32" has to be written into the graph.
    """
    import onnx

    from qbench.quantize.fp16 import convert_fp16
    from qbench.util.io import atomic_write_bytes
    from qbench.quantize.qdq import match_exclusions

    kept, warnings = match_exclusions(fp32_model, keep)
    model, info = convert_fp16(fp32_model, kept)
    onnx.checker.check_model(model)
    atomic_write_bytes(out, model.SerializeToString())
    return out, {"fp16": info, "excluded_nodes": sorted(kept), "warnings": warnings}
