"""Serve a qbench ``CalibrationTable`` to TensorRT <=10's implicit-INT8 calibrator API.

UNVERIFIED here: TensorRT <=10 cannot be installed on this machine, so this adapter has never run
against a real TensorRT. Only the cache text it hands to TensorRT (``qbench.trt_cache``) is tested,
plus this module's behaviour against stand-in ``tensorrt`` / CUDA modules in the unit tests.

How it is meant to work: ``read_calibration_cache`` returns ``to_trt_cache(table)`` with the header of
the installed TensorRT, so TensorRT takes OUR scales from the cache and never runs its own calibration.
``get_batch`` is only a fallback: TensorRT calls it when it rejects the cache (wrong version/algorithm
header), and then the scales are TensorRT's, not ours -- ``calibrator.batches_served > 0`` tells you
that happened. The same cache file also works without this adapter: ``save_trt_cache`` then
``trtexec --int8 --calib=FILE``.

Importing this module is cheap: tensorrt, numpy and the CUDA bindings are imported only inside
``make_int8_calibrator`` and the calibrator's methods.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from qbench.errors import BackendUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from qbench.calib import CalibrationTable

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install TensorRT 10.x or older (pip install 'tensorrt<11') plus cuda-python, "
    "or write the cache with qbench.trt_cache.save_trt_cache and pass it to trtexec --int8 --calib=FILE"
)


def _import_tensorrt() -> Any:
    """``tensorrt`` if it is a version that still has IInt8Calibrator (<= 10); BackendUnavailable otherwise."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy on purpose
    except (ImportError, OSError) as e:
        reason = "is not installed" if isinstance(e, ImportError) else f"failed to load ({e})"
        raise BackendUnavailable(f"backend 'tensorrt': the tensorrt Python package {reason}; {_INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", ""))
    m = re.match(r"\s*(\d+)\.", version)
    if not m:
        raise BackendUnavailable(f"backend 'tensorrt': cannot read tensorrt.__version__ ({version!r}); {_INSTALL_HINT}")
    if int(m.group(1)) >= 11:
        raise BackendUnavailable(
            f"backend 'tensorrt': TensorRT {version} removed IInt8Calibrator (implicit INT8); "
            "build from qbench's explicit QDQ ONNX model instead, or install 'tensorrt<11' for this adapter"
        )
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailable(
            f"backend 'tensorrt': TensorRT {version} has no IInt8EntropyCalibrator2; {_INSTALL_HINT}"
        )
    return trt


class _CudaPython:
    """Host-to-device copies through cuda-python's runtime API (``cuda.bindings.runtime`` or ``cuda.cudart``)."""

    name = "cuda-python"

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def _check(self, err: Any, what: str) -> None:
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"{what} failed: {err}")

    def alloc(self, nbytes: int) -> Any:
        err, ptr = self.rt.cudaMalloc(nbytes)
        self._check(err, f"cudaMalloc({nbytes})")
        return ptr

    def htod(self, dev: Any, arr: "np.ndarray") -> None:
        (err,) = self.rt.cudaMemcpy(
            dev, arr.ctypes.data, arr.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        )
        self._check(err, f"cudaMemcpy({arr.nbytes} bytes, host to device)")

    def free(self, dev: Any) -> None:
        (err,) = self.rt.cudaFree(dev)
        self._check(err, "cudaFree")

    @staticmethod
    def pointer(dev: Any) -> int:
        return int(dev)


class _PyCuda:
    """Host-to-device copies through pycuda (``pycuda.autoinit`` creates the context, as TensorRT's samples do)."""

    name = "pycuda"

    def __init__(self, drv: Any) -> None:
        self.drv = drv

    def alloc(self, nbytes: int) -> Any:
        return self.drv.mem_alloc(nbytes)

    def htod(self, dev: Any, arr: "np.ndarray") -> None:
        self.drv.memcpy_htod(dev, arr)

    def free(self, dev: Any) -> None:
        dev.free()

    @staticmethod
    def pointer(dev: Any) -> int:
        return int(dev)


def _cuda_copier() -> Any:
    try:
        from cuda.bindings import runtime  # noqa: PLC0415 - cuda-python >= 12.6

        return _CudaPython(runtime)
    except ImportError:
        pass
    try:
        from cuda import cudart  # noqa: PLC0415 - older cuda-python

        return _CudaPython(cudart)
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401, PLC0415
        import pycuda.driver as drv  # noqa: PLC0415

        return _PyCuda(drv)
    except ImportError:
        pass
    raise BackendUnavailable(
        "backend 'tensorrt': no CUDA Python bindings to copy calibration batches to the GPU "
        "(pip install cuda-python, or pycuda)"
    )


def make_int8_calibrator(
    table: "CalibrationTable",
    batches: "Iterable[dict[str, np.ndarray]]",
    input_names: list[str],
    cache_path: Path | None = None,
) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` that hands TensorRT qbench's scales as its calibration cache.

    Set it as ``config.int8_calibrator`` with ``config.set_flag(trt.BuilderFlag.INT8)``. ``batches`` are only
    consumed if TensorRT rejects the cache and calibrates itself (see the module docstring). ``cache_path``,
    if given, receives whatever TensorRT writes back through ``write_calibration_cache``.

    Raises ``BackendUnavailable`` when tensorrt is missing or is 11+ (IInt8Calibrator removed) or when no
    CUDA Python bindings are installed; ``QuantizationError`` when the table has a non-finite amax.
    """
    trt = _import_tensorrt()
    from qbench.trt_cache import to_trt_cache, trt_version_code  # noqa: PLC0415 (imports numpy)

    names = list(input_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        from qbench.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"input_names: expected a non-empty list of tensor names, got {input_names!r}")
    header_version = trt_version_code(str(trt.__version__))
    cache_text = to_trt_cache(table, trt_version=header_version, algorithm="EntropyCalibration2")
    copier = _cuda_copier()

    class QbenchEntropyCalibrator2(trt.IInt8EntropyCalibrator2):
        """Returns qbench's cache so TensorRT uses our scales; serves ``batches`` only as a fallback."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 classes need the explicit base __init__
            self.cache_text = cache_text
            self.cache_bytes = cache_text.encode("utf-8")
            self.cache_path = Path(cache_path) if cache_path is not None else None
            self.input_names = names
            self.copier = copier.name
            self.batches_served = 0
            self.cache_reads = 0
            self.error: BaseException | None = None
            self._copier = copier
            self._batches = iter(batches)
            self._done = False
            self._buffers: dict[str, tuple[Any, int]] = {}  # name -> (device allocation, nbytes)

        def get_batch_size(self) -> int:
            # TensorRT <=10 ONNX networks are explicit-batch: the batch dimension is inside each array's
            # shape, and the calibrator's batch size must be 1 (NVIDIA/TensorRT#289; Polygraphy does the same).
            return 1

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            if self._done:
                return None
            try:
                batch = next(self._batches)
            except StopIteration:
                self._done = True
                return None
            try:
                return self._upload(batch, list(names))
            except Exception as e:  # an exception must not cross back into TensorRT's C++ loop
                self.error = e
                self._done = True
                log.error("qbench TensorRT calibrator: %s", e)
                return None

        def _upload(self, batch: "dict[str, np.ndarray]", names: list[str]) -> list[int]:
            import numpy as np  # noqa: PLC0415

            if self.batches_served == 0:
                log.warning(
                    "TensorRT asked for calibration batches: it did not use qbench's cache (header %s), "
                    "so the engine's INT8 scales will be TensorRT's own, not qbench's",
                    cache_text.split("\n", 1)[0],
                )
            self.batches_served += 1
            pointers = []
            for name in names:
                if name not in batch:
                    from qbench.errors import DataError  # noqa: PLC0415

                    raise DataError(
                        f"calibration batch {self.batches_served}: no array for TensorRT input {name!r} "
                        f"(batch has {sorted(batch)}; input_names={self.input_names})"
                    )
                arr = np.ascontiguousarray(batch[name])
                dev, size = self._buffers.get(name, (None, 0))
                if dev is None or size < arr.nbytes:
                    if dev is not None:
                        self._copier.free(dev)
                    dev = self._copier.alloc(max(arr.nbytes, 1))
                    self._buffers[name] = (dev, max(arr.nbytes, 1))
                self._copier.htod(dev, arr)
                pointers.append(self._copier.pointer(dev))
            return pointers

        def read_calibration_cache(self) -> bytes:
            self.cache_reads += 1
            return self.cache_bytes

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is not None:
                from qbench.io import atomic_write_bytes  # noqa: PLC0415

                atomic_write_bytes(self.cache_path, bytes(cache))

        def free(self) -> None:
            """Release the device buffers (also done when the calibrator is garbage-collected)."""
            buffers, self._buffers = self._buffers, {}
            for dev, _ in buffers.values():
                try:
                    self._copier.free(dev)
                except Exception as e:  # pragma: no cover - best effort at teardown
                    log.debug("freeing a calibration buffer failed: %s", e)

        def __del__(self) -> None:
            try:
                self.free()
            except Exception:  # pragma: no cover
                pass

    return QbenchEntropyCalibrator2()
