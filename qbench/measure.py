"""Latency: warm-up, then repeated timed runs of one fixed batch; percentiles over the runs."""

from __future__ import annotations

import time

import numpy as np


def latency(session, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        session.infer(feeds)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        session.infer(feeds)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    batch = next(iter(feeds.values())).shape[0]
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p90_ms": float(np.percentile(ms, 90)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "latency_mean_ms": float(ms.mean()),
        "throughput_items_per_s": float(batch / times.mean()),
    }
