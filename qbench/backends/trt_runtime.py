"""Running a serialized TensorRT engine: ``TrtSession`` (the backend Session protocol) and GPU-event latency.

UNVERIFIED WITH TENSORRT: no machine where this code was written could run a TensorRT engine. The only
GPU at hand was an H100 (compute capability 9.0), which TensorRT-RTX refuses, and full TensorRT could
not be installed. What did run for real, on that H100 (benchmarks/gpu_cuda_adapter_check.py, 2026-11-23,
cuda-python from the machine's image, driver 580): the cuda-python adapter (device count and compute
capability, malloc/free, async copies both ways, streams, events) and this session's buffer logic on
real device memory, driven by a fake TensorRT engine (outputs equal 2x the inputs for shapes (0, 4),
(2, 4), (1, 4) and (64, 256), grow-only buffers, gpu_latency through real CUDA events). Never run: the
TensorRT calls themselves (deserialize, set_input_shape, set_tensor_address, execute_async_v3 on a real
engine) and the pycuda adapter. The TensorRT calls follow the TensorRT >= 10 name-based I/O API
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``get_tensor_shape``,
``set_tensor_address``, ``execute_async_v3``), checked against the installed TensorRT-RTX bindings'
signatures. The unit tests (tests/unit/test_trt_runtime.py) cover the bookkeeping with a fake TensorRT
module and a fake CUDA adapter backed by numpy memory.

Nothing here fabricates a number: latency comes from CUDA events on a real device or not at all.

CUDA is reached through a small adapter (``_CudaPython`` preferred, ``_PyCuda`` if cuda-python is
missing) so that the session logic can be exercised with a fake. Heavy imports (tensorrt, cuda,
pycuda) happen inside functions; importing this module needs neither.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from qbench.backends.cuda_api import NO_CUDA_LIBRARY, _CudaPython, _load_cuda, _PyCuda  # noqa: F401
from qbench.config.errors import BackendUnavailable, ModelError

# TensorRT-RTX runtime targets when the bindings do not list them (trt.ComputeCapability): Ampere,
# Ada, Blackwell. Not Hopper (SM90).
_RTX_FALLBACK_CCS = frozenset({(8, 0), (8, 6), (8, 9), (12, 0)})


def reserve(cuda: Any, buffers: dict[str, tuple[int, int]], name: str, need: int) -> int:
    """Device pointer with at least ``need`` (> 0) bytes for ``name`` in ``buffers``; grows, never shrinks.
    Zero-size tensors still get a real allocation: cudaMalloc(0) gives a null pointer, which TensorRT rejects."""
    need = max(need, 1)
    have = buffers.get(name)
    if have is not None and have[1] >= need:
        return have[0]
    if have is not None:
        del buffers[name]
        cuda.free(have[0])
    ptr = cuda.malloc(need)
    buffers[name] = (ptr, need)
    return ptr


def _rtx_supported_ccs(trt: Any) -> frozenset[tuple[int, int]]:
    """Compute capabilities the TensorRT-RTX bindings name (``ComputeCapability.SM89`` ...)."""
    members = getattr(getattr(trt, "ComputeCapability", None), "__members__", None) or {}
    ccs = set()
    for name in members:
        m = re.fullmatch(r"SM(\d+)(\d)", name)
        if m:
            ccs.add((int(m.group(1)), int(m.group(2))))
    return frozenset(ccs) or _RTX_FALLBACK_CCS


def gpu_available(device: int = 0, *, cuda_api: Any = None, trt_import: tuple[Any, str] | None = None
                  ) -> tuple[bool, str]:
    """(True, what) if CUDA device ``device`` is visible and TensorRT can run on it, else (False, why).

    The reasons, in the order checked: no CUDA Python library, no CUDA device (with the CUDA error),
    no TensorRT module, TensorRT-RTX on a compute capability it does not support (e.g. 9.0, Hopper).
    Full TensorRT is not gated on compute capability here; deserializing an engine reports that.
    ``cuda_api`` and ``trt_import`` (what ``import_trt()`` returns) are for tests.
    """
    if cuda_api is None:
        try:
            cuda_api = _load_cuda()
        except BackendUnavailable:
            return False, NO_CUDA_LIBRARY
    try:
        count = cuda_api.device_count()
    except Exception as e:  # noqa: BLE001 - no driver, no device: CUDA reports it as an error
        return False, f"no CUDA device ({e})"
    if count <= device:
        return False, "no CUDA device" if count == 0 else f"no CUDA device {device} ({count} visible)"
    if trt_import is None:
        from qbench.backends.trt_import import import_trt

        trt_import = import_trt()
    trt, module = trt_import
    if trt is None:
        return False, "no TensorRT: neither tensorrt nor tensorrt_rtx_bindings imports"
    try:
        major, minor = cuda_api.compute_capability(device)
    except Exception as e:  # noqa: BLE001
        return False, f"cannot read the compute capability of CUDA device {device} ({e})"
    if module == "tensorrt_rtx" and (major, minor) not in _rtx_supported_ccs(trt):
        return False, f"TensorRT-RTX does not support compute capability {major}.{minor}"
    return True, f"{module} {getattr(trt, '__version__', '?')} on CUDA device {device} " \
                 f"(compute capability {major}.{minor}, via {getattr(cuda_api, 'name', 'cuda')})"


# ---------------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------------


class TrtSession:
    """One deserialized engine, one execution context, one CUDA stream, per-tensor device buffers.

    ``infer`` casts each feed to the engine's dtype, sets the input shapes, reads the output shapes
    TensorRT infers from them (a decoder's present K/V = past_len + 1 works; a data-dependent output
    shape, -1 after the inputs are set, raises: that needs an IOutputAllocator, not implemented),
    copies inputs host-to-device on the stream, runs ``execute_async_v3`` and copies the outputs
    into fresh numpy arrays (pageable memory: CUDA stages it, the copy is correct but not overlapped).
    Device buffers are cached per tensor name and only ever grow; a zero-size tensor still gets a
    buffer of one element, since TensorRT rejects a null address. Feeds the engine does not consume
    are ignored, as the ONNX Runtime session does. Not thread-safe.

    ``trt_module`` and ``cuda_api`` replace the imported TensorRT module and the CUDA adapter (tests).
    UNVERIFIED on a GPU: see the module docstring.
    """

    def __init__(self, engine_path: Path, device: int = 0, *, trt_module: Any = None, cuda_api: Any = None):
        self._cuda = None
        self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.log_lines: list[str] = []
        if trt_module is None:
            from qbench.backends.trt_import import import_trt

            trt_module, _ = import_trt()
            if trt_module is None:
                raise BackendUnavailable("no TensorRT: neither tensorrt nor tensorrt_rtx_bindings imports")
        trt = self._trt = trt_module
        self._cuda = cuda_api if cuda_api is not None else _load_cuda()
        self.device = device
        try:
            self._cuda.set_device(device)
            self._logger = self._make_logger(trt)  # kept alive as long as the runtime
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self._engine is None:
                raise ModelError(f"{engine_path}: TensorRT cannot deserialize the engine: {self._last_log()}")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise ModelError(f"{engine_path}: TensorRT cannot create an execution context: {self._last_log()}")
            self.input_names: list[str] = []
            self.output_names: list[str] = []
            self._dtypes: dict[str, np.dtype] = {}
            shape_io = getattr(self._engine, "is_shape_inference_io", None)
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                mode = self._engine.get_tensor_mode(name)
                if mode == trt.TensorIOMode.INPUT:
                    self.input_names.append(name)
                elif mode == trt.TensorIOMode.OUTPUT:
                    self.output_names.append(name)
                else:
                    continue
                if shape_io is not None and shape_io(name):
                    raise ModelError(f"{engine_path}: tensor {name!r} is a shape tensor; not supported here")
                trt_dtype = self._engine.get_tensor_dtype(name)
                try:
                    self._dtypes[name] = np.dtype(trt.nptype(trt_dtype))
                except TypeError:
                    raise ModelError(f"{engine_path}: tensor {name!r} has TensorRT dtype {trt_dtype}, "
                                     "which has no numpy equivalent (bf16/fp8/fp4 I/O is not supported "
                                     "here)") from None
            self._stream = self._cuda.stream_create()
            self._stream_handle = self._cuda.stream_handle(self._stream)
        except BaseException:
            self.close()
            raise

    def _make_logger(self, trt: Any) -> Any:
        lines = self.log_lines

        class _Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                lines.append(f"{severity}: {msg}")
                del lines[:-200]

        return _Log()

    def _last_log(self) -> str:
        return self.log_lines[-1][:300] if self.log_lines else "no TensorRT log message"

    # -- buffers ------------------------------------------------------------------------------------

    def _reserve(self, name: str, nbytes: int, itemsize: int) -> int:
        return reserve(self._cuda, self._buffers, name, max(nbytes, itemsize))

    def _bind(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, ptr):
            raise RuntimeError(f"TensorRT set_tensor_address({name!r}) failed: {self._last_log()}")

    # -- running ------------------------------------------------------------------------------------

    def _stage(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, tuple[int, ...]], list[np.ndarray]]:
        """Set shapes, size buffers, enqueue the input copies, bind every tensor. Returns the output
        shapes and the host input arrays (to keep alive until the stream is synchronized)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"feeds lack engine input(s) {missing}; the engine's inputs are {self.input_names}")
        hosts: dict[str, np.ndarray] = {}
        for name in self.input_names:
            arr = np.asarray(feeds[name], dtype=self._dtypes[name], order="C")
            shape = tuple(int(d) for d in arr.shape)
            if not self._context.set_input_shape(name, shape):
                raise ValueError(f"TensorRT rejects shape {shape} for input {name!r}"
                                 f"{self._profile_hint(name)}: {self._last_log()}")
            hosts[name] = arr
        out_shapes: dict[str, tuple[int, ...]] = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} has a data-dependent shape {shape} after the input shapes "
                                   "are set; running it needs a TensorRT IOutputAllocator, which this runner "
                                   "does not implement")
            out_shapes[name] = shape
        for name, arr in hosts.items():
            ptr = self._reserve(name, arr.nbytes, arr.itemsize)
            if arr.nbytes:
                self._cuda.memcpy_htod_async(ptr, arr, self._stream)
            self._bind(name, ptr)
        for name, shape in out_shapes.items():
            itemsize = self._dtypes[name].itemsize
            self._bind(name, self._reserve(name, math.prod(shape) * itemsize, itemsize))
        return out_shapes, list(hosts.values())

    def _profile_hint(self, name: str) -> str:
        try:
            lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
            return f" (profile 0 allows {tuple(lo)} .. {tuple(hi)})"
        except Exception:  # noqa: BLE001 - the hint is optional
            return ""

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed: {self._last_log()}")

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in ``output_names`` order, as new numpy arrays of the engine's output dtypes."""
        out_shapes, keep_alive = self._stage(feeds)
        self._enqueue()
        outs = []
        for name, shape in out_shapes.items():
            host = np.empty(shape, dtype=self._dtypes[name])
            if host.nbytes:
                self._cuda.memcpy_dtoh_async(host, self._buffers[name][0], self._stream)
            outs.append(host)
        self._cuda.stream_synchronize(self._stream)
        del keep_alive
        return outs

    def close(self) -> None:
        """Free device buffers, the stream, the context and the engine. Safe to call twice."""
        cuda = self._cuda
        if cuda is None:
            return
        try:
            if self._stream is not None:
                cuda.stream_synchronize(self._stream)
            for ptr, _ in self._buffers.values():
                cuda.free(ptr)
            self._buffers.clear()
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
        finally:
            self._stream = None
            self._context = None  # the context before the engine, the engine before the runtime
            self._engine = None
            self._runtime = None
            self._cuda = None
            cuda.close()

    def __enter__(self) -> "TrtSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gpu_latency(session: TrtSession, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> dict[str, float]:
    """Latency of the engine alone: GPU time between CUDA events recorded on the session's stream just
    before and just after each ``execute_async_v3``.

    The inputs are copied to the device once, before timing; no host-to-device or device-to-host copy
    and no Python-side staging is inside the timed interval. What is timed is the enqueue plus compute:
    the device's execution of the engine, plus any time the device waited for the host to finish
    enqueueing it. Returns ``qbench.backends.measure.summarize`` of the ``runs`` timed runs (batch = leading
    dimension of the engine's first input), after ``warmup`` untimed runs. UNVERIFIED on a GPU: see
    the module docstring.
    """
    from qbench.backends.measure import summarize

    if runs < 1:
        raise ValueError("runs must be >= 1")
    cuda = session._cuda
    if cuda is None:
        raise RuntimeError("the session is closed")
    _, keep_alive = session._stage(feeds)
    cuda.stream_synchronize(session._stream)
    del keep_alive
    first = np.shape(feeds[session.input_names[0]]) if session.input_names else ()
    batch = int(first[0]) if first else 1
    start, end = cuda.event_create(), cuda.event_create()
    try:
        for _ in range(warmup):
            session._enqueue()
        cuda.stream_synchronize(session._stream)
        seconds = np.empty(runs)
        for i in range(runs):
            cuda.event_record(start, session._stream)
            session._enqueue()
            cuda.event_record(end, session._stream)
            cuda.event_synchronize(end)
            seconds[i] = cuda.event_elapsed_ms(start, end) / 1e3
    finally:
        cuda.event_destroy(start)
        cuda.event_destroy(end)
    return summarize(seconds, batch)
