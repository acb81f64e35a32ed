"""Calibration-set samplers: deterministic by seed, exact quotas, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from calibrators.samplers import LangBalancedSampler, RandomSampler
from qbench.errors import DataError

POOL = ["en"] * 50 + ["de"] * 20 + ["fr"] * 12 + ["ja"] * 9


def test_random_deterministic_and_seed_dependent():
    s = RandomSampler()
    a, b = s.select(POOL, 30, seed=1), s.select(POOL, 30, seed=1)
    assert a == b
    assert a != s.select(POOL, 30, seed=2)
    assert len(a) == len(set(a)) == 30 and a == sorted(a)
    assert all(0 <= i < len(POOL) for i in a)
    assert s.select(POOL, len(POOL), seed=5) == list(range(len(POOL)))


def test_random_too_many():
    with pytest.raises(DataError, match=r"asked for 92 .* pool has 91"):
        RandomSampler().select(POOL, 92, seed=0)


@pytest.mark.parametrize("n", [4, 20, 27, 36])
def test_lang_balanced_quotas(n):
    chosen = LangBalancedSampler().select(POOL, n, seed=3)
    assert len(chosen) == len(set(chosen)) == n and chosen == sorted(chosen)
    counts = Counter(POOL[i] for i in chosen)
    langs = sorted(set(POOL))                          # de, en, fr, ja: the remainder goes to the first ones
    expected = {lang: n // 4 + (1 if k < n % 4 else 0) for k, lang in enumerate(langs)}
    assert dict(counts) == {k: v for k, v in expected.items() if v}


def test_lang_balanced_deterministic_and_seed_dependent():
    s = LangBalancedSampler()
    assert s.select(POOL, 24, seed=7) == s.select(POOL, 24, seed=7)
    assert s.select(POOL, 24, seed=7) != s.select(POOL, 24, seed=8)


def test_lang_balanced_short_language():
    with pytest.raises(DataError) as ei:
        LangBalancedSampler().select(POOL, 40, seed=0)         # quota 10 each; ja has 9
    msg = str(ei.value)
    assert "'ja'" in msg and "has 9 samples" in msg and "quota is 10" in msg
    with pytest.raises(DataError, match="empty"):
        LangBalancedSampler().select([], 4, seed=0)


def test_samplers_take_no_params():
    with pytest.raises(ValidationError):
        RandomSampler(seed=1)
