"""The release decision: does a variant hold its quality budget against FP32, per language, in three states?

A point-estimate gate ("the worst language drops by at most 1 BLEU") fails on noise: with 28 languages of
~100 sentences, a variant of *identical* quality fails it in more than 9 runs of 10. Here every language gets
an interval, and a verdict only when the interval shows one:

- PASS: the one-sided upper confidence bound of the drop is within the budget (non-inferiority shown);
- FAIL: the one-sided lower confidence bound of the drop is beyond the budget (a loss shown);
- INCONCLUSIVE: neither; with the number of test sentences that would decide it if the drop and the
  sentence-level spread stay what they are.

Intervals: a paired bootstrap over sentences, each language resampled within itself, the corpus metric
(BLEU, chrF: sacrebleu's formulas) recomputed per resample from the summed per-sample statistics of
``samples.parquet`` (``qbench.tasks.mt_metrics``), a per-sample mean (accuracy@1) likewise; perplexity from summed
NLL and tokens per domain, its drop the rise in percent (``SUMMED``). One-sided bootstrap
p-values, ``(1 + #{resampled drop on the wrong side of the budget}) / (1 + resamples)``.

Error control over languages: Holm's step-down procedure (or Bonferroni) on each language's directional
p-value ``min(p_pass, p_fail)``. In a language at most one of "drop >= budget" and "drop <= budget" is false
unless the drop equals the budget, so a language can be wrong in one direction only, and Holm's directional
extension keeps the chance of *any* wrong PASS or FAIL label on the page at most ``alpha`` (Shaffer 1980,
exact for independent languages; Bonferroni needs no independence). The overall state: FAIL when a language
FAILs, PASS when every language PASSes, else INCONCLUSIVE; so an overall PASS or FAIL is wrong with
probability at most ``alpha`` too. ``per: all`` tests the macro mean alone: one test, no correction.

Pure numpy (pandas for the samples frame); nothing here knows a sweep or a report.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qbench.config.errors import ConfigError, DataError

PASS, FAIL, INCONCLUSIVE, UNKNOWN = "PASS", "FAIL", "INCONCLUSIVE", "UNKNOWN"
CORPUS_METRICS = ("bleu", "chrf")   # corpus-level: recomputed from summed statistics per resample
# Corpus metrics of summed per-sample columns: exp(sum nll / sum tokens). Lower is better: the drop is the rise in
# percent. ``per: all`` pools the languages' sums (as the task reports it), where BLEU's per: all is a macro mean.
SUMMED = {"perplexity": ("nll", "tokens")}
POINTS = {"accuracy_at_1": 100.0}   # per-sample means stored as fractions, budgets in percentage points
CORRECTIONS = ("holm", "bonferroni")


@dataclass(frozen=True)
class Settings:
    """How a decision is computed; recorded with every decision (and in the manifest, via the gate config)."""

    alpha: float = 0.05
    resamples: int = 2000
    seed: int = 0
    correction: str = "holm"

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ConfigError(f"gate.alpha must lie strictly between 0 and 1, got {self.alpha}")
        if self.resamples < 100:
            raise ConfigError(f"gate.resamples must be at least 100, got {self.resamples}")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"gate.correction must be one of {', '.join(CORRECTIONS)}, got {self.correction!r}")

    @classmethod
    def from_gate(cls, gate: Mapping | None) -> Settings:
        """The settings of a gate config (a manifest's dict); runs recorded before these keys get the defaults."""
        g = gate or {}
        d = cls()
        return cls(alpha=float(g.get("alpha", d.alpha)), resamples=int(g.get("resamples", d.resamples)),
                   seed=int(g.get("seed", d.seed)), correction=str(g.get("correction", d.correction)))

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "resamples": self.resamples, "seed": self.seed, "correction": self.correction,
                "method": "paired bootstrap over sentences, per language; one-sided percentile p-values"}


@dataclass(frozen=True)
class Words:
    """How a metric's decision reads: what a loss is, the unit of the drop, a test sample, a stratum."""
    loss: str = "drop"
    unit: str = ""
    samples: str = "sentences"
    stratum: str = "language"


def words(metric: str) -> Words:
    return {"bleu": Words(unit="BLEU"), "chrf": Words(unit="chrF"), "accuracy_at_1": Words(unit="points of accuracy@1"),
            "perplexity": Words("rise", "% in perplexity", "segments", "domain")}.get(metric) or Words(unit=metric)


@dataclass
class LangDecision:
    lang: str
    n: int
    drop: float          # baseline − variant on the full set, in points (positive: a loss)
    se: float            # bootstrap standard error of the drop
    lo: float            # one-sided lower bound of the drop at the level the correction gave this language
    hi: float            # one-sided upper bound, same level
    p_pass: float        # bootstrap p of "drop >= budget" (small: non-inferiority shown)
    p_fail: float        # bootstrap p of "drop <= budget" (small: a loss shown)
    p_adj: float = 1.0   # the corrected p of the direction the data point to
    state: str = INCONCLUSIVE
    n_needed: int | None = None  # INCONCLUSIVE: test sentences of this language that would decide it

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Decision:
    state: str
    metric: str
    budget: float
    per: str
    settings: Settings
    langs: list[LangDecision] = field(default_factory=list)
    reason: str = ""
    resamples_used: int = 0

    @property
    def by_state(self) -> dict[str, list[LangDecision]]:
        out: dict[str, list[LangDecision]] = {PASS: [], FAIL: [], INCONCLUSIVE: []}
        for d in self.langs:
            out[d.state].append(d)
        return out

    def worst(self) -> LangDecision | None:
        """The language that decides the overall state: the surest FAIL, else the least sure non-PASS, else the
        PASS with the highest upper bound."""
        if not self.langs:
            return None
        bs = self.by_state
        if bs[FAIL]:
            return max(bs[FAIL], key=lambda d: d.lo)
        if bs[INCONCLUSIVE]:
            return max(bs[INCONCLUSIVE], key=lambda d: d.n_needed or 0)
        return max(self.langs, key=lambda d: d.hi)

    def summary(self) -> str:
        """One line: 'INCONCLUSIVE: 3 PASS, 0 FAIL, 25 INCONCLUSIVE of 28 languages; ...'."""
        if self.state == UNKNOWN:
            return f"{UNKNOWN}: {self.reason}"
        bs = self.by_state
        wd = words(self.metric)
        if self.per == "all" or len(self.langs) == 1:
            d = self.langs[0]
            line = (f"{self.state}: {wd.loss} {d.drop:.2f} {wd.unit}, one-sided {100 * (1 - self.settings.alpha):g}% "
                    f"bounds [{d.lo:.2f}, {d.hi:.2f}] against a budget of {self.budget:g}")
        else:
            line = (f"{self.state}: {len(bs[PASS])} PASS, {len(bs[FAIL])} FAIL, {len(bs[INCONCLUSIVE])} INCONCLUSIVE "
                    f"of {len(self.langs)} {wd.stratum}s (budget {self.budget:g} {wd.unit} each, "
                    f"{self.settings.correction} over {wd.stratum}s, alpha {self.settings.alpha:g})")
        w = self.worst()
        if self.state == FAIL and self.per != "all" and len(self.langs) > 1:
            line += f"; surest loss: {w.lang}, {wd.loss} {w.drop:.2f} (lower bound {w.lo:.2f})"
        if self.state == INCONCLUSIVE:
            line += f"; not enough data to decide: {needed_text(self)}"
        return line

    def as_dict(self) -> dict:
        return {"state": self.state, "metric": self.metric, "budget": self.budget, "per": self.per,
                "settings": {**self.settings.as_dict(), "resamples_used": self.resamples_used}, "reason": self.reason,
                "langs": [d.as_dict() for d in self.langs]}


def needed_text(dec: Decision) -> str:
    """'about 1,900 sentences for de, 640 for fr, ...' (the largest need first; ~ where none would)."""
    parts = []
    for d in sorted(dec.by_state[INCONCLUSIVE], key=lambda d: -(d.n_needed or 0)):
        what = "all" if d.lang == "all" else d.lang
        parts.append(f"{what} ~{d.n_needed:,} (has {d.n})" if d.n_needed else f"{what}: no size would (drop = budget)")
    wd = words(dec.metric)
    head = f"test {wd.samples} per {wd.stratum} that would decide it: " if dec.per != "all" else "test samples needed: "
    shown = parts[:6] + ([f"{len(parts) - 6} more"] if len(parts) > 6 else [])
    return head + ", ".join(shown)


# ---------------------------------------------------------------- the bootstrap

def counts_matrix(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) how often each sample is drawn in each resample, drawn as ``mt_metrics`` draws indices."""
    return _counts(n, resamples, seed).astype(np.float64)


@functools.lru_cache(maxsize=64)
def _counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """Cached as integers (a report decides every variant on the same languages, so the same draws): uint16
    holds any count below 65536, and a sample drawn that often in one resample needs n in the millions."""
    from qbench.tasks.mt_metrics import resample_indices

    idx = resample_indices(n, resamples, seed)
    b = idx.shape[0]
    c = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    out = c.astype(np.uint16 if c.max() < 2 ** 16 else np.uint32)
    out.setflags(write=False)
    return out


def _score(summed: np.ndarray, metric: str, n: float | np.ndarray) -> np.ndarray:
    """Score of each row of summed statistics (..., K): a corpus metric, or a mean in points."""
    if metric in SUMMED:  # perplexity: exp(sum nll / sum tokens)
        return np.exp(summed[..., 0] / summed[..., 1])
    if metric in CORPUS_METRICS:
        from qbench.tasks.mt_metrics import corpus_scores

        shape = summed.shape[:-1]
        return corpus_scores(summed.reshape(-1, summed.shape[-1]), metric).reshape(shape)
    return summed[..., 0] / n * POINTS.get(metric, 1.0)


def score_drop(metric: str, base, var):
    """The drop of a variant's score against the baseline's, positive for a loss: points lost, or for a metric
    where lower is better (``SUMMED``: perplexity) its relative rise in percent. Scalars or arrays."""
    if metric in SUMMED:
        return 100 * (np.asarray(var) / base - 1)
    return base - var


def paired_sums(base: np.ndarray, var: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed statistics of both sides, baseline's K columns first: (full set (S, 2K), each resample (B, S, 2K)).
    One matrix product for every system and both sides: the resamples are shared (paired)."""
    base, var = np.asarray(base, np.float64), np.asarray(var, np.float64)
    if base.shape != var.shape or base.ndim != 3:
        raise DataError(f"paired statistics must be two (S, n, K) arrays of one shape: {base.shape} vs {var.shape}")
    s, n, k = base.shape
    both = np.concatenate([base, var], axis=2).transpose(1, 0, 2).reshape(n, s * 2 * k)
    return both.sum(axis=0).reshape(s, 2 * k), (counts @ both).reshape(len(counts), s, 2 * k)


def _drop_of(sums: np.ndarray, metric: str, n: float) -> np.ndarray:
    """Drops from paired sums (..., 2K) of ``n`` samples (a resample draws as many as the set holds)."""
    k = sums.shape[-1] // 2
    return score_drop(metric, _score(sums[..., :k], metric, n), _score(sums[..., k:], metric, n))


def drops(base: np.ndarray, var: np.ndarray, metric: str, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paired drops (``score_drop``) of S simulated or real systems at once. base, var: (S, n, K) per-sample
    statistics; counts: (B, n). Returns (full-set drops (S,), resampled drops (S, B))."""
    full, sums = paired_sums(base, var, counts)
    n = np.shape(base)[1]
    return _drop_of(full, metric, n), _drop_of(sums, metric, n).T


def _p_values(drop_res: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided bootstrap p-values (…, B) -> (p_pass, p_fail): the share of resamples, plus one, at or past
    the budget on the side the claim denies."""
    b = drop_res.shape[-1]
    p_pass = (1 + (drop_res >= budget).sum(axis=-1)) / (1 + b)
    p_fail = (1 + (drop_res <= budget).sum(axis=-1)) / (1 + b)
    return p_pass, p_fail


def adjust(p: np.ndarray, correction: str) -> np.ndarray:
    """Family-wise adjusted p-values over the last axis: Holm's step-down or Bonferroni."""
    p = np.asarray(p, np.float64)
    m = p.shape[-1]
    if correction == "bonferroni" or m == 1:
        return np.minimum(1.0, p * m)
    order = np.argsort(p, axis=-1, kind="stable")
    ps = np.take_along_axis(p, order, axis=-1)
    adj = np.minimum(1.0, np.maximum.accumulate(ps * (m - np.arange(m)), axis=-1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def states(p_pass: np.ndarray, p_fail: np.ndarray, alpha: float, correction: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-language states (…, L) as strings, and the corrected directional p-values."""
    pass_side = p_pass <= p_fail
    p_adj = adjust(np.where(pass_side, p_pass, p_fail), correction)
    st = np.where(p_adj <= alpha, np.where(pass_side, PASS, FAIL), INCONCLUSIVE)
    return st, p_adj


def overall(st: np.ndarray) -> np.ndarray:
    """The overall state of each row (…, L): FAIL if any FAIL, PASS if all PASS, else INCONCLUSIVE."""
    return np.where((st == FAIL).any(axis=-1), FAIL, np.where((st == PASS).all(axis=-1), PASS, INCONCLUSIVE))


def _z(q: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9; no scipy)."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    if not 0 < q < 1:
        raise ValueError(q)
    if q < 0.02425:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
               ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - 0.02425:
        return -_z(1 - q)
    r = (q - 0.5) ** 2
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * (q - 0.5) / \
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def sentences_needed(n: int, drop: float, se: float, budget: float, alpha_each: float) -> int | None:
    """Test sentences that would decide a language: the n' at which the one-sided bound at ``alpha_each``
    clears the budget, if the drop stays ``drop`` and the standard error shrinks as 1/sqrt(n). None when the
    drop equals the budget (no size decides it)."""
    gap = abs(budget - drop)
    if gap < 1e-9 or se <= 0:
        return None
    return max(n + 1, math.ceil(n * (_z(1 - alpha_each) * se / gap) ** 2))


# ---------------------------------------------------------------- decide from samples

def _stats(frame, metric: str) -> np.ndarray:
    """(n, K) per-sample statistics of ``metric`` from a samples frame."""
    if metric in CORPUS_METRICS:
        from qbench.tasks.mt_metrics import stats_from_samples

        return stats_from_samples(frame)[metric].astype(np.float64)
    cols = list(SUMMED.get(metric) or ["correct" if metric == "accuracy_at_1" else metric])
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DataError(f"samples have no per-sample '{missing[0]}' column to decide {metric} on")
    return frame[cols].to_numpy(np.float64)


def paired_frames(samples, variant: str, baseline: str = "fp32"):
    """(baseline rows, variant rows) of samples.parquet, aligned by sample id; DataError when they differ."""
    a = samples[samples.variant == baseline].set_index("id")
    b = samples[samples.variant == variant].set_index("id")
    if a.empty or b.empty:
        raise DataError(f"samples.parquet has no rows of {baseline if a.empty else variant}")
    if set(a.index) != set(b.index) or a.index.has_duplicates:
        raise DataError(f"samples of {variant} and {baseline} are not the same sentences")
    return a, b.loc[a.index]


def decide(samples, variant: str, metric: str, budget: float, per: str = "lang",
           settings: Settings | None = None, baseline: str = "fp32") -> Decision:
    """The release decision of ``variant`` against ``baseline`` from a samples frame (samples.parquet)."""
    st = settings or Settings()
    a, b = paired_frames(samples, variant, baseline)
    langs = a["lang"].to_numpy(object) if "lang" in a.columns else np.full(len(a), "all", object)
    return decide_stats(_stats(a, metric), _stats(b, metric), langs, metric, budget, per, st)


def decide_stats(base: np.ndarray, var: np.ndarray, langs: Sequence[str], metric: str, budget: float,
                 per: str = "lang", settings: Settings | None = None) -> Decision:
    """``decide`` on arrays: base and var (n, K) paired per-sample statistics, langs (n,)."""
    st = settings or Settings()
    if per not in ("lang", "all"):
        raise ConfigError(f"gate.per must be lang or all, got {per!r}")
    langs = np.asarray(langs, dtype=object)
    order = sorted(set(langs))
    # A bootstrap p-value is at least 1 / (resamples + 1): with 28 languages at alpha 0.05 the smallest level
    # Holm uses is 0.0018, so too few resamples could never decide anything. At least 10 resamples are
    # expected beyond the smallest level's bound.
    b = max(st.resamples, math.ceil(10 * (1 if per == "all" else len(order)) / st.alpha))
    parts = []  # (n, full-set sums, resampled sums) per language, each resampled within itself
    for lang in order:
        mask = langs == lang
        n = int(mask.sum())
        parts.append((n, *paired_sums(base[mask][None], var[mask][None], counts_matrix(n, b, st.seed))))
    if per == "all" and metric in SUMMED and len(order) > 1:  # the pooled set: the languages' sums added
        order, parts = ["all"], [tuple(sum(p[i] for p in parts) for i in range(3))]
    ns = [p[0] for p in parts]
    full = [float(_drop_of(p[1], metric, p[0])[0]) for p in parts]
    res = [_drop_of(p[2], metric, p[0])[:, 0] for p in parts]
    if per == "all" and len(order) > 1:  # the macro mean: languages resampled within themselves, averaged
        order, full, res, ns = ["all"], [float(np.mean(full))], [np.mean(res, axis=0)], [sum(ns)]
    res = np.stack(res)
    p_pass, p_fail = _p_values(res, budget)
    lstate, p_adj = states(p_pass, p_fail, st.alpha, st.correction)
    m = len(order)
    # Bounds at the level the correction spends on one language at worst (Bonferroni's alpha / m), so that
    # each shown interval agrees with its state: Holm decides some languages at a looser level.
    level = st.alpha / m
    out = []
    for i, lang in enumerate(order):
        lo, hi = np.quantile(res[i], [level, 1 - level])
        se = float(np.std(res[i], ddof=1))
        d = LangDecision(lang=lang, n=ns[i], drop=full[i], se=se, lo=float(lo), hi=float(hi),
                         p_pass=float(p_pass[i]), p_fail=float(p_fail[i]), p_adj=float(p_adj[i]),
                         state=str(lstate[i]))
        if d.state == INCONCLUSIVE:
            d.n_needed = sentences_needed(d.n, d.drop, se, budget, level)
        out.append(d)
    return Decision(state=str(overall(lstate)), metric=metric, budget=float(budget), per=per, settings=st, langs=out,
                    resamples_used=b)


def unknown(metric: str, budget: float, per: str, settings: Settings, reason: str) -> Decision:
    """A decision that cannot be computed (no per-sample data, a failed variant): said in words."""
    return Decision(state=UNKNOWN, metric=metric, budget=float(budget), per=per, settings=settings, reason=reason)


def from_run(samples, gate: Mapping, variant: str, baseline: str = "fp32", alpha_scale: int = 1) -> Decision:
    """The decision a run's gate config asks for; ``samples`` None (a run without samples.parquet) gives
    UNKNOWN. ``alpha_scale``: looks sharing alpha (the search's confirmations), Bonferroni over looks."""
    st = Settings.from_gate(gate)
    if alpha_scale > 1:
        st = Settings(alpha=st.alpha / alpha_scale, resamples=st.resamples, seed=st.seed, correction=st.correction)
    metric, budget, per = gate.get("metric", "bleu"), float(gate.get("max_drop", 1.0)), gate.get("per", "lang")
    if samples is None:
        return unknown(metric, budget, per, st, "the run has no per-sample statistics (samples.parquet), so no "
                                                "interval can be computed")
    return decide(samples, variant, metric, budget, per, st, baseline)


def gate_of(manifest: Mapping) -> dict | None:
    """The gate config a run was made with (config.gate, else a top-level gate of older runs)."""
    return (manifest.get("config") or {}).get("gate") or manifest.get("gate") or None


def looks(manifest: Mapping, variant: str) -> int:
    """How many candidates may have been checked against the gate before ``variant`` was named: an
    ``exclude: auto`` variant is the first of up to ``search.max_confirmations`` candidates that the search
    confirmed on the evaluation set, so its decision spends alpha / that (Bonferroni over the looks, fixed
    before the search starts, so valid whichever look succeeded)."""
    info = (manifest.get("variants") or {}).get(variant) or {}
    if info.get("exclusion") != "auto":
        return 1
    search = (manifest.get("config") or {}).get("search") or {}
    return max(1, int(search.get("max_confirmations", 4)), len(info.get("confirmations") or []))


def for_run(samples, manifest: Mapping, variant: str, baseline: str = "fp32") -> Decision | None:
    """The decision of one variant of a run (None: the run has no gate); UNKNOWN without per-sample data."""
    gate = gate_of(manifest)
    if not gate:
        return None
    if samples is not None and not (samples.variant == variant).any():
        samples = None
    return from_run(samples, gate, variant, baseline, looks(manifest, variant))


def load_samples(run_dir):
    """samples.parquet of a run, or None (retrieval runs and older runs have none)."""
    from pathlib import Path

    p = Path(run_dir) / "samples.parquet"
    if not p.exists():
        return None
    import pandas as pd

    return pd.read_parquet(p)
