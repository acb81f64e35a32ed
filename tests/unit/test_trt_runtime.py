"""qbench.backends.trt_runtime: the real GPU path cannot run here (no supported GPU, no CUDA Python library).

Called for real: ``gpu_available``, and the engine-build child process (qbench.backends.trt_build) on
a tiny MatMul model with TensorRT-RTX (skipped where it is not installed). Everything else runs against
FAKES: a fake TensorRT module whose "engine" computes output = 2 * input, and a fake CUDA adapter whose
device memory is numpy byte arrays keyed by fake pointers. These tests check the session's bookkeeping (shapes, dtypes,
buffers, addresses, copies, timing arithmetic), not TensorRT or CUDA.
"""

from __future__ import annotations

import enum
import importlib.util
import itertools

import numpy as np
import pytest

from qbench.backends import trt_runtime
from qbench.backends.trt_runtime import TrtSession, gpu_available, gpu_latency
from qbench.config.errors import ModelError
from qbench.backends.measure import summarize


def test_gpu_available_says_why_not_here():
    ok, reason = gpu_available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    no_cuda_lib = (importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None)
    if no_cuda_lib:  # this machine: neither cuda-python nor pycuda is installed
        assert (ok, reason) == (False, "no cuda-python or pycuda")


# --------------------------------------------------------------------------------------------- fakes


class FakeCuda:
    """Device memory = numpy uint8 arrays keyed by fake pointers. Counts mallocs and frees."""

    name = "fake-cuda"

    def __init__(self, elapsed_ms=(), cc=(8, 9), count=1):
        self.mem: dict[int, np.ndarray] = {}
        self.mallocs = self.frees = self.syncs = 0
        self._next = itertools.count(1)
        self._elapsed = list(elapsed_ms)
        self.cc, self.count = cc, count
        self.closed = False

    def device_count(self):
        return self.count

    def compute_capability(self, device):
        return self.cc

    def set_device(self, device):
        self.device = device

    def malloc(self, nbytes):
        assert nbytes > 0, "cudaMalloc(0) gives a null pointer, which TensorRT rejects"
        self.mallocs += 1
        ptr = 0x1000 * next(self._next)
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr):
        self.frees += 1
        del self.mem[ptr]

    def memcpy_htod_async(self, dst, host, stream):
        self.mem[dst][:host.nbytes] = host.reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(self, host, src, stream):
        host.reshape(-1).view(np.uint8)[:] = self.mem[src][:host.nbytes]

    def stream_create(self):
        return "stream"

    def stream_handle(self, stream):
        return 77

    def stream_synchronize(self, stream):
        self.syncs += 1

    def stream_destroy(self, stream):
        pass

    def event_create(self):
        return object()

    def event_record(self, event, stream):
        pass

    def event_synchronize(self, event):
        pass

    def event_elapsed_ms(self, start, end):
        return self._elapsed.pop(0)

    def event_destroy(self, event):
        pass

    def close(self):
        self.closed = True


class FakeContext:
    """Output "y" = 2 * input "x" (float32, rank 2), read from and written to the fake device memory."""

    def __init__(self, cuda):
        self.cuda, self.shapes, self.addr = cuda, {}, {}
        self.data_dependent = False
        self.executions = 0

    def set_input_shape(self, name, shape):
        if len(shape) != 2:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name == "x":
            return self.shapes["x"]
        return (-1, self.shapes["x"][1]) if self.data_dependent else self.shapes["x"]

    def set_tensor_address(self, name, ptr):
        assert ptr, "TensorRT rejects a null address"
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 77
        self.executions += 1
        n = int(np.prod(self.shapes["x"]))
        x = self.cuda.mem[self.addr["x"]][:4 * n].view(np.float32)
        self.cuda.mem[self.addr["y"]][:4 * n] = (2 * x).view(np.uint8)
        return True


def fake_trt(cuda):
    class Mode:
        INPUT, OUTPUT = "input", "output"

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, name):
            return Mode.INPUT if name == "x" else Mode.OUTPUT

        def get_tensor_dtype(self, name):
            return np.float32

        def create_execution_context(self):
            self.context = FakeContext(cuda)
            return self.context

    class ILogger:
        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if data != b"fake engine":
                self.logger.log("ERROR", "serialization assertion failed")
                return None
            return Engine()

    class Trt:
        pass

    trt = Trt()
    trt.TensorIOMode, trt.ILogger, trt.Runtime = Mode, ILogger, Runtime
    trt.nptype = staticmethod(lambda dt: dt)
    return trt


@pytest.fixture
def fake_session(tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"fake engine")
    cuda = FakeCuda(elapsed_ms=[4.0, 1.0, 3.0, 2.0])
    sess = TrtSession(plan, trt_module=fake_trt(cuda), cuda_api=cuda)
    yield sess, cuda
    sess.close()


# ------------------------------------------------------------------------------------------- tests


def test_session_buffer_logic_with_fake_trt_and_fake_cuda_not_a_gpu_run(fake_session):
    sess, cuda = fake_session
    assert (sess.input_names, sess.output_names) == (["x"], ["y"])

    # Zero-size input (a decoder's past_len = 0): one-element buffers, an empty output of the right shape.
    (y,) = sess.infer({"x": np.zeros((0, 4), np.float32)})
    assert y.shape == (0, 4) and y.dtype == np.float32
    assert cuda.mallocs == 2 and all(m.nbytes == 4 for m in cuda.mem.values())

    # float64 and int feeds are cast to the engine's float32; an unused feed is ignored.
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    (y,) = sess.infer({"x": x, "attention_mask": np.ones((2, 4), np.int64)})
    np.testing.assert_array_equal(y, 2 * x.astype(np.float32))
    assert y.dtype == np.float32
    assert cuda.mem[sess._buffers["x"][0]].view(np.float32).tolist() == list(range(8))
    assert (cuda.mallocs, cuda.frees) == (4, 2)  # both buffers grew from 4 to 32 bytes
    assert set(sess._buffers) == {"x", "y"}

    # Smaller again: the buffers are reused, nothing is allocated.
    (y,) = sess.infer({"x": np.array([[1, 2, 3, 4]], np.int32)})
    np.testing.assert_array_equal(y, [[2.0, 4.0, 6.0, 8.0]])
    assert (cuda.mallocs, cuda.frees) == (4, 2)

    # Larger: grow once more, then the same size reuses.
    big = np.ones((5, 4), np.float32)
    np.testing.assert_array_equal(sess.infer({"x": big})[0], 2 * big)
    np.testing.assert_array_equal(sess.infer({"x": big})[0], 2 * big)
    assert (cuda.mallocs, cuda.frees) == (6, 4)

    # Errors: a missing input, a shape TensorRT rejects, a data-dependent output shape.
    with pytest.raises(ValueError, match="lack engine input"):
        sess.infer({"attention_mask": np.ones((1, 4))})
    with pytest.raises(ValueError, match=r"rejects shape \(4,\)"):
        sess.infer({"x": np.ones(4, np.float32)})
    sess._context.data_dependent = True
    with pytest.raises(RuntimeError, match="data-dependent shape .*IOutputAllocator"):
        sess.infer({"x": big})
    sess._context.data_dependent = False

    sess.close()
    assert cuda.mem == {} and cuda.closed  # every buffer freed
    sess.close()  # idempotent


def test_gpu_latency_with_fake_events_gives_exact_percentiles(fake_session):
    sess, cuda = fake_session
    x = np.ones((2, 4), np.float32)
    out = gpu_latency(sess, {"x": x}, warmup=3, runs=4)
    assert sess._context.executions == 3 + 4
    seconds = np.array([4.0, 1.0, 3.0, 2.0]) / 1e3
    assert out == summarize(seconds, 2)
    assert out["latency_p50_ms"] == pytest.approx(2.5)
    assert out["latency_p90_ms"] == pytest.approx(3.7)
    assert out["latency_mean_ms"] == pytest.approx(2.5)
    assert out["throughput_items_per_s"] == pytest.approx(800.0)


def test_fake_engine_that_cannot_deserialize_reports_the_trt_log(tmp_path):
    plan = tmp_path / "bad.plan"
    plan.write_bytes(b"garbage")
    cuda = FakeCuda()
    with pytest.raises(ModelError, match="cannot deserialize.*serialization assertion failed"):
        TrtSession(plan, trt_module=fake_trt(cuda), cuda_api=cuda)
    assert cuda.closed


def test_gpu_available_with_fake_cuda_rejects_hopper_for_rtx():
    class Rtx:
        class ComputeCapability:
            __members__ = {"NONE": 0, "CURRENT": 1, "SM80": 2, "SM89": 3, "SM120": 4}

    assert gpu_available(cuda_api=FakeCuda(cc=(9, 0)), trt_import=(Rtx, "tensorrt_rtx")) == (
        False, "TensorRT-RTX does not support compute capability 9.0")
    ok, why = gpu_available(cuda_api=FakeCuda(cc=(12, 0)), trt_import=(Rtx, "tensorrt_rtx"))
    assert ok and "compute capability 12.0" in why
    assert gpu_available(cuda_api=FakeCuda(count=0), trt_import=(Rtx, "tensorrt_rtx")) == (False, "no CUDA device")
    assert gpu_available(cuda_api=FakeCuda(), trt_import=(None, "")) == (
        False, "no TensorRT: neither tensorrt nor tensorrt_rtx_bindings imports")


def test_cuda_python_adapter_checks_return_codes_with_a_fake_cudart():
    class Err(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class FakeCudart:
        cudaError_t = Err

        @staticmethod
        def cudaMalloc(n):  # noqa: N802 - cuda-python's name
            return (Err.cudaErrorMemoryAllocation, 0) if n > 100 else (Err.cudaSuccess, 4096)

        @staticmethod
        def cudaGetErrorString(err):  # noqa: N802
            return Err.cudaSuccess, b"out of memory"

        @staticmethod
        def cudaStreamSynchronize(stream):  # noqa: N802
            return (Err.cudaSuccess,)

    rt = trt_runtime._CudaPython(FakeCudart)
    assert rt.malloc(8) == 4096
    assert rt.stream_synchronize("s") is None
    with pytest.raises(RuntimeError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(out of memory\)"):
        rt.malloc(1000)


# ----------------------------------------------------- the build child (qbench.backends.trt_build), for real

TINY_SHAPES = '{"x": [[1, 4], [2, 4], [4, 4]]}'


def _rtx_only():
    """The child picks full TensorRT where it imports; these tests are about TensorRT-RTX."""
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        pytest.skip("tensorrt_rtx_bindings is not installed")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("full tensorrt is installed: the build child would use it, not TensorRT-RTX")


def _tiny_matmul_onnx(path):
    """x [batch, 4] float32 @ W (4x4) -> y [batch, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run_build_child(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "qbench.backends.trt_build", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_build_child_refuses_implicit_int8_on_tensorrt_rtx(tmp_path):
    """A real child process: --int8-cache on TensorRT-RTX (no IInt8Calibrator) fails, before building."""
    _rtx_only()
    import tensorrt_rtx_bindings

    from qbench.calib import CalibrationTable
    from qbench.calib.trt_cache import load_trt_cache, save_trt_cache

    onnx_path = _tiny_matmul_onnx(tmp_path / "model.onnx")
    cache = save_trt_cache(CalibrationTable({"x": 4.0, "W": 1.0, "y": 20.0}), tmp_path / "cache.txt",
                           trt_version=100300)
    assert set(load_trt_cache(cache).amax) == {"x", "W", "y"}
    out = tmp_path / "out"
    r = _run_build_child(onnx_path, out, "--cc", "SM89", "--shapes", TINY_SHAPES, "--int8-cache", cache)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"implicit INT8 needs TensorRT <= 10 (IInt8Calibrator); found tensorrt_rtx "
        f"{tensorrt_rtx_bindings.__version__}: build the QDQ ONNX instead")
    assert not out.exists()  # refused before building anything


def test_build_child_builds_explicit_int8_mode_without_a_cache(tmp_path):
    """The same tiny model without --int8-cache: a real TensorRT-RTX build (SM89 target), int8_mode explicit."""
    import json

    _rtx_only()
    onnx_path = _tiny_matmul_onnx(tmp_path / "model.onnx")
    out = tmp_path / "out"
    r = _run_build_child(onnx_path, out, "--cc", "SM89", "--shapes", TINY_SHAPES)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "build.json").read_text())
    assert info["int8_mode"] == "explicit" and info["module"] == "tensorrt_rtx"
    assert info["compute_capability"] == "SM89" and "int8_cache_read" not in info
    assert (out / "engine.plan").stat().st_size == info["engine_bytes"] > 0


def test_build_child_fp16_fallback_needs_an_int8_cache(tmp_path):
    r = _run_build_child(tmp_path / "model.onnx", tmp_path / "out", "--shapes", TINY_SHAPES, "--fp16-fallback")
    assert r.returncode == 2 and "--fp16-fallback only applies with --int8-cache" in r.stderr


def _fake_tensorrt_10(ask_for_batches: bool):
    """A stand-in ``tensorrt`` 10.3 module, just enough for trt_build.build: its builder reads the
    calibrator's cache and, if ``ask_for_batches``, also asks for a batch (as TensorRT does when it
    rejects a cache). It records the network flags and builder flags it was given."""
    import types

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.seen = {"flags": set()}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.BuilderFlag = types.SimpleNamespace(INT8="INT8", FP16="FP16")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")

    class ILogger:
        def __init__(self):
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class Net:
        num_inputs = 1

        def get_input(self, i):
            return types.SimpleNamespace(name="x")

    class Config:
        int8_calibrator = None

        def set_flag(self, flag):
            trt.seen["flags"].add(flag)

        def add_optimization_profile(self, prof):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.seen["network_flags"] = flags
            return Net()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, net, cfg):
            cal = cfg.int8_calibrator
            trt.seen["cache"] = cal.read_calibration_cache() if cal is not None else None
            if cal is not None and ask_for_batches:
                trt.seen["batch"] = cal.get_batch(["x"])
            return memoryview(b"engine")

    trt.ILogger, trt.IInt8EntropyCalibrator2, trt.Builder = ILogger, IInt8EntropyCalibrator2, Builder
    trt.OnnxParser = lambda net, logger: types.SimpleNamespace(parse_from_file=lambda path: True)
    return trt


@pytest.mark.parametrize("fp16", [False, True])
def test_build_implicit_int8_path_with_a_fake_tensorrt_10(monkeypatch, tmp_path, fp16):
    """FAKE TensorRT 10 and FAKE CUDA, in-process: the wiring only (not strongly typed, INT8 flag, our cache
    served with TensorRT 10.3's header, build.json fields). The real path is unverified: see trt_build."""
    import json
    import sys

    from qbench.backends import trt_calibrator
    from qbench.backends import trt_build
    from qbench.calib import CalibrationTable
    from qbench.calib.trt_cache import save_trt_cache

    trt = _fake_tensorrt_10(ask_for_batches=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = FakeCuda()
    monkeypatch.setattr(trt_calibrator, "_cuda_adapter", lambda: cuda)
    cache = save_trt_cache(CalibrationTable({"x": 127.0}), tmp_path / "cache.txt", trt_version=8601)
    info = trt_build.build(tmp_path / "m.onnx", tmp_path / "out", "SM89", {"x": [[1, 4], [2, 4], [4, 4]]},
                           int8_cache=cache, fp16_fallback=fp16)
    assert trt.seen["network_flags"] == 0  # not STRONGLY_TYPED
    assert trt.seen["flags"] == ({"INT8", "FP16"} if fp16 else {"INT8"})
    assert trt.seen["cache"] == b"TRT-100300-EntropyCalibration2\nx: 3f800000\n"  # re-headed for 10.3
    assert json.loads((tmp_path / "out" / "build.json").read_text()) == info
    assert (info["int8_mode"], info["int8_cache_read"], info["int8_batches_served"], info["int8_batch_requests"],
            info["fp16_fallback"], info["module"]) == ("implicit", True, 0, 0, fp16, "tensorrt")
    assert cuda.closed and cuda.mem == {}  # the calibrator was freed after the build


def test_build_implicit_int8_fails_when_fake_tensorrt_ignores_the_cache(monkeypatch, tmp_path):
    import sys

    from qbench.backends import trt_calibrator
    from qbench.backends import trt_build
    from qbench.calib import CalibrationTable
    from qbench.calib.trt_cache import save_trt_cache

    trt = _fake_tensorrt_10(ask_for_batches=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_calibrator, "_cuda_adapter", lambda: FakeCuda())
    cache = save_trt_cache(CalibrationTable({"x": 127.0}), tmp_path / "cache.txt")
    with pytest.raises(SystemExit, match=r"TensorRT ignored qbench's INT8 calibration cache .* calibrated itself "
                                         r"with no data \(read the cache 1 time\(s\), asked for 1 batch"):
        trt_build.build(tmp_path / "m.onnx", tmp_path / "out", "SM89", {"x": [[1, 4], [2, 4], [4, 4]]},
                        int8_cache=cache)
    assert trt.seen["batch"] is None and not (tmp_path / "out").exists()


def test_build_implicit_int8_refuses_tensorrt_11(monkeypatch, tmp_path):
    import sys

    from qbench.backends import trt_build

    trt = _fake_tensorrt_10(ask_for_batches=False)
    trt.__version__ = "11.0.0.1"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(SystemExit) as e:
        trt_build.build(tmp_path / "m.onnx", tmp_path / "out", "SM89", {}, int8_cache=tmp_path / "c.txt")
    assert str(e.value) == ("implicit INT8 needs TensorRT <= 10 (IInt8Calibrator); found tensorrt 11.0.0.1: "
                            "build the QDQ ONNX instead")
