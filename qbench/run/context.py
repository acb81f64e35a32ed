"""A sweep's context: the config, the task, the FP32 model and tokenizer, the sampled data, the statistics and
tables computed so far, and the manifest being written. ``prepare`` makes it, in the sweep's process and in
every variant's child (qbench.run.isolate)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from qbench import __version__
from qbench.config.schema import SweepConfig
from qbench.run.variants import Variant
from qbench.tasks.common import backend
from qbench.util.logs import log


@dataclass
class Context:
    cfg: SweepConfig
    run_dir: Path
    cache: Path
    fp32: Path = Path()
    tokenizer: object = None
    calib_sets: dict = field(default_factory=dict)   # set name -> list[Sample]
    evalset: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)        # set name -> {tensor: TensorStats}
    tables: dict = field(default_factory=dict)
    task: object = None                               # the Task (qbench.tasks.base) of cfg.task
    fp32_ref: dict = field(default_factory=dict)      # the task's record of FP32's evaluation, for comparisons
    latency_feeds: dict = field(default_factory=dict)
    spec: object = None                               # the task's model description, where it has one
    model_from_cache: bool = False                    # the model came from the export cache
    sample_frames: dict = field(default_factory=dict)  # variant -> samples.parquet rows (tasks that keep them)
    search_sensitivity: dict = field(default_factory=dict)  # exclude: auto variant -> sensitivity records
    decoded: dict = field(default_factory=dict)  # artifact path -> outputs on the evaluation set, already computed
    _fp32_models: dict = field(default_factory=dict)

    def fp32_model(self, component: str | None = None):
        """The FP32 ONNX (of one ``component`` of a multi-graph artifact), parsed once per sweep: every variant
        reads it. Read-only."""
        if component not in self._fp32_models:
            from qbench.quantize.qdq import load_model

            self._fp32_models[component] = load_model(self.fp32 if component is None else
                                                      self.fp32 / f"{component}.onnx")
        return self._fp32_models[component]


def run_id_for(cfg: SweepConfig) -> str:
    h = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:6]
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{h}"


def host_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count()}


def versions() -> dict:
    import importlib.metadata as md

    out = {"qbench": __version__}
    for pkg in ("onnx", "onnxruntime", "numpy", "datasets", "tokenizers", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def prepare(cfg: SweepConfig, run_dir: Path, data: dict | None = None, model_sha256: str | None = None) -> Context:
    """The sweep's context: the FP32 model (exported or from the cache), the data sets, the manifest's head.

    ``data`` (what ``load_data`` returned) and ``model_sha256`` come from the parent with a variant's job
    (qbench.run.isolate), so a child neither reloads nor re-samples the data (importing Hugging Face datasets
    alone costs a child 0.6 s; a remote worker then needs no data files) nor hashes the model again (a
    second per GB of model)."""
    from qbench.config import registry
    from qbench.data.sets import load_data

    cache = Path(os.environ.get("QBENCH_CACHE", cfg.output.cache_dir)).resolve()
    ctx = Context(cfg=cfg, run_dir=run_dir, cache=cache, task=registry.tasks.get(cfg.task)())
    t0 = time.perf_counter()
    model_entry = ctx.task.prepare_model(ctx, model_sha256)
    log(f"model {cfg.model.source}: {'cached' if ctx.model_from_cache else 'exported'} "
        f"({time.perf_counter() - t0:.1f}s)")
    data = data or load_data(cfg)
    ctx.evalset, ctx.calib_sets = data["evalset"], data["calib_sets"]
    ctx.manifest = {
        "qbench_version": __version__, "run_id": run_dir.name, "sweep": cfg.name, "task": cfg.task,
        "gate": cfg.gate.model_dump() if cfg.gate else None,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(cfg.model_dump_json()),
        "versions": {**versions(), **backend(ctx).versions()}, "host": host_info(),
        "model": model_entry,
        "data": data["entry"],
        "statistics": {}, "statistics_passes": 0,
        "complete": False,  # True once every phase finished; a killed run is resumable (qbench sweep --resume)
        "variants": {},
    }
    return ctx


def artifact_sha(ctx: Context, artifact: Path) -> str:
    """sha256 of a variant's artifact; the FP32 baseline's is the model's, hashed once in ``prepare`` (a second
    per GB of model, not to be spent again per run and per resume)."""
    if Path(artifact) == Path(ctx.fp32):
        return ctx.manifest["model"]["onnx_sha256"]
    return ctx.task.artifact_sha256(artifact)


def build_and_evaluate(ctx: Context, v: Variant) -> tuple[Path, dict, list[tuple[str, str, float, str]]]:
    """(artifact, build info, metrics) of one variant, built and evaluated in this process for the sweep's
    task: what every executor runs, in process or in a child."""
    artifact, info = ctx.task.build_variant(ctx, v)
    return artifact, info, ctx.task.evaluate(ctx, v, artifact)


def write_samples(ctx: Context) -> None:
    """samples.parquet: the per-sample rows the task kept (none for a task that keeps none)."""
    import pandas as pd

    from qbench.util.io import atomic_write

    if ctx.sample_frames:
        df = pd.concat(ctx.sample_frames.values(), ignore_index=True)
        atomic_write(ctx.run_dir / "samples.parquet", lambda p: df.to_parquet(p, index=False))
