"""Every quantizable node of a graph with its roles and GEMM dims: what ``qbench inspect`` lists.

Apart from ``roles`` (which finds the role groups) so the role finder stays one readable module.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import numpy as np
import onnx

from qbench.quantize.graph import _Graph, _attr
from qbench.quantize.roles import QUANTIZABLE, RoleGroup, _find_roles, _weight_of


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor -> dims (int, symbol or None) from ONNX shape inference; empty where inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a hint here; a model it cannot handle still gets its roles
        return {}
    g = inferred.graph
    out = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in tt.shape.dim]
    out.update({t.name: list(t.dims) for t in g.initializer})
    return out


def _dims(n: onnx.NodeProto, shapes: dict) -> dict:
    a, b = (shapes.get(x) for x in n.input[:2])
    if not a or not b or len(a) < 2 or len(b) < 2 or (n.op_type == "Gemm" and (len(a), len(b)) != (2, 2)):
        return {"batch": None, "M": None, "K": None, "N": None, "macs": None}
    if n.op_type == "Gemm":
        m, k = a[::-1] if _attr(n, "transA", 0) else a
        nn, batch = (b[0] if _attr(n, "transB", 0) else b[1]), []
    else:
        m, k, nn, batch = a[-2], a[-1], b[-1], a[:-2]
    vals = [*batch, m, k, nn]
    macs = int(np.prod(vals)) if all(isinstance(v, int) and v > 0 for v in vals) else None
    return {"batch": batch, "M": m, "K": k, "N": nn, "macs": macs}


def quantizable_nodes(model: onnx.ModelProto, roles: dict[str, list[RoleGroup]] | None = None) -> list[dict]:
    """Every MatMul/Gemm: name, op, weight, the roles it falls under, and its M/K/N dims.

    ``roles`` lists the node's own roles (e.g. ``lm_head``) and ``reads <role> output`` for each role
    group that produces one of its activation inputs. ``float_if_excluded`` lists the roles whose
    exclusion keeps this node float (qdq.plan's rule: a role group's input and output tensors stay
    float, and so does any MatMul that reads one).
    """
    G = _Graph(model)
    roles = roles if roles is not None else _find_roles(G)
    index = {name: i for i, name in enumerate(G.names)}
    produced, touched, own = defaultdict(set), defaultdict(set), defaultdict(set)
    for role, groups in roles.items():
        for g in groups:
            for name in g.nodes:
                n = G.nodes[index[name]]
                own[name].add(role)
                for o in n.output:
                    produced[o].add(role)
                    touched[o].add(role)
                for x in n.input:
                    touched[x].add(role)
    shapes = _shapes(model)
    out = []
    for i, n in enumerate(G.nodes):
        if n.op_type not in QUANTIZABLE:
            continue
        name = G.names[i]
        acts = [x for x in n.input[:2] if x and x not in G.inits]
        w = _weight_of(G, n)
        reads = sorted({r for x in acts for r in produced.get(x, ())} - own[name])
        floats = set(own[name]).union(*(touched.get(x, set()) for x in acts))
        out.append({"name": name, "op_type": n.op_type, "activations": acts,
                    "weight": w[1] if w else None, "weight_shape": w[2] if w else None,
                    "roles": sorted(own[name]) + [f"reads {r} output" for r in reads],
                    "float_if_excluded": sorted(floats), **_dims(n, shapes)})
    return out


def roles_as_json(roles: dict[str, list[RoleGroup]]) -> dict[str, list[dict]]:
    return {r: [asdict(g) for g in gs] for r, gs in roles.items()}
