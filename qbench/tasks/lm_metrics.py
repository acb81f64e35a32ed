"""The causal-LM task's numbers, in numpy: per-position log-probabilities, perplexity, agreement and KL against
FP32, and paired-bootstrap intervals of the perplexity change per domain.

Conventions (lm-evaluation-harness's rolling log-likelihood, restated): a segment is fed as ``[EOS] + its tokens``
so that every token of the text is predicted; perplexity of a domain is ``exp(sum NLL / sum tokens)`` over its
segments (a corpus figure, not a mean of per-segment perplexities). KL is ``KL(FP32 || variant)`` in nats, per
predicted token, averaged over tokens; top-1 agreement is the fraction of positions whose argmax equals FP32's.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Along the last axis, in float64 (a 49k-word vocabulary in float32 loses the tail's digits)."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(ref || q) per row, in nats, from log-probabilities [n, vocab]."""
    return (np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1)


def perplexity(nll_sum: float, n_tokens: float) -> float:
    return float(np.exp(nll_sum / n_tokens)) if n_tokens else float("nan")


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n): how often each of ``n`` items is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    return np.stack([np.bincount(r, minlength=n) for r in idx])


def ppl_change(base_nll: np.ndarray, var_nll: np.ndarray, tokens: np.ndarray, resamples: int = 1000,
               seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Perplexity change of a variant against FP32 in percent, ``100 (ppl_var / ppl_fp32 - 1)``, with a paired
    percentile-bootstrap interval over segments (both sides resampled with the same draws) and a two-sided
    bootstrap p-value of "no change"."""
    base_nll, var_nll, tokens = (np.asarray(a, np.float64) for a in (base_nll, var_nll, tokens))
    change = 100 * (np.exp((var_nll.sum() - base_nll.sum()) / tokens.sum()) - 1)
    c = resample_counts(len(tokens), resamples, seed).astype(np.float64)
    res = 100 * (np.exp((c @ var_nll - c @ base_nll) / (c @ tokens)) - 1)
    lo, hi = np.quantile(res, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min((1 + (res <= 0).sum()) / (1 + resamples), (1 + (res >= 0).sum()) / (1 + resamples)))
    return {"change": float(change), "lo": float(lo), "hi": float(hi), "p": float(p)}


def generation_agreement(ref: list[list[int]], hyp: list[list[int]]) -> dict[str, float]:
    """Greedy continuations against FP32's: the fraction identical, and the mean fraction of FP32's tokens
    reproduced before the first difference."""
    same = [a == b for a, b in zip(ref, hyp)]
    prefix = []
    for a, b in zip(ref, hyp):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix.append(k / max(len(a), 1))
    return {"generation_exact": float(np.mean(same)), "generation_prefix": float(np.mean(prefix))}
