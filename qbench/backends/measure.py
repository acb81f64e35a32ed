"""Latency, measured side by side: every variant's session is timed in interleaved rounds.

Timing one variant after another lets machine drift (other tenants, thermal state, frequency)
masquerade as a speed difference: on the 2-core CI machine we saw the same model's p50 move by 20%
between minutes. Round-robin rounds spread that drift over all variants alike; percentiles are taken
over the pooled runs of every round.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_runs(infer: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        infer()
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        infer()
        out[i] = time.perf_counter() - t0
    return out


def summarize(seconds: np.ndarray, batch: int) -> dict[str, float]:
    ms = seconds * 1e3
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p90_ms": float(np.percentile(ms, 90)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "latency_mean_ms": float(ms.mean()),
        "throughput_items_per_s": float(batch / seconds.mean()),
    }


def as_rows(summary: dict[str, float], batch: int) -> list[tuple[str, str, float, str]]:
    """A latency summary as result tuples (metric, ``batch=<b>``, value, unit)."""
    return [(k, f"batch={batch}", v, "ms" if k.endswith("_ms") else "items/s") for k, v in summary.items()
            if k != ROUNDS]


def calls_per_session(warmup: int, runs: int, rounds: int) -> int:
    """How many times ``interleaved`` calls each session: ``warmup`` then ``runs`` in the first round, one
    warm-up and ``runs`` in each later one (a progress bar's total)."""
    return warmup + runs + (rounds - 1) * (1 + runs)


# Key of the per-round p50s in an ``interleaved`` summary: the manifest keeps them (latency_rounds), so that
# two variants compare as paired ratios over rounds with an interval (qbench.report.shipping), not as two p50s.
ROUNDS = "rounds_p50_ms"


def interleaved(sessions: dict[str, object], feeds: dict[str, np.ndarray], warmup: int, runs: int,
                rounds: int) -> dict[str, dict[str, float]]:
    """Per session name: latency summary over ``rounds`` round-robin rounds of ``runs`` timed runs each.

    A session that raises is reported under its name as the exception instead of a summary.
    """
    batch = next(iter(feeds.values())).shape[0]
    times: dict[str, list[np.ndarray]] = {k: [] for k in sessions}
    failed: dict[str, Exception] = {}
    for r in range(rounds):
        order = list(sessions)
        np.random.default_rng(r).shuffle(order)  # no variant always runs first (or right after another)
        for name in order:
            sess = sessions[name]
            if name in failed:
                continue
            try:
                times[name].append(time_runs(lambda: sess.infer(feeds), warmup if r == 0 else 1, runs))
            except Exception as e:  # noqa: BLE001 - one failing variant must not stop the others
                failed[name] = e
    out: dict = {k: failed[k] for k in failed}
    out.update({k: {**summarize(np.concatenate(v), batch), ROUNDS: [float(np.median(t) * 1e3) for t in v]}
                for k, v in times.items() if k not in failed})
    return out
