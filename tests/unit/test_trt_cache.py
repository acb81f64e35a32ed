"""TensorRT <=10 calibration-cache text (qbench.calib.trt_cache) and the calibrator adapter's no-TensorRT paths.

TensorRT is not installed here. The adapter tests below run WITHOUT TensorRT: one checks the error when
it is missing, the others use stand-in ``tensorrt`` / ``cuda.bindings.runtime`` modules built in this file,
so they test qbench's side of the contract only, never TensorRT's.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import types

import numpy as np
import pytest

from qbench.calib import MIN_AMAX, CalibrationTable, scale_of
from qbench.config.errors import BackendUnavailable, ConfigError, QuantizationError
from qbench.calib.trt_cache import (
    from_trt_cache,
    load_trt_cache,
    parse_trt_header,
    save_trt_cache,
    scale_to_hex,
    to_trt_cache,
    trt_version_code,
)


def bits(x) -> int:
    return int(np.float32(x).view(np.uint32))


# A cache as TensorRT wrote it, quoted in NVIDIA/TensorRT issue #2036 (first lines; TensorRT 8.2.3 header).
ISSUE_2036_CACHE = """TRT-8203-EntropyCalibration2
167: 3c009976
168: 3e5d05cc
169: 3c00f9f4
170: 3d925bb9
171: 3eb0e47d
"""

# Lines from a TensorRT 8.4.1 cache quoted in a public TensorRT-hackathon write-up (SegFormer): TensorRT
# writes the hex unpadded, so an all-zero tensor's scale is the single digit "0".
SEGFORMER_CACHE = """TRT-8401-EntropyCalibration2
input: 3caa54fc
(Unnamed Layer* 64) [Shuffle]_output: 0
404: 3d5c11b5
"""


# ---------------------------------------------------------------- round trips


def test_round_trip_is_bit_identical_for_random_amax():
    rng = np.random.default_rng(20240601)
    amax = 10.0 ** rng.uniform(-6, 4, size=4000)
    edge = [0.0, MIN_AMAX, MIN_AMAX * 0.5, MIN_AMAX * 1.0000001, 1e-6, 12.7, 127.0, 1.0, 1e4, 3.0e38,
            float(np.float32(127.0) * np.float32(2.0**-126)), 5e-324]
    values = [float(a) for a in amax] + edge
    table = CalibrationTable({f"t{i}": a for i, a in enumerate(values)}, calibrator="minmax")
    back = from_trt_cache(to_trt_cache(table))
    assert sorted(back.amax) == sorted(table.amax)
    mismatched = [k for k in table.amax if bits(scale_of(table.amax[k])) != bits(scale_of(back.amax[k]))]
    assert mismatched == []
    # and the text is stable: cache -> table -> cache gives the same bytes
    assert to_trt_cache(back) == to_trt_cache(table)


def test_cache_to_table_to_cache_is_bit_identical_for_random_float32_scales():
    rng = np.random.default_rng(7)
    floor = bits(scale_of(0.0))                       # the MIN_AMAX clamp, ~7.87e-11
    top = bits(np.float32(3.4e38) / np.float32(127))  # largest scale whose amax stays finite in float32 terms
    raw = rng.integers(floor, top, size=5000, dtype=np.uint64).astype(np.uint32)
    raw = np.concatenate([raw, np.array([floor, floor + 1, top, 0x3F800000, 0x7F7FFFFF], dtype=np.uint32)])
    text = "TRT-8601-EntropyCalibration2\n" + "".join(f"s{i:05d}: {int(b):08x}\n" for i, b in enumerate(raw))
    table = from_trt_cache(text)
    for i, b in enumerate(raw):
        amax = table.amax[f"s{i:05d}"]
        assert amax == float(raw[i : i + 1].view(np.float32)[0]) * 127.0
        assert bits(scale_of(amax)) == int(b), (i, hex(int(b)), amax)
    assert to_trt_cache(table, trt_version=8601) == text


def test_scales_below_the_min_amax_clamp_are_read_and_then_clamped():
    table = from_trt_cache(SEGFORMER_CACHE)
    zero = "(Unnamed Layer* 64) [Shuffle]_output"
    assert table.amax[zero] == 0.0
    assert bits(scale_of(table.amax[zero])) == bits(np.float32(MIN_AMAX / 127.0))
    assert to_trt_cache(table).splitlines()[1] == f"{zero}: {bits(np.float32(MIN_AMAX / 127.0)):08x}"


# ---------------------------------------------------------------- golden values


def test_golden_lines():
    table = CalibrationTable({"a": 127.0, "b": 12.7})
    assert to_trt_cache(table) == "TRT-10000-EntropyCalibration2\na: 3f800000\nb: 3dcccccd\n"
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(float(np.float32(0.1))) == "3dcccccd"
    back = from_trt_cache("TRT-8601-EntropyCalibration2\na: 3f800000\nb: 3dcccccd\n")
    assert back.amax["a"] == 127.0
    assert back.scale("a") == np.float32(1.0)
    assert back.scale("b") == np.float32(0.1)
    assert back.amax["b"] == float(np.float32(0.1)) * 127
    assert back.calibrator == "trt-cache[TRT-8601-EntropyCalibration2]"


def test_header_options_and_sorted_names():
    table = CalibrationTable({"z": 1.0, "a": 2.0, "input:0": 3.0})
    text = to_trt_cache(table, trt_version=101401, algorithm="MinMaxCalibration")
    assert text.splitlines()[0] == "TRT-101401-MinMaxCalibration"
    assert [line.split(": ")[0] for line in text.splitlines()[1:]] == ["a", "input:0", "z"]
    assert from_trt_cache(text).amax["input:0"] == pytest.approx(3.0, rel=1e-7)  # name with a colon


def test_real_cache_from_tensorrt_issue_2036():
    assert parse_trt_header("TRT-8203-EntropyCalibration2") == (8203, "EntropyCalibration2")
    table = from_trt_cache(ISSUE_2036_CACHE, source="issue2036.cache")
    assert list(table.amax) == ["167", "168", "169", "170", "171"]
    assert bits(table.scale("167")) == 0x3C009976
    assert bits(table.scale("171")) == 0x3EB0E47D
    assert table.amax["168"] == pytest.approx(0.21584242582321167 * 127, rel=1e-12)
    assert table.calibrator == "trt-cache[TRT-8203-EntropyCalibration2]"


def test_onnxruntime_example_line():
    # onnxruntime's TensorRT EP documents the native format with "TRT-7103-EntropyCalibration2 / data_0: 4000889d".
    table = from_trt_cache("TRT-7103-EntropyCalibration2\ndata_0: 4000889d\n")
    assert float(table.scale("data_0")) == pytest.approx(2.008338, rel=1e-6)
    assert bits(table.scale("data_0")) == 0x4000889D


@pytest.mark.parametrize(
    "version, code",
    [("7.1.3", 7103), ("8.2.3.0", 8203), ("8.6.1", 8601), ("8.6.1.post1", 8601),
     ("10.0.1", 100001), ("10.3.0", 100300), ("10.14.1.48", 101401)],
)
def test_trt_version_code(version, code):
    assert trt_version_code(version) == code


def test_tolerates_windows_endings_blank_lines_bom_and_uppercase():
    text = "\ufeffTRT-8601-EntropyCalibration2  \r\n\r\na: 3F800000   \r\nb:3dcccccd\r\n\r\n\n"
    table = from_trt_cache(text)
    assert table.amax == {"a": 127.0, "b": float(np.float32(0.1)) * 127}
    assert from_trt_cache("TRT-8601-EntropyCalibration2").amax == {}  # header only, no newline


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("", 1, "missing"),
        ("\n\na: 3f800000\n", 1, "missing"),
        ("a: 3f800000\n", 1, "header"),
        ("TRT-EntropyCalibration2\na: 3f800000\n", 1, "header"),
        ("TRT-8601-Entropy Calibration2\n", 1, "header"),
        ("TRT-8601-EntropyCalibration2\na: 3f800000\nno colon here\n", 3, "no ':'"),
        ("TRT-8601-EntropyCalibration2\n: 3f800000\n", 2, "empty tensor name"),
        ("TRT-8601-EntropyCalibration2\na: 3f80000g\n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\na: 0x3f800000\n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\na: 3f8000000\n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\na: \n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\na: 3f80_0000\n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\na: 1.0\n", 2, "hex"),
        ("TRT-8601-EntropyCalibration2\nb: 3f800000\na: bf800000\n", 3, "non-negative"),
        ("TRT-8601-EntropyCalibration2\na: 80000000\n", 2, "non-negative"),
        ("TRT-8601-EntropyCalibration2\na: 7fc00000\n", 2, "finite"),
        ("TRT-8601-EntropyCalibration2\na: 7f800000\n", 2, "finite"),
        ("TRT-8601-EntropyCalibration2\na: ff800000\n", 2, "finite"),
        ("TRT-8601-EntropyCalibration2\na: 3f800000\nb: 3f800000\n\na: 3dcccccd\n", 5, "first on line 2"),
    ],
)
def test_bad_input_names_source_and_line(text, line, words):
    with pytest.raises(ConfigError) as err:
        from_trt_cache(text, source="calib.cache")
    msg = str(err.value)
    assert msg.startswith(f"calib.cache:{line}: "), msg
    assert words in msg
    assert "\n" not in msg


def test_unwritable_tables_raise():
    with pytest.raises(QuantizationError, match="non-finite"):
        to_trt_cache(CalibrationTable({"a": float("nan")}))
    with pytest.raises(QuantizationError, match="overflows"):
        to_trt_cache(CalibrationTable({"a": 1e300}))
    with pytest.raises(QuantizationError, match="cannot be written"):
        to_trt_cache(CalibrationTable({"a\nb": 1.0}))
    with pytest.raises(ConfigError, match="trt_version"):
        to_trt_cache(CalibrationTable({"a": 1.0}), trt_version=0)
    with pytest.raises(ConfigError, match="algorithm"):
        to_trt_cache(CalibrationTable({"a": 1.0}), algorithm="Entropy-2")


# ---------------------------------------------------------------- files


def test_save_and_load(tmp_path):
    table = CalibrationTable({"x": 127.0, "y": 0.5, "z": 3000.0})
    path = tmp_path / "sub" / "model.cache"
    assert save_trt_cache(table, path, trt_version=8601) == path
    assert path.read_text().splitlines()[:2] == ["TRT-8601-EntropyCalibration2", "x: 3f800000"]
    assert [p.name for p in path.parent.iterdir()] == ["model.cache"]  # no temp file left behind
    back = load_trt_cache(path)
    assert {k: bits(back.scale(k)) for k in back.amax} == {k: bits(table.scale(k)) for k in table.amax}

    path.write_bytes(b"TRT-8601-EntropyCalibration2\r\nx: 3f800000\r\nx: 3f800000\r\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: tensor 'x' appears twice"):
        load_trt_cache(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_trt_cache(tmp_path / "missing.cache")
    path.write_bytes(b"TRT-8601-EntropyCalibration2\n\xff\xfe")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8"):
        load_trt_cache(path)


# ---------------------------------------------------------------- the TensorRT adapter, without TensorRT


def test_adapter_without_tensorrt_raises_clear_error(monkeypatch):
    from qbench.backends.trt_calibrator import make_int8_calibrator

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    with pytest.raises(BackendUnavailable) as err:
        make_int8_calibrator(CalibrationTable({"x": 1.0}), [], ["x"])
    msg = str(err.value)
    assert "tensorrt" in msg and "not installed" in msg and "tensorrt<11" in msg and "--calib" in msg
    assert "\n" not in msg


def test_tensorrt_is_really_absent_here_and_adapter_says_so():
    """The machine these tests run on has no TensorRT: the real import path gives the same clear error."""
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('tensorrt') is None\n"
        "from qbench.backends.trt_calibrator import make_int8_calibrator\n"
        "from qbench.calib import CalibrationTable\n"
        "from qbench.config.errors import BackendUnavailable\n"
        "try:\n"
        "    make_int8_calibrator(CalibrationTable({'x': 1.0}), [], ['x'])\n"
        "except BackendUnavailable as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("backend 'tensorrt': the tensorrt Python package is not installed")


def test_importing_trt_calibrator_is_cheap():
    code = (
        "import sys\n"
        "import qbench.backends.trt_calibrator\n"
        "heavy = ['numpy', 'tensorrt', 'pydantic', 'onnx', 'onnxruntime', 'torch', 'cuda', 'pycuda', 'qbench.calib']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _fake_tensorrt(monkeypatch, version: str):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class IInt8EntropyCalibrator2:  # stand-in base class: records that __init__ was called
        def __init__(self):
            self.base_initialized = True

    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


class _FakeCudaRuntime(types.ModuleType):
    """A stand-in for ``cuda.bindings.runtime`` that keeps 'device' memory in host bytearrays.

    Copies are really asynchronous here: ``cudaMemcpyAsync`` snapshots the host bytes and queues the copy
    on its stream, and only ``cudaStreamSynchronize`` lands it in device memory. So a test that reads
    device memory right after ``get_batch`` also checks that the calibrator synchronized before returning.
    """

    def __init__(self):
        super().__init__("cuda.bindings.runtime")
        self.mem: dict[int, bytearray] = {}
        self.streams: dict[int, list] = {}  # live streams -> pending copies
        self.mallocs: list[int] = []  # sizes asked for, in order
        self.device = None
        self._next = 0
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaSetDevice(self, device):
        self.device = device
        return (0,)

    def cudaMalloc(self, n):
        assert n > 0, "cudaMalloc(0) gives a null pointer, which TensorRT rejects"
        self._next += 1
        ptr = 0x1000 * self._next
        self.mem[ptr] = bytearray(n)
        self.mallocs.append(n)
        return 0, ptr

    def cudaFree(self, ptr):
        assert not any(self.streams.values()), "freed while a copy is still queued"
        del self.mem[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert kind == 1 and stream in self.streams and 0 < n <= len(self.mem[dst])
        self.streams[stream].append((dst, ctypes.string_at(src, n)))
        return (0,)

    def cudaStreamCreate(self):
        stream = 0x77 + len(self.streams)
        self.streams[stream] = []
        return 0, stream

    def cudaStreamSynchronize(self, stream):
        for dst, data in self.streams[stream]:
            self.mem[dst][: len(data)] = data
        self.streams[stream].clear()
        return (0,)

    def cudaStreamDestroy(self, stream):
        assert not self.streams.pop(stream), "destroyed with copies still queued"
        return (0,)


def _fake_cuda_runtime(monkeypatch) -> _FakeCudaRuntime:
    rt = _FakeCudaRuntime()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda.bindings = bindings
    for name, mod in [("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return rt


def test_adapter_refuses_tensorrt_11_without_tensorrt(monkeypatch):
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "11.0.0.1")
    with pytest.raises(BackendUnavailable, match=r"TensorRT 11\.0\.0\.1 removed IInt8Calibrator.*QDQ"):
        make_int8_calibrator(CalibrationTable({"x": 1.0}), [], ["x"])


def test_adapter_without_cuda_bindings_raises_with_fake_tensorrt(monkeypatch):
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "10.3.0")
    for name in ["cuda", "cuda.bindings", "cuda.bindings.runtime", "pycuda", "pycuda.autoinit", "pycuda.driver"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable) as err:
        make_int8_calibrator(CalibrationTable({"x": 1.0}), [], ["x"])
    msg = str(err.value)  # trt_runtime's message (what to install), with the calibrator's context
    assert msg.startswith("backend 'tensorrt': no cuda-python or pycuda: pip install cuda-python (or pycuda)")
    assert "calibration batches" in msg and "--calib" in msg and "\n" not in msg


def test_adapter_logic_with_fake_tensorrt_and_fake_cuda(monkeypatch, tmp_path):
    """qbench's side only (stand-in modules): the cache it serves, batch order, exhaustion, write-back,
    device buffers (copied, synchronized, reused, grown, freed) and the one stream."""
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "8.6.1")
    rt = _fake_cuda_runtime(monkeypatch)
    table = CalibrationTable({"x": 127.0, "mask": 12.7})
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((2, 3)).astype(np.float32), "mask": np.arange(4, dtype=np.int64)}
               for _ in range(2)]
    batches.append({"x": rng.standard_normal((5, 3)).astype(np.float32), "mask": np.zeros(0, np.int64)})
    cal = make_int8_calibrator(table, iter(batches), ["x", "mask"], cache_path=tmp_path / "out.cache")
    assert cal.base_initialized and cal.copier == "cuda-python"
    assert rt.device == 0 and list(rt.streams) == [0x77] and rt.mem == {}  # one stream, nothing allocated yet
    assert cal.get_batch_size() == 1
    assert cal.read_calibration_cache() == b"TRT-8601-EntropyCalibration2\nmask: 3dcccccd\nx: 3f800000\n"
    assert cal.cache_reads == 1 and cal.batches_served == 0 and cal.batch_requests == 0

    ptrs = cal.get_batch(["mask", "x"])
    assert ptrs == [0x1000, 0x2000] and all(type(p) is int for p in ptrs)
    assert rt.mallocs == [32, 24] and rt.streams[0x77] == []  # copies landed before get_batch returned
    assert bytes(rt.mem[ptrs[0]]) == batches[0]["mask"].tobytes()
    assert bytes(rt.mem[ptrs[1]]) == batches[0]["x"].tobytes()

    ptrs2 = cal.get_batch(["x", "mask"])
    assert ptrs2 == [ptrs[1], ptrs[0]] and rt.mallocs == [32, 24]  # same size: buffers reused
    assert bytes(rt.mem[ptrs2[0]]) == batches[1]["x"].tobytes()
    assert bytes(rt.mem[ptrs2[1]]) == batches[1]["mask"].tobytes()

    ptrs3 = cal.get_batch(["x", "mask"])  # x grows (5x3 floats); the empty mask keeps its 32-byte buffer
    assert ptrs3 == [0x3000, ptrs[0]] and rt.mallocs == [32, 24, 60]
    assert ptrs[1] not in rt.mem  # the outgrown x buffer was freed
    assert bytes(rt.mem[ptrs3[0]]) == batches[2]["x"].tobytes()
    assert bytes(rt.mem[ptrs3[1]]) == batches[1]["mask"].tobytes()  # nothing copied for a 0-byte array

    assert cal.get_batch(["x", "mask"]) is None and cal.get_batch(["x"]) is None
    assert cal.batches_served == 3 and cal.batch_requests == 5 and cal.error is None

    cal.write_calibration_cache(memoryview(b"TRT-8601-EntropyCalibration2\nx: 3f800000\n"))
    assert load_trt_cache(tmp_path / "out.cache").amax == {"x": 127.0}
    cal.free()
    assert rt.mem == {} and rt.streams == {}  # buffers freed, stream destroyed
    cal.free()  # twice is fine
    assert cal.get_batch(["x"]) is None


def test_adapter_allocates_one_byte_for_an_empty_first_batch(monkeypatch):
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "10.3.0")
    rt = _fake_cuda_runtime(monkeypatch)
    cal = make_int8_calibrator(CalibrationTable({"x": 1.0}), [{"x": np.zeros((0, 4), np.float32)}], ["x"])
    (ptr,) = cal.get_batch(["x"])
    assert rt.mallocs == [1] and bytes(rt.mem[ptr]) == b"\0" and cal.error is None
    cal.free()
    assert rt.mem == {} and rt.streams == {}


def test_adapter_uses_trt_runtime_pycuda_adapter_when_cuda_python_is_missing(monkeypatch):
    """Without cuda-python, trt_runtime's pycuda adapter: the device's primary context is pushed for
    the build and popped by free(); buffers are pycuda allocations, handed to TensorRT as ints."""
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "10.3.0")
    for name in ["cuda", "cuda.bindings", "cuda.bindings.runtime"]:
        monkeypatch.setitem(sys.modules, name, None)
    events: list = []

    class Alloc:
        def __init__(self, n):
            self.n, self.ptr = n, 0x5000 + n

        def __int__(self):
            return self.ptr

        def free(self):
            events.append(("free", self.ptr))

    class Ctx:
        def push(self):
            events.append("push")

        def pop(self):
            events.append("pop")

        def detach(self):
            events.append("detach")

    class Stream:
        def synchronize(self):
            events.append("sync")

    drv = types.ModuleType("pycuda.driver")
    drv.init = lambda: events.append("init")
    drv.Device = lambda i: types.SimpleNamespace(retain_primary_context=lambda: events.append(("ctx", i)) or Ctx())
    drv.mem_alloc = lambda n: events.append(("malloc", n)) or Alloc(n)
    drv.memcpy_htod_async = lambda dst, host, stream: events.append(("htod", dst, host.tobytes()))
    drv.Stream = Stream
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)

    x = np.arange(3, dtype=np.float32)
    cal = make_int8_calibrator(CalibrationTable({"x": 1.0}), [{"x": x}], ["x"], device=1)
    assert cal.copier == "pycuda" and events == ["init", ("ctx", 1), "push"]
    assert cal.get_batch(["x"]) == [0x5000 + 12]
    assert events[3:] == [("malloc", 12), ("htod", 0x5000 + 12, x.tobytes()), "sync"]
    cal.free()
    assert events[6:] == ["sync", ("free", 0x5000 + 12), "pop", "detach"]


def test_adapter_missing_input_stops_calibration_with_fake_tensorrt(monkeypatch):
    from qbench.backends.trt_calibrator import make_int8_calibrator

    _fake_tensorrt(monkeypatch, "10.3.0")
    _fake_cuda_runtime(monkeypatch)
    cal = make_int8_calibrator(CalibrationTable({"x": 1.0}), [{"x": np.zeros(2, np.float32)}], ["x"])
    assert cal.read_calibration_cache().startswith(b"TRT-100300-EntropyCalibration2\n")
    assert cal.get_batch(["x", "y"]) is None
    assert "no array for TensorRT input 'y'" in str(cal.error)
