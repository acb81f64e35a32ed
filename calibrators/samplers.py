"""Calibration-set samplers: which samples of the calibration pool feed the statistics pass.

``select(pool, n, seed)`` takes the pool as ``qbench.data.manifest.Sample`` objects and returns the sorted
indices of the chosen samples. Every sampler is deterministic for a given seed (the chosen sample
ids go into the manifest, so a run must be reproducible from it), and every quota is exact: a
sampler never silently pads from elsewhere, because a skewed calibration set is the failure that
these samplers exist to prevent.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from qbench.data.manifest import Sample
from qbench.config.errors import DataError


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def _fail(self, msg: str) -> DataError:
        # Every message starts with the sampler's name: the CLI prints it alone, on one line.
        return DataError(f"{self.name} sampler: {msg}")

    def _check(self, pool: Sequence[Sample], n: int) -> None:
        if n < 0:
            raise self._fail(f"asked for {n} calibration samples")
        if not pool:
            raise self._fail("the calibration pool is empty")


def _by_language(pool: Sequence[Sample]) -> dict[str, list[int]]:
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(pool):
        by_lang[s.language].append(i)
    return dict(by_lang)


def _draw(rng: np.random.Generator, idx: Sequence[int], k: int) -> list[int]:
    # One generator is threaded through all groups in a fixed (sorted) order, so the result
    # depends only on the pool and the seed.
    return [int(idx[j]) for j in rng.choice(len(idx), size=k, replace=False)]


def _take_quotas(sampler: Sampler, groups: list[tuple[str, list[int], int]], seed: int) -> list[int]:
    """Draw ``quota`` indices uniformly from each (label, indices, quota) group; a short group is an error."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label, idx, quota in groups:
        if quota > len(idx):
            raise sampler._fail(f"{label} has {len(idx)} samples, its quota is {quota}")
        chosen.extend(_draw(rng, idx, quota))
    return sorted(chosen)


class RandomSampler(Sampler):
    """n samples uniformly without replacement."""

    name: ClassVar[str] = "random"

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        if n > len(pool):
            raise self._fail(f"asked for {n} calibration samples, the pool has {len(pool)}")
        if n < 0:
            raise self._fail(f"asked for {n} calibration samples")
        return sorted(_draw(np.random.default_rng(seed), range(len(pool)), n))


class LangBalancedSampler(Sampler):
    """n // L samples from each of the L languages (the remainder to the first languages, sorted)."""

    name: ClassVar[str] = "lang_balanced"

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        by_lang = _by_language(pool)
        langs = sorted(by_lang)
        L = len(langs)
        groups = [(f"language '{lang}'", by_lang[lang], n // L + (1 if k < n % L else 0))
                  for k, lang in enumerate(langs)]
        return _take_quotas(self, groups, seed)


class ProportionalSampler(Sampler):
    """Each language in proportion to its share of the pool, uniform within a language.

    Quotas use largest-remainder rounding so they sum to exactly n; equal remainders go to the
    language that sorts first, so the quotas never depend on dict or pool order.
    """

    name: ClassVar[str] = "proportional"

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        if n > len(pool):
            raise self._fail(f"asked for {n} calibration samples, the pool has {len(pool)}")
        by_lang = _by_language(pool)
        N = len(pool)
        # Integer arithmetic: exact floors and remainders, no float ties misordered by rounding.
        quota = {lang: n * len(idx) // N for lang, idx in by_lang.items()}
        rem = {lang: n * len(idx) % N for lang, idx in by_lang.items()}
        left = n - sum(quota.values())
        for lang in sorted(by_lang, key=lambda g: (-rem[g], g))[:left]:
            quota[lang] += 1
        # n <= N means no quota exceeds its language's count (ceil(n*c/N) <= c), so no error here.
        groups = [(f"language '{lang}'", by_lang[lang], quota[lang]) for lang in sorted(by_lang)]
        return _take_quotas(self, groups, seed)


class SingleLanguageSampler(Sampler):
    """n samples uniformly from one language only (e.g. to measure calibration-language effects)."""

    name: ClassVar[str] = "single_language"
    language: str = Field(min_length=1, description="language code as it appears in the pool's language field")

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        by_lang = _by_language(pool)
        if self.language not in by_lang:
            present = ", ".join(f"{g} ({len(by_lang[g])})" for g in sorted(by_lang))
            raise self._fail(f"language '{self.language}' is not in the pool (present: {present})")
        return _take_quotas(self, [(f"language '{self.language}'", by_lang[self.language], n)], seed)


class LengthStratifiedSampler(Sampler):
    """n // strata samples from each of `strata` quantile bins of text length (in characters).

    The pool is ordered by (length, index), so equal lengths split deterministically, and the
    item of rank r goes to bin r * strata // N: the empirical-CDF quantile bins (numpy's
    "inverted_cdf" quantiles are the bin edges), near-equal in size. Quota remainders go to the
    shortest strata first.
    """

    name: ClassVar[str] = "length_stratified"
    strata: int = Field(4, ge=1, description="number of length quantile bins")

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        order = sorted(range(len(pool)), key=lambda i: (len(pool[i].text), i))
        bins: list[list[int]] = [[] for _ in range(self.strata)]
        for r, i in enumerate(order):
            bins[r * self.strata // len(pool)].append(i)
        groups = []
        for k, b in enumerate(bins):
            span = f"{len(pool[b[0]].text)}-{len(pool[b[-1]].text)} chars" if b else "empty"
            groups.append((f"stratum {k + 1} of {self.strata} ({span})", b,
                           n // self.strata + (1 if k < n % self.strata else 0)))
        return _take_quotas(self, groups, seed)
