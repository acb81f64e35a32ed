"""SmoothQuant (Xiao et al., 2023) as an exact FP32 graph transform, before any Q/DQ is placed.

For an activation X that linear layers read (X @ W), a per-input-channel factor s moves range from the
activation into the weights: X @ W = (X / s) @ (s * W). With a = max |X_j| over the calibration set (the
statistics pass's ``channel_absmax``) and w = max |W_j,:| over every weight reading X,

    s_j = a_j ** alpha / w_j ** (1 - alpha)

The division by s is folded into the norm that produces X, so no node is added on the quantized path:

- ``LayerNormalization``: its scale and bias are divided by s;
- a decomposed norm ending in ``Mul(x, gamma)`` (RMSNorm) or ``Add(Mul(x, gamma), beta)`` (LayerNorm): gamma
  (and beta) are divided by s.

The multiplication by s goes into the rows of every MatMul weight that reads X. Any other reader of X (BERT's
residual Add reads the same LayerNorm output) gets X back as ``Mul(X / s, s)``: one float pointwise node off the
quantized path, so the transformed graph computes the same function. Shape-only readers need nothing.

Linear layers whose input no such norm produces (the attention output projection, whose input comes from the
attention's batched matmul through Transpose/Reshape; the FFN down projection, whose input is GELU's output,
which no per-channel factor passes through exactly) are left as they are with ``targets="norm"`` (the default).
With ``targets="all"`` they are smoothed too, through an explicit ``Mul(X, 1/s)`` node in front of them: exact in
FP32, one float pointwise node more per such activation, and the quantized tensor is that Mul's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Clamp of the factors: a dead channel (a or w zero) gets 1, and no factor leaves [1e-5, 1e5].
S_MIN, S_MAX = 1e-5, 1e5
SHAPE_ONLY = {"Shape", "Size"}
_LAYOUT = {"Reshape", "Transpose", "Identity"}


@dataclass
class Group:
    """One smoothable activation: the tensor, the initializers its norm is divided in, the MatMuls that read it."""

    tensor: str
    norm: str                                              # the producing node's name
    divide: list[str] = field(default_factory=list)        # initializers (length C) divided by s
    matmuls: list[onnx.NodeProto] = field(default_factory=list)
    others: list[onnx.NodeProto] = field(default_factory=list)  # readers that get Mul(X / s, s)
    kind: str = "norm"              # which alpha applies: one of qbench.config.transforms.GROUP_KINDS

    @property
    def folded(self) -> bool:
        return bool(self.divide)


def _vector(inits: dict, name: str) -> np.ndarray | None:
    t = inits.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return a if a.ndim == 1 and a.dtype == np.float32 else None


def _fold_targets(node: onnx.NodeProto, inits: dict, producer: dict, readers: dict) -> list[str] | None:
    """The per-channel initializers that divide the output of ``node`` by s exactly, or None."""
    if node.op_type == "LayerNormalization":
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        names = [x for x in node.input[1:3] if x]
        return names if axis == -1 and all(_vector(inits, x) is not None for x in names) else None
    if node.op_type == "Mul":
        vec = [x for x in node.input if _vector(inits, x) is not None]
        return vec[:1] if len(vec) == 1 and len(node.input) == 2 else None
    if node.op_type == "Add":  # Add(Mul(x, gamma), beta): both divided; the Mul must feed this Add only
        vec = [x for x in node.input if _vector(inits, x) is not None]
        other = [x for x in node.input if x not in vec]
        if len(vec) != 1 or len(other) != 1 or other[0] not in producer:
            return None
        mul = producer[other[0]]
        if mul.op_type != "Mul" or len(readers.get(other[0], [])) != 1:
            return None
        inner = _fold_targets(mul, inits, producer, readers)
        return inner + vec if inner else None
    return None


def _kind(t: str, inits: dict, producer: dict) -> str:
    """attn_out when ``t`` is a batched MatMul's output (two activations, e.g. probs x V) through layout-only
    nodes; else ffn_down (in a transformer: the activation function's output that the FFN down projection reads)."""
    for _ in range(8):
        n = producer.get(t)
        if n is None:
            break
        if n.op_type == "MatMul":
            return "attn_out" if all(x not in inits for x in n.input) else "ffn_down"
        if n.op_type not in _LAYOUT:
            break
        t = n.input[0]
    return "ffn_down"


def find_groups(model: onnx.ModelProto, targets: str = "norm") -> list[Group]:
    """Every activation read by MatMuls with a 2-D weight and produced by a norm the division folds into; with
    ``targets="all"``, also the others (``divide`` empty: smoothed by an inserted Mul)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in dict.fromkeys(n.input):
            if x:
                readers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    groups = []
    for t, rs in readers.items():
        if t in inits or t not in producer or t in outputs:
            continue
        mms = [n for n in rs if n.op_type == "MatMul" and n.input[0] == t and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2 and n.input[1] != t]
        if not mms:
            continue
        fold = _fold_targets(producer[t], inits, producer, readers)
        c = inits[mms[0].input[1]].dims[0]
        if any(inits[m.input[1]].dims[0] != c for m in mms):
            continue
        if fold and all(len(_vector(inits, x)) == c for x in fold):
            others = [n for n in rs if n not in mms and n.op_type not in SHAPE_ONLY]
            groups.append(Group(t, producer[t].name, fold, mms, others))
        elif targets == "all":
            groups.append(Group(t, producer[t].name, [], mms, [], _kind(t, inits, producer)))
    return groups


def alpha_of(alpha: float | Mapping[str, float], kind: str) -> float:
    """The alpha of a group kind: one value for all, or the mapping's entry (validated in qbench.config.transforms
    to name every kind the targets smooth)."""
    return float(alpha) if isinstance(alpha, (int, float)) else float(alpha[kind])


def factors(channel_absmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s per input channel: a ** alpha / w ** (1 - alpha), w the max |row| over every weight; clamped."""
    a = np.asarray(channel_absmax, dtype=np.float64)
    w = np.max([np.abs(np.asarray(x, dtype=np.float64)).max(axis=1) for x in weights], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(a, alpha) / np.power(w, 1.0 - alpha)
    s = np.where((a > 0) & (w > 0) & np.isfinite(s), s, 1.0)
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def smooth(fp32: onnx.ModelProto, channel_absmax: dict[str, np.ndarray], alpha: float | Mapping[str, float],
           targets: str = "norm", factor_fn=None) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, str]]:
    """(a transformed copy of ``fp32``, {quantized tensor: s}, {quantized tensor: the tensor its channel
    statistics are of}); ``fp32`` is left untouched. A folded group's quantized tensor keeps its name; an
    inserted Mul's output is ``<tensor>_smoothed``. ``alpha``: one value, or one per group kind (``Group.kind``).

    ``channel_absmax``: max |x| per channel of each tensor, from the statistics pass; a group whose tensor is
    missing there is left alone. An initializer another node also reads is copied before it is changed.
    ``factor_fn(channel_absmax, weights) -> s`` replaces SmoothQuant's factors (AWQ's search: qbench.quantize.awq).
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    g = model.graph
    groups = [gr for gr in find_groups(model, targets) if gr.tensor in channel_absmax]
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    by_name = {n.name: n for n in g.node}
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}

    def rewrite(node: onnx.NodeProto, name: str, value: np.ndarray) -> None:
        """Give ``node`` the changed initializer: in place when ``node`` is its only reader, else a copy."""
        if uses.get(name, 0) <= 1:
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
        new = f"{name}_smoothquant_{len(inits)}"
        g.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
        inits[new] = g.initializer[-1]
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = new

    for gr in groups:
        ws = [numpy_helper.to_array(inits[m.input[1]]) for m in gr.matmuls]
        s = (factor_fn(channel_absmax[gr.tensor], ws) if factor_fn
             else factors(channel_absmax[gr.tensor], ws, alpha_of(alpha, gr.kind)))
        for m, w in zip(gr.matmuls, ws):
            rewrite(m, m.input[1], w * s[:, None])
        if not gr.folded:  # Mul(X, 1/s) in front of the MatMuls
            new, iname = f"{gr.tensor}_smoothed", f"{gr.tensor}_smoothquant_inv_s"
            g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), iname))
            after.setdefault(gr.tensor, []).append(
                helper.make_node("Mul", [gr.tensor, iname], [new], name=f"{gr.tensor}_smooth"))
            for m in gr.matmuls:
                m.input[0] = new
            out[new], source[new] = s, gr.tensor
            continue
        out[gr.tensor], source[gr.tensor] = s, gr.tensor
        norm = by_name[gr.norm]
        for name in gr.divide:
            owner = norm if name in norm.input else next(n for n in g.node if name in n.input)
            rewrite(owner, name, numpy_helper.to_array(inits[name]) / s)
        if gr.others:
            sname, back = f"{gr.tensor}_smoothquant_s", f"{gr.tensor}_unsmoothed"
            g.initializer.append(numpy_helper.from_array(s, sname))
            after[gr.tensor] = [helper.make_node("Mul", [gr.tensor, sname], [back], name=f"{gr.tensor}_unsmooth")]
            for n in gr.others:
                for i, x in enumerate(n.input):
                    if x == gr.tensor:
                        n.input[i] = back
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        g.node.append(n)
        for o in n.output:
            g.node.extend(after.get(o, []))
    return model, out, source


def smoothed_absmax(channel_absmax: np.ndarray, s: np.ndarray) -> float:
    """Per-tensor max |x / s| of a smoothed tensor, from the per-channel max |x| of the same pass."""
    return float(np.max(np.asarray(channel_absmax, dtype=np.float64) / s.astype(np.float64)))
