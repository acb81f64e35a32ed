"""Bias correction after Q/DQ, after NNCF's FastBiasCorrection, on qbench's own Q/DQ graph.

Quantizing a linear layer's input and weight shifts its output on average: E[fq(x) fq(W)] != E[x W]. The shift is
a per-output-channel constant, so the bias can take it back. For every quantized linear layer (a MatMul reading a
Q/DQ'd activation and a DQ'd constant 2-D weight) followed by an Add of a constant bias, the bias becomes

    b + mean over the calibration set of (x W - fq(x) fq(W)),

x the layer's FP32 input in the FP32 graph the Q/DQ went on, fq the Q/DQ graph's own arithmetic (its scales and zero
points, round half to even, saturating), fq(W) its dequantized weight. Every layer reads FP32 inputs, so layers are
independent: one FP32 forward pass (ONNX Runtime, the inputs made graph outputs) serves all of them. (NNCF instead
runs the quantized layer once on the per-channel mean input, fq(mean x): cheaper, but it rounds one mean vector
instead of averaging the rounding; on MiniLM it lowered the cosine to FP32 by 0.01, docs/smoothquant.md.) Since the
layer is linear, the mean of x W - fq(x) fq(W) over rows is mean(x) W - mean(fq(x)) fq(W): the pass keeps, per input
tensor, the float64 sums of x and fq(x) over valid (unpadded) positions, and drops each batch, so memory is one
batch's activations.

Not corrected, and counted in the returned ``skipped``: a MatMul whose output goes to no Add of a constant of one
value per output channel (adding an Add would change the graph TensorRT fuses; MiniLM has a bias on every linear
layer), a Gemm (its bias is its C input; no model qbench builds has one), and a bias initializer that several
Adds share (one shift each would not fit it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbench.quantize.graph import _attr, _Graph, stable_names
from qbench.quantize.qdq import _drop_unused_initializers

SUFFIX = "_bc"  # a corrected bias: <bias>_bc (a cached file's correction is seen by it)
_RANGE = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255)}


@dataclass
class Target:
    """One linear layer to correct: the FP32 tensor it reads, how the Q/DQ graph fake-quantizes it, its weights."""

    node: str
    x: str                  # the FP32 input (QuantizeLinear's input)
    scale: np.float32
    zero_point: int
    lo: int
    hi: int
    w_fp: np.ndarray        # [K, N], the FP32 graph's weight
    w_q: np.ndarray         # [K, N], the Q/DQ graph's dequantized weight
    add: str                # the Add node taking the bias
    bias_index: int         # which input of it the bias is
    bias: str               # the bias initializer


def fake_quant(x: np.ndarray, scale: np.float32, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear in float32, as ONNX defines them: round half to even, saturate."""
    q = np.clip(np.rint(x / np.float32(scale)) + np.float32(zero_point), lo, hi)
    return ((q - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def _dequantize(inits: dict, dq: onnx.NodeProto) -> np.ndarray | None:
    """A DequantizeLinear of a constant int8 tensor, evaluated; None where its input is not an initializer."""
    if dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    s = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
          if len(dq.input) > 2 and dq.input[2] in inits else np.float32(0))
    if s.ndim == 1:
        axis = _attr(dq, "axis", 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return ((w - zp) * s).astype(np.float32)


def find_targets(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> tuple[list[Target], dict[str, list[str]]]:
    """(the linear layers of ``qdq`` to correct, {why not: [MatMul/Gemm names]} of the quantized ones left alone).

    ``fp32`` is the graph the Q/DQ went on: its nodes carry the same names (qbench.quantize.qdq.name_nodes)."""
    G = _Graph(qdq)
    inits = G.inits
    fp_inits = {t.name: t for t in fp32.graph.initializer}
    fp_nodes = dict(zip(stable_names(fp32), fp32.graph.node))
    out: list[Target] = []
    skipped: dict[str, list[str]] = defaultdict(list)
    for n in G.nodes:
        if n.op_type == "Gemm" and any(G.prod(x) is not None and G.prod(x).op_type == "DequantizeLinear"
                                       for x in n.input[:2]):
            skipped["Gemm (bias is its C input)"].append(n.name)
        if n.op_type != "MatMul":
            continue
        a_dq, w_dq = G.prod(n.input[0]), G.prod(n.input[1])
        if not (a_dq and w_dq and a_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        q = G.prod(a_dq.input[0])
        w_q = _dequantize(inits, w_dq)
        fp = fp_nodes.get(n.name)
        if q is None or q.op_type != "QuantizeLinear" or w_q is None or w_q.ndim != 2 or fp is None:
            continue  # not a linear layer: the attention's batched matmuls multiply two activations
        zp_t = inits.get(q.input[2]) if len(q.input) > 2 else None
        if zp_t is None or zp_t.data_type not in _RANGE or fp.input[1] not in fp_inits:
            skipped["not int8 Q/DQ"].append(n.name)
            continue
        uses = [G.nodes[i] for i in G.consumers.get(n.output[0], [])]
        add = uses[0] if len(uses) == 1 and uses[0].op_type == "Add" else None
        idx = next((i for i, x in enumerate(add.input) if x != n.output[0]), None) if add else None
        b = inits.get(add.input[idx]) if idx is not None else None
        if b is None or int(np.prod(b.dims)) != w_q.shape[1] or any(d != 1 for d in list(b.dims)[:-1]):
            skipped["no bias Add after it"].append(n.name)
            continue
        if len(G.consumers[b.name]) != 1:
            skipped["bias shared by several Adds"].append(n.name)
            continue
        s = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        out.append(Target(n.name, q.input[0], np.float32(s), int(numpy_helper.to_array(zp_t)),
                          *_RANGE[zp_t.data_type], numpy_helper.to_array(fp_inits[fp.input[1]]).astype(np.float32),
                          w_q, add.name, idx, b.name))
    return out, dict(skipped)


def mean_errors(fp32: onnx.ModelProto, targets: list[Target], batches: Iterable[dict], threads: int = 2,
                mask_input: str = "attention_mask", seq_inputs: list[str] | None = None
                ) -> tuple[dict[str, np.ndarray], int]:
    """({node: mean over valid rows of x W - fq(x) fq(W), per output channel}, batches run): one streaming FP32
    pass. Padded positions are left out as the statistics pass leaves them (qbench.calib.stats)."""
    import onnxruntime as ort

    from qbench.calib.stats import discover_axes, token_mask
    from qbench.config.errors import DataError

    by_x = {t.x: t for t in targets}  # one Q/DQ pair per tensor: its consumers fake-quantize it alike
    names = list(by_x)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in names if x not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as the graph defines them
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in sess.get_inputs()}
    sums = {x: [np.zeros(by_x[x].w_fp.shape[0]), np.zeros(by_x[x].w_fp.shape[0]), 0] for x in names}
    roles, n_batches = None, 0
    for feeds in batches:
        n_batches += 1
        mask2d = feeds[mask_input].astype(bool) if mask_input in feeds else None
        feeds = {k: v for k, v in feeds.items() if k in graph_inputs}
        if roles is None and mask2d is not None:
            roles = discover_axes(sess, names, feeds, seq_inputs)
        for x, arr in zip(names, sess.run(names, feeds)):
            m = token_mask(roles[x], mask2d, arr.shape) if roles and mask2d is not None else None
            rows = arr[m[..., 0]] if m is not None else arr.reshape(-1, arr.shape[-1])
            t, acc = by_x[x], sums[x]
            acc[0] += rows.sum(axis=0, dtype=np.float64)
            acc[1] += fake_quant(rows, t.scale, t.zero_point, t.lo, t.hi).sum(axis=0, dtype=np.float64)
            acc[2] += rows.shape[0]
    if n_batches == 0 or any(acc[2] == 0 for acc in sums.values()):
        raise DataError("bias correction: the calibration batches left no valid position to average over")
    return {t.node: (sums[t.x][0] @ t.w_fp.astype(np.float64) - sums[t.x][1] @ t.w_q.astype(np.float64))
            / sums[t.x][2] for t in targets}, n_batches


def apply(qdq: onnx.ModelProto, targets: list[Target], shifts: dict[str, np.ndarray]) -> None:
    """Add each target's shift to its bias, in place: the bias becomes a new initializer ``<bias>_bc``."""
    g = qdq.graph
    inits = {t.name: t for t in g.initializer}
    adds = {n.name: n for n in g.node if n.op_type == "Add"}
    for t in targets:
        b = numpy_helper.to_array(inits[t.bias])
        new = (b.astype(np.float64) + shifts[t.node].reshape(b.shape)).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(new, t.bias + SUFFIX))
        adds[t.add].input[t.bias_index] = t.bias + SUFFIX
    _drop_unused_initializers(qdq, {t.bias for t in targets})  # the old biases, now read by nothing


def bias_correct(qdq: onnx.ModelProto, fp32: onnx.ModelProto, batches: Iterable[dict], threads: int = 2,
                 **kw) -> dict:
    """Correct ``qdq``'s biases in place from one FP32 pass of ``fp32`` (the graph the Q/DQ went on) over
    ``batches`` (the model's feeds; ``kw``: the mask options of ``mean_errors``); what the manifest records."""
    targets, skipped = find_targets(qdq, fp32)
    shifts, n = mean_errors(fp32, targets, batches, threads, **kw) if targets else ({}, 0)
    apply(qdq, targets, shifts)
    mags = [float(np.abs(s).mean()) for s in shifts.values()]
    return {"corrected": len(targets), "batches": n,
            "mean_abs_shift": float(np.mean(mags)) if mags else 0.0,
            "max_abs_shift": float(max((np.abs(s).max() for s in shifts.values()), default=0.0)),
            **({"skipped": {k: len(v) for k, v in skipped.items()}} if skipped else {})}


def corrected_biases(qdq: onnx.ModelProto) -> int:
    """How many biases of ``qdq`` were corrected (a cached file's count, checked against its targets)."""
    return sum(x.endswith(SUFFIX) for n in qdq.graph.node if n.op_type == "Add" for x in n.input)
