"""QDQ construction on small real ONNX models, checked against numpy and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from qbench.calib import CalibrationTable
from qbench.config.schema import ExclusionCfg
from qbench.config.errors import ConfigError, ModelError, QuantizationError
from qbench.quantize.qdq import (build_qdq, calibration_tensors, match_exclusions, op_counts, plan, quantize_weight,
                        verify_scales)


def _np_forward(x, w):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(var + 1e-5) * w["ln_scale"] + w["ln_bias"]
    relu = np.maximum(ln @ w["W1"], 0)
    logits = relu @ w["W2"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return {"ln_out": ln, "relu_out": relu, "Y": e / e.sum(-1, keepdims=True)}


def _run(path, x):
    """The graph's own semantics: Q, DQ and MatMul as ONNX defines them, unfused. ORT's fused int8 kernels are
    machine-dependent: on an x86 CPU without VNNI (AVX2 only, as on the CI machine) they add their own error
    (measured here: max |ΔY| 0.088 on the s8s8 MLP below, against the budget of 0.05 that the unfused graph
    meets), which is a property of the kernel, not of the Q/DQ placement these tests check."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


@pytest.fixture
def data():
    return np.random.default_rng(99).standard_normal((64, 8)).astype(np.float32)


@pytest.fixture
def table(mlp_model, mlp_weights, data):
    names = calibration_tensors(onnx.load(str(mlp_model)))
    acts = _np_forward(data, mlp_weights)
    return CalibrationTable({n: float(np.abs(acts[n]).max()) for n in names}, calibrator="minmax")


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _init_types(model):
    return {t.name: t.data_type for t in model.graph.initializer}


def test_calibration_tensors(mlp_model, gemm_model):
    assert calibration_tensors(onnx.load(str(mlp_model))) == ["ln_out", "relu_out"]
    assert calibration_tensors(onnx.load(str(gemm_model[0]))) == ["X"]


def test_fp32_model_matches_numpy(mlp_model, mlp_weights, data):
    np.testing.assert_allclose(_run(mlp_model, data), _np_forward(data, mlp_weights)["Y"], atol=1e-5)


def test_build_qdq_s8s8(tmp_path, mlp_model, mlp_weights, table, data):
    out = tmp_path / "q.onnx"
    rep = build_qdq(mlp_model, table, ExclusionCfg(), "s8s8", out)
    assert rep.quantized_nodes == ["fc1", "fc2"]
    assert rep.quantized_tensors == ["ln_out", "relu_out"]
    assert rep.excluded_nodes == [] and rep.warnings == []

    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    inits, types = _inits(m), _init_types(m)
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(n.input[0] for n in qs) == ["ln_out", "relu_out"]
    for n in qs:
        s = inits[n.input[1]]
        assert s.shape == () and s.dtype == np.float32
        assert s == np.float32(table.amax[n.input[0]] / 127)
        assert types[n.input[2]] == TensorProto.INT8 and inits[n.input[2]] == 0

    # Weights: int8 initializers behind a per-output-column DequantizeLinear (axis 1); float copies gone.
    assert "W1" not in inits and "W2" not in inits
    wdq = {n.input[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")}
    assert set(wdq) == {"W1_int8", "W2_int8"}
    for wname in ("W1", "W2"):
        w = mlp_weights[wname]
        n = wdq[f"{wname}_int8"]
        assert {a.name: a.i for a in n.attribute} == {"axis": 1}
        q, s = inits[f"{wname}_int8"], inits[n.input[1]]
        assert q.dtype == np.int8 and q.shape == w.shape
        np.testing.assert_array_equal(s, (np.abs(w).max(axis=0).astype(np.float64) / 127).astype(np.float32))
        assert np.all(np.abs(q.astype(np.float64) * s - w) <= s / 2 * (1 + 1e-6))
        assert np.abs(q).max() == 127
    # The MatMuls read the DQ outputs.
    mm = {n.name: list(n.input) for n in m.graph.node if n.op_type == "MatMul"}
    assert mm == {"fc1": ["ln_out_dq", "W1_dq"], "fc2": ["relu_out_dq", "W2_dq"]}
    assert op_counts(m)["quantized"]["MatMul"] == 2

    ref = _np_forward(data, mlp_weights)["Y"]
    got = _run(out, data)
    assert np.abs(got - ref).max() < 0.05
    assert np.abs(got - ref).max() > 0          # it really is quantized


def test_build_qdq_u8s8(tmp_path, mlp_model, mlp_weights, table, data):
    out = tmp_path / "q_u8.onnx"
    build_qdq(mlp_model, table, ExclusionCfg(), "u8s8", out)
    m = onnx.load(str(out))
    inits, types = _inits(m), _init_types(m)
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qs) == 2
    for n in qs:
        assert types[n.input[2]] == TensorProto.UINT8 and inits[n.input[2]] == 128
        assert inits[n.input[1]] == np.float32(table.amax[n.input[0]] / 127)
    # Weights stay symmetric int8.
    assert types["W1_int8"] == TensorProto.INT8 and types["W1_wzero"] == TensorProto.INT8
    assert np.abs(_run(out, data) - _np_forward(data, mlp_weights)["Y"]).max() < 0.05


def test_exclude_layernorm_keeps_first_matmul_float(tmp_path, mlp_model, mlp_weights, table, data):
    out = tmp_path / "q_ex.onnx"
    rep = build_qdq(mlp_model, table, ExclusionCfg(op_types=["LayerNormalization"]), "s8s8", out)
    assert rep.excluded_nodes == ["ln"]
    assert rep.quantized_nodes == ["fc2"] and rep.quantized_tensors == ["relu_out"]
    m = onnx.load(str(out))
    inits, types = _inits(m), _init_types(m)
    assert [n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"] == ["relu_out"]
    assert types["W1"] == TensorProto.FLOAT and "W1_int8" not in inits
    np.testing.assert_array_equal(inits["W1"], mlp_weights["W1"])
    assert "W2" not in inits and types["W2_int8"] == TensorProto.INT8
    mm = {n.name: list(n.input) for n in m.graph.node if n.op_type == "MatMul"}
    assert mm == {"fc1": ["ln_out", "W1"], "fc2": ["relu_out_dq", "W2_dq"]}
    counts = op_counts(m)
    assert counts["quantized"]["MatMul"] == 1 and counts["float"]["MatMul"] == 1
    assert np.abs(_run(out, data) - _np_forward(data, mlp_weights)["Y"]).max() < 0.05


def test_exclusion_by_name_and_unmatched_patterns(mlp_model):
    model = onnx.load(str(mlp_model))
    matched, warnings = match_exclusions(model, ExclusionCfg(names=["^fc2$", "^nomatch_xyz$"], op_types=["Conv"]))
    assert matched == {"fc2"}
    assert len(warnings) == 2
    assert any("'^nomatch_xyz$'" in w for w in warnings) and any("'Conv'" in w for w in warnings)
    # Excluding fc2 makes relu_out float, so only fc1 is quantized.
    chosen, rep = plan(model, ExclusionCfg(names=["^fc2$"]))
    assert [n.name for n in chosen] == ["fc1"] and rep.quantized_tensors == ["ln_out"]
    # attention_probs excludes Softmax nodes; roles with no match warn.
    matched, warnings = match_exclusions(model, ExclusionCfg(roles=["attention_probs", "embeddings"]))
    assert matched == {"probs"}
    assert warnings == ["exclusion role 'embeddings' matches no node"]


def test_build_reports_unmatched_exclusion(tmp_path, mlp_model, table):
    rep = build_qdq(mlp_model, table, ExclusionCfg(names=["^does_not_exist$"]), "s8s8", tmp_path / "q.onnx")
    assert rep.warnings == ["exclusion name pattern '^does_not_exist$' matches no node"]
    assert rep.quantized_nodes == ["fc1", "fc2"]


def test_missing_tensor_in_table(tmp_path, mlp_model, table):
    partial = CalibrationTable({"ln_out": table.amax["ln_out"]})
    out = tmp_path / "q.onnx"
    with pytest.raises(QuantizationError, match="relu_out"):
        build_qdq(mlp_model, partial, ExclusionCfg(), "s8s8", out)
    assert not out.exists()
    # With relu_out's consumer excluded the table is sufficient.
    build_qdq(mlp_model, partial, ExclusionCfg(names=["^fc2$"]), "s8s8", out)
    assert out.exists()


def test_verify_scales_detects_tampering(tmp_path, mlp_model, table):
    out = tmp_path / "q.onnx"
    build_qdq(mlp_model, table, ExclusionCfg(), "s8s8", out)
    fp32 = onnx.load(str(mlp_model))
    verify_scales(onnx.load(str(out)), table, fp32)          # untouched: passes

    m = onnx.load(str(out))
    init = next(t for t in m.graph.initializer if t.name == "relu_out_scale")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), "relu_out_scale"))
    with pytest.raises(QuantizationError, match="relu_out"):
        verify_scales(m, table, fp32)

    m = onnx.load(str(out))
    init = next(t for t in m.graph.initializer if t.name == "W2_wscale")
    arr = numpy_helper.to_array(init).copy()
    arr[0] *= 2
    init.CopyFrom(numpy_helper.from_array(arr, "W2_wscale"))
    with pytest.raises(QuantizationError, match="W2_int8"):
        verify_scales(m, table, fp32)

    # A table that differs from the one the model was built with also fails.
    other = CalibrationTable({k: v * 1.5 for k, v in table.amax.items()})
    with pytest.raises(QuantizationError, match="ln_out"):
        verify_scales(onnx.load(str(out)), other, fp32)


def test_gemm_transb_per_row_scales(tmp_path, gemm_model, data):
    path, w = gemm_model
    table = CalibrationTable({"X": float(np.abs(data).max())})
    out = tmp_path / "gemm_q.onnx"
    rep = build_qdq(path, table, ExclusionCfg(), "s8s8", out)
    assert rep.quantized_nodes == ["gemm"] and rep.quantized_tensors == ["X"]
    m = onnx.load(str(out))
    inits = _inits(m)
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "B_int8")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0}
    np.testing.assert_array_equal(inits["B_wscale"],
                                  (np.abs(w["B"]).max(axis=1).astype(np.float64) / 127).astype(np.float32))
    np.testing.assert_array_equal(inits["C"], w["C"])          # the bias stays float
    ref = data @ w["B"].T + w["C"]
    assert np.abs(_run(out, data) - ref).max() < 0.05 * np.abs(ref).max()


def test_quantize_weight_oracle():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 6, 5)).astype(np.float32)
    w[:, :, 2] = 0.0                                          # an all-zero channel
    q, s = quantize_weight(w, axis=2)
    amax = np.abs(w).max(axis=(0, 1)).astype(np.float64)
    np.testing.assert_array_equal(s, (np.maximum(amax, 1e-8) / 127).astype(np.float32))
    assert q.dtype == np.int8 and q.shape == w.shape
    assert (q[:, :, 2] == 0).all() and s[2] > 0
    err = np.abs(q.astype(np.float64) * s.reshape(1, 1, -1) - w)
    assert (err <= s.reshape(1, 1, -1) / 2 * (1 + 1e-6)).all()
    for c in (0, 1, 3, 4):
        assert np.abs(q[:, :, c]).max() == 127               # the channel max maps to +-127


def test_load_model_errors(tmp_path, table):
    with pytest.raises(ModelError, match="not found"):
        build_qdq(tmp_path / "nope.onnx", table, ExclusionCfg(), "s8s8", tmp_path / "o.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xff not a protobuf \xff" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        build_qdq(bad, table, ExclusionCfg(), "s8s8", tmp_path / "o.onnx")


# --- weight rules ----------------------------------------------------------------------------------

def test_per_tensor_weights_one_scale_each(tmp_path, mlp_model, mlp_weights, table, data):
    from calibrators.weights import PerTensor

    out = tmp_path / "pt.onnx"
    build_qdq(mlp_model, table, ExclusionCfg(), "s8s8", out, PerTensor())
    m = onnx.load(str(out))
    inits = _inits(m)
    wdq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")]
    assert len(wdq) == 2
    for n in wdq:
        w = mlp_weights[n.input[0][:-5]]
        assert not [a for a in n.attribute if a.name == "axis"]
        assert inits[n.input[1]].shape == () and inits[n.input[1]] == np.float32(np.abs(w).max() / 127)
        np.testing.assert_array_equal(inits[n.input[0]], np.clip(np.rint(w / inits[n.input[1]]), -127, 127))
    np.testing.assert_allclose(_run(out, data), _np_forward(data, mlp_weights)["Y"], atol=0.05)
    # The per-channel rule's verification rejects a per-tensor model's weight scales, and vice versa.
    from calibrators.weights import PerChannel

    with pytest.raises(QuantizationError):
        verify_scales(m, table, onnx.load(str(mlp_model)), PerChannel())
    verify_scales(m, table, onnx.load(str(mlp_model)), PerTensor())


@pytest.mark.parametrize("op, idx, ndim, attrs, axis", [
    ("MatMul", 1, 2, {}, 1), ("MatMul", 1, 3, {}, 2), ("Gemm", 1, 2, {"transB": 1}, 0),
    ("Gemm", 1, 2, {}, 1), ("Conv", 1, 4, {}, 0), ("ConvTranspose", 1, 4, {}, 1),
])
def test_output_channel_axis_by_op_type(op, idx, ndim, attrs, axis):
    from calibrators.weights import PerChannel, PerTensor

    assert PerChannel().axis(op, idx, ndim, attrs) == axis
    assert PerTensor().axis(op, idx, ndim, attrs) is None


def test_weight_rule_registry_and_config_key(tmp_path):
    from qbench.config import registry

    assert registry.weight_rules.get("per_tensor").name == "per_tensor"
    with pytest.raises(ConfigError, match="Did you mean: per_channel"):
        registry.weight_rules.get("per_chanel")


def test_a_failed_allocation_while_reading_a_model_stays_a_memory_error(tmp_path, monkeypatch):
    """Under executor.memory_mb the allocation can fail inside onnx.load: that must reach the child's handler as
    MemoryError ('out of memory'), not as a corrupt file (CI once saw 'not a readable ONNX model (MemoryError)')."""
    import onnx

    from qbench.quantize.qdq import load_model

    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07")

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(onnx, "load", no_memory)
    with pytest.raises(MemoryError):
        load_model(path)
