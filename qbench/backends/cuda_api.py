"""The CUDA calls TensorRT sessions and the INT8 calibrator need, through cuda-python or pycuda: both adapters
expose the same small set of operations (context, device buffers, copies, a stream, events); pointers are plain
ints. Nothing here touches a device until asked."""

from __future__ import annotations

from typing import Any

import numpy as np

from qbench.config.errors import BackendUnavailable

NO_CUDA_LIBRARY = "no cuda-python or pycuda"


# ---------------------------------------------------------------------------------------------------
# CUDA adapters. Both expose the same small set of operations; pointers are plain ints.
# ---------------------------------------------------------------------------------------------------


class _CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases)."""

    name = "cuda-python"

    def __init__(self, cudart: Any):
        self._rt = cudart

    def _call(self, fn: str, *args: Any) -> Any:
        out = getattr(self._rt, fn)(*args)
        err = out[0]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {fn} failed: {self._describe(err)}")
        if len(out) == 1:
            return None
        return out[1] if len(out) == 2 else tuple(out[1:])

    def _describe(self, err: Any) -> str:
        name = getattr(err, "name", str(err))
        try:
            e2, text = self._rt.cudaGetErrorString(err)
            if e2 == self._rt.cudaError_t.cudaSuccess:
                return f"{name} ({text.decode() if isinstance(text, bytes) else text})"
        except Exception:  # noqa: BLE001 - the error name alone is still useful
            pass
        return str(name)

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def compute_capability(self, device: int) -> tuple[int, int]:
        attr = self._rt.cudaDeviceAttr
        major = self._call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMajor, device)
        minor = self._call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMinor, device)
        return int(major), int(minor)

    def set_device(self, device: int) -> None:
        self._call("cudaSetDevice", device)

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def memcpy_htod_async(self, dst: int, host: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, host.ctypes.data, host.nbytes, kind, stream)

    def memcpy_dtoh_async(self, host: np.ndarray, src: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", host.ctypes.data, src, host.nbytes, kind, stream)

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def event_create(self) -> Any:
        return self._call("cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def event_synchronize(self, event: Any) -> None:
        self._call("cudaEventSynchronize", event)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", start, end))

    def event_destroy(self, event: Any) -> None:
        self._call("cudaEventDestroy", event)

    def close(self) -> None:
        pass


class _PyCuda:
    """pycuda's driver API. Works in the device's primary context, which the CUDA runtime (and so
    TensorRT) also uses; pycuda raises its own exceptions on failure."""

    name = "pycuda"

    def __init__(self, drv: Any):
        self._drv = drv
        self._ctx = None
        self._allocs: dict[int, Any] = {}
        self._initialized = False

    def _init(self) -> None:
        if not self._initialized:
            self._drv.init()
            self._initialized = True

    def device_count(self) -> int:
        self._init()
        return int(self._drv.Device.count())

    def compute_capability(self, device: int) -> tuple[int, int]:
        self._init()
        major, minor = self._drv.Device(device).compute_capability()
        return int(major), int(minor)

    def set_device(self, device: int) -> None:
        self._init()
        if self._ctx is None:
            ctx = self._drv.Device(device).retain_primary_context()
            ctx.push()
            self._ctx = ctx

    def malloc(self, nbytes: int) -> int:
        alloc = self._drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def memcpy_htod_async(self, dst: int, host: np.ndarray, stream: Any) -> None:
        self._drv.memcpy_htod_async(dst, host, stream)

    def memcpy_dtoh_async(self, host: np.ndarray, src: int, stream: Any) -> None:
        self._drv.memcpy_dtoh_async(host, src, stream)

    def stream_create(self) -> Any:
        return self._drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        pass  # pycuda destroys the stream when the object is collected

    def event_create(self) -> Any:
        return self._drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def event_synchronize(self, event: Any) -> None:
        event.synchronize()

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        pass

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None


def _load_cuda() -> _CudaPython | _PyCuda:
    """cuda-python where it imports, else pycuda; BackendUnavailable if neither. Touches no device."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError:
            cudart = None
    if cudart is not None:
        return _CudaPython(cudart)
    try:
        import pycuda.driver as drv
    except ImportError:
        raise BackendUnavailable(f"{NO_CUDA_LIBRARY}: pip install cuda-python (or pycuda)") from None
    return _PyCuda(drv)
