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

A task with several graphs (translation: encoder and decoder) transforms each one from its own statistics:
every function takes the graph's ``comp`` (None for a one-graph task), which keys what it caches.
"""

from __future__ import annotations

import hashlib
import json

from qbench.calib import TensorStats
from qbench.config.errors import QuantizationError
from qbench.util.logs import log

SQ_VERSION = 1  # part of the transformed graph's cache key: bump it when the transform changes


def uses_smoothquant(cfg) -> bool:
    """Whether the statistics pass must keep max |x| per channel: SmoothQuant and AWQ's scale search read it."""
    return (any(t.name == "smoothquant" for t in cfg.sweep.transforms)
            or any(v.transform.name == "smoothquant" for v in cfg.sweep.extra)
            or any(f.awq for f in cfg.sweep.formats) or any(v.format.awq for v in cfg.sweep.extra))


def component_stats(ctx, task, set_name: str, comp: str | None) -> tuple[dict, str]:
    """(the first pass's statistics of graph ``comp``, their cache key): a one-graph task's statistics are the
    graph's, a multi-graph task's are {component: statistics} (qbench.tasks.base)."""
    stats = task.ensure_stats(ctx, set_name)
    rec = ctx.manifest["statistics"].get(set_name, {})
    if comp is None:
        return stats, rec.get("cache_key", "")
    return stats[comp], rec.get(comp, {}).get("cache_key", "")



def channel_absmax(ctx, task, calib_set: str, comp, what: str) -> tuple[dict, str]:
    """({tensor: max |x| per channel}, statistics key) of one graph's first statistics pass: what SmoothQuant and
    AWQ both scale from."""
    stats, skey = component_stats(ctx, task, calib_set, comp)
    cmax = {t: s.channel_absmax for t, s in stats.items() if s.channel_absmax is not None}
    if not cmax:
        raise QuantizationError(f"{what}: the statistics hold no per-channel max |x| (a cache written without "
                                "them); run the sweep again with a fresh statistics cache")
    return cmax, skey

def _graph_key(parts: list, comp: str | None) -> str:
    # one-graph keys stay what they were before graphs were named, so existing caches stay valid
    return hashlib.sha256(json.dumps(parts + ([comp] if comp else [])).encode()).hexdigest()[:16]


def awq_model(ctx, task, v, comp: str | None = None):
    """(the FP32 graph with ``v``'s AWQ factors folded in, its path in the cache, manifest info): one per weight
    format, calibration set and graph, from the first pass's per-channel max |x| (qbench.quantize.awq)."""
    from qbench.quantize import awq
    from qbench.quantize.smoothquant import smooth
    from qbench.util.io import atomic_write_bytes

    slot = ("awq", v.calib_set, v.format.signature(), comp)
    if slot not in ctx.tables:
        cmax, skey = channel_absmax(ctx, task, v.calib_set, comp, "awq")
        from qbench.config import registry
        from qbench.config.schema import build_plugin

        rule = build_plugin(registry.weight_rules, ctx.cfg.calibration.weights)
        quant, alphas = awq.fake_quantizer(v.format, rule), []

        def search(a, ws):
            s, alpha = awq.search(a, ws, quant)
            alphas.append(alpha)
            return s

        model, factors, _ = smooth(ctx.fp32_model(comp), cmax, 0.0, "all", factor_fn=search)
        parts = [SQ_VERSION, "awq", ctx.manifest["model"]["onnx_sha256"], skey, v.format.signature()]
        parts += [rule.signature()] if v.format.name == "int8_wo" else []  # int4 blocks ignore the int8 weight rule
        key = _graph_key(parts, comp)
        path = ctx.cache / "variants" / f"{key}-awq.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, model.SerializeToString())
        info = {"name": "awq", "scaled_tensors": len(factors), "fp32_key": key,
                "alpha_chosen": {f"{a:g}": alphas.count(a) for a in sorted(set(alphas))}}
        log(f"awq for {v.format.signature()}{f' ({comp})' if comp else ''}: {len(factors)} activation(s) scaled, alphas {info['alpha_chosen']}")
        ctx.tables[slot] = (model, path, info)
    return ctx.tables[slot]


def transformed(ctx, task, v, comp: str | None = None):
    """(transformed FP32 ModelProto, its path in the cache, {smoothed tensor: s}, manifest info,
    {smoothed tensor: the tensor of the first pass its channel statistics are of}) of ``v``."""
    from qbench.quantize.smoothquant import smooth
    from qbench.util.io import atomic_write_bytes

    slot = ("smoothquant", v.calib_set, v.transform.signature(), comp)
    if slot not in ctx.tables:
        cmax, skey = channel_absmax(ctx, task, v.calib_set, comp, "smoothquant")
        model, factors, sources = smooth(ctx.fp32_model(comp), cmax, v.transform.alpha, v.transform.targets)
        key = _graph_key([SQ_VERSION, ctx.manifest["model"]["onnx_sha256"], skey, v.transform.alpha]
                         + ([v.transform.targets] if v.transform.targets != "norm" else []), comp)
        path = ctx.cache / "variants" / f"{key}-smoothquant.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, model.SerializeToString())
        info = {"name": "smoothquant", "alpha": v.transform.alpha, "targets": v.transform.targets,
                "smoothed_tensors": len(factors), "inserted_mul": sum(q != t for q, t in sources.items()),
                "fp32_key": key, "s_min": float(min(f.min() for f in factors.values())) if factors else None,
                "s_max": float(max(f.max() for f in factors.values())) if factors else None}
        log(f"{v.transform.signature()}{f' ({comp})' if comp else ''}: {len(factors)} tensor(s) smoothed, {info['inserted_mul']} through a Mul")
        ctx.tables[slot] = (model, path, factors, info, sources)
    return ctx.tables[slot]


def table_stats(ctx, task, v, stats: dict, path, factors: dict, sources: dict,
                comp: str | None = None) -> tuple[dict, dict]:
    """(the statistics ``v``'s calibrator reads on the transformed graph ``comp``, what the manifest records of
    them). A second pass feeds the graph the task's own calibration batches (``task.calib_batches``)."""
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

    key = st.cache_key(ctx.tables[("smoothquant", v.calib_set, v.transform.signature(), comp)][3]["fp32_key"],
                       st.sample_keys(ctx.calib_sets[v.calib_set]), tensors, cc.histogram_bins, cc.batch_size,
                       cc.histogram)
    name = f"{v.calib_set}+{v.transform.signature()}" + (f".{comp}" if comp else "")
    if ("sq_stats", name) not in ctx.tables:
        batches, kw = task.calib_batches(ctx, v.calib_set, comp)
        second, hit, secs = cached_stats(ctx, key, path, tensors, batches, **kw)
        ctx.tables[("sq_stats", name)] = second
        ctx.manifest["statistics"][name] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                                            "tensors": len(tensors), "bins": cc.histogram_bins,
                                            "histogram": cc.histogram, "graph": "smoothquant second pass"}
        log(f"statistics of the {len(tensors)} smoothed tensors ({v.transform.signature()}): "
            f"{'cache hit' if hit else 'second pass'} ({secs:.1f}s)")
    return {**stats, **ctx.tables[("sq_stats", name)]}, {"smoothed_amax": "second pass on the transformed graph",
                                          "second_pass_key": key}
