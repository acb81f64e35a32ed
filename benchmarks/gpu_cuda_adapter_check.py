"""Run on a machine with an NVIDIA GPU and cuda-python (no TensorRT needed): checks the cuda-python adapter of
qbench.backends.trt_runtime on a real device, and TrtSession's buffer logic on REAL device memory, driven by a
fake TensorRT engine (y = 2x). Usage, from the repo root: python benchmarks/gpu_cuda_adapter_check.py"""
import sys
sys.path.insert(0, ".")
sys.path.insert(0, "tests/unit")
import numpy as np
from qbench.backends import trt_runtime as tr
from test_trt_runtime import fake_trt

api = tr._load_cuda()
print("adapter", api.name, "devices", api.device_count(), "cc", api.compute_capability(0))
api.set_device(0)
s = api.stream_create()
print("stream handle", api.stream_handle(s))
x = np.arange(1 << 20, dtype=np.float32)
p = api.malloc(x.nbytes)
api.memcpy_htod_async(p, x, s)
y = np.empty_like(x)
api.memcpy_dtoh_async(y, p, s)
api.stream_synchronize(s)
print("roundtrip equal", bool((x == y).all()))
e0, e1 = api.event_create(), api.event_create()
api.event_record(e0, s)
for _ in range(20):
    api.memcpy_htod_async(p, x, s)
api.event_record(e1, s)
api.event_synchronize(e1)
ms = api.event_elapsed_ms(e0, e1)
print("20 x 4 MiB H2D: %.3f ms by events, %.1f GB/s" % (ms, 20 * x.nbytes / ms / 1e6))
api.free(p)
print("gpu_available:", tr.gpu_available())

class RealContext:
    """y = 2 * x, computed on the host from REAL device memory at the addresses the session bound."""
    def __init__(self, api):
        self.api, self.shapes, self.addr, self.executions = api, {}, {}, 0
    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape); return len(shape) == 2
    def get_tensor_shape(self, name):
        return self.shapes["x"]
    def set_tensor_address(self, name, ptr):
        assert ptr; self.addr[name] = ptr; return True
    def execute_async_v3(self, handle):
        self.executions += 1
        n = int(np.prod(self.shapes["x"]))
        h = np.empty(n, np.float32)
        if n:
            self.api.memcpy_dtoh_async(h, self.addr["x"], self.stream)
            self.api.stream_synchronize(self.stream)
            self.api.memcpy_htod_async(self.addr["y"], 2 * h, self.stream)
        return True

import pathlib, tempfile
plan = pathlib.Path(tempfile.mkdtemp()) / "engine.plan"
plan.write_bytes(b"fake engine")
trt = fake_trt(None)
orig = trt.Runtime.deserialize_cuda_engine
def deser(self, data):
    eng = orig(self, data)
    def ctx():
        c = RealContext(api); eng.context = c; return c
    eng.create_execution_context = ctx
    return eng
trt.Runtime.deserialize_cuda_engine = deser
sess = tr.TrtSession(plan, trt_module=trt, cuda_api=api)
sess._context.stream = sess._stream
for shape in [(0, 4), (2, 4), (1, 4), (64, 256)]:
    xin = np.random.default_rng(0).standard_normal(shape)
    (yo,) = sess.infer({"x": xin, "unused": np.ones(3)})
    assert yo.shape == shape and np.allclose(yo, 2 * xin.astype(np.float32)), shape
print("TrtSession on real device memory: outputs equal 2x for shapes (0,4),(2,4),(1,4),(64,256)")
lat = tr.gpu_latency(sess, {"x": np.ones((64, 256), np.float32)}, warmup=2, runs=20)
print("gpu_latency keys/values:", {k: round(v, 4) for k, v in lat.items()})
sess.close()
print("closed OK")
