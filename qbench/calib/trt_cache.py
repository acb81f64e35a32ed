"""The TensorRT <=10 INT8 calibration-cache text format, read and written from a ``CalibrationTable``.

Format (as TensorRT writes it, and as ``trtexec --calib=FILE`` and ``IInt8Calibrator.readCalibrationCache``
read it)::

    TRT-8601-EntropyCalibration2
    input: 3c010a14
    (Unnamed Layer* 3) [Convolution]_output: 3d4c5a1e

* Header ``TRT-<version>-<algorithm>``. ``<version>`` is TensorRT's ``NV_TENSORRT_VERSION`` of the writer:
  ``major*1000 + minor*100 + patch`` up to 9.x (``TRT-8601`` = 8.6.1, ``TRT-7103`` = 7.1.3) and
  ``major*10000 + minor*100 + patch`` from 10.0 (``TRT-101401`` = 10.14.1), see ``trt_version_code``.
  ``<algorithm>`` is the calibrator type: ``EntropyCalibration2``, ``EntropyCalibration``,
  ``MinMaxCalibration``, ``LegacyCalibration``. TensorRT skips a cache whose header does not match
  its own version/algorithm and calibrates again (NVIDIA/TensorRT#1378: "trt will skip the file if
  it is incompatible"), so write the header of the TensorRT that will read it.
* One line per tensor, ``name: <hex>``: the hex digits are the IEEE-754 float32 bit pattern of the
  SCALE (= amax / 127) read as an unsigned 32-bit integer, i.e. the big-endian bytes, lowercase.
  ``3f800000`` is scale 1.0 (amax 127.0).

Sources checked (public code):

* microsoft/onnxruntime, onnxruntime/core/providers/tensorrt/tensorrt_execution_provider.cc,
  ``ReadDynamicRange``: documents "tensor name : scale in 32-bit single precision IEEE754 format",
  example ``TRT-7103-EntropyCalibration2`` / ``data_0: 4000889d``; parses the value with
  ``strtoul(str, nullptr, 16)``, reinterprets the integer's bits as float and uses ``scale * 127.0``
  as the dynamic range (so the text is the integer value of the bits = big-endian byte order).
* NVIDIA TAO Toolkit TF1 (the ``nvidia_tao_tf1.cv.common.export`` base exporter,
  ``_calibration_cache_from_dict``): writes
  ``"TRT-{}-EntropyCalibration2"`` with version ``MAJOR*1000 + MINOR*100 + PATCH`` and each line as
  ``tensor + ": " + hex(struct.unpack("i", struct.pack("f", amax / 127.0))[0])[2:]`` (lowercase, NOT
  zero-padded).
* NVIDIA/TensorRT issue #2036: a user's TensorRT-written cache, ``TRT-8203-EntropyCalibration2`` /
  ``167: 3c009976`` / ``168: 3e5d05cc`` ...; and a ``TRT-8401-EntropyCalibration2`` cache quoted in a
  public TensorRT-hackathon write-up (SegFormer) containing
  ``(Unnamed Layer* 64) [Shuffle]_output: 0`` -- TensorRT itself writes the hex unpadded, so a zero
  scale is the single digit ``0``. We therefore READ 1 to 8 hex digits, and WRITE exactly 8.
* TensorRT headers: ``kNV_TENSORRT_VERSION_IMPL = MAJOR*1000 + MINOR*100 + PATCH`` (NvInferRuntimeCommon.h,
  TensorRT 8) and ``NV_TENSORRT_VERSION_INT(major, minor, patch) = major*10000 + minor*100 + patch``
  (NvInferRuntimeBase.h, TensorRT 10); a TensorRT 10.14 cache header ``TRT-101401-EntropyCalibration2``
  was reported in a public experiment log.

Exactness: a float32 scale ``s`` has a 24-bit significand and 127 has 7 bits, so ``s * 127`` is exact in
float64, and ``(s * 127) / 127 == s`` exactly. Hence ``scale_of(from_trt_cache(...))`` reproduces the
cache's float32 bits for every scale at or above ``scale_of(0)`` (the MIN_AMAX clamp, ~7.87e-11). Scales
below that (TensorRT writes ``0`` for tensors it saw as all-zero) are read as amax ``s * 127`` and
``scale_of`` clamps them, like any other tiny amax in qbench.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from qbench.calib import CalibrationTable, scale_of
from qbench.config.errors import ConfigError, QuantizationError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")

_HEADER = re.compile(r"TRT-(\d+)-([A-Za-z0-9_]+)")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")
_VERSION = re.compile(r"\s*(\d+)\.(\d+)\.(\d+)")


def trt_version_code(version: str) -> int:
    """``tensorrt.__version__`` -> the number TensorRT puts in the cache header.

    ``"8.6.1"`` -> 8601, ``"7.1.3.4"`` -> 7103, ``"10.14.1.48"`` -> 101401 (the encoding changed in 10.0).
    """
    m = _VERSION.match(version)
    if not m:
        raise ConfigError(f"TensorRT version {version!r}: expected MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in m.groups())
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """float32 scale -> 8 lowercase hex digits of its big-endian IEEE-754 bits (``1.0`` -> ``3f800000``)."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(digits: str) -> float:
    """1..8 hex digits -> the float32 they encode, as a (exact) Python float."""
    return struct.unpack(">f", int(digits, 16).to_bytes(4, "big"))[0]


def to_trt_cache(table: CalibrationTable, *, trt_version: int = 10000, algorithm: str = "EntropyCalibration2") -> str:
    """The cache text for ``table``: header, then ``name: hex(scale_of(amax))`` per tensor, sorted by name.

    ``trt_version`` must be the ``NV_TENSORRT_VERSION`` of the TensorRT that reads the cache (see
    ``trt_version_code``); TensorRT ignores a cache whose header does not match.
    """
    if isinstance(trt_version, bool) or not isinstance(trt_version, int) or trt_version <= 0:
        raise ConfigError(f"trt_version: expected a positive integer such as 8601 or 100300, got {trt_version!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", algorithm):
        raise ConfigError(f"algorithm: expected a word such as 'EntropyCalibration2', got {algorithm!r}")
    table.check_finite()
    lines = [f"TRT-{trt_version}-{algorithm}"]
    for name in sorted(table.amax):
        if not name or any(c in name for c in "\r\n"):
            raise QuantizationError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        with np.errstate(over="ignore"):  # reported below as a one-line error instead
            scale = scale_of(table.amax[name])
        if not math.isfinite(float(scale)):
            raise QuantizationError(
                f"tensor {name!r}: amax {table.amax[name]!r} gives a float32 scale that overflows to inf"
            )
        lines.append(f"{name}: {scale_to_hex(float(scale))}")
    return "\n".join(lines) + "\n"


def parse_trt_header(line: str, *, source: str = "<cache>") -> tuple[int, str]:
    """``'TRT-8601-EntropyCalibration2'`` -> ``(8601, 'EntropyCalibration2')``; ConfigError otherwise."""
    m = _HEADER.fullmatch(line.strip())
    if not m:
        shown = line.strip()[:60]
        raise ConfigError(
            f"{source}:1: not a TensorRT calibration cache: expected a header like "
            f"'TRT-8601-EntropyCalibration2', got {shown!r}"
        )
    return int(m.group(1)), m.group(2)


def from_trt_cache(text: str, *, source: str = "<cache>") -> CalibrationTable:
    """Parse cache text into a table of amax = float32 scale * 127 (exact in float64).

    The table's ``calibrator`` is ``trt-cache[<header>]``. Blank lines, trailing whitespace, a UTF-8 BOM and
    Windows line endings are tolerated. Errors are ``ConfigError('<source>:<line>: <problem>')``.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{source}:1: not a TensorRT calibration cache: missing 'TRT-<version>-<algorithm>' header")
    version, algorithm = parse_trt_header(lines[0], source=source)
    amax: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.rstrip()
        if not line.strip():
            continue
        # Split at the LAST colon: TensorFlow-style tensor names ("input:0") contain colons themselves.
        name, colon, value = line.rpartition(":")
        if not colon:
            raise ConfigError(f"{source}:{lineno}: expected 'tensor_name: <hex scale>', got {line[:60]!r} (no ':')")
        if not name:
            raise ConfigError(f"{source}:{lineno}: empty tensor name before ':'")
        value = value.strip()
        if not _HEX.fullmatch(value):
            raise ConfigError(
                f"{source}:{lineno}: tensor {name[:60]!r}: scale must be 1 to 8 hex digits "
                f"(float32 bits), got {value[:20]!r}"
            )
        scale = hex_to_scale(value)
        if math.isnan(scale) or math.isinf(scale) or int(value, 16) & 0x80000000:
            raise ConfigError(
                f"{source}:{lineno}: tensor {name[:60]!r}: scale {value} is {scale!r}; "
                "a scale must be finite and non-negative"
            )
        if name in amax:
            raise ConfigError(
                f"{source}:{lineno}: tensor {name[:60]!r} appears twice (first on line {first_seen[name]})"
            )
        first_seen[name] = lineno
        amax[name] = scale * 127.0  # exact: 24-bit significand times 7-bit integer fits float64
    return CalibrationTable(amax, calibrator=f"trt-cache[TRT-{version}-{algorithm}]")


def save_trt_cache(
    table: CalibrationTable, path: Path, *, trt_version: int = 10000, algorithm: str = "EntropyCalibration2"
) -> Path:
    """Write ``to_trt_cache(table)`` atomically (the old file survives a crash; a file that cannot be
    written is io.atomic_write's StorageError)."""
    from qbench.util.io import atomic_write_text

    return atomic_write_text(Path(path), to_trt_cache(table, trt_version=trt_version, algorithm=algorithm))


def decode_cache_bytes(data: bytes, *, source: str = "<cache>") -> str:
    """A cache file's bytes as text; ``ConfigError('<source>:<line>: not UTF-8 text ...')`` otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: not UTF-8 text (byte {e.start}); "
                          "is this an engine, not a cache?") from None


def load_trt_cache(path: Path) -> CalibrationTable:
    """Read a TensorRT calibration cache file; errors name the file and the line."""
    path = Path(path)
    from qbench.util.io import read_user_bytes

    data = read_user_bytes(path, "TensorRT calibration cache")
    return from_trt_cache(decode_cache_bytes(data, source=str(path)), source=str(path))
