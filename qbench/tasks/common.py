"""What every task's build and calibration share: the statistics cache, calibration-table files, the key of a
variant's exclusions, the QDQ format version in every artifact key, and the backend a sweep runs on.

Tasks import these; the runner imports tasks only through the registry, so nothing here may import the runner.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from qbench.config.schema import build_plugin
from qbench.util.io import safe_name

QDQ_VERSION = 1  # part of every QDQ artifact's cache key: bump it when the QDQ placement changes


def cfg_key(v) -> str:
    """12 hex digits naming a variant's exclusion settings (an FP16 artifact's cache name)."""
    return hashlib.sha256(json.dumps(v.exclusion_cfg.model_dump()).encode()).hexdigest()[:12]


def cached_stats(ctx, key: str, model: Path, tensors: list[str], batches, **kw) -> tuple[dict, bool, float]:
    """(statistics of ``tensors``, cache hit, seconds): from the on-disk cache under ``key``, or collected in
    one pass, two for TensorRT's histogram layout (which needs each tensor's absmax before its histogram).
    ``batches()`` makes a fresh batch iterator. Passes run are counted in the manifest."""
    from qbench.calib import stats as st

    cc = ctx.cfg.calibration
    path = ctx.cache / "stats" / f"{key}.npz"
    t0 = time.perf_counter()
    if path.is_file():
        return st.load(path), True, time.perf_counter() - t0
    stats = st.collect(model, tensors, batches(), cc.histogram_bins, ctx.cfg.backend.threads, **kw)
    ctx.manifest["statistics_passes"] += 1
    if cc.histogram == "trt":
        tops = {t: s.absmax for t, s in stats.items()}
        stats = st.collect(model, tensors, batches(), cc.histogram_bins, ctx.cfg.backend.threads,
                           fixed_top=tops, **kw)
        ctx.manifest["statistics_passes"] += 1
    st.save(stats, path)
    return stats, False, time.perf_counter() - t0


def table_file(ctx, sig: str, calib_set: str, component: str | None = None) -> str:
    """A calibration table's path in the run dir: the set only when there is a choice, the graph if any."""
    multi = len(ctx.calib_sets) > 1
    return (f"tables/{safe_name(sig)}" + (f"@{safe_name(calib_set)}" if multi else "")
            + (f".{component}" if component else "") + ".json")


def backend(ctx):
    """The sweep's backend plugin (``backend:`` in the config), built from the registry."""
    from qbench.config import registry

    cfg = ctx.cfg
    return build_plugin(registry.backends, {"name": cfg.backend.name, "threads": cfg.backend.threads})


def batch_session(be, artifact: Path):
    """A session of backend ``be`` for evaluating batches: ``open_batch`` where the backend has one (ONNX Runtime:
    no spin-waiting threads), else ``open``."""
    return getattr(be, "open_batch", be.open)(artifact)


def sample_cap(samples: list, n_per_language: int | None) -> list:
    """The first ``n_per_language`` samples of each language, in order (all of them for None)."""
    if not n_per_language:
        return samples
    kept, seen = [], {}
    for s in samples:
        seen[s.language] = seen.get(s.language, 0) + 1
        if seen[s.language] <= n_per_language:
            kept.append(s)
    return kept


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``x`` against ``ref``, in dB (inf for no noise)."""
    noise = float(((ref - x) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def over_fp16(ctx, qdq_path: Path, key: str) -> tuple[Path, dict]:
    """A verified FP32 QDQ artifact as INT8 over FP16 (qbench.quantize.qdq_fp16), ``sweep.fp16_keep_fp32`` in
    FP32: (its path, manifest info). Cached beside the QDQ file by its key and the kept set; a cached file's
    scales are checked again against the QDQ model's."""
    from qbench.backends.ort import cpu_float16_fallback
    from qbench.quantize.qdq import load_model, match_exclusions
    from qbench.quantize.qdq_fp16 import qdq_over_fp16, verify_fp16_scales
    from qbench.util.io import atomic_write_bytes

    keep = ctx.cfg.sweep.fp16_keep_fp32
    qdq = load_model(qdq_path)
    kept, warnings = match_exclusions(qdq, keep)
    out = qdq_path.with_name(f"{key}-fp16-{hashlib.sha256(json.dumps(keep.model_dump()).encode()).hexdigest()[:12]}"
                             ".onnx")
    info: dict = {}
    if out.is_file():
        info = {"scale_max_rel_change": verify_fp16_scales(load_model(out), qdq), "cache_hit": True}
    else:
        model, info = qdq_over_fp16(qdq, kept)
        atomic_write_bytes(out, model.SerializeToString())
    # What ran the quality evaluation, said next to its numbers: ORT CPU computes much of an FP16 graph in FP32.
    return out, {"float_dtype": "fp16", "fp32_nodes": sorted(kept), "fp16": info,
                 "warnings": warnings, **cpu_float16_fallback(out)}


def ort_fused(qdq_path: Path) -> tuple[Path, dict]:
    """ONNX Runtime CPU's deployment form of a verified QDQ artifact (qbench.quantize.ort_deploy): (its path beside
    the QDQ file, what was fused). Rebuilt every time (a second or two), so it always derives from the checked file."""
    from qbench.quantize.ort_deploy import fold_linear
    from qbench.quantize.qdq import load_model
    from qbench.util.io import atomic_write_bytes

    out = qdq_path.with_name(qdq_path.stem + "-ortfused.onnx")
    model, info = fold_linear(load_model(qdq_path))
    atomic_write_bytes(out, model.SerializeToString())
    return out, {"from": qdq_path.name, **info}
