"""TensorRT backend: strongly typed engines from the QDQ ONNX, built in a child process.

Uses ``tensorrt`` (>= 10) where it imports, otherwise TensorRT-RTX (``tensorrt_rtx_bindings``), which
builds for a target compute capability on a machine without a GPU. Running engines needs a supported
GPU; none exists where this was written (TensorRT-RTX refuses SM90), so ``open`` says so plainly and
the sweep records the latency as not run. Nothing here fabricates a number.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from qbench.config.errors import BackendUnavailable, VariantFailed
from qbench.util.proc import run_limited


class TensorRTBackend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "tensorrt"
    compute_capability: Literal["SM75", "SM80", "SM86", "SM89", "SM120"] = "SM89"
    build_timeout_s: int = Field(900, ge=1)

    def check(self) -> None:
        from qbench.backends.trt_import import import_trt

        if import_trt()[0] is None:
            raise BackendUnavailable("backend 'tensorrt': neither tensorrt nor tensorrt_rtx_bindings imports "
                                     "(pip install 'qbench-workbench[tensorrt-rtx]')")

    def versions(self) -> dict[str, str]:
        from qbench.backends.trt_import import import_trt

        trt, module = import_trt()
        return {module or "tensorrt": getattr(trt, "__version__", "absent"),
                "trt_compute_capability": self.compute_capability}

    def build(self, onnx_path: Path, workdir: Path, shapes: dict[str, list[list[int]]],
              timing_cache: Path | None = None, int8_cache: Path | None = None,
              runner=run_limited) -> tuple[Path, dict, list[str]]:
        """(engine path, build info, build-log lines). A crash, timeout or parser error -> VariantFailed.

        ``shapes``: input name -> [min, opt, max] shape of the one optimization profile (see input_profiles).
        ``int8_cache``: TensorRT <= 10's implicit INT8 from an FP32 graph and this calibration cache
        (unverified: no TensorRT <= 10 where this was written; elsewhere the child refuses it).
        ``runner``: runs the builder's command (``qbench.util.proc.run_limited``'s signature); a caller with
        its own process control passes its own, so the backend needs to know nothing of who calls it.
        """
        self.check()
        cmd = _child_cmd(onnx_path, workdir, self.compute_capability, shapes, timing_cache)
        cmd += ["--int8-cache", str(int8_cache)] if int8_cache else []
        # In its own process group, under run_limited's rules: a timeout or an interrupted sweep kills the
        # builder and anything it started, and it dies with the sweep. Its stderr stays beside the engine.
        workdir.mkdir(parents=True, exist_ok=True)
        r = runner(cmd, "TensorRT build", self.build_timeout_s, None, stderr_file=workdir / "build.stderr",
                        timeout_key="tensorrt.build_timeout_s")
        if r.returncode != 0:  # the child's own error (a parser or builder failure): its last line
            lines = r.stderr.strip().splitlines()
            raise VariantFailed((lines or [f"exit code {r.returncode}"])[-1][:400])
        info = json.loads((workdir / "build.json").read_text())
        return workdir / "engine.plan", info, (workdir / "build.log").read_text().splitlines()

    def open(self, engine: Path):
        """A Session on a built engine. Needs a supported GPU; where none is, says why (BackendUnavailable)."""
        from qbench.backends.trt_runtime import TrtSession, gpu_available

        ok, why = gpu_available()
        if not ok:
            raise BackendUnavailable(f"not_run_here: {why}")
        return TrtSession(engine)


def _child_cmd(onnx_path: Path, workdir: Path, cc: str, shapes: dict, timing_cache: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "qbench.backends.trt_build", str(onnx_path), str(workdir),
           "--cc", cc, "--shapes", json.dumps(shapes)]
    return cmd + (["--timing-cache", str(timing_cache)] if timing_cache else [])


def input_profiles(model, ranges: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """One optimization profile: input name -> [min, opt, max] shape, from the graph's symbolic dims.

    A named dim takes ``ranges[name]``; unnamed ones fall back by what the name says (batch, past,
    else a sequence axis). Fixed dims stay fixed. A past-K/V axis may be 0: a decoder's first step.
    """
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        lo, opt, hi = [], [], []
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_value > 0:
                r = (d.dim_value,) * 3
            else:
                name = d.dim_param or "sequence"
                r = ranges.get(name) or ranges["batch" if "batch" in name else "past_len" if "past" in name
                                               else "sequence"]
            lo.append(r[0])
            opt.append(r[1])
            hi.append(r[2])
        out[inp.name] = [lo, opt, hi]
    return out
