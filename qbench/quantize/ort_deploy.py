"""The ONNX Runtime CPU deployment form of a static QDQ model: the same quantization, fewer and fused kernels.

ONNX Runtime turns a QDQ MatMul into ``MatMulIntegerToFloat`` (com.microsoft) itself, but leaves the bias Add
that follows as a separate kernel, and that Add blocks its residual-Add + LayerNormalization fusion
(``SkipLayerNormalization``). ``quantize_dynamic``'s output avoids both, which is why it ran faster than a
static u8s8 model on MiniLM. Here every linear layer ``DQ(x_q) @ DQ(W_q) + b`` becomes one
``MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale, x_zero, W_zero, b)``: the same integers, the same scales,
the bias added inside the kernel. Nothing is re-quantized or re-calibrated: the quantization function is the
QDQ model's, and only floating-point summation order differs (``tests/unit/test_ort_deploy.py`` states the
tolerance on real inputs).

What stays for ONNX Runtime's own optimizer: the activation-by-activation MatMuls of attention (it fuses them
to MatMulIntegerToFloat / QLinearMatMul), GELU, LayerNorm, Softmax.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper, numpy_helper

from qbench.config.errors import ModelError

MS_DOMAIN = "com.microsoft"


def _one(it):
    it = list(it)
    return it[0] if len(it) == 1 else None


def fold_linear(qdq: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """(the deployment form of ``qdq``, info): every ``DQ(act) @ DQ(int weight) (+ 1-D constant bias)`` as one
    MatMulIntegerToFloat with the bias fused. ``qdq`` is left untouched. info: ``folded`` (MatMuls),
    ``bias_fused`` (Adds removed), and ``ops_before``/``ops_after`` (node counts by op type).

    Raises ModelError when the model has no such MatMul (a dynamic or float model: nothing to deploy)."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)
    graph_out = {o.name for o in g.output}

    def dq_of(name: str):
        n = prod.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" and len(n.input) == 3 else None

    replace: dict[int, onnx.NodeProto | None] = {}  # id(node) -> its replacement (None: removed)
    folded = fused = 0
    for n in g.node:
        if n.op_type != "MatMul":
            continue
        a, w = dq_of(n.input[0]), dq_of(n.input[1])
        if a is None or w is None or w.input[0] not in inits or a.input[0] in inits:
            continue  # not activation x constant int weight: ONNX Runtime's own fusions handle the rest
        wq = numpy_helper.to_array(inits[w.input[0]])
        axis = next((att.i for att in w.attribute if att.name == "axis"), 1)
        wscale = numpy_helper.to_array(inits[w.input[1]]) if w.input[1] in inits else None
        if wq.ndim != 2 or wscale is None or (wscale.ndim == 1 and axis not in (1, -1)) or wscale.ndim > 1:
            continue  # MatMulIntegerToFloat takes per-tensor or per-column (output channel) weight scales
        inputs = [a.input[0], w.input[0], a.input[1], w.input[1], a.input[2], w.input[2]]
        out_name, drop = n.output[0], [n]
        add = _one(users.get(n.output[0], []))
        if add is not None and add.op_type == "Add" and n.output[0] not in graph_out:
            bias = add.input[1] if add.input[0] == n.output[0] else add.input[0]
            b = inits.get(bias)
            if b is not None and len(b.dims) == 1 and b.dims[0] == wq.shape[1]:
                inputs.append(bias)
                out_name, drop = add.output[0], [n, add]
                fused += 1
        node = helper.make_node("MatMulIntegerToFloat", inputs, [out_name], name=n.name + "_integer",
                                domain=MS_DOMAIN)
        replace[id(n)] = node
        for d in drop[1:]:
            replace[id(d)] = None
        folded += 1
    if not folded:
        raise ModelError("ORT deployment form: no MatMul reads a DequantizeLinear activation and a DequantizeLinear "
                         "INT8 weight (not a static QDQ model?)")
    nodes = [replace.get(id(n), n) for n in g.node]
    nodes = [n for n in nodes if n is not None]
    # DequantizeLinear nodes nobody reads any more (the folded weights' and activations').
    while True:
        used = {x for n in nodes for x in n.input} | graph_out
        keep = [n for n in nodes if n.op_type != "DequantizeLinear" or any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            break
        nodes = keep
    before = Counter(n.op_type for n in g.node)
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    merged = _merge_siblings(g)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, {"folded": folded, "bias_fused": fused, "merged_groups": merged, "ops_before": dict(before),
                 "ops_after": dict(Counter(n.op_type for n in g.node))}


def _merge_siblings(g: onnx.GraphProto) -> int:
    """Folded MatMuls that read the same quantized activation (attention's query, key and value) as one
    MatMulIntegerToFloat over the weights side by side, then a Split: one GEMM with N = 3 x 384 instead of three
    small ones (at batch 1, each is mostly call overhead). Weight scales and zero points are per output column,
    so each column keeps its own. Returns how many groups were merged."""
    import numpy as np

    inits = {t.name: t for t in g.initializer}
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    for n in g.node:
        if (n.op_type == "MatMulIntegerToFloat" and n.domain == MS_DOMAIN and len(n.input) == 7
                and all(x in inits for x in n.input[1:7:2] + n.input[6:7])):
            groups.setdefault((n.input[0], n.input[2], n.input[4]), []).append(n)
    merged = 0
    new_inits, replace = [], {}
    for (a, a_scale, a_zero), members in groups.items():
        if len(members) < 2:
            continue
        arr = {k: [numpy_helper.to_array(inits[m.input[i]]) for m in members] for k, i in
               (("w", 1), ("s", 3), ("z", 5), ("b", 6))}
        if (len({w.shape[0] for w in arr["w"]}) != 1
                or any(s.shape != (w.shape[1],) for s, w in zip(arr["s"], arr["w"]))
                or any(z.shape != s.shape for z, s in zip(arr["z"], arr["s"]))):
            continue  # per-column scales and zero points of one K only: anything else stays as it is
        base = members[0].name + "_merged"
        names = {k: f"{base}_{k}" for k in ("w", "s", "z", "b", "split")}
        new_inits += [numpy_helper.from_array(np.concatenate(arr[k], axis=-1), names[k]) for k in ("w", "s", "z", "b")]
        new_inits.append(numpy_helper.from_array(np.array([w.shape[1] for w in arr["w"]], np.int64), names["split"]))
        mm = helper.make_node("MatMulIntegerToFloat", [a, names["w"], a_scale, names["s"], a_zero, names["z"],
                                                       names["b"]], [base + "_out"], name=base, domain=MS_DOMAIN)
        split = helper.make_node("Split", [base + "_out", names["split"]], [m.output[0] for m in members],
                                 name=base + "_split", axis=-1)
        replace[id(members[0])] = [mm, split]
        for m in members[1:]:
            replace[id(m)] = []
        merged += 1
    nodes = [x for n in g.node for x in replace.get(id(n), [n])]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {x for n in nodes for x in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return merged
