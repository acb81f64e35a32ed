"""Split a decoder graph into the part that depends on the encoder states alone and the rest.

In an exported decoder (``qbench.models.seq2seq``) every cross-attention layer projects
``encoder_hidden_states`` to keys and values. Those projections are the same at every decoding step,
so greedy decoding computes them once per sentence in a ``cross`` graph and feeds the results to a
``step`` graph (the decoder without them), as Hugging Face's ``decoder_with_past`` split does.

The split is taken from the decoder as it stands, not from a second export: the FP32 graph, a Q/DQ
variant, an FP16 variant or a user's two-graph folder all split the same way, and every quantized
tensor keeps the scale its one calibration table gave it. Rules:

- a node is *per sentence* when its inputs are ``encoder_hidden_states``, constants, or outputs of per
  sentence nodes; the heavy ones (not shape arithmetic) go to the ``cross`` graph;
- a QuantizeLinear of anything but ``encoder_hidden_states`` itself stays in the step graph, so each
  Q/DQ pair in front of an attention MatMul stays whole and ONNX Runtime fuses it as in the full graph;
- shape arithmetic (``Shape`` and what is computed from shapes alone) is computed in both graphs; the
  step graph keeps ``encoder_hidden_states`` as an input where it still reads its shape.

The boundary tensors keep their names in the full graph; each holds the batch on axis 0 in the exports
of this project (``qbench.models.fast_greedy`` checks that before it drops finished rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROOT = "encoder_hidden_states"
HEAVY = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "Conv", "FusedMatMul"}


@dataclass(frozen=True)
class DecoderSplit:
    cross: Any                 # onnx.ModelProto: encoder_hidden_states -> boundary
    step: Any                  # onnx.ModelProto: the decoder's inputs (+ boundary) -> the decoder's outputs
    boundary: tuple[str, ...]  # tensors computed once per sentence, in graph order
    hoisted: tuple[str, ...]   # names of the nodes that moved to the cross graph


def split_decoder(model: Any) -> DecoderSplit | None:
    """The split of ``model`` (an onnx.ModelProto, which becomes the step graph: pass a copy to keep it), or
    None (``model`` untouched) when no MatMul depends on the encoder states alone (nothing to gain) or the
    graph has no ``encoder_hidden_states`` input."""
    import onnx
    from onnx import helper

    g = model.graph
    if ROOT not in {i.name for i in g.input}:
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return None  # control flow: a subgraph may read outer tensors that this walk does not see
    const = {i.name for i in g.initializer} | {""}
    shape_like: set[str] = set()
    sentence = {ROOT}
    hoisted: list[int] = []
    for idx, n in enumerate(g.node):
        ins = [i for i in n.input if i]
        if all(i in const for i in ins):
            const.update(n.output)
            continue
        if not all(i in const or i in sentence for i in ins):
            continue
        if n.op_type == "QuantizeLinear" and n.input[0] != ROOT:
            continue
        sentence.update(n.output)
        if n.op_type == "Shape" or all(i in const or i in shape_like for i in ins):
            shape_like.update(n.output)
        else:
            hoisted.append(idx)
    if not any(g.node[i].op_type in HEAVY for i in hoisted):
        return None

    moved = set(hoisted)
    made_by_moved = {o for i in hoisted for o in g.node[i].output}
    graph_outputs = {o.name for o in g.output}
    boundary: list[str] = []
    for idx, n in enumerate(g.node):
        if idx in moved:
            continue
        boundary += [t for t in n.input if t in made_by_moved and t not in boundary]
    types = _types(model)
    if graph_outputs & made_by_moved or any(t not in types for t in boundary):
        return None

    def value_info(name: str) -> Any:
        v = onnx.ValueInfoProto()
        v.CopyFrom(types[name])
        return v

    root_input = next(i for i in g.input if i.name == ROOT)
    cross_nodes = _needed(list(g.node), set(boundary), {ROOT})
    needed = {t for n in cross_nodes for t in n.input}
    cross_graph = helper.make_graph(cross_nodes, "cross_kv", [root_input], [value_info(t) for t in boundary],
                                    [i for i in g.initializer if i.name in needed])
    cross = helper.make_model(cross_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)

    # The step graph is ``model`` edited in place: copying the weights would cost more than the split.
    step_nodes = [_copy(n) for n in _needed([n for i, n in enumerate(g.node) if i not in moved], graph_outputs,
                                            {i.name for i in g.input} | set(boundary))]
    used = {t for n in step_nodes for t in n.input} | graph_outputs
    inputs = [_copy(i) for i in g.input if i.name in used] + [value_info(t) for t in boundary]
    del g.node[:]
    g.node.extend(step_nodes)
    del g.input[:]
    g.input.extend(inputs)
    for k in reversed(range(len(g.initializer))):
        if g.initializer[k].name not in used:
            del g.initializer[k]
    del g.value_info[:]
    hoisted_names = tuple(n.name for n in cross_nodes if n.output[0] in made_by_moved)
    return DecoderSplit(cross, model, tuple(boundary), hoisted_names)


def _copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _types(model: Any) -> dict[str, Any]:
    """Every tensor's inferred type, by name. The large initializers go in as typed inputs (shape
    inference needs their shapes, not their values): a copy of the weights would take most of the time."""
    from onnx import helper, shape_inference

    g = model.graph
    small = [i for i in g.initializer if _numel(i) <= 64]
    big = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in g.initializer
           if _numel(i) > 64]
    light = helper.make_graph(list(g.node), g.name, [*g.input, *big], list(g.output), small)
    m = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = shape_inference.infer_shapes(m)
    return {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _needed(nodes: list[Any], wanted: set[str], inputs: set[str]) -> list[Any]:
    """The nodes (in their order) that the ``wanted`` tensors depend on, stopping at ``inputs``."""
    maker = {o: k for k, n in enumerate(nodes) for o in n.output}
    keep: set[int] = set()
    todo = [t for t in wanted if t not in inputs]
    while todo:
        t = todo.pop()
        k = maker.get(t)
        if k is None or k in keep:
            continue
        keep.add(k)
        todo += [i for i in nodes[k].input if i and i not in inputs]
    return [n for k, n in enumerate(nodes) if k in keep]
