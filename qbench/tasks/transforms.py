"""A variant's FP32 graph transform (SmoothQuant) inside a task's build: the transformed graph, and the statistics
its calibration table is made from.

- The factors come from the first statistics pass: it keeps max |x| per input channel of every calibration tensor
  (``channel_absmax``) when some variant of the sweep uses SmoothQuant, in the same pass as absmax and histograms.
- A calibrator that needs only absmax (minmax) gets each smoothed tensor's amax as max over channels of
  max |x_j| / s_j, from that same pass: no second pass. Every tensor the transform does not touch keeps its
  statistics, since the transformed graph computes the same values there.
- A histogram calibrator (entropy, percentile, mse; and minmax with a moving average, which reads per-batch
  maxima) needs the histogram of |x / s|, which no histogram of |x| gives. It gets an explicit second pass,
  over the smoothed tensors only, on the transformed FP32 graph: cached on disk by the transformed model and the
  calibration set, counted in the manifest's ``statistics_passes``, and shared by every such calibrator of that
  alpha and set.
"""

from __future__ import annotations

import hashlib
import json

from qbench.calib import TensorStats
from qbench.config.errors import QuantizationError
from qbench.util.logs import log

SQ_VERSION = 1  # part of the transformed graph's cache key: bump it when the transform changes


def uses_smoothquant(cfg) -> bool:
    return (any(t.name == "smoothquant" for t in cfg.sweep.transforms)
            or any(v.transform.name == "smoothquant" for v in cfg.sweep.extra))


def transformed(ctx, task, v):
    """(transformed FP32 ModelProto, its path in the cache, {smoothed tensor: s}, manifest info,
    {smoothed tensor: the tensor of the first pass its channel statistics are of}) of ``v``."""
    from qbench.quantize.smoothquant import smooth
    from qbench.util.io import atomic_write_bytes

    slot = ("smoothquant", v.calib_set, v.transform.signature())
    if slot not in ctx.tables:
        stats = task.ensure_stats(ctx, v.calib_set)
        skey = ctx.manifest["statistics"].get(v.calib_set, {}).get("cache_key", "")
        cmax = {t: s.channel_absmax for t, s in stats.items() if s.channel_absmax is not None}
        if not cmax:
            raise QuantizationError("smoothquant: the statistics hold no per-channel max |x| (a cache written "
                                    "without them); run the sweep again with a fresh statistics cache")
        model, factors, sources = smooth(ctx.fp32_model(), cmax, v.transform.alpha, v.transform.targets)
        key = hashlib.sha256(json.dumps([SQ_VERSION, ctx.manifest["model"]["onnx_sha256"], skey, v.transform.alpha]
                                        + ([v.transform.targets] if v.transform.targets != "norm" else [])
                                        ).encode()).hexdigest()[:16]
        path = ctx.cache / "variants" / f"{key}-smoothquant.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, model.SerializeToString())
        info = {"name": "smoothquant", "alpha": v.transform.alpha, "targets": v.transform.targets,
                "smoothed_tensors": len(factors), "inserted_mul": sum(q != t for q, t in sources.items()),
                "fp32_key": key, "s_min": float(min(f.min() for f in factors.values())) if factors else None,
                "s_max": float(max(f.max() for f in factors.values())) if factors else None}
        log(f"{v.transform.signature()}: {len(factors)} tensor(s) smoothed, {info['inserted_mul']} through a Mul")
        ctx.tables[slot] = (model, path, factors, info, sources)
    return ctx.tables[slot]


def table_stats(ctx, task, v, stats: dict, path, factors: dict, sources: dict) -> tuple[dict, dict]:
    """(the statistics ``v``'s calibrator reads on the transformed graph, what the manifest records of them)."""
    from qbench.quantize.smoothquant import smoothed_absmax
    from qbench.tasks.common import cached_stats

    cal = v.calibrator
    if cal.name == "table":
        raise QuantizationError("smoothquant: a 'table' calibrator's amax values describe the untransformed "
                                "graph; calibrate the transformed graph with a qbench calibrator")
    if cal.needs <= {"absmax"} and not getattr(cal, "moving_average", False):
        derived = dict(stats)
        for t, s in factors.items():
            src = stats[sources[t]]
            derived[t] = TensorStats(absmax=smoothed_absmax(src.channel_absmax, s), count=src.count)
        return derived, {"smoothed_amax": "per-channel max |x| / s, first pass"}
    tensors = sorted(factors)
    cc = ctx.cfg.calibration
    from qbench.calib import stats as st

    key = st.cache_key(ctx.tables[("smoothquant", v.calib_set, v.transform.signature())][3]["fp32_key"],
                       st.sample_keys(ctx.calib_sets[v.calib_set]), tensors, cc.histogram_bins, cc.batch_size,
                       cc.histogram)
    name = f"{v.calib_set}+{v.transform.signature()}"
    if ("sq_stats", name) not in ctx.tables:
        second, hit, secs = cached_stats(ctx, key, path, tensors, task.calib_batches(ctx, v.calib_set))
        ctx.tables[("sq_stats", name)] = second
        ctx.manifest["statistics"][name] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                                            "tensors": len(tensors), "bins": cc.histogram_bins,
                                            "histogram": cc.histogram, "graph": "smoothquant second pass"}
        log(f"statistics of the {len(tensors)} smoothed tensors ({v.transform.signature()}): "
            f"{'cache hit' if hit else 'second pass'} ({secs:.1f}s)")
    return {**stats, **ctx.tables[("sq_stats", name)]}, {"smoothed_amax": "second pass on the transformed graph",
                                          "second_pass_key": key}
