"""The causal_lm task's scorer for the sensitivity search (``exclude: auto``, qbench.run.search).

Fidelity: KL(FP32 || candidate) per token on the teacher-forced next-token distributions of the scoring subset's
segments, per domain and pooled; quality: the gate's perplexity, per domain and pooled. Both come from one forward
pass per candidate through the task's own scoring (``causal_lm.score_text``: the same segments, batches and
float64 log-softmax as the evaluation), against FP32's log-probabilities of the subset, kept in the cache beside
the evaluation set's (``stats/lm-ref-*.npy``, positions x vocabulary in float32: about 200 KB per token for
SmolLM2). The confirmation decides on the evaluation set's per-segment NLL and token counts, the columns the
release decision reads from samples.parquet.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def by_domain(num: np.ndarray, den: np.ndarray, langs: np.ndarray, fn) -> dict[str, float]:
    """``fn(sum num, sum den)`` per domain and over all segments ('all': pooled, as the task reports it)."""
    out = {d: float(fn(num[langs == d].sum(), den[langs == d].sum())) for d in sorted(set(langs))}
    out["all"] = float(fn(num.sum(), den.sum()))
    return out


def _ppl(nll: float, tokens: float) -> float:
    return float(np.exp(nll / tokens))


class LMScorer:
    """Teacher-forced scoring of the subset: KL per token (fidelity) and perplexity (quality), per domain."""

    def __init__(self, ctx, subset):
        self.ctx, self.subset = ctx, list(subset)
        self.langs = np.array([s.language for s in self.subset])
        base = self._scores(ctx.fp32, self.subset, fp32=True)  # writes FP32's log-probabilities of the subset
        self.base_quality = by_domain(base["nll"], base["tokens"], self.langs, _ppl)

    def _scores(self, art: Path, samples, fp32: bool = False) -> dict[str, np.ndarray]:
        from qbench.tasks.lm_score import decoder, score_text

        dec = decoder(self.ctx, art)
        try:
            return score_text(self.ctx, dec, samples, fp32)
        finally:
            dec.session.close()

    def score(self, art: Path, quality: bool = True) -> dict:
        sc = self._scores(art, self.subset)
        kl = by_domain(sc["kl"], sc["tokens"], self.langs, np.divide)
        out = {"error": kl["all"], "error_by_lang": kl, "fidelity": {"kl": kl}}
        if quality:
            out["quality"] = by_domain(sc["nll"], sc["tokens"], self.langs, _ppl)
        return out

    def full_quality(self, art: Path) -> tuple[dict[str, float], dict[str, float]]:
        """(candidate, FP32) perplexity per domain on the sweep's evaluation set; the candidate's per-segment
        scores are kept so that the variant's own evaluation does not score them again."""
        ctx = self.ctx
        t0 = time.perf_counter()
        sc = self._scores(art, ctx.evalset)
        ctx.decoded[str(art)] = (sc, time.perf_counter() - t0)
        langs = np.array([s.language for s in ctx.evalset])
        return (by_domain(sc["nll"], sc["tokens"], langs, _ppl),
                by_domain(ctx.fp32_ref["nll"], ctx.fp32_ref["tokens"], langs, _ppl))

    def decision_stats(self, art: Path, metric: str):
        """(FP32, candidate, domains) per-segment statistics of ``metric`` on the evaluation set, in the columns
        the release decision sums (qbench.report.decision.SUMMED), from the scores ``full_quality`` kept."""
        from qbench.report.decision import SUMMED

        ctx = self.ctx
        got, ref = ctx.decoded.get(str(art)), ctx.fp32_ref
        if got is None or ref.get("nll") is None or metric not in SUMMED:
            return None
        base = {"nll": ref["nll"], "tokens": ref["tokens"]}
        cols = SUMMED[metric]
        return (np.stack([base[c] for c in cols], 1), np.stack([got[0][c] for c in cols], 1),
                [s.language for s in ctx.evalset])
