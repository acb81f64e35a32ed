"""Causal-LM latency as the sweep's latency phase times it: one call is a prefill of the latency prompt followed
by ``new_tokens`` decode steps through the cache; the two parts are timed apart and reported as ``prefill_*`` and
``decode_*_per_token`` rows beside the whole call's ``latency_*`` (qbench.run.latency asks ``phase_rows``)."""

from __future__ import annotations

import time

import numpy as np


class PrefillDecodeSession:
    """A variant's decoder as something the latency phase can time (``infer``, ``close``), keeping the split."""

    def __init__(self, dec, new_tokens: int, warmup: int):
        self.dec, self.new_tokens, self.warmup = dec, new_tokens, warmup
        self.input_names = ["input_ids", "attention_mask"]
        self._times: list[tuple[float, float]] = []

    def infer(self, feeds: dict[str, np.ndarray]) -> list:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        t0 = time.perf_counter()
        logits, past = self.dec.forward(ids, mask, None)
        t1 = time.perf_counter()
        step = ids[:, :1]  # fixed ids: every call does the same work (argmax is not timed)
        for _ in range(self.new_tokens):
            mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
            logits, past = self.dec.forward(step, mask, past)
        t2 = time.perf_counter()
        self._times.append((t1 - t0, (t2 - t1) / self.new_tokens))
        return [logits]

    def phase_rows(self, batch: int) -> list[tuple[str, str, float, str]]:
        """Median ms of the prefill and of one decode step over this batch size's timed calls (the first round's
        warm-up calls left out), then forgets them for the next batch size."""
        t = np.array(self._times[self.warmup:] or self._times) * 1e3
        self._times = []
        if not len(t):
            return []
        s = f"batch={batch}"
        return [("prefill_p50_ms", s, float(np.median(t[:, 0])), "ms"),
                ("decode_p50_ms_per_token", s, float(np.median(t[:, 1])), "ms"),
                ("prefill_p90_ms", s, float(np.percentile(t[:, 0], 90)), "ms"),
                ("decode_p90_ms_per_token", s, float(np.percentile(t[:, 1], 90)), "ms")]

    def close(self) -> None:
        self.dec.session.close()
