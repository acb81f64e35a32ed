"""QDQ construction: explicit Quantize/Dequantize pairs where TensorRT wants them.

Placement: on the inputs of MatMul and Gemm (linear layers and the attention batched matmuls),
activations per tensor, weights per output channel, stored as int8 initializers behind a
DequantizeLinear. Not on residual Adds, LayerNorm or Softmax. An exclusion keeps the excluded
node's input and output tensors in float, so every MatMul that reads them stays float too.

After writing, ``verify_scales`` checks that every Q/DQ scale came from our table (see
DESIGN.md section 7 for why we never trust an inserter to have done so).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbench.calib import CalibrationTable, _listed
from qbench.config.formats import FormatCfg
from qbench.config.schema import ExclusionCfg
from qbench.quantize import formats
from qbench.config.errors import ModelError, QuantizationError, one_line
from qbench.quantize.roles import NAME_HINTS, canonical_role, find_roles, stable_names

QUANTIZABLE = {"MatMul", "Gemm"}
INTEGER_OPS = {"MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv", "DynamicQuantizeMatMul",
               "QAttention", "MatMulIntegerToFloat", "QGemm"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
ROLE_PATTERNS = NAME_HINTS  # name hints, used by qbench.quantize.roles only where a role finds no structural match


@dataclass
class QdqReport:
    quantized_nodes: list[str] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list)
    quantized_tensors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# Opsets a model may declare: QDQ with per-channel weights (DequantizeLinear's axis) needs 13; above what the
# installed onnx package knows, neither its checker nor ONNX Runtime can be trusted with the graph.
MIN_OPSET = 13


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def load_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file; a missing, unreadable or unsupported one is a one-line ModelError naming it."""
    path = Path(path)
    try:
        if not path.exists():
            raise ModelError(f"{path}: model file not found")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, not an ONNX model file")
    except (OSError, ValueError) as e:  # a NUL byte or an over-long name
        raise ModelError(f"{path}: not a usable model path ({e})") from None
    try:
        model = onnx.load(str(path))
    except OSError as e:  # the file itself, or its external data next to it
        raise ModelError(f"{path}: cannot read the ONNX model ({type(e).__name__}: "
                         f"{e.strerror or e}{f': {e.filename}' if e.filename else ''})") from None
    except MemoryError:  # not the file's fault: an isolated variant under executor.memory_mb says out of memory
        raise
    except Exception as e:  # onnx raises DecodeError and friends for a corrupt file
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    check_model_header(model, path)
    name_nodes(model)
    return model


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node of the main graph a unique name, in place: its own where it has one (the first of
    duplicates keeps it), else ``<op_type>_<index>`` (qbench.quantize.roles.stable_names). Exclusions, roles, the
    search's units and the layer report all address nodes by name; some exporters leave names empty, and a
    graph of empty names would match an exclusion on every node or on none."""
    for n, name in zip(model.graph.node, stable_names(model)):
        if n.name != name:
            n.name = name


def check_model_header(model: onnx.ModelProto, path: Path | str) -> None:
    """A graph and a supported default-domain opset, or a ModelError naming ``path``.

    An empty or foreign file can parse as an (empty) ModelProto: protobuf has no magic number.
    """
    if not model.HasField("graph") or not (model.graph.node or model.graph.input or model.graph.output):
        raise ModelError(f"{path}: not an ONNX model (no graph; an empty or foreign file?)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{path}: the model declares no ONNX (ai.onnx) opset")
    if not MIN_OPSET <= opset <= max_opset():
        raise ModelError(f"{path}: ONNX opset {opset} is not supported (qbench needs {MIN_OPSET}..{max_opset()}: "
                         "QDQ with per-channel weights needs 13); re-export the model with another opset")


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def activation_inputs(node: onnx.NodeProto, inits: dict) -> list[str]:
    # Only A and B: Gemm's C (the bias) is never quantized.
    return [x for x in node.input[:2] if x and x not in inits]


def weight_inputs(node: onnx.NodeProto, inits: dict) -> list[tuple[int, str]]:
    return [(i, x) for i, x in enumerate(node.input[:2]) if x in inits]


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Every activation that some MatMul/Gemm reads: the union any variant of this model may quantize."""
    inits = _initializers(model)
    out: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE:
            for x in activation_inputs(node, inits):
                out[x] = None
    if not out:
        n = sum(node.op_type in QUANTIZABLE for node in model.graph.node)
        raise ModelError(f"model graph '{model.graph.name}': nothing to quantize: "
                         + ("no MatMul/Gemm node" if not n else f"its {n} MatMul/Gemm node(s) read no activation")
                         + " (qbench quantizes the activation inputs of MatMul and Gemm)")
    return list(out)


def match_exclusions(model: onnx.ModelProto, excl: ExclusionCfg) -> tuple[set[str], list[str]]:
    """Names of excluded nodes, and a warning for each pattern or role that matched nothing.

    Roles come from the graph's structure (qbench.quantize.roles.find_roles), not from node names.
    """
    name_nodes(model)  # a model not read by load_model may still have unnamed nodes
    nodes = list(model.graph.node)
    matched: set[str] = set()
    warnings: list[str] = []
    for op in excl.op_types:
        hit = {n.name for n in nodes if n.op_type == op}
        if not hit:
            warnings.append(f"exclusion op type '{op}' matches no node")
        matched |= hit
    for pat in excl.names:
        rx = re.compile(pat)
        hit = {n.name for n in nodes if rx.search(n.name)}
        if not hit:
            warnings.append(f"exclusion name pattern '{pat}' matches no node")
        matched |= hit
    if excl.roles:
        groups = find_roles(model)  # its group names are the node names name_nodes gave
        for role in excl.roles:
            found = [name for g in groups[canonical_role(role)] for name in g.nodes]
            if not found:
                warnings.append(f"exclusion role '{role}' matches no node")
            matched |= set(found)
    return matched, [one_line(w) for w in warnings]  # each is logged as one line


def plan(model: onnx.ModelProto, excl: ExclusionCfg, fmt: FormatCfg | None = None
         ) -> tuple[list[onnx.NodeProto], QdqReport]:
    """Decide which MatMul/Gemm nodes get Q/DQ, honouring exclusions on both ends of each tensor.

    A weight-only format (``fmt``) quantizes no activation: it takes the chosen nodes that have a 2-D constant
    weight (the linear layers; the attention's batched matmuls have none), and no tensor."""
    inits = _initializers(model)
    excluded, warnings = match_exclusions(model, excl)
    float_tensors: set[str] = set()
    for n in model.graph.node:
        if n.name in excluded:
            float_tensors.update(x for x in n.input if x)
            float_tensors.update(n.output)
    report = QdqReport(excluded_nodes=sorted(excluded), warnings=warnings)
    only = [re.compile(p) for p in excl.only]
    for rx in only:
        if not any(rx.search(n.name) for n in model.graph.node if n.op_type in QUANTIZABLE):
            report.warnings.append(one_line(f"'only' pattern '{rx.pattern}' matches no MatMul/Gemm node"))
    chosen = []
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE or n.name in excluded:
            continue
        if only and not any(rx.search(n.name) for rx in only):
            continue
        acts = activation_inputs(n, inits)
        if any(a in float_tensors for a in acts):
            continue
        chosen.append(n)
    if fmt is not None and fmt.weight_only:
        chosen = [n for n in chosen if any(len(inits[x].dims) == 2 for _, x in weight_inputs(n, inits))]
        report.quantized_nodes = [n.name for n in chosen]
        return chosen, report
    report.quantized_nodes = [n.name for n in chosen]
    report.quantized_tensors = list(dict.fromkeys(a for n in chosen for a in activation_inputs(n, inits)))
    return chosen, report


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights: scale = max|w| / 127 per index of ``axis`` (a scalar if None)."""
    from calibrators.weights import PerChannel

    return PerChannel().quantize(w, axis)


def build_qdq(fp32_model: Path | onnx.ModelProto, table: CalibrationTable, excl: ExclusionCfg, flavor: str,
              out_path: Path, weights=None, embeddings: bool = False, fmt: FormatCfg | None = None) -> QdqReport:
    """Write the QDQ model for one variant; return what was quantized and excluded.

    ``fp32_model``: a path, or the parsed model (left untouched) when the caller already holds it.
    ``weights`` is a weight rule (calibrators.weights); per output channel by default. ``embeddings``: also
    store the Gather tables as weight-only INT8, one scale per row (qbench.quantize.embeddings). ``fmt``: the
    number format (qbench.config.formats; int8 by default): a weight-only format quantizes the weights of the
    chosen MatMul/Gemm nodes only, so ``table`` may be empty for it.
    """
    from calibrators.weights import PerChannel
    from qbench.util.io import atomic_write_bytes

    weights = weights or PerChannel()
    fmt = fmt or FormatCfg()
    fp32 = fp32_model if isinstance(fp32_model, onnx.ModelProto) else load_model(fp32_model)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)  # edited in place below; the pristine copy checks the weight scales
    chosen, report = plan(model, excl, fmt)
    missing = [t for t in report.quantized_tensors if t not in table.amax]
    if missing:
        raise QuantizationError(f"calibration table lacks {len(missing)} of the {len(report.quantized_tensors)} "
                                f"tensor(s) the model quantizes: {_listed(missing, 8)}")
    _insert(model, chosen, report.quantized_tensors, table, flavor, weights, fmt)
    formats.raise_opset(model, fmt.name)
    if embeddings:
        from qbench.quantize.embeddings import quantize_embeddings

        quantize_embeddings(model)
    verify_scales(model, table, fp32, weights)
    atomic_write_bytes(out_path, model.SerializeToString())
    return report


def _insert(model, chosen, act_tensors, table, flavor, weights, fmt: FormatCfg) -> None:
    g = model.graph
    inits = _initializers(model)
    act_set = set(act_tensors)
    act_dtype, zp = ((TensorProto.FLOAT8E4M3FN, 0) if fmt.name == "fp8" else
                     (TensorProto.UINT8, 128) if flavor == "u8s8" else (TensorProto.INT8, 0))
    qmax = formats.FP8_MAX if fmt.name == "fp8" else 127.0
    after: dict[str, list] = {}        # producer output -> Q/DQ nodes to place right after it
    head: list = []                    # weight DQs and graph-input Q/DQs go first
    produced = {o for n in g.node for o in n.output}
    for t in act_tensors:
        sname, zname = f"{t}_scale", f"{t}_zero_point"
        g.initializer.append(numpy_helper.from_array(np.array(table.scale(t, qmax), np.float32), sname))
        g.initializer.append(helper.make_tensor(zname, act_dtype, [], [zp]))
        q = helper.make_node("QuantizeLinear", [t, sname, zname], [f"{t}_q"], name=f"{t}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{t}_q", sname, zname], [f"{t}_dq"],
                              name=f"{t}_DequantizeLinear")
        (after.setdefault(t, []) if t in produced else head).extend([q, dq])
    renamed_w: dict[str, str] = {}
    for n in chosen:
        for i, x in enumerate(n.input[:2]):
            if x in inits:
                if x not in renamed_w:
                    w = numpy_helper.to_array(inits[x])
                    axis = weights.axis(n.op_type, i, w.ndim, _attrs(n))
                    new, attrs = formats.weight_dq(fmt, x, w, axis, weights)
                    g.initializer.extend(new)
                    head.append(helper.make_node("DequantizeLinear", [t.name for t in new], [f"{x}_dq"],
                                                 name=f"{x}_DequantizeLinear", **attrs))
                    renamed_w[x] = f"{x}_dq"
                n.input[i] = renamed_w[x]
            elif x in act_set:
                n.input[i] = f"{x}_dq"
    _drop_unused_initializers(model, set(renamed_w))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(head)
    for n in nodes:
        g.node.append(n)
        for o in n.output:
            g.node.extend(after.get(o, []))


def _drop_unused_initializers(model, candidates: set[str]) -> None:
    # Deleted in place, last first: clearing the list and extending it again copies every kept weight (a tenth of
    # a second of each MiniLM build, and the search builds some 25).
    used = {x for n in model.graph.node for x in n.input}
    inits = model.graph.initializer
    for i in reversed(range(len(inits))):
        if inits[i].name in candidates and inits[i].name not in used:
            del inits[i]


def verify_scales(model: onnx.ModelProto, table: CalibrationTable, fp32: onnx.ModelProto, weights=None) -> None:
    """Every Q/DQ scale must equal amax/127 from our table (activations) or max|W|/127 (weights)."""
    from calibrators.weights import PerChannel

    weights = weights or PerChannel()
    inits = {t.name: t for t in model.graph.initializer}
    fp32_inits = _initializers(fp32)
    consumers = {x: (c, i) for c in model.graph.node for i, x in enumerate(c.input)}
    q_scale_of: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            src = n.input[0]
            s = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
            fp8 = len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN
            qmax = formats.FP8_MAX if fp8 else 127.0  # the format is the zero point's type: amax / 448 or / 127
            if src not in table.amax or s is None or s.shape != () or s != table.scale(src, qmax):
                bad.append(src)
            q_scale_of[n.output[0]] = s
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        s = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
        src = n.input[0]
        if src in q_scale_of:
            ok = s is not None and np.array_equal(s, q_scale_of[src])
        elif src.endswith("_rowint8") and src[:-8] in fp32_inits:  # an embedding table: per row
            from qbench.quantize.embeddings import quantize_rows

            ok = (s is not None and _attrs(n).get("axis") == 0
                  and np.array_equal(s, quantize_rows(numpy_helper.to_array(fp32_inits[src[:-8]]))[1]))
        elif src in inits and src.endswith("_int8") and src[:-5] in fp32_inits:
            w = numpy_helper.to_array(fp32_inits[src[:-5]])
            # The granularity must be the rule's too: the axis it picks for the consuming op.
            use = consumers.get(n.output[0])
            want = weights.axis(use[0].op_type, use[1], w.ndim, _attrs(use[0])) if use else None
            got = _attrs(n).get("axis") if s is not None and s.ndim == 1 else None
            ok = s is not None and got == want and np.array_equal(s, weights.quantize(w, want)[1])
        elif src in inits and src.endswith(("_fp8", "_int4")) and src.rsplit("_", 1)[0] in fp32_inits:
            w = numpy_helper.to_array(fp32_inits[src.rsplit("_", 1)[0]])
            use = consumers.get(n.output[0])
            want = weights.axis(use[0].op_type, use[1], w.ndim, _attrs(use[0])) if use else None
            ok = formats.weight_scale_ok(_attrs(n), s, w, "fp8" if src.endswith("_fp8") else "int4_wo", want)
        else:
            ok = False
        if not ok:
            bad.append(src)
    if bad:
        raise QuantizationError(f"{len(bad)} Q/DQ scale(s) did not come from the calibration table: "
                                + _listed(bad, 8))


def op_counts(model: onnx.ModelProto) -> dict[str, Counter]:
    """Per op type, how many nodes run quantized (read a DQ output, or are integer ops) and how many float."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    from qbench.quantize.trt_rules import MOVES

    for n in model.graph.node:  # a DQ seen through data-movement ops (NNCF's Transpose/Reshape) still quantizes
        if n.op_type in MOVES and n.input and n.input[0] in dq_out:
            dq_out.update(n.output)
    quant: Counter = Counter()
    flt: Counter = Counter()
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            continue
        if n.op_type in INTEGER_OPS:
            base = "MatMul" if "MatMul" in n.op_type else n.op_type
            quant[base] += 1
        elif any(x in dq_out for x in n.input):
            quant[n.op_type] += 1
        else:
            flt[n.op_type] += 1
    return {"quantized": quant, "float": flt}
