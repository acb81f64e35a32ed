"""Serve a qbench ``CalibrationTable`` to TensorRT <=10's implicit-INT8 calibrator API.

UNVERIFIED here: TensorRT <=10 cannot be installed on this machine, so this adapter has never run
against a real TensorRT. Only the cache text it hands to TensorRT (``qbench.calib.trt_cache``) is tested,
plus this module's behaviour against stand-in ``tensorrt`` / CUDA modules in the unit tests.

How it is meant to work: ``read_calibration_cache`` returns ``to_trt_cache(table)`` with the header of
the installed TensorRT, so TensorRT takes OUR scales from the cache and never runs its own calibration.
``get_batch`` is only a fallback: TensorRT calls it when it rejects the cache (wrong version/algorithm
header), and then the scales are TensorRT's, not ours -- ``calibrator.batches_served > 0`` tells you
that happened. The same cache file also works without this adapter: ``save_trt_cache`` then
``trtexec --int8 --calib=FILE``.

CUDA goes through ``qbench.backends.cuda_api``'s adapter (``_load_cuda``: cuda-python, else pycuda),
the same one the engine runner uses, whose cuda-python side (malloc/free, async copies, streams) did run on
a real H100; the calibrator's own use of it (one stream, async host-to-device copies synchronized before
``get_batch`` returns the pointers) only ran against stand-ins.

Importing this module is cheap: tensorrt, numpy and the CUDA bindings (with ``trt_runtime``) are imported
only inside ``make_int8_calibrator`` and the calibrator's methods.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from qbench.config.errors import BackendUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from qbench.calib import CalibrationTable

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install TensorRT 10.x or older (pip install 'tensorrt<11') plus cuda-python, "
    "or write the cache with qbench.calib.trt_cache.save_trt_cache and pass it to trtexec --int8 --calib=FILE"
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


def _cuda_adapter() -> Any:
    """``trt_runtime``'s CUDA adapter (cuda-python preferred, else pycuda); BackendUnavailable if neither."""
    from qbench.backends.cuda_api import _load_cuda  # noqa: PLC0415 - imports numpy

    try:
        return _load_cuda()
    except BackendUnavailable as e:
        raise BackendUnavailable(
            f"backend 'tensorrt': {e} -- needed to copy calibration batches to the GPU; "
            "or skip this adapter: save_trt_cache then trtexec --int8 --calib=FILE"
        ) from None


def make_int8_calibrator(
    table: "CalibrationTable",
    batches: "Iterable[dict[str, np.ndarray]]",
    input_names: list[str],
    cache_path: Path | None = None,
    device: int = 0,
) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` that hands TensorRT qbench's scales as its calibration cache.

    Set it as ``config.int8_calibrator`` with ``config.set_flag(trt.BuilderFlag.INT8)``. ``batches`` are only
    consumed if TensorRT rejects the cache and calibrates itself (see the module docstring). ``cache_path``,
    if given, receives whatever TensorRT writes back through ``write_calibration_cache``. ``device`` is the
    CUDA device TensorRT builds on (its current device, 0 unless the caller changed it); the calibrator
    makes it current and creates one CUDA stream there, through ``qbench.backends.trt_runtime``'s adapter.
    Call ``free()`` after the build to release the stream and any batch buffers.

    Raises ``BackendUnavailable`` when tensorrt is missing or is 11+ (IInt8Calibrator removed) or when no
    CUDA Python bindings are installed; ``QuantizationError`` when the table has a non-finite amax.
    """
    trt = _import_tensorrt()
    from qbench.calib.trt_cache import to_trt_cache, trt_version_code  # noqa: PLC0415 (imports numpy)

    names = list(input_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        from qbench.config.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"input_names: expected a non-empty list of tensor names, got {input_names!r}")
    header_version = trt_version_code(str(trt.__version__))
    cache_text = to_trt_cache(table, trt_version=header_version, algorithm="EntropyCalibration2")
    cuda = _cuda_adapter()

    class QbenchEntropyCalibrator2(trt.IInt8EntropyCalibrator2):
        """Returns qbench's cache so TensorRT uses our scales; serves ``batches`` only as a fallback."""

        def __init__(self) -> None:
            self._cuda: Any = None  # set first: free() / __del__ must work if __init__ fails below
            self._stream: Any = None
            self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 classes need the explicit base __init__
            self.cache_text = cache_text
            self.cache_bytes = cache_text.encode("utf-8")
            self.cache_path = Path(cache_path) if cache_path is not None else None
            self.input_names = names
            self.copier = cuda.name
            self.batch_requests = 0  # get_batch calls: > 0 means TensorRT did not take the cache
            self.batches_served = 0
            self.cache_reads = 0
            self.error: BaseException | None = None
            self._batches = iter(batches)
            self._done = False
            self._cuda = cuda
            try:
                cuda.set_device(device)
                self._stream = cuda.stream_create()
            except BaseException:
                self.free()
                raise

        def get_batch_size(self) -> int:
            # TensorRT <=10 ONNX networks are explicit-batch: the batch dimension is inside each array's
            # shape, and the calibrator's batch size must be 1 (NVIDIA/TensorRT#289; Polygraphy does the same).
            return 1

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            self.batch_requests += 1
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

        def _reserve(self, name: str, nbytes: int) -> int:
            from qbench.backends.trt_runtime import reserve  # noqa: PLC0415

            return reserve(self._cuda, self._buffers, name, nbytes)

        def _upload(self, batch: "dict[str, np.ndarray]", names: list[str]) -> list[int]:
            import numpy as np  # noqa: PLC0415

            if self._cuda is None:
                raise RuntimeError("the calibrator was freed")
            if self.batches_served == 0:
                log.warning(
                    "TensorRT asked for calibration batches: it did not use qbench's cache (header %s), "
                    "so the engine's INT8 scales will be TensorRT's own, not qbench's",
                    cache_text.split("\n", 1)[0],
                )
            self.batches_served += 1
            missing = [name for name in names if name not in batch]
            if missing:
                from qbench.config.errors import DataError  # noqa: PLC0415

                raise DataError(
                    f"calibration batch {self.batches_served}: no array for TensorRT input {missing[0]!r} "
                    f"(batch has {sorted(batch)}; input_names={self.input_names})"
                )
            hosts = []  # kept alive until the stream is synchronized
            pointers = []
            try:
                for name in names:
                    arr = np.ascontiguousarray(batch[name])
                    ptr = self._reserve(name, arr.nbytes)
                    if arr.nbytes:
                        self._cuda.memcpy_htod_async(ptr, arr, self._stream)
                        hosts.append(arr)
                    pointers.append(int(ptr))
            finally:
                if hosts:  # TensorRT reads the buffers as soon as get_batch returns
                    self._cuda.stream_synchronize(self._stream)
            return pointers

        def read_calibration_cache(self) -> bytes:
            self.cache_reads += 1
            return self.cache_bytes

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is not None:
                from qbench.util.io import atomic_write_bytes  # noqa: PLC0415

                atomic_write_bytes(self.cache_path, bytes(cache))

        def free(self) -> None:
            """Release the device buffers and the stream (also done when the calibrator is garbage-collected).

            Safe to call twice; after it, ``get_batch`` serves nothing."""
            cuda, stream, buffers = self._cuda, self._stream, self._buffers
            if cuda is None:
                return
            self._cuda, self._stream, self._buffers, self._done = None, None, {}, True
            steps = [(f"freeing the calibration buffer of {name!r}", cuda.free, ptr)
                     for name, (ptr, _) in buffers.items()]
            if stream is not None:
                steps.insert(0, ("synchronizing the calibration stream", cuda.stream_synchronize, stream))
                steps.append(("destroying the calibration stream", cuda.stream_destroy, stream))
            for what, fn, arg in steps:
                try:
                    fn(arg)
                except Exception as e:  # best effort at teardown
                    log.debug("%s failed: %s", what, e)
            try:
                cuda.close()
            except Exception as e:  # pragma: no cover - best effort at teardown
                log.debug("closing the CUDA adapter failed: %s", e)

        def __del__(self) -> None:
            try:
                self.free()
            except Exception:  # pragma: no cover
                pass

    return QbenchEntropyCalibrator2()
