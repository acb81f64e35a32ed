"""TensorRT's explicit-quantization rules read from a Q/DQ graph (qbench.quantize.trt_rules), checked against
TensorRT-RTX's own parser and builder: each small graph built in code is built for real (SM89, on the CPU), and
what the rules say (refused or not; the linear layer in Int8 or Float) must be what the build does."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.cli import main
from qbench.quantize import trt_rules

SHAPES = {"x": [[1, 8], [2, 8], [4, 8]]}
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 8)).astype(np.float32)


def _q(name: str, x: str, scale, zp, out: str, axis: int | None = None) -> list:
    """A QuantizeLinear -> DequantizeLinear pair on ``x`` (scale, zero point as initializers)."""
    kw = {} if axis is None else {"axis": axis}
    return [helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_Q", **kw),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [out], name=f"{name}_DQ", **kw)]


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(a, name)


def _model(kind: str) -> onnx.ModelProto:
    """x[batch, 8] @ W[8, 8] (+ b) in one of several quantized forms."""
    s_w = np.abs(W).max(axis=0) / 127
    w_q = np.round(W / s_w).astype(np.int8)
    inits = [_init("w_q", w_q), _init("w_s", s_w.astype(np.float32)), _init("w_z", np.zeros(8, np.int8))]
    w_dq = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_DQ", axis=1)]
    act_zp = {"sym": np.int8(0), "asym": np.uint8(128), "uint8_zero": np.uint8(0)}
    nodes, extra = [], []
    if kind in act_zp:
        inits += [_init("a_s", np.float32(0.05)), _init("a_z", act_zp[kind])]
        nodes = _q("a", "x", "a_s", "a_z", "xq") + w_dq + [helper.make_node("MatMul", ["xq", "w"], ["y"], name="mm")]
    elif kind == "act_per_channel":  # the activation's scale per column
        inits += [_init("a_s", np.full(8, 0.05, np.float32)), _init("a_z", np.zeros(8, np.int8))]
        nodes = _q("a", "x", "a_s", "a_z", "xq", axis=1) + w_dq + [helper.make_node("MatMul", ["xq", "w"], ["y"], name="mm")]
    elif kind == "weight_only":  # the activation stays float: TensorRT runs the MatMul in float
        nodes = w_dq + [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    elif kind == "moved":  # the DQ reaches the MatMul through a Reshape (as NNCF's attention does)
        inits += [_init("a_s", np.float32(0.05)), _init("a_z", np.int8(0)), _init("shape", np.array([-1, 8]))]
        nodes = (_q("a", "x", "a_s", "a_z", "xd") + w_dq
                 + [helper.make_node("Reshape", ["xd", "shape"], ["xq"], name="rs"),
                    helper.make_node("MatMul", ["xq", "w"], ["y"], name="mm")])
    elif kind == "int32_bias":  # ONNX Runtime's quantize_static: the bias as INT32 behind a DequantizeLinear
        inits += [_init("a_s", np.float32(0.05)), _init("a_z", np.int8(0)),
                  _init("b_q", np.arange(8, dtype=np.int32)), _init("b_s", np.float32(0.01)), _init("b_z", np.int32(0))]
        nodes = (_q("a", "x", "a_s", "a_z", "xq") + w_dq
                 + [helper.make_node("MatMul", ["xq", "w"], ["mmo"], name="mm"),
                    helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="bias_DequantizeLinear"),
                    helper.make_node("Add", ["mmo", "b"], ["y"], name="add")])
    elif kind == "integer_op":  # quantize_dynamic's form
        inits = [_init("w_q", w_q), _init("w_z", np.int8(0))]
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
                 helper.make_node("MatMulInteger", ["xq", "w_q", "xz", "w_z"], ["yi"], name="mm"),
                 helper.make_node("Cast", ["yi"], ["y"], name="cast", to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes + extra, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="handmade",
                          producer_version="1.0")
    onnx.checker.check_model(m)
    return m


# kind -> (refused problem or None, TensorRT outcome of the MatMul by the rules)
CASES = {
    "sym": (None, "int8"),
    "uint8_zero": (None, "int8"),
    "moved": (None, "int8"),
    "weight_only": (None, "float"),
    "asym": ("zero_point", "rejected"),
    "int32_bias": ("int32", "int8"),
    "integer_op": ("integer_op", "rejected"),
    "act_per_channel": (None, "float"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_rules_read_from_the_graph(kind):
    rep = trt_rules.check(_model(kind))
    problem, outcome = CASES[kind]
    assert [r["problem"] for r in rep.refused][:1] == ([problem] if problem else [])
    assert [m.tensorrt for m in rep.matmuls] == [outcome]
    assert rep.producer["producer_name"] == "handmade"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case built by TensorRT-RTX: kind -> (error or None, whether a GEMM layer running ``mm`` reads Int8,
    from the build log). An INT8 GEMM is a ``gemm`` layer; a dequantized one a fused Cast/Mul/Fc layer that
    reads Int8 (per-channel activation) or Float (weight-only) and computes in float."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from qbench.backends.layer_report import parse_layers
    from qbench.backends.tensorrt import TensorRTBackend
    from qbench.config.errors import VariantFailed

    d = tmp_path_factory.mktemp("trt-rules")
    out = {}
    for kind in CASES:
        m = _model(kind)
        p = d / f"{kind}.onnx"
        onnx.save(m, str(p))
        try:
            _, _, log = TensorRTBackend(compute_capability="SM89").build(p, d / kind, SHAPES)
        except VariantFailed as e:
            out[kind] = (str(e), None)
            continue
        layers = [la for la in parse_layers(log) if "mm" in la.onnx_nodes]
        out[kind] = (None, any(la.type == "gemm" and set(la.inputs) == {"Int8"} for la in layers))
    return out


@pytest.mark.parametrize("kind", list(CASES))
def test_rules_agree_with_tensorrt(built, kind):
    error, int8_gemm = built[kind]
    problem, outcome = CASES[kind]
    assert (error is not None) == (problem is not None), error
    if error is not None:  # and the parser's message, explained from the graph, names the same problem
        assert trt_rules.explain(error, _model(kind)).endswith(trt_rules.WHY[problem] + ".") or \
            trt_rules.WHY[problem] in trt_rules.explain(error, _model(kind))
    elif outcome in ("int8", "float"):
        assert int8_gemm == (outcome == "int8")


def test_explain_without_the_model():
    err = ("model: TensorRT ONNX parser: In node 3 with name: a_Q and operator: QuantizeLinear (buildZeroPointTensor): "
           "INVALID_NODE: Assertion failed: shiftIsAllZeros(zeroPoint): Non-zero zero point is not supported.")
    assert "zero point" in trt_rules.explain(err)
    assert trt_rules.explain("model: something else entirely") == ""


def test_inspect_a_quantized_model(tmp_path, capsys):
    p = tmp_path / "asym.onnx"
    onnx.save(_model("asym"), str(p))
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "uint8 zp=128 per-tensor" in out and "int8 per-channel(axis=1)" in out
    assert "produced by: handmade 1.0" in out
    assert "TensorRT's parser refuses 2 node(s)" in out  # the activation's Q and DQ
    assert main(["inspect", str(p), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["summary"]["tensorrt"] == {"rejected": 1} and js["summary"]["refused_by_kind"] == {"zero_point": 2}
