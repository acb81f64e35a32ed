"""Calibration-set samplers: deterministic by seed, exact quotas, clear errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from calibrators.samplers import (
    LangBalancedSampler,
    LengthStratifiedSampler,
    ProportionalSampler,
    RandomSampler,
    SingleLanguageSampler,
)
from qbench.config import registry
from qbench.data.manifest import Sample
from qbench.config.errors import DataError

LANGS = ["en"] * 50 + ["de"] * 20 + ["fr"] * 12 + ["ja"] * 9


def make_pool(langs, lengths=None) -> list[Sample]:
    lengths = lengths if lengths is not None else [10 + i % 7 for i in range(len(langs))]
    return [Sample(id=f"s{i}", text="x" * m, language=lang) for i, (lang, m) in enumerate(zip(langs, lengths))]


POOL = make_pool(LANGS)


def check_indices(chosen, n, pool):
    assert len(chosen) == len(set(chosen)) == n
    assert chosen == sorted(chosen)
    assert all(isinstance(i, int) and 0 <= i < len(pool) for i in chosen)


def lang_counts(chosen, pool):
    return dict(Counter(pool[i].language for i in chosen))


def test_registry_resolves_every_sampler():
    for name, cls in [("random", RandomSampler), ("lang_balanced", LangBalancedSampler),
                      ("proportional", ProportionalSampler), ("single_language", SingleLanguageSampler),
                      ("length_stratified", LengthStratifiedSampler)]:
        assert registry.samplers.get(name) is cls
        assert cls.name == name


# ---- random -------------------------------------------------------------------------------------

def test_random_deterministic_and_seed_dependent():
    s = RandomSampler()
    a, b = s.select(POOL, 30, seed=1), s.select(POOL, 30, seed=1)
    assert a == b
    assert a != s.select(POOL, 30, seed=2)
    check_indices(a, 30, POOL)
    assert s.select(POOL, len(POOL), seed=5) == list(range(len(POOL)))


def test_random_too_many():
    with pytest.raises(DataError, match=r"^random sampler: asked for 92 .* pool has 91$"):
        RandomSampler().select(POOL, 92, seed=0)


# ---- lang_balanced ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 20, 27, 36])
def test_lang_balanced_quotas(n):
    chosen = LangBalancedSampler().select(POOL, n, seed=3)
    check_indices(chosen, n, POOL)
    langs = sorted(set(LANGS))                         # de, en, fr, ja: the remainder goes to the first ones
    expected = {lang: n // 4 + (1 if k < n % 4 else 0) for k, lang in enumerate(langs)}
    assert lang_counts(chosen, POOL) == {k: v for k, v in expected.items() if v}


def test_lang_balanced_exact_example():
    assert lang_counts(LangBalancedSampler().select(POOL, 27, seed=0), POOL) == {"de": 7, "en": 7, "fr": 7, "ja": 6}


def test_lang_balanced_deterministic_and_seed_dependent():
    s = LangBalancedSampler()
    assert s.select(POOL, 24, seed=7) == s.select(POOL, 24, seed=7)
    assert s.select(POOL, 24, seed=7) != s.select(POOL, 24, seed=8)


def test_lang_balanced_short_language():
    with pytest.raises(DataError) as ei:
        LangBalancedSampler().select(POOL, 40, seed=0)         # quota 10 each; ja has 9
    msg = str(ei.value)
    assert msg.startswith("lang_balanced sampler:") and "\n" not in msg
    assert "'ja'" in msg and "has 9 samples" in msg and "quota is 10" in msg
    with pytest.raises(DataError, match="^lang_balanced sampler: .*empty"):
        LangBalancedSampler().select([], 4, seed=0)


def test_samplers_take_no_params():
    with pytest.raises(ValidationError):
        RandomSampler(seed=1)
    with pytest.raises(ValidationError):
        LangBalancedSampler(language="en")


# ---- proportional -------------------------------------------------------------------------------

def test_proportional_largest_remainder_by_hand():
    # n=20 of 91: exact shares en 10.989, de 4.396, fr 2.637, ja 1.978 -> floors 10+4+2+1 = 17;
    # the 3 left go to the largest remainders en (.989), ja (.978), fr (.637); de (.396) gets none.
    chosen = ProportionalSampler().select(POOL, 20, seed=0)
    check_indices(chosen, 20, POOL)
    assert lang_counts(chosen, POOL) == {"en": 11, "de": 4, "fr": 3, "ja": 2}
    # n=7: shares en 3.846, de 1.538, fr .923, ja .692 -> floors 3+1+0+0 = 4; 3 left -> fr, en, ja.
    assert lang_counts(ProportionalSampler().select(POOL, 7, seed=0), POOL) == {"en": 4, "de": 1, "fr": 1, "ja": 1}


def test_proportional_tie_break_by_language_name():
    # Three equal shares of 10/3 each: floors 3+3+3, the one left goes to the name sorting first,
    # whatever the pool order.
    pool = make_pool(["zz"] * 6 + ["aa"] * 6 + ["mm"] * 6)
    assert lang_counts(ProportionalSampler().select(pool, 10, seed=0), pool) == {"aa": 4, "mm": 3, "zz": 3}
    assert lang_counts(ProportionalSampler().select(pool, 11, seed=0), pool) == {"aa": 4, "mm": 4, "zz": 3}


@pytest.mark.parametrize("n", [0, 1, 5, 33, 90, 91])
def test_proportional_total_exact(n):
    chosen = ProportionalSampler().select(POOL, n, seed=4)
    check_indices(chosen, n, POOL)
    counts = lang_counts(chosen, POOL)
    for lang, c in Counter(LANGS).items():
        assert abs(counts.get(lang, 0) - n * c / len(LANGS)) < 1      # never more than one off its share


def test_proportional_deterministic_and_seed_dependent():
    s = ProportionalSampler()
    assert s.select(POOL, 30, seed=1) == s.select(POOL, 30, seed=1)
    assert s.select(POOL, 30, seed=1) != s.select(POOL, 30, seed=2)


def test_proportional_errors():
    with pytest.raises(DataError, match=r"^proportional sampler: asked for 92 .* pool has 91$"):
        ProportionalSampler().select(POOL, 92, seed=0)
    with pytest.raises(DataError, match="^proportional sampler: .*empty"):
        ProportionalSampler().select([], 1, seed=0)


# ---- single_language ----------------------------------------------------------------------------

def test_single_language_counts_and_determinism():
    s = SingleLanguageSampler(language="fr")
    chosen = s.select(POOL, 8, seed=0)
    check_indices(chosen, 8, POOL)
    assert lang_counts(chosen, POOL) == {"fr": 8}
    assert s.select(POOL, 8, seed=0) == chosen
    assert s.select(POOL, 8, seed=1) != chosen
    assert s.select(POOL, 12, seed=3) == [i for i, lang in enumerate(LANGS) if lang == "fr"]


def test_single_language_errors():
    with pytest.raises(DataError) as ei:
        SingleLanguageSampler(language="ko").select(POOL, 5, seed=0)
    msg = str(ei.value)
    assert msg.startswith("single_language sampler:") and "\n" not in msg
    assert "'ko'" in msg and "de (20), en (50), fr (12), ja (9)" in msg
    with pytest.raises(DataError) as ei:
        SingleLanguageSampler(language="ja").select(POOL, 10, seed=0)
    msg = str(ei.value)
    assert msg.startswith("single_language sampler:") and "'ja'" in msg and "has 9 samples" in msg
    assert "quota is 10" in msg


def test_single_language_params():
    with pytest.raises(ValidationError):
        SingleLanguageSampler()                       # language is required
    with pytest.raises(ValidationError):
        SingleLanguageSampler(language="")
    with pytest.raises(ValidationError):
        SingleLanguageSampler(language="en", strata=2)


# ---- length_stratified --------------------------------------------------------------------------

def shuffled_length_pool(n_items, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.permutation(np.arange(1, n_items + 1) * 3)]      # distinct lengths
    return make_pool([["en", "de", "fr"][i % 3] for i in range(n_items)], lengths)


@pytest.mark.parametrize("size,strata,n", [(100, 4, 10), (103, 4, 14), (50, 3, 7), (37, 5, 36)])
def test_length_stratified_draws_from_each_quantile(size, strata, n):
    pool = shuffled_length_pool(size)
    chosen = LengthStratifiedSampler(strata=strata).select(pool, n, seed=2)
    check_indices(chosen, n, pool)
    lengths = np.array([len(s.text) for s in pool])
    # Bin edges computed independently: a length belongs to the first quantile edge it does not exceed.
    edges = np.quantile(lengths, [k / strata for k in range(1, strata)], method="inverted_cdf")
    bins = np.searchsorted(edges, [len(pool[i].text) for i in chosen], side="left")
    got = np.bincount(bins, minlength=strata).tolist()
    assert got == [n // strata + (1 if k < n % strata else 0) for k in range(strata)]
    if size % strata == 0:                             # equal-count bins: numpy's default edges agree too
        lin = np.quantile(lengths, [k / strata for k in range(1, strata)])
        assert np.searchsorted(lin, [len(pool[i].text) for i in chosen]).tolist() == bins.tolist()


def test_length_stratified_ties_broken_by_index():
    pool = make_pool(["en"] * 12, [5] * 12)              # all the same length: strata are index runs
    chosen = LengthStratifiedSampler(strata=3).select(pool, 6, seed=0)
    assert [sum(1 for i in chosen if lo <= i < lo + 4) for lo in (0, 4, 8)] == [2, 2, 2]
    assert LengthStratifiedSampler(strata=3).select(pool, 12, seed=9) == list(range(12))


def test_length_stratified_deterministic_and_seed_dependent():
    pool = shuffled_length_pool(100)
    s = LengthStratifiedSampler()
    assert s.select(pool, 20, seed=1) == s.select(pool, 20, seed=1)
    assert s.select(pool, 20, seed=1) != s.select(pool, 20, seed=2)
    one = LengthStratifiedSampler(strata=1).select(pool, 100, seed=1)
    assert one == list(range(100))                     # one stratum: the whole pool


def test_length_stratified_errors():
    pool = shuffled_length_pool(10)                       # bins of 3, 2, 3, 2 (lengths 3..30)
    with pytest.raises(DataError) as ei:
        LengthStratifiedSampler().select(pool, 11, seed=0)       # quotas 3, 3, 3, 2: stratum 2 has 2
    msg = str(ei.value)
    assert msg.startswith("length_stratified sampler:") and "\n" not in msg
    assert "stratum 2 of 4 (12-15 chars)" in msg and "has 2 samples" in msg and "quota is 3" in msg
    with pytest.raises(DataError, match=r"^length_stratified sampler: stratum 3 of 3 \(empty\) has 0 samples"):
        LengthStratifiedSampler(strata=3).select(pool[:2], 3, seed=0)
    with pytest.raises(DataError, match="^length_stratified sampler: .*empty"):
        LengthStratifiedSampler().select([], 4, seed=0)
    with pytest.raises(ValidationError):
        LengthStratifiedSampler(strata=0)
    with pytest.raises(ValidationError):
        LengthStratifiedSampler(language="en")


# ---- language subsets and weights (the calibration-set axis of the multilingual benchmark) -------

def test_lang_balanced_languages_subset_by_hand():
    # 10 over {de, ja}: 5 each; nothing from en or fr, whatever the seed.
    s = LangBalancedSampler(languages=["ja", "de"])
    for seed in (0, 1, 2):
        chosen = s.select(POOL, 10, seed=seed)
        check_indices(chosen, 10, POOL)
        assert lang_counts(chosen, POOL) == {"de": 5, "ja": 5}
    # 11: the remainder goes to the language sorting first, as without the subset.
    assert lang_counts(s.select(POOL, 11, seed=0), POOL) == {"de": 6, "ja": 5}
    # The same draw as lang_balanced over a pool holding only those languages (same seed, same order).
    sub = [i for i, p in enumerate(POOL) if p.language in ("de", "ja")]
    plain = LangBalancedSampler().select([POOL[i] for i in sub], 10, seed=3)
    assert s.select(POOL, 10, seed=3) == sorted(sub[i] for i in plain)


def test_lang_balanced_languages_errors():
    with pytest.raises(DataError, match=r"^lang_balanced sampler: language 'xx' is not in the pool \(present: de, en"):
        LangBalancedSampler(languages=["de", "xx"]).select(POOL, 4, seed=0)
    with pytest.raises(DataError, match=r"language 'ja' has 9 samples, its quota is 10"):
        LangBalancedSampler(languages=["ja"]).select(POOL, 10, seed=0)
    with pytest.raises(ValidationError):
        LangBalancedSampler(languages=[])


def test_proportional_weights_by_hand():
    # Weights en 1, de 2, fr 0 (ja not named): n=9 -> en 3, de 6; fr and ja get nothing.
    s = ProportionalSampler(weights={"en": 1, "de": 2, "fr": 0})
    chosen = s.select(POOL, 9, seed=0)
    check_indices(chosen, 9, POOL)
    assert lang_counts(chosen, POOL) == {"en": 3, "de": 6}
    # n=10: exact 3.33 / 6.67 -> floors 3 + 6, the one left to de (remainder .67 > .33).
    assert lang_counts(s.select(POOL, 10, seed=0), POOL) == {"en": 3, "de": 7}


def test_proportional_weights_errors():
    with pytest.raises(DataError, match=r"language 'de' has 20 samples, its quota is 27"):
        ProportionalSampler(weights={"en": 1, "de": 9}).select(POOL, 30, seed=0)
    with pytest.raises(DataError, match=r"language 'xx' is not in the pool"):
        ProportionalSampler(weights={"xx": 1}).select(POOL, 3, seed=0)
    with pytest.raises(DataError, match="weights must be counts >= 0, not all 0"):
        ProportionalSampler(weights={"en": 0}).select(POOL, 3, seed=0)
