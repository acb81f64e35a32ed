"""FP32 -> FP16 conversion of an ONNX graph that keeps chosen nodes in FP32 (like ModelOpt's AutoCast).

The result serves as a *strongly typed* TensorRT network, where the tensor types in the
ONNX decide each layer's precision, and as an ONNX Runtime CPU model for quality runs. So
every node computes in exactly one precision, and a ``Cast`` sits wherever a producer and
a consumer disagree. We do not use onnxconverter-common's ``convert_float_to_float16``:
on MiniLM it retyped a ``Cast(to=FLOAT)`` output to float16 without changing ``to``, and
ORT refused the graph. Nor ModelOpt: it pins onnx, onnxruntime-gpu and torch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from qbench.config.errors import ConfigError, ModelError

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
# Inputs/outputs the ONNX spec types as tensor(float) whatever the node's precision:
# Resize/Upsample ``scales``, LayerNormalization's optional Mean/InvStdDev (type U).
FP32_INPUTS = {("Resize", 2), ("Upsample", 1)}
FP32_OUTPUTS = {("LayerNormalization", 1), ("LayerNormalization", 2)}
# Ops with no float16 type constraint at all: they always run in FP32 (reported as kept).
FP32_OPS = {"Range", "NonMaxSuppression", "DynamicQuantizeLinear", "TfIdfVectorizer"}
# Ops that read only a tensor's shape: they take it as produced, a Cast would be pure cost.
TYPE_AGNOSTIC = {"Shape", "Size"}
# Attributes naming a node's output type; in an FP16 node they must say FLOAT16 (several
# default to FLOAT when absent, so we set them explicitly).
TYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
              "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Bernoulli": "dtype",
              "HannWindow": "output_datatype", "HammingWindow": "output_datatype",
              "BlackmanWindow": "output_datatype", "MelWeightMatrix": "output_datatype"}


def _to_fp16(t: TensorProto, name: str) -> tuple[TensorProto, bool]:
    """FP16 copy of a float tensor. Finite values beyond +-65504 (attention masks use
    finfo(float32).min) would become +-inf and turn masked scores into NaN: clamp them.
    Infinities and NaNs are kept; FP16 has them."""
    a = numpy_helper.to_array(t)
    big = np.isfinite(a) & (np.abs(a) > FP16_MAX)
    return numpy_helper.from_array(np.where(big, np.sign(a) * FP16_MAX, a).astype(np.float16), name), bool(big.any())


def _const_value(node: onnx.NodeProto) -> TensorProto | None:
    """A float Constant's value as a tensor (``value_float(s)`` are normalised to one)."""
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == FLOAT:
            return a.t
        if a.name in ("value_float", "value_floats"):
            v = a.f if a.name == "value_float" else list(a.floats)
            return numpy_helper.from_array(np.array(v, np.float32))
    return None


def _set_attr(node: onnx.NodeProto, attr: AttributeProto) -> None:
    """Set (add or replace) one attribute; a Constant keeps exactly one (value_float(s) go)."""
    kept = [] if node.op_type == "Constant" else [a for a in node.attribute if a.name != attr.name]
    del node.attribute[:]
    node.attribute.extend([*kept, attr])


def convert_fp16(model: onnx.ModelProto, keep_fp32: set[str] = frozenset(), *,
                 keep_io_types: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Returns (new model, info) with info = {"fp16_nodes": int, "fp32_nodes": sorted list of kept
    node names, "casts_added": int, "clamped_initializers": int}.

    Nodes named in ``keep_fp32`` (and ops that have no FP16 form, ``FP32_OPS``) compute in FP32,
    every other node that touches a FLOAT tensor computes in FP16. Float constants (initializers,
    ``Constant`` nodes not kept) follow their consumers instead: converted when all need FP16,
    left FP32 when all need FP32, duplicated when mixed, so they never need a runtime Cast.
    ``clamped_initializers`` counts constants (initializers, Constant/ConstantOfShape values)
    that had finite values beyond the FP16 range. Raises ModelError for subgraphs (If/Loop/Scan),
    tensors without an inferable type, or a result that fails ``onnx.checker``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)  # never mutate the caller's model
    g = out.graph
    for node in g.node:  # subgraphs would need the same pass recursively: refuse, not half-convert
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            raise ModelError(f"convert_fp16: node {node.name or node.op_type!r} ({node.op_type}) has a "
                             "subgraph; subgraphs are not supported yet")
    unknown = set(keep_fp32) - {n.name for n in g.node}
    if unknown:  # a typo would silently convert the node the caller meant to protect
        raise ConfigError(f"keep_fp32: no node named {sorted(unknown)}")

    # Element type of every tensor; only FLOAT ones are touched (int64 shapes, bools... are not).
    inferred = onnx.shape_inference.infer_shapes(out).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    elem.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        for o in node.output:
            if o and not elem.get(o):
                raise ModelError(f"convert_fp16: cannot infer the type of {o!r} ({node.op_type} {node.name!r})")

    nodes = list(g.node)
    is32 = [n.name in keep_fp32 or n.op_type in FP32_OPS for n in nodes]
    out_type = FLOAT if keep_io_types else FLOAT16
    graph_outputs = {o.name for o in g.output}

    def want(i: int, k: int) -> int | None:
        """Type node i needs at input k; None: not a float input, or taken as produced."""
        n = nodes[i]
        if elem.get(n.input[k]) != FLOAT or n.op_type in TYPE_AGNOSTIC:
            return None
        return FLOAT if is32[i] or (n.op_type, k) in FP32_INPUTS else FLOAT16

    floaty = [any(elem.get(o) == FLOAT for o in n.output) or any(want(i, k) for k in range(len(n.input)))
              for i, n in enumerate(nodes)]
    uses: dict[str, list[tuple[int, int]]] = {}
    for i, n in enumerate(nodes):
        for k, name in enumerate(n.input):
            if want(i, k) is not None:
                uses.setdefault(name, []).append((i, k))
    taken = {n.name for n in nodes} | set(elem) | {t for n in nodes for t in [*n.input, *n.output]}

    def unique(base: str) -> str:
        name, j = base, 0
        while name in taken:
            j += 1
            name = f"{base}_{j}"
        taken.add(name)
        return name

    def needs(name: str) -> set[int]:
        return {want(i, k) for i, k in uses.get(name, [])} | ({out_type} if name in graph_outputs else set())

    # Type each float tensor is produced in. Graph inputs follow keep_io_types (one that is also
    # an initializer, i.e. an overridable default, stays FP32 like its initializer).
    produced: dict[str, int] = {}
    inits = {t.name for t in g.initializer}
    for v in g.input:
        if elem.get(v.name) == FLOAT:
            produced[v.name] = FLOAT if v.name in inits else out_type
            v.type.tensor_type.elem_type = produced[v.name]
    alias: dict[tuple[str, int], str] = {}  # (tensor, type) -> tensor holding it in that type
    after: dict[int, list[onnx.NodeProto]] = {}  # nodes to emit right after node i
    clamped = casts = 0

    # Constants follow their consumers, so FP32 consumers keep full-precision values, no Cast.
    for t in list(g.initializer):
        if t.data_type != FLOAT or t.name in produced:
            continue
        need = needs(t.name)
        produced[t.name] = FLOAT16 if need == {FLOAT16} else FLOAT
        if FLOAT16 not in need:
            continue
        new, big = _to_fp16(t, t.name if need == {FLOAT16} else unique(t.name + "_fp16"))
        clamped += big
        if new.name == t.name:
            t.CopyFrom(new)
        else:  # mixed consumers: keep the FP32 tensor, add an FP16 copy
            g.initializer.append(new)
            alias[(t.name, FLOAT16)] = new.name
    for i, n in enumerate(nodes):
        if n.op_type != "Constant" or is32[i] or elem.get(n.output[0]) != FLOAT:
            continue
        value, need = _const_value(n), needs(n.output[0])
        if value is None or FLOAT16 not in need:
            is32[i] = True  # all consumers are FP32 (or a sparse_value): the constant stays FP32
            continue
        new, big = _to_fp16(value, "")
        clamped += big
        if need == {FLOAT16}:
            _set_attr(n, helper.make_attribute("value", new))
        else:  # mixed: this node stays FP32, an FP16 twin serves the FP16 consumers
            out16 = unique(n.output[0] + "_fp16")
            after[i] = [helper.make_node("Constant", [], [out16], unique(n.name + "_fp16"), value=new)]
            alias[(n.output[0], FLOAT16)] = out16
            is32[i] = True

    # Node outputs; a graph output produced in the wrong type is renamed and cast back to its name.
    renamed = set()
    for i, n in enumerate(nodes):
        for k, name in enumerate(n.output):
            if elem.get(name) != FLOAT:
                continue
            produced[name] = FLOAT if is32[i] or (n.op_type, k) in FP32_OUTPUTS else FLOAT16
            if name in graph_outputs and produced[name] != out_type:
                inner = unique(name + ("_fp16" if produced[name] == FLOAT16 else "_fp32"))
                n.output[k] = inner
                for c in nodes:
                    c.input[:] = [inner if x == name else x for x in c.input]
                elem[inner], produced[inner], alias[(inner, out_type)] = FLOAT, produced.pop(name), name
                cast = helper.make_node("Cast", [inner], [name], unique(name + "_cast"), to=out_type)
                after.setdefault(i, []).append(cast)
                renamed.add(name)
                casts += 1

    # Rewrite: casts go right before their first consumer, one per (tensor, type), then reused.
    new_nodes, fp16_nodes = [], 0
    for i, n in enumerate(nodes):
        for k, name in enumerate(n.input):
            w = want(i, k)
            if w is None or (produced.get(name) == w and (name, w) not in alias):
                continue
            if (name, w) not in alias:
                suffix = "_fp16" if w == FLOAT16 else "_fp32"
                alias[(name, w)] = unique(name + suffix)
                new_nodes.append(helper.make_node("Cast", [name], [alias[(name, w)]], unique(name + suffix + "_cast"),
                                                  to=w))
                casts += 1
            n.input[k] = alias[(name, w)]
        if floaty[i] and not is32[i]:
            fp16_nodes += 1
            out_float = elem.get(n.output[0]) == FLOAT  # Cast(FLOAT -> INT64) keeps its `to`
            if out_float and n.op_type in TYPE_ATTRS:  # Cast(to=FLOAT) -> to=FLOAT16, etc.
                _set_attr(n, helper.make_attribute(TYPE_ATTRS[n.op_type], FLOAT16))
            if out_float and n.op_type == "ConstantOfShape":  # an absent value means float32 0
                zero = numpy_helper.from_array(np.zeros(1, np.float32))
                new, big = _to_fp16(next((a.t for a in n.attribute if a.name == "value"), zero), "")
                clamped += big
                _set_attr(n, helper.make_attribute("value", new))
        new_nodes.extend([n, *after.get(i, [])])
    del g.node[:]
    g.node.extend(new_nodes)

    for v in g.output:
        if elem.get(v.name) == FLOAT:
            v.type.tensor_type.elem_type = out_type
    # Stale value_info: retype what changed, drop renamed graph outputs (their inner tensor is new).
    vis = [v for v in g.value_info if v.name not in renamed]
    for v in vis:
        if v.type.tensor_type.elem_type == FLOAT and v.name in produced:
            v.type.tensor_type.elem_type = produced[v.name]
    del g.value_info[:]
    g.value_info.extend(vis)
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ModelError(f"convert_fp16: invalid graph after conversion (keep the node FP32?): {err}") from err
    fp32 = sorted({n.name for i, n in enumerate(nodes) if n.name in keep_fp32 or (n.op_type in FP32_OPS and floaty[i])})
    return out, {"fp16_nodes": fp16_nodes, "fp32_nodes": fp32, "casts_added": casts, "clamped_initializers": clamped}
