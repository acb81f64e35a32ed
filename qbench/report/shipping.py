"""Which passing variant ships: the deployment target, who is a candidate on it, and how candidates rank.

- The target: ``target: tensorrt`` or ``ort`` in the config; by default tensorrt when the sweep has a
  ``tensorrt:`` section (the engines are what would ship), else ort.
- On tensorrt, a candidate is a variant whose engine built and whose exclusions held in the engine (every
  node the variant keeps float is float in the layer report). TensorRT latency is not measured on a machine
  without a supported GPU, and the ONNX Runtime CPU latency of the QDQ model says nothing about an engine,
  so candidates rank by a stated proxy: the INT8 share of linear FLOPs (higher first), then the engine size.
- On ort, candidates rank by p50 latency, but a difference counts only where the paired ratio over the
  interleaved rounds has an interval that excludes 1.0; tied candidates then rank by fewer high-precision
  (float) MatMul/Gemm nodes, then the smaller artifact. Runs that recorded no per-round latencies rank by p50
  and say that no interval backs the order.

Reads results rows and manifest dicts only; knows nothing of the report's layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

TRT_PROXY = "INT8 share of linear FLOPs (higher first), then engine size (smaller first)"
TIE_RESAMPLES = 2000


def target_of(manifest: Mapping) -> str:
    cfg = manifest.get("config") or {}
    return cfg.get("target") or ("tensorrt" if cfg.get("tensorrt") else "ort")


def _trt_rows(df, variant: str):
    return df[(df.variant == variant) & (df.backend == "tensorrt")]


def _trt_value(df, variant: str, metric: str) -> float | None:
    r = _trt_rows(df, variant)
    r = r[(r.metric == metric) & (r.slice == "all") & r.status.isin(["ok", "not_run_here"])]
    return None if r.empty or r.value.isna().all() else float(r.value.dropna().iloc[0])


def _excluded(df, variant: str) -> float:
    """Nodes the variant keeps float on purpose (its ORT rows' nodes_excluded, summed over op types)."""
    r = df[(df.variant == variant) & (df.metric == "nodes_excluded") & (df.status == "ok")]
    return float(r.value.sum())


def tensorrt_candidates(df, cands: list[str]) -> tuple[list[str], dict[str, str]]:
    """(candidates whose engine built and whose exclusions held, {dropped variant: why})."""
    keep, why = [], {}
    for v in cands:
        rows = _trt_rows(df, v)
        failed = rows[rows.status == "failed"]
        mb = _trt_value(df, v, "engine_mb")
        if mb is None:
            why[v] = "its TensorRT engine did not build" if not failed.empty or not rows.empty else "no TensorRT build"
            continue
        held, excl = _trt_value(df, v, "excluded_nodes_held"), _excluded(df, v)
        if excl and (held is None or held < excl):
            why[v] = f"only {0 if held is None else held:g} of its {excl:g} excluded nodes stayed float in the engine"
            continue
        keep.append(v)
    return keep, why


def proxy_key(df, v: str) -> tuple:
    """Sort key of the TensorRT proxy: higher INT8 share of linear FLOPs first, then the smaller engine."""
    share, mb = _trt_value(df, v, "int8_linear_flop_share"), _trt_value(df, v, "engine_mb")
    return (-(share if share is not None else -1.0), mb if mb is not None else math.inf)


def proxy_text(df, v: str) -> str:
    share, mb = _trt_value(df, v, "int8_linear_flop_share"), _trt_value(df, v, "engine_mb")
    parts = []
    if share is not None:
        parts.append(f"INT8 share of linear FLOPs {share:.0%}")
    if mb is not None:
        parts.append(f"engine {mb:.1f} MB")
    return ", ".join(parts)


# ---------------------------------------------------------------- latency ratios with intervals

def rounds(manifest: Mapping, variant: str, batch: str) -> np.ndarray | None:
    """Per-round p50 latencies (ms) of a variant at ``batch`` ('batch=1'), where the run recorded them."""
    r = ((manifest.get("latency_rounds") or {}).get(variant) or {}).get(batch)
    return None if not r else np.asarray(r, dtype=np.float64)


def ratio(manifest: Mapping, a: str, b: str, batch: str, level: float = 0.95, seed: int = 0) -> dict | None:
    """Paired latency ratio a / b over the interleaved rounds: the geometric mean of the per-round ratios and a
    percentile bootstrap interval over rounds. None without per-round latencies of both."""
    ra, rb = rounds(manifest, a, batch), rounds(manifest, b, batch)
    if ra is None or rb is None or len(ra) != len(rb) or len(ra) < 2:
        return None
    logs = np.log(ra / rb)
    idx = np.random.default_rng(seed).integers(0, len(logs), size=(TIE_RESAMPLES, len(logs)))
    boot = logs[idx].mean(axis=1)
    lo, hi = np.exp(np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    return {"ratio": float(np.exp(logs.mean())), "lo": float(lo), "hi": float(hi), "rounds": len(logs),
            "tie": bool(lo <= 1.0 <= hi)}


def ratio_text(r: dict | None) -> str:
    return "" if r is None else f"{r['ratio']:.2f}× [{r['lo']:.2f}, {r['hi']:.2f}]"


def rank_ort(manifest: Mapping, passing: list[str], batch: str | None, p50, float_nodes, size) -> tuple[list[str], str]:
    """(passing variants best first, the rule in words) on ONNX Runtime.

    The fastest by p50 leads; every variant whose paired ratio to it includes 1.0 is tied with it, and the tied
    group ranks by fewer float MatMul/Gemm nodes, then the smaller artifact. ``p50``, ``float_nodes`` and
    ``size`` are callables of a variant (None where unknown)."""
    def by_p50(v):
        x = p50(v)
        return (x is None, x or 0.0)

    ranked = sorted(passing, key=by_p50)
    if not ranked or batch is None:
        return ranked, ""
    lead = ranked[0]
    ratios = {v: ratio(manifest, v, lead, batch) for v in ranked[1:]}
    if not any(ratios.values()):
        return ranked, ("The run recorded no per-round latencies, so no interval backs this latency order "
                        "(differences of a few percent are within the noise of a shared machine).")

    def big(x):
        return math.inf if x is None else x

    tied = [lead] + [v for v in ranked[1:] if ratios[v] is None or ratios[v]["tie"]]
    tied.sort(key=lambda v: (big(float_nodes(v)), big(size(v)), by_p50(v)))
    rest = [v for v in ranked if v not in tied]
    return tied + rest, (f"Latency ties: {len(tied)} candidate{'s' if len(tied) != 1 else ''} whose paired p50 "
                         f"ratio to the fastest has a 95% interval including 1.0; among them, fewer float "
                         f"MatMul/Gemm nodes first, then the smaller artifact.")
