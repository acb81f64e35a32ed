"""Build isolation: the TensorRT builder runs in a child process, so its crash, hang or parser error is
one variant's failure. The crash and the hang are SIMULATED (a real child process that kills itself or
sleeps, in place of the builder): a builder that segfaults on demand does not exist."""

import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from qbench.backends import tensorrt as trt_backend
from qbench.backends.tensorrt import TensorRTBackend, input_profiles
from qbench.config.errors import VariantFailed

pytest.importorskip("tensorrt_rtx_bindings")
SHAPES = {"x": [[1, 4], [2, 4], [4, 4]]}


@pytest.fixture
def tiny(tmp_path):
    import numpy as np

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    p = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


def test_profile_from_symbolic_dims(tiny):
    prof = input_profiles(onnx.load(str(tiny)), {"batch": (1, 2, 4), "sequence": (1, 8, 16)})
    assert prof == SHAPES


def test_a_real_build_of_a_tiny_graph(tiny, tmp_path):
    engine, info, log = TensorRTBackend(compute_capability="SM89").build(tiny, tmp_path / "e", SHAPES)
    assert engine.stat().st_size == info["engine_bytes"] > 0 and any("Layers:" in line for line in log)


def test_a_parser_error_is_the_variants_failure(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(VariantFailed, match="TensorRT ONNX parser"):
        TensorRTBackend().build(bad, tmp_path / "e", SHAPES)


def test_simulated_builder_crash_becomes_a_failure_naming_the_signal(tiny, tmp_path, monkeypatch):
    crash = "import os, signal, sys; print('builder: about to fail', file=sys.stderr); os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(trt_backend, "_child_cmd", lambda *a: [sys.executable, "-c", crash])
    with pytest.raises(VariantFailed) as e:
        TensorRTBackend().build(tiny, tmp_path / "e", SHAPES)
    assert str(e.value) == ("TensorRT build killed by SIGSEGV (a crash in native code, or out of memory): "
                            f"builder: about to fail; stderr in {tmp_path / 'e' / 'build.stderr'}")
    assert (tmp_path / "e" / "build.stderr").read_text().strip() == "builder: about to fail"


def test_simulated_builder_hang_times_out_and_its_children_die_with_it(tiny, tmp_path, monkeypatch):
    """The hung 'builder' started a child of its own (as a builder's worker would): the timeout kills both."""
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    monkeypatch.setattr(trt_backend, "_child_cmd", lambda *a: [sys.executable, "-c", hang])
    with pytest.raises(VariantFailed, match=r"^TensorRT build timed out after 3 s \(tensorrt.build_timeout_s\)$"):
        TensorRTBackend(build_timeout_s=3).build(tiny, tmp_path / "e", SHAPES)
    grandchild = Path("/proc") / pid_file.read_text()
    deadline = time.monotonic() + 10
    while grandchild.exists() and " Z " not in (grandchild / "stat").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed, then reaped by init (or left a zombie for a moment)
    assert not grandchild.exists() or " Z " in (grandchild / "stat").read_text()


def test_implicit_int8_mode_is_refused_by_tensorrt_rtx_with_the_reason(tiny, tmp_path):
    """TensorRT <= 10's implicit INT8 (FP32 graph + qbench's cache): TensorRT-RTX has no IInt8Calibrator."""
    from qbench.calib import CalibrationTable
    from qbench.calib.trt_cache import save_trt_cache

    cache = save_trt_cache(CalibrationTable(amax={"x": 1.0}), tmp_path / "c.cache")
    with pytest.raises(VariantFailed, match=r"^implicit INT8 needs TensorRT <= 10 \(IInt8Calibrator\); found "
                                            r"tensorrt_rtx [\d.]+: build the QDQ ONNX instead$"):
        TensorRTBackend().build(tiny, tmp_path / "e", SHAPES, int8_cache=cache)
