"""Weight-only INT8 embedding tables: each Gather's 2-D float table stored as int8 with one scale per row.

``Gather(table, ids)`` becomes ``Gather(DequantizeLinear(table_int8, scale[rows], axis=0), ids)``: scale =
max |row| / 127, zero point 0, as every other weight. The looked-up rows are the same up to the int8 rounding
of each element (at most half a step, scale / 2); no activation is quantized by it. A table of 30,522 × 384
(MiniLM's word embeddings) goes from 46.9 MB to 11.7 MB plus 0.1 MB of scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUFFIX = "_rowint8"  # the int8 table's initializer name: <table>_rowint8 (qdq.verify_scales knows it)


def embedding_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gather nodes (axis 0) whose data is a 2-D float32 initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits:
            continue
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        t = inits[n.input[0]]
        if axis == 0 and len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT:
            out.append(n)
    return out


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 table, float32 scale per row): the per_channel weight rule along axis 0."""
    from calibrators.weights import PerChannel

    return PerChannel().quantize(table, 0)


def quantize_embeddings(model: onnx.ModelProto) -> list[str]:
    """Make every embedding table weight-only INT8, in place; the names of the tables changed."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    done: dict[str, str] = {}
    head = []
    for n in embedding_gathers(model):
        name = n.input[0]
        if name not in done:
            qw, sc = quantize_rows(numpy_helper.to_array(inits[name]))
            g.initializer.extend([numpy_helper.from_array(qw, name + SUFFIX),
                                  numpy_helper.from_array(sc, f"{name}_rowscale"),
                                  numpy_helper.from_array(np.zeros_like(sc, dtype=np.int8), f"{name}_rowzero")])
            head.append(helper.make_node("DequantizeLinear", [name + SUFFIX, f"{name}_rowscale", f"{name}_rowzero"],
                                         [f"{name}_dq"], name=f"{name}_DequantizeLinear", axis=0))
            done[name] = f"{name}_dq"
        n.input[0] = done[name]
    used = {x for n in g.node for x in n.input}
    keep = [t for t in g.initializer if t.name not in done or t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(head + nodes)
    return sorted(done)
