"""INT8 over FP16: a QDQ model whose non-INT8 parts compute in FP16, as a TensorRT deployment runs it.

A QDQ model from ``qbench.quantize.qdq`` is FP32 wherever no Q/DQ sits, so TensorRT (strongly typed: the
ONNX types decide each layer's precision) builds those layers in FP32 and keeps their FP32 weights: on
MiniLM, a LayerNorm+Softmax-excluded INT8 engine was bigger than the FP16 one. Here the verified FP32 QDQ
model goes through the same FP32 -> FP16 conversion as the fp16 baseline (``qbench.quantize.fp16``), so the
nodes the caller keeps (``sweep.fp16_keep_fp32``) stay FP32 and everything else that is float becomes FP16,
the Q/DQ scales included.

FP16 scales need opset 19: before it, QuantizeLinear and DequantizeLinear take float32 scales only (and
DequantizeLinear's output type is its scale's). A model below 19 is converted with onnx's version converter
first. An FP16 scale is the FP32 scale rounded to FP16; ``verify_fp16_scales`` checks exactly that, node by
node, against the FP32 QDQ model whose scales ``qbench.quantize.qdq.verify_scales`` checked against the table.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qbench.config.errors import ModelError, QuantizationError, one_line

FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear accept float16 scales (and x, y) from opset 19
QDQ = ("QuantizeLinear", "DequantizeLinear")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def qdq_over_fp16(qdq: onnx.ModelProto, keep_fp32: set[str]) -> tuple[onnx.ModelProto, dict]:
    """(the FP16 model, info): ``qdq`` (untouched) with its float parts in FP16 except the nodes ``keep_fp32``.

    info: ``convert_fp16``'s counts, ``opset_from``/``opset`` and ``scale_max_rel_change`` (the largest
    relative change of a scale rounded to FP16). Raises ModelError when the opset conversion fails and
    QuantizationError when a scale does not survive FP16 (verify_fp16_scales)."""
    from qbench.quantize.fp16 import convert_fp16

    before = default_opset(qdq)
    model = qdq
    if before < FP16_QDQ_OPSET:
        try:
            model = onnx.version_converter.convert_version(qdq, FP16_QDQ_OPSET)
        except Exception as e:  # the converter raises RuntimeError/ValidationError with multi-line text
            raise ModelError(f"INT8 over FP16: cannot convert the model from opset {before} to "
                             f"{FP16_QDQ_OPSET}: {one_line(e)}") from None
    out, info = convert_fp16(model, keep_fp32)
    rel = verify_fp16_scales(out, qdq)
    return out, {**info, "opset_from": before, "opset": default_opset(out), "scale_max_rel_change": rel}


def _scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each Q/DQ node's scale by node name (scales are initializers in every model qbench writes)."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type in QDQ and n.input[1] in inits}


def verify_fp16_scales(fp16: onnx.ModelProto, qdq: onnx.ModelProto) -> float:
    """Every Q/DQ scale of ``fp16`` must be the FP16 rounding of the same node's scale in ``qdq``, finite and
    non-zero (a scale below FP16's smallest subnormal would become 0). Returns the largest relative change."""
    want, got = _scales(qdq), _scales(fp16)
    names = {n.name for n in qdq.graph.node if n.op_type in QDQ}
    bad = sorted(names - set(want) | {n for n in names & set(want) if n not in got})
    worst = 0.0
    for name in sorted(names & set(want) & set(got)):
        w, g = want[name], got[name]
        if (g.dtype != np.float16 or g.shape != w.shape or not np.array_equal(g, w.astype(np.float16))
                or not np.all(np.isfinite(g)) or np.any(g == 0)):
            bad.append(name)
            continue
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) / w.astype(np.float64) - 1))))
    if bad:
        raise QuantizationError(f"INT8 over FP16: {len(bad)} Q/DQ scale(s) are not the FP16 rounding of the "
                                f"FP32 model's (zero or out of FP16's range?): {', '.join(bad[:5])}")
    return worst
