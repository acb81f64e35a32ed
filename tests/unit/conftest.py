"""Shared builders for the unit suite: small real ONNX models and config files, built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp_weights():
    rng = np.random.default_rng(1234)
    return {
        "ln_scale": (1.0 + 0.1 * rng.standard_normal(8)).astype(np.float32),
        "ln_bias": (0.1 * rng.standard_normal(8)).astype(np.float32),
        "W1": (0.4 * rng.standard_normal((8, 16))).astype(np.float32),
        "W2": (0.4 * rng.standard_normal((16, 4))).astype(np.float32),
    }


@pytest.fixture
def mlp_model(tmp_path, mlp_weights) -> Path:
    """X[batch,8] -> LayerNormalization -> MatMul(W1) -> Relu -> MatMul(W2) -> Softmax -> Y."""
    w = mlp_weights
    nodes = [
        helper.make_node("LayerNormalization", ["X", "ln_scale", "ln_bias"], ["ln_out"], name="ln", axis=-1,
                         epsilon=1e-5),
        helper.make_node("MatMul", ["ln_out", "W1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["relu_out"], name="act"),
        helper.make_node("MatMul", ["relu_out", "W2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["Y"], name="probs", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return _save(graph, tmp_path / "mlp.onnx")


@pytest.fixture
def gemm_model(tmp_path) -> tuple[Path, dict]:
    """X[batch,8] -> Gemm(B[16,8], transB=1, C[16]) -> Y: per-output-channel axis of B is 0."""
    rng = np.random.default_rng(7)
    w = {"B": (0.5 * rng.standard_normal((16, 8))).astype(np.float32),
         "C": (0.1 * rng.standard_normal(16)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "B", "C"], ["Y"], name="gemm", transB=1)], "gemm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return _save(graph, tmp_path / "gemm.onnx"), w


@pytest.fixture
def masked_model(tmp_path) -> Path:
    """X[b,s,4], attention_mask[b,s] -> Y = 2*X (calibrated) -> out = Relu(Y); mask_f = float(mask)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"], name="double"),
         helper.make_node("Relu", ["Y"], ["out"], name="relu"),
         helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="cast", to=TensorProto.FLOAT)],
        "masked",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", "s", 4]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 4]),
         helper.make_tensor_value_info("mask_f", TensorProto.FLOAT, ["b", "s"])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return _save(graph, tmp_path / "masked.onnx")
