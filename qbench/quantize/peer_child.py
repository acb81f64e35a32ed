"""Run a peer quantizer (NNCF or ModelOpt) through its own Python API, in its own process and environment.

Standalone on purpose: it imports numpy, onnx and the peer library only, never qbench, so it runs under any
interpreter whose environment has the peer (``sweep.baselines[i].python``), whatever onnx and onnxruntime
versions that environment pins.

    python peer_child.py SPEC.json

SPEC: {"tool": "nncf" | "modelopt_int8", "fp32": path, "out": path, "calibration": .npz, "options": {...}}.
The .npz holds one unpadded sample per key prefix: ``<i>/<input name>`` (batch 1), as qbench's statistics
pass sees them. Writes the quantized ONNX to ``out`` and prints one JSON line: seconds, peak memory, versions.
Exit 3 with one line on stderr when the package does not import.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from importlib import metadata


def _samples(path: str) -> list[dict]:
    import numpy as np

    data = np.load(path)
    out: dict[int, dict] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        out.setdefault(int(i), {})[name] = data[key]
    return [out[i] for i in sorted(out)]


def _nncf(spec: dict, samples: list[dict]) -> None:
    import nncf
    import onnx

    model = onnx.load(spec["fp32"])
    opts = spec["options"]
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE,
              "mixed": nncf.QuantizationPreset.MIXED}[opts.get("preset", "performance")]
    kw = {}
    if opts.get("model_type") == "transformer":
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize(model, nncf.Dataset(samples), preset=preset, subset_size=len(samples), **kw)
    onnx.save(q, spec["out"])


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol, plus ModelOpt's ``get_first``: one unpadded sample a call.
    (ModelOpt's ``calibration_data`` and its command line take one rectangular array per input, so every sample
    would be padded to the longest; its Python API takes a reader, which feeds the samples as qbench does.)"""

    def __init__(self, samples: list[dict]):
        self.samples = samples
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)

    def get_first(self):
        return self.samples[0]

    def rewind(self):
        self.it = iter(self.samples)


def _modelopt(spec: dict, samples: list[dict]) -> None:
    from modelopt.onnx.quantization import quantize

    opts = spec["options"]
    quantize(spec["fp32"], quantize_mode="int8", calibration_data_reader=_Reader(samples),
             calibration_method=opts.get("calibration_method", "entropy"), calibration_eps=["cpu"],
             high_precision_dtype=opts.get("high_precision_dtype", "fp16"), output_path=spec["out"])


TOOLS = {"nncf": ("nncf", "nncf", _nncf), "modelopt_int8": ("modelopt", "nvidia-modelopt", _modelopt)}


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[1]).read())
    module, dist, run = TOOLS[spec["tool"]]
    try:
        __import__(module)
    except ImportError as e:
        print(f"{dist} does not import under {sys.executable}: {e}", file=sys.stderr)
        return 3
    samples = _samples(spec["calibration"])
    t0 = time.perf_counter()
    run(spec, samples)
    seconds = time.perf_counter() - t0
    versions = {}
    for d in (dist, "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "versions": versions, "samples": len(samples),
        "python": sys.executable}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
