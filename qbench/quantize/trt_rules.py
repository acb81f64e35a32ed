"""What TensorRT's explicit quantization makes of a Q/DQ ONNX model, read from the graph alone.

For a model qbench did not write (NNCF, ModelOpt, ONNX Runtime's quantizer, a team's own INT8 file) this says,
before any build, which MatMul/Gemm nodes are quantized, in which format, and whether TensorRT's rules for
explicit quantization accept each; and, after a failed build, what the parser's message means in words.

The rules (TensorRT 10/11 and TensorRT-RTX, explicit Q/DQ, strongly typed):

- a Q/DQ pair is INT8 (also FP8, or INT4/FP4 weight-only blocks); INT16 and INT32 are refused. UINT8 with a
  zero point of 0 (NNCF writes it after Softmax) parses, and TensorRT-RTX 1.7 runs the MatMul reading it in
  Int8 (seen in its build log); with a non-zero zero point it is refused like any asymmetric Q/DQ;
- its zero point is 0: asymmetric quantization is refused by the parser (``shiftIsAllZeros(zeroPoint)``);
- activations are quantized per tensor for an INT8 GEMM: TensorRT-RTX 1.7 builds an activation quantized per
  channel, but dequantizes it and runs the MatMul in float (a fused Cast/Mul/Fc layer, in its build log);
- ONNX Runtime's integer operators (MatMulInteger, QLinearMatMul, DynamicQuantizeLinear, ...) are not
  TensorRT operators;
- a MatMul/Gemm computes in INT8 only when both of its inputs come from a DequantizeLinear; one float input
  leaves it float (TensorRT does not insert the missing quantization).

One refused node fails the whole build: the parser stops at it. ``check`` finds every such node.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QUANTIZABLE = {"MatMul", "Gemm"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}
INTEGER_OPS = {"MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv", "DynamicQuantizeLinear",
               "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat", "QGemm", "MatMulNBits"}
ACCEPTED_TYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.FLOAT8E4M3FN: "fp8e4m3",
                  TensorProto.INT4: "int4"}
if hasattr(TensorProto, "FLOAT4E2M1"):
    ACCEPTED_TYPES[TensorProto.FLOAT4E2M1] = "fp4"
# Weight-only formats: TensorRT takes them on a constant weight, not on an activation.
WEIGHT_ONLY = {"int4", "fp4"}
# Ops a DequantizeLinear's output may pass through on its way to a MatMul and still quantize it: TensorRT moves
# a DQ past data-movement ops (NNCF puts a Transpose and a Reshape between the value projection's DQ and the
# attention MatMul; TensorRT-RTX's build log shows that MatMul in Int8).
MOVES = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}

WHY = {
    "zero_point": "non-zero zero point: the tensor is quantized asymmetrically, and TensorRT takes only "
                  "symmetric Q/DQ (zero point 0)",
    "int32": "INT32 DequantizeLinear (a bias quantized to INT32, as ONNX Runtime's quantize_static writes): "
             "TensorRT dequantizes only INT8, FP8 and INT4/FP4",
    "type": "a Q/DQ data type TensorRT does not take",
    "integer_op": "an ONNX Runtime integer operator, not a TensorRT one (quantize_dynamic and QOperator "
                  "models use them): TensorRT takes explicit QuantizeLinear/DequantizeLinear only",
    "act_per_channel": "an activation quantized per channel: TensorRT dequantizes it and runs the MatMul in float",
}


@dataclass
class InputFormat:
    tensor: str
    format: str            # "float", or e.g. "int8 per-tensor", "int8 per-channel(axis=1)", "uint8 zp=128 per-tensor"
    weight: bool           # a constant (an initializer behind the DequantizeLinear)
    problem: str = ""      # a WHY key: the parser refuses this Q/DQ


@dataclass
class MatMulCheck:
    name: str
    op_type: str
    inputs: list[InputFormat] = field(default_factory=list)
    tensorrt: str = "float"  # "int8" (or the format's name), "float" (some input not quantized), "rejected"
    reason: str = ""


@dataclass
class Report:
    matmuls: list[MatMulCheck]
    refused: list[dict]     # {"node", "op_type", "problem", "why"}: nodes the parser stops at
    producer: dict

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.matmuls:
            out[m.tensorrt] = out.get(m.tensorrt, 0) + 1
        return out

    def summary(self) -> dict:
        """What the manifest keeps: counts per TensorRT outcome and the first refused nodes, with why."""
        kinds: dict[str, int] = {}
        for r in self.refused:
            kinds[r["problem"]] = kinds.get(r["problem"], 0) + 1
        return {"matmul_gemm": len(self.matmuls), "tensorrt": self.counts(), "parser_refuses": len(self.refused),
                "refused_by_kind": kinds, "refused_first": self.refused[:3]}

    def as_json(self) -> dict:
        return {"producer": self.producer, "matmuls": [asdict(m) for m in self.matmuls], "refused": self.refused,
                "summary": self.summary()}


def producer(model: onnx.ModelProto) -> dict:
    """What the ONNX file says made it: producer name and version, and metadata properties."""
    out = {"producer_name": model.producer_name, "producer_version": model.producer_version,
           "domain": model.domain, "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                                                default=None)}
    props = {p.key: p.value[:200] for p in model.metadata_props}
    if props:
        out["metadata"] = props
    return {k: v for k, v in out.items() if v not in ("", None)}


def _const(name: str, inits: dict, consts: dict) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    return consts.get(name)


def _qdq_format(node: onnx.NodeProto, inits: dict, consts: dict, elem: dict) -> tuple[str, str]:
    """(format in words, problem key or '') of one QuantizeLinear/DequantizeLinear."""
    if node.op_type == "DequantizeLinear":
        dtype = elem.get(node.input[0])
    else:  # QuantizeLinear: the zero point's type, else UINT8 (ONNX's default)
        dtype = elem.get(node.input[2]) if len(node.input) > 2 and node.input[2] else TensorProto.UINT8
        attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        dtype = attr or dtype
    scale = _const(node.input[1], inits, consts)
    zp = _const(node.input[2], inits, consts) if len(node.input) > 2 and node.input[2] else None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
    if block:
        gran = f"blocked({block})"
    elif scale is not None and scale.size > 1:
        gran = f"per-channel(axis={axis})"
    else:
        gran = "per-tensor"
    tname = ACCEPTED_TYPES.get(dtype) or (TensorProto.DataType.Name(dtype).lower() if dtype else "unknown")
    nonzero = zp is not None and zp.dtype.kind in "iu" and bool(np.any(zp != 0))
    text = f"{tname}{f' zp={int(np.ravel(zp)[0])}' if nonzero else ''} {gran}"
    if nonzero:  # whatever the type: the parser checks the zero point first
        return text, "zero_point"
    if dtype == TensorProto.UINT8:  # parsed when symmetric (zero point 0): see the module's docstring
        return text, ""
    if dtype == TensorProto.INT32:
        return text, "int32"
    if dtype not in ACCEPTED_TYPES:
        return text, "type"
    if nonzero:
        return text, "zero_point"
    return text, ""


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    elem = {t.name: t.data_type for t in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.elem_type:
            elem.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for n in model.graph.node:  # a QuantizeLinear's output type is its zero point's (or output_dtype)
        if n.op_type == "QuantizeLinear":
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
            attr = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
            elem[n.output[0]] = attr or (elem.get(zp, TensorProto.UINT8) if zp else TensorProto.UINT8)
        elif n.op_type == "Constant":
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None:
                elem[n.output[0]] = t.data_type
        elif n.op_type == "DynamicQuantizeLinear":
            elem[n.output[0]] = TensorProto.UINT8
        elif (n.op_type in MOVES or n.op_type == "Gather") and n.input and n.input[0] in elem:
            elem.setdefault(n.output[0], elem[n.input[0]])  # data movement keeps the type
    return elem


def check(model: onnx.ModelProto) -> Report:
    """Every MatMul/Gemm's input formats and what TensorRT makes of it; every node the parser refuses."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(a.t) for n in g.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    elem = _element_types(model)
    producer_of = {o: n for n in g.node for o in n.output}
    const = set(inits) | set(consts)
    for n in g.node:  # computed from constants only (a float weight's QuantizeLinear, a Cast of a weight)
        if n.input and all(not x or x in const for x in n.input):
            const.update(n.output)
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node)]
    refused: list[dict] = []
    fmt_of: dict[int, tuple[str, str]] = {}
    for i, n in enumerate(g.node):
        if n.op_type in QDQ:
            fmt_of[id(n)] = _qdq_format(n, inits, consts, elem)
            if fmt_of[id(n)][1]:
                p = fmt_of[id(n)][1]
                refused.append({"node": names[i], "op_type": n.op_type, "problem": p, "why": WHY[p]})
        elif n.op_type in INTEGER_OPS:
            refused.append({"node": names[i], "op_type": n.op_type, "problem": "integer_op", "why": WHY["integer_op"]})
    out = []
    for i, n in enumerate(g.node):
        if n.op_type not in QUANTIZABLE and n.op_type not in INTEGER_OPS:
            continue
        if n.op_type in INTEGER_OPS and "MatMul" not in n.op_type and "Gemm" not in n.op_type:
            continue
        m = MatMulCheck(names[i], n.op_type)
        if n.op_type in INTEGER_OPS:
            m.tensorrt, m.reason = "rejected", WHY["integer_op"]
            m.inputs = [InputFormat(x, "integer", x in inits) for x in n.input[:2]]
            out.append(m)
            continue
        formats = []
        for x in n.input[:2]:
            dq = producer_of.get(x)
            while dq is not None and dq.op_type in MOVES and dq.input:
                dq = producer_of.get(dq.input[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                m.inputs.append(InputFormat(x, "float", x in const))
                continue
            text, problem = fmt_of[id(dq)]
            weight = dq.input[0] in const
            m.inputs.append(InputFormat(x, text, weight, problem))
            formats.append(text.split()[0])
        bad = [f for f in m.inputs if f.problem]
        per_channel = [f for f in m.inputs if f.format != "float" and not f.weight and not f.format.endswith("per-tensor")]
        if bad:
            m.tensorrt, m.reason = "rejected", f"{bad[0].tensor}: {WHY[bad[0].problem]}"
        elif per_channel:
            m.reason = f"{per_channel[0].tensor}: {WHY['act_per_channel']}"
        elif len(formats) == 2:
            m.tensorrt = "int8" if set(formats) <= {"int8", "uint8"} else "/".join(dict.fromkeys(formats))
        elif formats:
            m.reason = "only one input is quantized: TensorRT runs it in float"
        out.append(m)
    return Report(out, refused, producer(model))


_NODE = re.compile(r"with name: (\S+?) and operator: (\S+?)[ :]")


def _stated(error: str) -> str:
    """The cause the parser's message states itself, in words ('' when it states none)."""
    low = error.lower()
    if "zero point" in low or "zeropoint" in low:
        return WHY["zero_point"]
    if "no importer registered for op" in low or "unsupported operator" in low:
        op = re.search(r"op: (\w+)", error)
        return f"{op.group(1) if op else 'an operator'}: not an operator TensorRT's ONNX parser supports"
    return ""


def explain_recorded(error: str, why: str) -> str:
    """A recorded explanation, with the cause the parser's message states put first where the graph reading
    named another (the message is TensorRT's own word; the count of further refused nodes is kept)."""
    stated = _stated(error)
    if not stated or not why or stated in why:
        return why
    m = _NODE.search(error)
    tail = why[why.rfind(" ("):] if why.endswith("refuse).") else "."
    return f"{m.group(2)} {m.group(1)}: {stated}{tail}" if m else stated[0].upper() + stated[1:] + tail


def explain(error: str, model: onnx.ModelProto | None = None) -> str:
    """A TensorRT parser error in words: what is wrong with the node it names, read from the model where it
    is given, else from the message alone (a cause the message states comes first). '' when neither says."""
    m = _NODE.search(error)
    if m and model is not None:
        name, op = m.group(1), m.group(2)
        rep = check(model)
        hit = next((r for r in rep.refused if r["node"] == name), None)
        if hit:
            more = len(rep.refused) - 1
            tail = f" ({more} more node(s) the parser would refuse)" if more > 0 else ""
            return explain_recorded(error, f"{op} {name}: {hit['why']}{tail}.")
    stated = _stated(error)
    if stated:
        return stated[0].upper() + stated[1:] + "."
    if m and m.group(2) == "DequantizeLinear" and "bias" in m.group(1).lower():
        return WHY["int32"][0].upper() + WHY["int32"][1:] + "."
    return ""


def format_report(rep: Report, as_json: bool = False) -> str:
    """``qbench inspect`` of a quantized model: per MatMul/Gemm its input formats and TensorRT's outcome, then
    the nodes the parser refuses, grouped by why."""
    if as_json:
        import json

        return json.dumps(rep.as_json(), indent=1)
    width = max([len(m.name) for m in rep.matmuls] + [4])
    fw = max([len(i.format) for m in rep.matmuls for i in m.inputs] + [6])
    lines = [f"{'node':{width}s}  {'op':6s}  {'input A':{fw}s}  {'input B':{fw}s}  TensorRT"]
    for m in rep.matmuls:
        a, b = (m.inputs + [InputFormat("", "-", False)] * 2)[:2]
        lines.append(f"{m.name:{width}s}  {m.op_type:6s}  {a.format:{fw}s}  {b.format:{fw}s}  {m.tensorrt}"
                     + (f" ({m.reason})" if m.reason else ""))
    c = rep.counts()
    lines.append(f"\n{len(rep.matmuls)} MatMul/Gemm nodes: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
    made = " ".join(x for x in (rep.producer.get("producer_name"), rep.producer.get("producer_version")) if x)
    lines.append(f"produced by: {made or 'not recorded in the model'}")
    if not rep.refused:
        lines.append("TensorRT's parser: no Q/DQ or operator it refuses")
        return "\n".join(lines)
    by: dict[str, list[str]] = {}
    for r in rep.refused:
        by.setdefault(r["problem"], []).append(r["node"])
    lines.append(f"TensorRT's parser refuses {len(rep.refused)} node(s), so the build fails:")
    for p, nodes in by.items():
        lines.append(f"  {len(nodes)} x {WHY[p]}; first: {nodes[0]}")
    return "\n".join(lines)
