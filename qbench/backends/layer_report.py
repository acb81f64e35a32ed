"""What precision each engine layer really runs: parsed from TensorRT's DETAILED build log.

TensorRT-RTX (and TensorRT >= 10 at ProfilingVerbosity.DETAILED) logs the final engine's layers as
``Name: <layer>, LayerType: <type>, Inputs: [...], Constants: [...], Outputs: [...], TacticName: ...,
Metadata: [ONNX Layer: <node>][ONNX Layer: <node>]``. The metadata names every ONNX node a layer
came from, so each node can be joined to the layer that runs it. The layer *name* is not enough: a
fused FFN layer is called ``__myl_FcAdd_myl1_15`` and only its metadata says which MatMul it holds.
The engine inspector would need a GPU to deserialize the engine, so the log is the only source on a
CPU-only build machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

# The precision a layer computes in: the narrowest datatype among its inputs (the activations it reads); a narrow
# type among its constants alone (weights) with float inputs is a weight-only layer: TensorRT-RTX fuses the weight's
# dequantization into a GEMM that computes in the float type of its input (``__myl_..CastMulCastFc`` layers), so
# such a layer is "Int4 weight-only", never "Int4" (which would claim INT4 arithmetic on the activations).
_NARROW = ("FP4", "Int4", "FP8", "Int8")
WEIGHT_ONLY = tuple(f"{d} weight-only" for d in _NARROW)
_COMPUTE_ORDER = _NARROW + WEIGHT_ONLY + ("Half", "BFloat16", "Float")
LINEAR_OPS = ("MatMul", "Gemm")


@dataclass
class Layer:
    name: str
    type: str
    inputs: list[str]     # datatypes of the inputs, in order
    outputs: list[str]
    constants: list[str] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)

    @property
    def is_gemm(self) -> bool:
        # A weight-only GEMM is a runtime fusion whose name ends in "Fc" (fully connected), e.g. CastMulCastFc.
        return ("gemm" in self.type.lower() or self.type.lower() == "matrixmultiply"
                or bool(re.search(r"Fc_myl\d+_\d+$", self.name)))

    @property
    def compute(self) -> str:
        narrow = next((d for d in _NARROW if d in self.inputs), None)
        if narrow:
            return narrow
        weights = next((d for d in _NARROW if d in self.constants), None)
        if weights:  # float activations, narrow weights: weight-only (an embedding Gather's table lands here too)
            return f"{weights} weight-only"
        seen = set(self.inputs) | set(self.constants)
        return next((d for d in _COMPUTE_ORDER if d in seen), "none")


def _section(entry: str, key: str, nxt: tuple[str, ...]) -> str:
    start = entry.find(f"{key}: [")
    if start < 0:
        return ""
    ends = [i for i in (entry.find(f", {k}:", start) for k in nxt) if i >= 0]
    return entry[start:min(ends) if ends else len(entry)]


def parse_layers(log_lines: list[str]) -> list[Layer]:
    """The last ``Layers:`` block of a DETAILED build log, one Layer per engine layer."""
    text = "\n".join(log_lines)
    start = text.rfind("Layers:")
    if start < 0:
        return []
    layers = []
    for entry in text[start:].split("\nName: ")[1:]:
        entry = entry.split("\n")[0]
        name = entry.split(", LayerType:")[0]
        kind = re.search(r"LayerType: ([^,]+)", entry)
        dtypes = {k: re.findall(r"Datatype: (\w+)", _section(entry, k, nxt)) for k, nxt in (
            ("Inputs", ("Constants", "Outputs")), ("Constants", ("Outputs",)), ("Outputs", ("TacticName", "Metadata")))}
        meta = re.findall(r"\[ONNX Layer: ([^\]]+)\]", entry)
        # Without metadata (older logs), a fused layer's name joins its sources with '+'.
        nodes = meta or [re.sub(r"_myl\d+_\d+$", "", n) for n in name.split("+")]
        layers.append(Layer(name=name, type=kind.group(1).strip() if kind else "?", inputs=dtypes["Inputs"],
                            constants=dtypes["Constants"], outputs=dtypes["Outputs"], onnx_nodes=nodes))
    return layers


def linear_flops_per_token(model) -> dict[str, int]:
    """K x N of every MatMul/Gemm with a constant weight (behind its DequantizeLinear): multiply-adds per token."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    # A weight may reach the MatMul through DequantizeLinear and/or a Cast (the fp16 baseline's copies), or
    # through a QuantizeLinear of a float weight (ModelOpt keeps weights float behind a Q/DQ pair).
    src = {n.output[0]: n.input[0] for n in model.graph.node
           if n.op_type in ("DequantizeLinear", "Cast", "QuantizeLinear")}
    out = {}
    for n in model.graph.node:
        if n.op_type in LINEAR_OPS and len(n.input) > 1:
            w = n.input[1]
            while w not in inits and w in src:
                w = src[w]
            if w in inits:
                out[n.name] = int(np.prod(numpy_helper.to_array(inits[w]).shape[-2:]))
    return out


def summarize(layers: list[Layer], model, excluded_nodes: list[str], *, keep_float: bool = False,
              fp32_nodes: list[str] = ()) -> dict:
    """Linear nodes by the precision of the layer that runs them, the INT8 share of linear FLOPs,
    and the exclusion check.

    An excluded node holds when the layer that runs it does not compute in Int8 (``keep_float``, the
    fp16 baseline's FP32 islands: when the layer touches Float data or fuses the node's Casts). ``fp32_nodes`` (an
    INT8-over-FP16 model's FP32 islands) are checked that way whatever ``keep_float`` says, and counted with the
    excluded nodes; one that is not also excluded from INT8 may sit in a layer that computes Int8. Violations are listed; excluded nodes that no layer names (folded away, e.g. a Cast) are
    counted as unseen, not as held.
    """
    flops = linear_flops_per_token(model)
    op_of = {n.name: n.op_type for n in model.graph.node}
    # A node may span several layers (a LayerNorm split into two kernels): all of them are checked.
    layers_of: dict[str, list[Layer]] = {}
    for layer in layers:
        for node in layer.onnx_nodes:
            layers_of.setdefault(node, []).append(layer)

    def compute(node: str) -> str:  # the narrowest precision any of the node's layers runs
        return min((la.compute for la in layers_of[node]),
                   key=lambda d: _COMPUTE_ORDER.index(d) if d in _COMPUTE_ORDER else len(_COMPUTE_ORDER))

    def float_held(la: Layer) -> bool:
        # Float I/O, or the layer fuses the Casts the graph puts around the node: a strongly typed
        # build must compute it as typed, which the log cannot show from inside a fused kernel.
        return "Float" in la.inputs + la.outputs + la.constants or any(op_of.get(x) == "Cast" for x in la.onnx_nodes)

    by_dtype: dict[str, int] = {}
    int8_flops = total_flops = 0
    for node, f in flops.items():
        if node in layers_of:
            dt = compute(node)
            by_dtype[dt] = by_dtype.get(dt, 0) + 1
            total_flops += f
            int8_flops += f if dt == "Int8" else 0
    bad_dtypes = set(_NARROW) | set(WEIGHT_ONLY)
    held, violations, unseen = [], [], []
    must_float = set(fp32_nodes) | (set(excluded_nodes) if keep_float else set())
    for n in dict.fromkeys([*excluded_nodes, *fp32_nodes]):
        # An FP32 island that is not an INT8 exclusion may share a fused kernel with the INT8 GEMMs the graph asks
        # for (Softmax inside TensorRT's INT8 attention kernel): the kernel's Int8 is theirs, so only the Float
        # test applies to it.
        if n not in layers_of:
            unseen.append(n)
        elif ((n in excluded_nodes and compute(n) in bad_dtypes)
              or (n in must_float and not all(float_held(la) for la in layers_of[n]))):
            violations.append(n)
        else:
            held.append(n)
    return {
        "layers": len(layers),
        "gemm_layers": sum(layer.is_gemm for layer in layers),
        "linear_nodes_by_dtype": by_dtype,
        "linear_nodes": len(flops),
        "linear_nodes_seen": sum(by_dtype.values()),
        "int8_linear_flop_share": (int8_flops / total_flops) if total_flops else 0.0,
        "int8_linear_flops": int8_flops,
        "linear_flops": total_flops,
        "reformat_layers": sum("reformat" in layer.type.lower() or "reformat" in layer.name.lower()
                               for layer in layers),
        # Standalone casts: layers that only convert (a fused cast costs no extra memory pass).
        "cast_layers": sum(layer.type.lower() == "cast" or (bool(layer.onnx_nodes) and all(
            op_of.get(n) == "Cast" for n in layer.onnx_nodes)) for layer in layers),
        "excluded_held": len(held),
        "excluded_unseen": len(unseen),
        "exclusion_violations": sorted(violations),
    }


def combine(summaries: list[dict]) -> dict:
    """Several graphs' summaries (an encoder and a decoder) as one: FLOPs and node counts added up."""
    i8 = sum(s["int8_linear_flops"] for s in summaries)
    tot = sum(s["linear_flops"] for s in summaries)
    dtypes: dict[str, int] = {}
    for s in summaries:
        for k, n in s["linear_nodes_by_dtype"].items():
            dtypes[k] = dtypes.get(k, 0) + n
    return {"int8_linear_flop_share": i8 / tot if tot else 0.0, "linear_nodes_by_dtype": dtypes}


def to_records(layers: list[Layer]) -> list[dict]:
    return [{**asdict(layer), "compute": layer.compute} for layer in layers]
