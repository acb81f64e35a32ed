"""Real TensorRT-RTX builds of each number format (qbench.quantize.formats), on a two-layer model built in code:
the layer report, parsed from the build log, must prove each GEMM's format (FP8 on SM89; weight-only INT4 and
INT8 on SM86) and tell a weight-only GEMM from a full INT8 one. About 2 s per build; nothing runs (no GPU here).
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qbench.calib import CalibrationTable
from qbench.config.errors import VariantFailed
from qbench.config.formats import FormatCfg
from qbench.config.schema import ExclusionCfg
from qbench.quantize.qdq import build_qdq

pytest.importorskip("tensorrt_rtx_bindings")


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((128, 256)).astype(np.float32)
    w2 = rng.standard_normal((256, 128)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
                           helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
                           helper.make_node("MatMul", ["t", "w2"], ["y"], name="mm2")], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, ["b", 128])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["b", 128])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def _build(tmp_path, fmt: FormatCfg, cc: str) -> dict:
    from qbench.backends.layer_report import parse_layers, summarize
    from qbench.backends.tensorrt import TensorRTBackend

    m = _model()
    qdq = tmp_path / f"{fmt.name}.onnx"
    table = CalibrationTable({"x": 4.0, "t": 1.0})
    build_qdq(m, table if not fmt.weight_only else CalibrationTable({}), ExclusionCfg(), "s8s8", qdq, fmt=fmt)
    _, info, log = TensorRTBackend(compute_capability=cc).build(qdq, tmp_path / f"{fmt.name}-{cc}",
                                                                {"x": [[1, 128], [8, 128], [32, 128]]})
    assert info["compute_capability"] == cc
    layers = parse_layers(log)
    return {"summary": summarize(layers, onnx.load(str(qdq)), []), "layers": layers}


@pytest.mark.parametrize("fmt,cc,want", [
    (FormatCfg(name="fp8"), "SM89", "FP8"),
    (FormatCfg(name="int4_wo", block_size=64), "SM86", "Int4 weight-only"),
    (FormatCfg(name="int8_wo"), "SM86", "Int8 weight-only"),
    (FormatCfg(), "SM89", "Int8"),  # full INT8: Int8 activations into the GEMM, not weight-only
], ids=["fp8-SM89", "int4_wo-SM86", "int8_wo-SM86", "int8-SM89"])
def test_layer_report_proves_each_gemm_format(tmp_path, fmt, cc, want):
    r = _build(tmp_path, fmt, cc)
    assert r["summary"]["linear_nodes_by_dtype"] == {want: 2}, r["summary"]
    hosts = [la for la in r["layers"] if {"mm1", "mm2"} & set(la.onnx_nodes) and la.is_gemm]
    assert len(hosts) == 2 and all(la.compute == want for la in hosts)
    if fmt.weight_only:  # float activations in, the narrow type only among the constants (the weights)
        narrow = "Int4" if fmt.name == "int4_wo" else "Int8"
        assert all(narrow in la.constants and narrow not in la.inputs and "Float" in la.inputs for la in hosts)
    assert r["summary"]["int8_linear_flop_share"] == (1.0 if want == "Int8" else 0.0)


def test_fp8_needs_sm89_and_the_failure_says_so(tmp_path):
    with pytest.raises(VariantFailed, match="fp8"):
        _build(tmp_path, FormatCfg(name="fp8"), "SM86")
