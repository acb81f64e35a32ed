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
