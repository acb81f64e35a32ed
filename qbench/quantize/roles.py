"""Structural roles of an ONNX graph: norms, softmaxes, embedding lookups and the output head.

Roles are found from the graph's structure (op types, initializers, how tensors flow), so they work
on any exporter's naming. Node names are only a fallback hint, used when a role finds no structural
match at all (the old name regexes, kept in ``NAME_HINTS``).

- ``layernorm``: LayerNormalization, SimplifiedLayerNormalization, Skip(Simplified)LayerNormalization
  and RMSNormalization nodes; the decomposed LayerNorm
  ``x - ReduceMean(x) -> Pow 2 | Mul self -> ReduceMean -> Add eps -> Sqrt -> Div | Reciprocal+Mul
  -> Mul gamma -> Add beta``; and the decomposed RMSNorm (T5, Llama)
  ``Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Reciprocal | Div(1, .) -> Mul x -> Mul gamma``.
  A leading Cast read only by the pattern belongs to it. One group per pattern; its output is the
  normalized tensor.
- ``softmax``: every Softmax node, with the casts and NaN guard (``Where(IsNaN(p), 0, p)``) that only
  pass its values on, so the probs x V MatMul reads the group's output (``attention_probs`` is the
  role's old name, still accepted).
- ``embeddings``: Gathers (axis 0) from a 2-D float initializer (word, position, token-type and
  T5's relative-position bias tables), together with the ops that combine them (Add/Mul with each
  other or with constants, as in BERT's word+type+position sum and Marian's sqrt(d) scale). One group
  per connected embedding block. When the block's output is read by nothing but one norm group
  (BERT's embedding LayerNorm, post-norm), that norm joins the block, so excluding ``embeddings``
  keeps the tensor that leaves the embedding block float; in pre-norm models (T5) the first norm
  belongs to layer 0 and stays out.
- ``lm_head``: a MatMul/Gemm with a constant weight whose output reaches a graph output through
  only value-preserving ops (bias Add, scale Mul, Reshape, Cast, Softmax, ...) and no further MatMul,
  where the output's last dim equals the weight's output dim. If some such head produces vocabulary
  logits (its output dim equals the row count of a token-embedding table, i.e. one indexed by a graph
  input) only those are lm_head. Otherwise, as in an encoder with a classifier, every such head is the
  lm_head: the layer the old ``/classifier|/cls/`` name hint meant. An encoder whose outputs leave
  through a LayerNorm or pooling (a sentence embedder) has no lm_head.
- ``mlp_gate``: the gated MLP of Llama/Qwen-style decoders (SwiGLU, GeGLU): ``act(x W_gate) * (x W_up)``,
  two MatMuls with constant weights reading the same tensor, one through SiLU (``Mul(g, Sigmoid(g))``, or a
  fused Swish/Gelu/FastGelu/QuickGelu op), multiplied. The group is the activation and the product; its output is
  what down_proj reads. That product carries the MLP's largest outliers, so excluding ``mlp_gate`` keeps
  down_proj's input float and nothing else.

Unnamed nodes get stable analysis names (``<op_type>_<index>``); the model is never mutated.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qbench.quantize.graph import _INDEX_PASS, _PASS, _RANDOM, _SHAPE_ONLY, _attr, _Graph, stable_names  # noqa: F401

ROLES = ("layernorm", "softmax", "embeddings", "lm_head", "mlp_gate")
ALIASES = {"attention_probs": "softmax"}
NAME_HINTS = {"embeddings": r"(^|/)embeddings?(/|$)", "lm_head": r"(lm_head|classifier|/cls/)"}
QUANTIZABLE = ("MatMul", "Gemm")
FUSED_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
               "SkipSimplifiedLayerNormalization", "RMSNormalization"}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
_ARITH = {"Add", "Sub", "Mul", "Div"}
_HEAD_TAIL = _PASS | {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Softmax", "LogSoftmax", "Sigmoid"}


@dataclass
class RoleGroup:
    role: str
    nodes: list[str]      # analysis names (the node's own name where it has one), in graph order
    output: str           # the tensor the group hands on (the normalized tensor, the logits, ...)
    detail: str


def canonical_role(role: str) -> str:
    return ALIASES.get(role, role)


def _group(G: _Graph, role: str, idx, output: str, detail: str) -> RoleGroup:
    return RoleGroup(role, [G.names[i] for i in sorted(set(idx))], output, detail)


# ----------------------------------------------------------------------------------------- norms

def _normalize_step(G: _Graph, t: str, sqrt_out: str) -> tuple[list[int], str] | None:
    """``t / sqrt`` as Div(t, s), Reciprocal(s) * t or Div(1, s) * t: (nodes, normalized tensor)."""
    for i in G.readers(sqrt_out):
        n = G.nodes[i]
        if n.op_type == "Div" and list(n.input) == [t, sqrt_out]:
            return [i], n.output[0]
        one = n.op_type == "Div" and n.input[1] == sqrt_out and _is_scalar(G.value(n.input[0]), 1.0)
        if n.op_type == "Reciprocal" or one:
            m = G.sole(n.output[0], "Mul")
            if m is not None and t in G.nodes[m].input:
                return [i, m], G.nodes[m].output[0]
    return None


def _is_scalar(v: np.ndarray | None, want: float) -> bool:
    return v is not None and v.size == 1 and float(v.reshape(())) == want


def _decomposed_norm(G: _Graph, r2: int) -> tuple[list[int], str, str, str] | None:
    """Match a decomposed LayerNorm/RMSNorm whose variance ReduceMean is node ``r2``."""
    sq = G.prod(G.nodes[r2].input[0])
    if sq is None or not ((sq.op_type == "Pow" and _is_scalar(G.value(sq.input[1]), 2.0))
                          or (sq.op_type == "Mul" and sq.input[0] == sq.input[1])):
        return None
    t = sq.input[0]
    members = [G.producer[sq.output[0]], r2]
    x, kind = t, "RMSNorm"
    sub = G.prod(t)
    mean = G.prod(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
    if mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == sub.input[0]:
        members += [G.producer[t], G.producer[sub.input[1]]]
        x, kind = sub.input[0], "LayerNorm"
    add = G.sole(G.nodes[r2].output[0], "Add", const_other=True)
    sqrt = None if add is None else G.sole(G.nodes[add].output[0], "Sqrt")
    step = None if sqrt is None else _normalize_step(G, t, G.nodes[sqrt].output[0])
    if step is None:
        return None
    members += [add, sqrt, *step[0]]
    out = step[1]
    tail = ["Cast", "Mul"] + (["Add"] if kind == "LayerNorm" else [])
    for op in tail:                          # optional: a Cast back, gamma, beta
        nxt = G.sole(out, op, const_other=op != "Cast")
        if nxt is not None:
            members.append(nxt)
            out = G.nodes[nxt].output[0]
        elif op == "Cast":
            continue
        else:
            break
    cast = G.prod(x)
    if cast is not None and cast.op_type == "Cast" and set(G.readers(x)) <= set(members):
        members.append(G.producer[x])
        x = cast.input[0]
    return members, out, x, kind


def _norm_groups(G: _Graph) -> list[tuple[RoleGroup, str]]:
    """(group, its input tensor) for every norm, fused or decomposed."""
    found: list[tuple[list[int], str, str, str]] = []
    claimed: set[int] = set()
    for i, n in enumerate(G.nodes):
        if n.op_type in FUSED_NORMS:
            found.append(([i], n.output[0], n.input[0], f"{n.op_type} op"))
            claimed.add(i)
    for i, n in enumerate(G.nodes):
        if n.op_type == "ReduceMean" and i not in claimed:
            m = _decomposed_norm(G, i)
            if m is not None and not claimed & set(m[0]):
                claimed.update(m[0])
                found.append((m[0], m[1], m[2], f"{m[3]} (decomposed, {len(m[0])} nodes)"))
    found.sort(key=lambda f: min(f[0]))
    return [(_group(G, "layernorm", idx, out, detail), x) for idx, out, x, detail in found]


# --------------------------------------------------------------------------------------- softmax

def _softmax_group(G: _Graph, i: int) -> RoleGroup:
    """A Softmax and what only passes its values on: casts, and the NaN guard
    ``Where(IsNaN(p), c, p)`` that eager attention adds for fully masked rows (Marian, BART)."""
    members, out = [i], G.nodes[i].output[0]
    for _ in range(8):
        readers = G.readers(out)
        ops = sorted(G.nodes[r].op_type for r in readers)
        nxt = None
        if len(readers) == 1 and ops[0] in _PASS:
            nxt = readers
        elif ops == ["IsNaN", "Where"]:
            isnan, where = sorted(readers, key=lambda r: G.nodes[r].op_type != "IsNaN")
            w = G.nodes[where]
            if list(w.input[::2]) == [G.nodes[isnan].output[0], out] and w.input[1] in G.const:
                nxt = [isnan, where]
        if nxt is None or out in G.outputs:
            break
        members += nxt
        out = G.nodes[nxt[-1]].output[0]
    extra = f" (+{len(members) - 1} pass-through)" if len(members) > 1 else ""
    return _group(G, "softmax", members, out, f"Softmax axis={_attr(G.nodes[i], 'axis', -1)}{extra}")


# ------------------------------------------------------------------------------------ embeddings

def _embedding_gathers(G: _Graph) -> dict[int, tuple[str, list[int], str | None]]:
    """Gather node -> (table initializer, its shape, the graph input its indices come from or None)."""
    out = {}
    for i, n in enumerate(G.nodes):
        if n.op_type != "Gather" or _attr(n, "axis", 0) != 0:
            continue
        src = G.init_source(n.input[0])
        if src is None or src[1]:
            continue
        t = G.inits[src[0]]
        if len(t.dims) == 2 and t.data_type in FLOAT_TYPES:
            out[i] = (src[0], list(t.dims), G.graph_input_behind(n.input[1]))
    return out


def _grow_block(G: _Graph, block: set[int], blocked: set[int]) -> None:
    """Add the ops that combine embedding lookups: arithmetic on block tensors and constants, casts."""
    changed = True
    while changed:
        changed = False
        tensors = {o for i in block for o in G.nodes[i].output}
        for t in list(tensors):
            for c in G.readers(t):
                n = G.nodes[c]
                if c in block or c in blocked:
                    continue
                ins = [x for x in n.input if x]
                if n.op_type in _PASS or (n.op_type in _ARITH and all(x in tensors or x in G.const for x in ins)):
                    block.add(c)
                    changed = True


def _components(G: _Graph, nodes: set[int]) -> list[set[int]]:
    parent = {i: i for i in nodes}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in nodes:
        for x in G.nodes[i].input:
            j = G.producer.get(x)
            if j in parent:
                parent[find(i)] = find(j)
    comps: dict[int, set[int]] = defaultdict(set)
    for i in nodes:
        comps[find(i)].add(i)
    return sorted(comps.values(), key=min)


def _block_outputs(G: _Graph, comp: set[int]) -> list[str]:
    outs = [o for i in sorted(comp) for o in G.nodes[i].output if o]
    return [o for o in outs if o in G.outputs or any(c not in comp for c in G.readers(o))]


def _embedding_groups(G: _Graph, norms: list[tuple[RoleGroup, str]]) -> list[RoleGroup]:
    gathers = _embedding_gathers(G)
    index = {name: i for i, name in enumerate(G.names)}
    norm_sets = [({index[n] for n in g.nodes}, g, x) for g, x in norms]
    in_norm = set().union(*(s for s, _, _ in norm_sets)) if norm_sets else set()
    block = set(gathers)
    _grow_block(G, block, in_norm)
    groups = []
    for comp in _components(G, block):
        outs = _block_outputs(G, comp)
        out = outs[-1] if outs else G.nodes[max(comp)].output[0]
        if len(outs) == 1 and out not in G.outputs:
            readers = set(G.readers(out))
            for nodes, g, x in norm_sets:
                if x == out and readers <= nodes:       # post-norm: the block ends at its LayerNorm
                    comp = comp | nodes
                    out = g.output
                    break
        tables = [f"{'token' if gathers[i][2] and gathers[i][1][0] > gathers[i][1][1] else 'table'} "
                  f"{gathers[i][0]} [{gathers[i][1][0]}x{gathers[i][1][1]}]"
                  + (f" by {gathers[i][2]}" if gathers[i][2] else " by computed indices")
                  for i in sorted(comp) if i in gathers]
        groups.append(_group(G, "embeddings", comp, out, "; ".join(tables)))
    return groups


def _vocab_tables(G: _Graph) -> dict[int, str]:
    """Row count -> table name, for tables indexed by a graph input (token embeddings)."""
    return {shape[0]: name for name, shape, src in _embedding_gathers(G).values()
            if src is not None and shape[0] > shape[1]}


# -------------------------------------------------------------------------------------- lm_head

def _weight_of(G: _Graph, n: onnx.NodeProto) -> tuple[int, str, list[int], int | None] | None:
    """(input index, initializer, initializer shape, output dim N) of a MatMul/Gemm's constant operand."""
    for k, x in enumerate(n.input[:2]):
        src = G.init_source(x) if x else None
        if src is None:
            continue
        shape = list(G.inits[src[0]].dims)
        eff = shape[::-1] if src[1] and len(shape) == 2 else shape
        if n.op_type == "Gemm" and k == 1 and len(eff) == 2:
            return k, src[0], shape, eff[0] if _attr(n, "transB", 0) else eff[1]
        if n.op_type == "MatMul" and k == 1 and len(eff) >= 2:
            return k, src[0], shape, eff[-1]
        return k, src[0], shape, None
    return None


def _tail(G: _Graph, t: str, depth: int = 0) -> tuple[str, list[int]] | None:
    """Follow ``t`` through value-preserving ops to a graph output: (output, nodes on the way)."""
    if t in G.outputs:
        return t, []
    if depth > 16:
        return None
    for c in G.readers(t):
        n = G.nodes[c]
        ok = n.op_type in _HEAD_TAIL or (
            n.op_type in _ARITH and all(x in G.const for x in n.input if x and x != t))
        if ok and n.output:
            r = _tail(G, n.output[0], depth + 1)
            if r is not None:
                return r[0], [c, *r[1]]
    return None


def _tied(G: _Graph, n: onnx.NodeProto, w: tuple, table: str) -> bool:
    arr = numpy_helper.to_array(G.inits[w[1]])
    if G.init_source(n.input[w[0]])[1]:
        arr = arr.T
    if n.op_type == "Gemm" and _attr(n, "transB", 0):
        arr = arr.T
    tab = numpy_helper.to_array(G.inits[table])
    return arr.shape == tab.T.shape and np.array_equal(arr, tab.T)


def _head_groups(G: _Graph) -> list[RoleGroup]:
    vocab = _vocab_tables(G)
    heads = []
    for i, n in enumerate(G.nodes):
        w = _weight_of(G, n) if n.op_type in QUANTIZABLE else None
        tail = _tail(G, n.output[0]) if w is not None and w[3] is not None else None
        if tail is None:
            continue
        last = G.output_last_dim(tail[0])
        if last is None or last == w[3]:
            heads.append((i, n, w, tail))
    lm = [h for h in heads if h[2][3] in vocab]
    groups = []
    for i, n, w, (out, via) in lm or heads:
        if lm:
            table = vocab[w[3]]
            tie = f"tied to {table}" if _tied(G, n, w, table) else "untied"
            detail = f"vocabulary logits [V={w[3]}] -> '{out}', weight {w[1]} {w[2]} ({tie})"
        else:
            detail = f"classifier head [N={w[3]}] -> '{out}', weight {w[1]} {w[2]} (no vocabulary-sized output)"
        groups.append(_group(G, "lm_head", [i, *via], out, detail))
    return groups


# ------------------------------------------------------------------------------------------- gated MLP

_FUSED_ACTS = {"Swish", "Gelu", "FastGelu", "QuickGelu"}


def _projection_input(G: _Graph, t: str) -> str | None:
    """The activation a MatMul/Gemm with a constant weight reads, if ``t`` is its output (after a bias Add)."""
    n = G.prod(t)
    if n is not None and n.op_type == "Add" and any(x in G.const for x in n.input):
        n = G.prod(next(x for x in n.input if x not in G.const))
    if n is None or n.op_type not in QUANTIZABLE or _weight_of(G, n) is None:
        return None
    acts = [x for x in n.input[:2] if x and x not in G.const]
    return acts[0] if len(acts) == 1 else None


def _activation(G: _Graph, t: str) -> tuple[list[int], str, str] | None:
    """(nodes, their input, name) if ``t`` is SiLU(g) as ``Mul(g, Sigmoid(g))`` or a fused activation of g."""
    n = G.prod(t)
    if n is None:
        return None
    if n.op_type in _FUSED_ACTS:
        return [G.producer[t]], n.input[0], n.op_type
    if n.op_type != "Mul":
        return None
    for g, s in (n.input[:2], n.input[1::-1]):
        sig = G.prod(s)
        if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == g and G.readers(s) == [G.producer[t]]:
            return [G.producer[s], G.producer[t]], g, "SiLU"
    return None


def _gate_groups(G: _Graph) -> list[RoleGroup]:
    groups = []
    for i, n in enumerate(G.nodes):
        if n.op_type != "Mul" or len(n.input) != 2 or any(x in G.const for x in n.input):
            continue
        for a, b in (n.input, n.input[::-1]):
            act = _activation(G, a)
            if act is None or len(G.readers(a)) != 1:
                continue
            x = _projection_input(G, act[1])
            if x is not None and x == _projection_input(G, b):
                glu = {"SiLU": "SwiGLU", "Swish": "SwiGLU"}.get(act[2], f"{act[2]}-GLU")
                groups.append(_group(G, "mlp_gate", [*act[0], i], n.output[0],
                                     f"{glu}: {act[2]}(x W_gate) * (x W_up)"))
                break
    return groups


# ------------------------------------------------------------------------------------------- API

def _name_hint_group(G: _Graph, role: str) -> list[RoleGroup]:
    rx = re.compile(NAME_HINTS[role])
    hit = [i for i, n in enumerate(G.nodes) if n.name and rx.search(n.name)]
    if not hit:
        return []
    detail = f"by node-name hint /{NAME_HINTS[role]}/ (no structural match)"
    return [_group(G, role, hit, G.nodes[hit[-1]].output[0] if G.nodes[hit[-1]].output else "", detail)]


def _find_roles(G: _Graph) -> dict[str, list[RoleGroup]]:
    norms = _norm_groups(G)
    roles = {
        "layernorm": [g for g, _ in norms],
        "softmax": [_softmax_group(G, i) for i, n in enumerate(G.nodes) if n.op_type == "Softmax"],
        "embeddings": _embedding_groups(G, norms),
        "lm_head": _head_groups(G),
        "mlp_gate": _gate_groups(G),
    }
    for role in NAME_HINTS:
        if not roles[role]:
            roles[role] = _name_hint_group(G, role)
    return roles


def find_roles(model: onnx.ModelProto) -> dict[str, list[RoleGroup]]:
    """Role -> groups, for every role in ``ROLES`` (empty lists where a role is absent)."""
    return _find_roles(_Graph(model))


def node_roles(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Analysis node name -> the roles whose groups contain it (nodes in no group are left out)."""
    out: dict[str, list[str]] = defaultdict(list)
    for role, groups in find_roles(model).items():
        for g in groups:
            for n in g.nodes:
                if role not in out[n]:
                    out[n].append(role)
    return dict(out)
