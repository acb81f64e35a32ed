"""Child process that builds one TensorRT engine: ``python -m qbench.backends.trt_build ...``.

Builds run here, not in the sweep's process, so a crash or a hang in the builder becomes a failed
variant (the parent applies the timeout) instead of killing the sweep.

Two INT8 modes, recorded as ``int8_mode`` in build.json:

- ``explicit`` (default): INT8 only where the ONNX model has Q/DQ nodes; full TensorRT builds the
  network STRONGLY_TYPED, TensorRT-RTX networks always are.
- ``implicit`` (``--int8-cache FILE``, TensorRT <= 10 only): the FP32 ONNX model plus a calibration cache
  written by ``qbench.calib.trt_cache.save_trt_cache``; the network is NOT strongly typed, the INT8 builder flag
  is set, and ``qbench.backends.trt_calibrator.make_int8_calibrator`` hands TensorRT the cache's scales.
  build.json records whether TensorRT read the cache (``int8_cache_read``) and how many batches it asked
  for; the build fails if TensorRT asked for any, since then it ignored the cache and calibrated with no
  data. UNVERIFIED here: TensorRT <= 10 cannot be installed on this machine (TensorRT-RTX is what is
  installed), so the implicit path has never built an engine. Tested: its refusal on TensorRT-RTX (real
  child process) and its wiring against a stand-in TensorRT 10 module (tests/unit/test_trt_runtime.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from qbench.backends.trt_import import import_trt


def _check_implicit_int8(trt, module: str) -> None:
    """SystemExit unless this is full TensorRT <= 10, the last with IInt8Calibrator (implicit INT8)."""
    version = str(getattr(trt, "__version__", "?"))
    m = re.match(r"\s*(\d+)\.", version)
    if module != "tensorrt" or not m or int(m.group(1)) >= 11:
        raise SystemExit(f"implicit INT8 needs TensorRT <= 10 (IInt8Calibrator); found {module} {version}: "
                         "build the QDQ ONNX instead")


def build(onnx: Path, out: Path, cc: str, shapes: dict[str, list[list[int]]], timing_cache: Path | None = None,
          int8_cache: Path | None = None, fp16_fallback: bool = False) -> dict:
    trt, module = import_trt()
    if trt is None:
        raise SystemExit("no TensorRT: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs")
    implicit = int8_cache is not None
    table = None
    if implicit:
        _check_implicit_int8(trt, module)
        from qbench.config.errors import QbenchError
        from qbench.calib.trt_cache import load_trt_cache

        try:
            table = load_trt_cache(int8_cache)
        except QbenchError as e:
            raise SystemExit(str(e)) from None
    lines: list[str] = []

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            lines.append(msg)

    logger = Log()
    builder = trt.Builder(logger)
    flags = 0
    # Implicit INT8 is incompatible with a strongly typed network: there TensorRT picks the precisions.
    if module == "tensorrt" and not implicit and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    net = builder.create_network(flags)
    parser = trt.OnnxParser(net, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SystemExit(f"TensorRT ONNX parser: {errors[0].splitlines()[0] if errors else 'failed'}")
    cfg = builder.create_builder_config()
    if module == "tensorrt_rtx":  # build for a target GPU without having one
        cfg.num_compute_capabilities = 1
        cfg.set_compute_capability(getattr(trt.ComputeCapability, cc), 0)
    cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    prof = builder.create_optimization_profile()
    for i in range(net.num_inputs):
        name = net.get_input(i).name
        if name not in shapes:
            raise SystemExit(f"TensorRT build: no optimization-profile shape for input '{name}'")
        lo, opt, hi = shapes[name]
        prof.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    cfg.add_optimization_profile(prof)
    cal = None
    if implicit:
        from qbench.config.errors import QbenchError
        from qbench.backends.trt_calibrator import make_int8_calibrator

        cfg.set_flag(trt.BuilderFlag.INT8)
        if fp16_fallback:
            cfg.set_flag(trt.BuilderFlag.FP16)
        try:
            cal = make_int8_calibrator(table, batches=[],
                                       input_names=[net.get_input(i).name for i in range(net.num_inputs)])
        except QbenchError as e:
            raise SystemExit(str(e)) from None
        cfg.int8_calibrator = cal
    cache = None
    if timing_cache is not None and hasattr(cfg, "create_timing_cache"):
        # Tactic timings shared across variants of one sweep: later builds skip re-timing the same kernels.
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = cfg.create_timing_cache(blob)
        cfg.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(net, cfg)
    secs = time.perf_counter() - t0
    if cal is not None:
        cal.free()
        if cal.batch_requests or cal.batches_served:
            raise SystemExit(
                f"TensorRT ignored qbench's INT8 calibration cache {int8_cache} and calibrated itself with no data "
                f"(read the cache {cal.cache_reads} time(s), asked for {cal.batch_requests} batch(es), "
                f"{cal.batches_served} served); check the cache header against TensorRT {trt.__version__}")
    if engine is None:
        errs = [line for line in lines if "Error" in line]
        raise SystemExit(f"TensorRT build failed: {errs[-1][:300] if errs else 'no engine'}")
    out.mkdir(parents=True, exist_ok=True)
    from qbench.util.io import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(out / "engine.plan", bytes(engine))
    atomic_write_text(out / "build.log", "\n".join(lines))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    info = {"seconds": secs, "engine_bytes": engine.nbytes, "module": module,
            "version": getattr(trt, "__version__", "?"),
            "compute_capability": cc if module == "tensorrt_rtx" else "native",
            "int8_mode": "implicit" if implicit else "explicit"}
    if cal is not None:
        info.update(int8_cache=str(int8_cache), int8_cache_read=cal.cache_reads > 0,
                    int8_batches_served=cal.batches_served, int8_batch_requests=cal.batch_requests,
                    fp16_fallback=fp16_fallback)
    atomic_write_text(out / "build.json", json.dumps(info))
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("out")
    ap.add_argument("--cc", default="SM89")
    ap.add_argument("--shapes", required=True, help="JSON: input name -> [min, opt, max] shapes")
    ap.add_argument("--timing-cache", default=None)
    ap.add_argument("--int8-cache", default=None, metavar="FILE",
                    help="implicit INT8, TensorRT <= 10 only: a cache from qbench.calib.trt_cache.save_trt_cache")
    ap.add_argument("--fp16-fallback", action="store_true",
                    help="with --int8-cache: also allow FP16 for layers that do not run in INT8")
    a = ap.parse_args()
    if a.fp16_fallback and not a.int8_cache:
        ap.error("--fp16-fallback only applies with --int8-cache")
    build(Path(a.onnx), Path(a.out), a.cc, json.loads(a.shapes), Path(a.timing_cache) if a.timing_cache else None,
          Path(a.int8_cache) if a.int8_cache else None, a.fp16_fallback)


if __name__ == "__main__":
    sys.exit(main())
