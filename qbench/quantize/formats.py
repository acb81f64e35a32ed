"""Number formats beyond INT8: FP8 E4M3 Q/DQ and weight-only INT8 / INT4 weights (docs/formats.md).

Every format is explicit Q/DQ in the one QDQ ONNX, so ONNX Runtime and TensorRT read the same file:

- **fp8**: QuantizeLinear/DequantizeLinear with FLOAT8E4M3FN zero points (opset 19). Activations per tensor,
  scale = amax / 448 (448: E4M3FN's largest finite value) from the calibrator's table; weights per output channel,
  scale = max |W| / 448, stored as E4M3FN. Conversion saturates, as QuantizeLinear does by default.
- **int8_wo**: the weights as INT8, per output channel (the same rule as int8's weights), no activation Q/DQ.
- **int4_wo**: the weights as INT4 (two per byte, ONNX's packing), symmetric, one scale per block of
  ``block_size`` input channels per output channel: DequantizeLinear with ``block_size`` along the input-channel
  axis (opset 21), the layout TensorRT's weight-only INT4 GEMMs take. scale = max |block| / 7, values in [-8, 7].

A model that declares opset 18 or later is raised to the one the format needs: from 18 to 21 the standard ops
changed only by accepting more types (and attributes with defaults that keep the old behaviour). Opset 18 itself
changed the Reduce ops (axes became an input) and Split, so an older model is refused: export it with
``model.opset: 19`` or 20 (the TorchScript exporter's last).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbench.calib import scale_of

FP8_MAX = 448.0
INT4_MIN, INT4_MAX = -8, 7
OPSET = {"fp8": 19, "int4_wo": 21}   # the opset each format's Q/DQ needs (int8 and int8_wo: 13)
IR_VERSION = {"fp8": 9, "int4_wo": 10}  # float8 types came with IR 9, int4 with IR 10
SUFFIX = {"fp8": "_fp8", "int4_wo": "_int4", "int8_wo": "_int8", "int8": "_int8"}


# ------------------------------------------------------------------------------------------------------ FP8 E4M3


def to_fp8(x: np.ndarray) -> np.ndarray:
    """float32 -> E4M3FN, round to nearest even, saturating at +-448 (QuantizeLinear's default, saturate=1)."""
    import ml_dtypes  # a dependency of onnx itself

    return np.clip(np.asarray(x, np.float32), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)


def fp8_initializer(name: str, q: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(q.shape), q.view(np.uint8).tobytes(), raw=True)


def fp8_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(E4M3FN weights, float32 scales): max |W| / 448 per index of ``axis`` (one scalar if None)."""
    if axis is None:
        scale = np.array(scale_of(np.abs(w).max(), FP8_MAX), np.float32)
        return to_fp8(w / scale), scale
    red = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.array([scale_of(a, FP8_MAX) for a in np.abs(w).max(axis=red)], np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return to_fp8(w / scale.reshape(shape)), scale


# ------------------------------------------------------------------------------------------ INT4, block-wise


def int4_blocks(w: np.ndarray, block: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int4 values as int8 in [-8, 7], float32 scales): one scale per ``block`` consecutive indices of ``axis``
    (the last block may be shorter), scale = max |block| / 7. The scales have ``w``'s shape with ``axis``
    shrunk to ceil(size / block), as DequantizeLinear's blocked form wants."""
    w = np.asarray(w, np.float32)
    wa = np.moveaxis(w, axis, 0)
    k = wa.shape[0]
    nb = -(-k // block)
    padded = np.zeros((nb * block,) + wa.shape[1:], np.float32)
    padded[:k] = np.abs(wa)
    amax = padded.reshape((nb, block) + wa.shape[1:]).max(axis=1)
    scale = np.vectorize(lambda a: scale_of(a, INT4_MAX), otypes=[np.float32])(amax)
    q = np.clip(np.rint(wa / np.repeat(scale, block, axis=0)[:k]), INT4_MIN, INT4_MAX).astype(np.int8)
    return np.moveaxis(q, 0, axis), np.moveaxis(scale, 0, axis)


def int4_dequantize(q: np.ndarray, scale: np.ndarray, block: int, axis: int) -> np.ndarray:
    """What DequantizeLinear(block_size=block, axis=axis) computes from ``int4_blocks``' output."""
    full = np.repeat(np.moveaxis(scale, axis, 0), block, axis=0)[:q.shape[axis]]
    return q.astype(np.float32) * np.moveaxis(full, 0, axis)


def pack_int4(q: np.ndarray) -> bytes:
    """ONNX's INT4 storage: two values per byte in flat (C) order, the first in the low nibble."""
    flat = (np.asarray(q, np.int8).ravel().astype(np.uint8) & 0x0F)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``pack_int4``: int8 values in [-8, 7], sign-extended from each nibble."""
    b = np.frombuffer(raw, np.uint8)
    nib = np.stack([b & 0x0F, b >> 4], axis=1).ravel()[:int(np.prod(shape))].astype(np.int8)
    return np.where(nib > 7, nib - 16, nib).astype(np.int8).reshape(shape)


def int4_initializer(name: str, q: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT4, list(q.shape), pack_int4(q), raw=True)


# ------------------------------------------------------------------------------- one weight's DequantizeLinear


def input_axis(out_axis: int | None, ndim: int) -> int | None:
    """The input-channel (reduction) axis of a 2-D weight whose output-channel axis is ``out_axis``."""
    return None if ndim != 2 or out_axis is None else 1 - out_axis


def weight_dq(fmt, name: str, w: np.ndarray, out_axis: int | None, weights) -> tuple[list, dict]:
    """(initializers, DequantizeLinear attributes) for weight ``name`` in format ``fmt`` (qbench.config.formats).

    The quantized initializer is ``<name><SUFFIX>``, its scale ``<name>_wscale`` and, where the format has one,
    its zero point ``<name>_wzero``: verify_scales finds the FP32 weight back by that name.
    """
    q_name = name + SUFFIX[fmt.name]
    if fmt.name == "fp8":
        q, sc = fp8_weight(w, out_axis)
        zero = fp8_initializer(f"{name}_wzero", to_fp8(np.zeros_like(sc)))
        return ([fp8_initializer(q_name, q), numpy_helper.from_array(sc, f"{name}_wscale"), zero],
                {} if out_axis is None else {"axis": out_axis})
    if fmt.name == "int4_wo":
        ax = input_axis(out_axis, w.ndim)
        q, sc = int4_blocks(w, fmt.block_size, ax)
        return ([int4_initializer(q_name, q), numpy_helper.from_array(sc, f"{name}_wscale")],
                {"axis": ax, "block_size": fmt.block_size})
    q, sc = weights.quantize(w, out_axis)  # int8 and int8_wo: the configured int8 weight rule
    return ([numpy_helper.from_array(q, q_name), numpy_helper.from_array(sc, f"{name}_wscale"),
             numpy_helper.from_array(np.zeros_like(sc, dtype=np.int8), f"{name}_wzero")],
            {} if out_axis is None else {"axis": out_axis})


def weight_scale_ok(attrs: dict, scale: np.ndarray | None, fp32_w: np.ndarray,
                    fmt_name: str, want_axis: int | None) -> bool:
    """Whether an FP8 or INT4 weight DequantizeLinear's scale and granularity are exactly our rule's for the FP32
    weight it replaced (int8 weights are checked by qbench.quantize.qdq.verify_scales itself)."""
    if scale is None:
        return False
    if fmt_name == "fp8":
        got = attrs.get("axis") if scale.ndim == 1 else None
        return got == want_axis and np.array_equal(scale, fp8_weight(fp32_w, want_axis)[1])
    ax = input_axis(want_axis, fp32_w.ndim)
    block = attrs.get("block_size", 0)
    return (ax is not None and attrs.get("axis") == ax and block in (32, 64, 128)
            and np.array_equal(scale, int4_blocks(fp32_w, block, ax)[1]))


RAISE_FROM = 18  # the oldest opset whose ops mean the same up to 21 (see the module's docstring)


def raise_opset(model: onnx.ModelProto, fmt_name: str) -> None:
    """Declare the opset and IR version the format's Q/DQ needs, in place (never lowers them); a model older than
    opset 18 is a QuantizationError saying which opset to export with."""
    from qbench.config.errors import QuantizationError

    need = OPSET.get(fmt_name)
    if need is None:
        return
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < need:
            if o.version < RAISE_FROM:
                raise QuantizationError(f"format {fmt_name} needs ONNX opset {need} and the model declares "
                                        f"{o.version}, which qbench raises from {RAISE_FROM} on only: export it with model.opset: "
                                        "19 or 20")
            o.version = need
    model.ir_version = max(model.ir_version, IR_VERSION[fmt_name])
