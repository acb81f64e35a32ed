"""TensorRT backend: strongly typed engines from the QDQ ONNX, built in a child process.

Uses ``tensorrt`` (>= 10) where it imports, otherwise TensorRT-RTX (``tensorrt_rtx_bindings``), which
builds for a target compute capability on a machine without a GPU. Running engines needs a supported
GPU; none exists where this was written (TensorRT-RTX refuses SM90), so ``open`` says so plainly and
the sweep records the latency as not run. Nothing here fabricates a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from qbench.errors import BackendUnavailable, VariantFailed


class TensorRTBackend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "tensorrt"
    compute_capability: Literal["SM75", "SM80", "SM86", "SM89", "SM120"] = "SM89"
    build_timeout_s: int = Field(900, ge=10)
    # Optimization profile: (batch, sequence) for min, opt and max.
    min_shape: tuple[int, int] = (1, 8)
    opt_shape: tuple[int, int] = (8, 64)
    max_shape: tuple[int, int] = (32, 128)

    def check(self) -> None:
        from qbench.backends.trt_build import import_trt

        if import_trt()[0] is None:
            raise BackendUnavailable("backend 'tensorrt': neither tensorrt nor tensorrt_rtx_bindings imports "
                                     "(pip install 'qbench-workbench[tensorrt-rtx]')")

    def versions(self) -> dict[str, str]:
        from qbench.backends.trt_build import import_trt

        trt, module = import_trt()
        return {module or "tensorrt": getattr(trt, "__version__", "absent"),
                "trt_compute_capability": self.compute_capability}

    def build(self, onnx_path: Path, workdir: Path, input_names: list[str]) -> tuple[Path, dict, list[str]]:
        """(engine path, build info, build-log lines). A crash, timeout or parser error -> VariantFailed."""
        self.check()
        shapes = {n: [list(self.min_shape), list(self.opt_shape), list(self.max_shape)] for n in input_names}
        cmd = [sys.executable, "-m", "qbench.backends.trt_build", str(onnx_path), str(workdir),
               "--cc", self.compute_capability, "--shapes", json.dumps(shapes)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.build_timeout_s)
        except subprocess.TimeoutExpired:
            raise VariantFailed(f"TensorRT build timed out after {self.build_timeout_s} s") from None
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
            raise VariantFailed(tail[:400])
        info = json.loads((workdir / "build.json").read_text())
        return workdir / "engine.plan", info, (workdir / "build.log").read_text().splitlines()

    def open(self, artifact: Path):
        raise BackendUnavailable("not_run_here: running a TensorRT engine needs a supported GPU "
                                 "(TensorRT-RTX refuses SM90; full TensorRT is not installed here)")
