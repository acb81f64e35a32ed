"""What precision each engine layer really runs: parsed from TensorRT's DETAILED build log.

TensorRT-RTX (and TensorRT >= 10 at ProfilingVerbosity.DETAILED) logs the final engine's layers as
``Name: <layer>, LayerType: <type>, Inputs: [ {... Datatype: Int8 ...} ], Outputs: [...]``. A fused
layer's name joins its ONNX source nodes with ``+``. The engine inspector would need a GPU to
deserialize the engine, so the log is the only source on a CPU-only build machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Layer:
    name: str
    type: str
    inputs: list[str]    # datatypes of the inputs, in order
    outputs: list[str]
    onnx_nodes: list[str] = field(default_factory=list)

    @property
    def is_gemm(self) -> bool:
        return self.type.lower() in {"gemm", "matrixmultiply", "cask_gemm"} or "gemm" in self.type.lower()


def parse_layers(log_lines: list[str]) -> list[Layer]:
    """The last ``Layers:`` block of a DETAILED build log, one Layer per engine layer."""
    text = "\n".join(log_lines)
    start = text.rfind("Layers:")
    if start < 0:
        return []
    layers = []
    for entry in text[start:].split("\nName: ")[1:]:
        name = entry.split(", LayerType:")[0]
        kind = re.search(r"LayerType: ([^,]+)", entry)
        ins = re.search(r"Inputs: \[(.*?)\], Outputs:", entry, re.S)
        outs = re.search(r"Outputs: \[(.*?)\](, |$)", entry, re.S)
        layers.append(Layer(
            name=name, type=kind.group(1).strip() if kind else "?",
            inputs=re.findall(r"Datatype: (\w+)", ins.group(1)) if ins else [],
            outputs=re.findall(r"Datatype: (\w+)", outs.group(1)) if outs else [],
            onnx_nodes=[n for n in re.split(r"\+", name)],
        ))
    return layers


def _matmul_flops_per_token(model) -> dict[str, int]:
    """K x N of every MatMul/Gemm with a constant weight: its multiply-adds per token."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dq_src = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1:
            w = dq_src.get(n.input[1], n.input[1])
            if w in inits:
                out[n.name] = int(np.prod(numpy_helper.to_array(inits[w]).shape[-2:]))
    return out


def summarize(layers: list[Layer], model, excluded_nodes: list[str]) -> dict:
    """GEMM layers by input datatype, the INT8 share of linear-layer FLOPs, and the exclusion check.

    An excluded MatMul must run in a layer whose inputs are not Int8; one that does not is listed in
    ``exclusion_violations``.
    """
    flops = _matmul_flops_per_token(model)
    gemms = [layer for layer in layers if layer.is_gemm]
    by_dtype: dict[str, int] = {}
    int8_flops = total_flops = 0
    node_dtype: dict[str, str] = {}
    for g in gemms:
        dt = g.inputs[0] if g.inputs else "?"
        by_dtype[dt] = by_dtype.get(dt, 0) + 1
        for node in g.onnx_nodes:
            # TensorRT-RTX suffixes fused sources with "_myl<i>_<j>"; strip it to get the ONNX node name.
            onnx_name = re.sub(r"_myl\d+_\d+$", "", node)
            if onnx_name in flops:
                node_dtype[onnx_name] = dt
    for onnx_name, f in flops.items():
        if onnx_name in node_dtype:
            total_flops += f
            int8_flops += f if node_dtype[onnx_name] == "Int8" else 0
    violations = sorted(n for n in excluded_nodes if node_dtype.get(n) == "Int8")
    return {
        "layers": len(layers),
        "gemm_layers": len(gemms),
        "gemm_layers_by_input_dtype": by_dtype,
        "int8_linear_flop_share": (int8_flops / total_flops) if total_flops else 0.0,
        "linear_nodes_seen": len(node_dtype),
        "reformat_layers": sum("reformat" in layer.type.lower() or "reformat" in layer.name.lower()
                               for layer in layers),
        "cast_layers": sum(layer.type.lower() == "cast" for layer in layers),
        "exclusion_violations": violations,
    }


def to_records(layers: list[Layer]) -> list[dict]:
    return [asdict(layer) for layer in layers]
