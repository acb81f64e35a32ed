"""Child process that builds one TensorRT engine: ``python -m qbench.backends.trt_build ...``.

Builds run here, not in the sweep's process, so a crash or a hang in the builder becomes a failed
variant (the parent applies the timeout) instead of killing the sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def import_trt():
    """Full TensorRT (>= 10, strongly typed) where it imports, else TensorRT-RTX; None if neither."""
    try:
        import tensorrt as trt  # noqa: F401

        return trt, "tensorrt"
    except ImportError:
        pass
    try:
        import tensorrt_rtx_bindings as trt

        return trt, "tensorrt_rtx"
    except ImportError:
        return None, ""


def build(onnx: Path, out: Path, cc: str, shapes: dict[str, list[list[int]]]) -> dict:
    trt, module = import_trt()
    if trt is None:
        raise SystemExit("no TensorRT: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs")
    lines: list[str] = []

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            lines.append(msg)

    logger = Log()
    builder = trt.Builder(logger)
    flags = 0
    if module == "tensorrt" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
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
        lo, opt, hi = shapes[name]
        prof.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    cfg.add_optimization_profile(prof)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(net, cfg)
    secs = time.perf_counter() - t0
    if engine is None:
        errs = [line for line in lines if "Error" in line]
        raise SystemExit(f"TensorRT build failed: {errs[-1][:300] if errs else 'no engine'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.plan").write_bytes(bytes(engine))
    (out / "build.log").write_text("\n".join(lines))
    info = {"seconds": secs, "engine_bytes": engine.nbytes, "module": module,
            "version": getattr(trt, "__version__", "?"), "compute_capability": cc if module == "tensorrt_rtx" else "native"}
    (out / "build.json").write_text(json.dumps(info))
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("out")
    ap.add_argument("--cc", default="SM89")
    ap.add_argument("--shapes", required=True, help="JSON: input name -> [min, opt, max] shapes")
    a = ap.parse_args()
    build(Path(a.onnx), Path(a.out), a.cc, json.loads(a.shapes))


if __name__ == "__main__":
    sys.exit(main())
