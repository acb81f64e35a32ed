"""The sweep's latency phase: every finished variant opened at once and timed round-robin, per batch size, so that
a machine's drift over minutes falls on every variant alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qbench.config.errors import first_line
from qbench.util import progress
from qbench.util.logs import log


def latency_phase(ctx, artifacts: dict[str, Path]) -> dict[str, list | str]:
    """Open every finished variant and time them round-robin, per batch size.

    Returns, per variant id, its latency metric tuples, or an error string if its session failed.
    """
    from qbench.backends.measure import ROUNDS, as_rows, calls_per_session, interleaved

    lat = ctx.cfg.measure.latency
    out: dict[str, list | str] = {vid: [] for vid in artifacts}
    sessions = {}
    for vid, art in artifacts.items():
        try:
            sessions[vid] = ctx.task.latency_session(ctx, art)
        except Exception as e:  # noqa: BLE001 - recorded as this variant's failure
            out[vid] = f"latency: {first_line(e, None)}"
    try:
        for b, feeds in ctx.latency_feeds.items():
            log(f"latency at batch {b}: {len(sessions)} variants x {lat.rounds} rounds x {lat.runs} runs")
            calls = calls_per_session(lat.warmup, lat.runs, lat.rounds)
            with progress.task(f"latency batch={b}", total=len(sessions) * calls, unit="run") as t:
                res = interleaved({k: progress.counted(s, t) for k, s in sessions.items()}, feeds, lat.warmup,
                                  lat.runs, lat.rounds)
            for vid, r in res.items():
                if isinstance(r, Exception):
                    out[vid] = f"latency: {first_line(r, None)}"
                    sessions.pop(vid).close()
                elif isinstance(out[vid], list):
                    out[vid] += as_rows(r, b)
                    # A session that times parts of a call (a causal LM's prefill and decode steps) adds them.
                    phases = getattr(sessions[vid], "phase_rows", None)
                    out[vid] += phases(b) if callable(phases) else []
                    ctx.manifest.setdefault("latency_rounds", {}).setdefault(vid, {})[f"batch={b}"] = r[ROUNDS]
    finally:
        for s in sessions.values():
            s.close()
    return out


def make_latency_feeds(ctx) -> None:
    """One encoded batch per latency batch size, drawn from the task's latency texts; recorded in the manifest."""
    rng = np.random.default_rng(ctx.cfg.data.calibration.seed)
    texts = ctx.task.latency_texts(ctx)
    info = {}
    for b in ctx.cfg.measure.latency.batch_sizes:
        pick = [texts[i] for i in rng.choice(len(texts), size=min(b, len(texts)), replace=False)]
        feeds = ctx.latency_feeds[b] = ctx.task.encode(ctx, pick)
        info[f"batch={b}"] = {"shape": list(feeds.get("input_ids", next(iter(feeds.values()))).shape)}
    ctx.manifest["latency_inputs"] = info
