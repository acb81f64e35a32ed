"""Build QDQ ONNX files with TensorRT-RTX on the CPU and count the engine's GEMM layers by datatype.

    pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs
    python benchmarks/trt_rtx_layers.py reports/example            # every ok variant of a run
    python benchmarks/trt_rtx_layers.py model.onnx [more.onnx ...]

A check ahead of the TensorRT backend (a later issue): TensorRT-RTX builds for a target compute
capability (SM89 here) without a GPU, and at DETAILED profiling verbosity its build log lists every
engine layer with its datatypes. Nothing is run: TensorRT-RTX refuses this workplace's GPUs.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import time
from pathlib import Path


def build_log(path: Path) -> tuple[list[str], float, int]:
    import tensorrt_rtx_bindings as trt

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            self.lines.append(msg)

    log = Log()
    builder = trt.Builder(log)
    net = builder.create_network(0)  # strongly typed: INT8 comes only from the Q/DQ nodes
    parser = trt.OnnxParser(net, log)
    if not parser.parse_from_file(str(path)):
        raise SystemExit(f"{path}: {parser.get_error(0)}")
    cfg = builder.create_builder_config()
    cfg.num_compute_capabilities = 1
    cfg.set_compute_capability(trt.ComputeCapability.SM89, 0)
    cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    prof = builder.create_optimization_profile()
    for i in range(net.num_inputs):
        prof.set_shape(net.get_input(i).name, (1, 8), (8, 64), (32, 128))
    cfg.add_optimization_profile(prof)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(net, cfg)
    if engine is None:
        raise SystemExit(f"{path}: build failed")
    return log.lines, time.perf_counter() - t0, engine.nbytes


def gemm_layers(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(layer name, datatypes of its inputs and outputs) for every gemm layer in the final layer list."""
    text = "\n".join(lines)
    out = []
    for entry in text[text.rfind("Layers:"):].split("\nName: ")[1:]:
        kind = re.search(r"LayerType: ([^,]+)", entry)
        if kind and "gemm" in kind.group(1).lower():
            out.append((entry.split(", LayerType:")[0], re.findall(r"Datatype: (\w+)", entry)))
    return out


def main() -> None:
    targets: list[tuple[str, Path]] = []
    for arg in sys.argv[1:]:
        p = Path(arg)
        if p.is_dir():
            m = json.loads((p / "manifest.json").read_text())
            targets += [(v, Path(e["artifact"])) for v, e in m["variants"].items()
                        if e["status"] == "ok" and "artifact" in e]
        else:
            targets.append((p.name, p))
    for name, path in targets:
        try:
            lines, secs, size = build_log(path)
        except SystemExit as e:
            print(f"{name:48s} {e}")
            continue
        gemms = gemm_layers(lines)
        by_input = collections.Counter(d[0] if d else "?" for _, d in gemms)
        print(f"{name:48s} build {secs:4.1f} s  engine {size / 1e6:5.1f} MB  gemm layers {len(gemms):3d}  "
              f"by input datatype {dict(by_input)}")


if __name__ == "__main__":
    main()
