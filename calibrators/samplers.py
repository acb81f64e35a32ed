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


def _only(sampler: Sampler, by_lang: dict[str, list[int]], languages: list[str] | None) -> dict[str, list[int]]:
    """The pool's languages restricted to ``languages`` (all when None); a language absent from the pool is an error."""
    if languages is None:
        return by_lang
    missing = [g for g in languages if g not in by_lang]
    if missing:
        raise sampler._fail(f"language '{missing[0]}' is not in the pool (present: {', '.join(sorted(by_lang))})")
    return {g: by_lang[g] for g in languages}


class LangBalancedSampler(Sampler):
    """n // L samples from each of the L languages (the remainder to the first languages, sorted); with
    ``languages``, from those alone (e.g. the Latin-script ones)."""

    name: ClassVar[str] = "lang_balanced"
    languages: list[str] | None = Field(None, min_length=1, description="draw from these languages only")

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        by_lang = _only(self, _by_language(pool), self.languages)
        langs = sorted(by_lang)
        L = len(langs)
        groups = [(f"language '{lang}'", by_lang[lang], n // L + (1 if k < n % L else 0))
                  for k, lang in enumerate(langs)]
        return _take_quotas(self, groups, seed)


class ProportionalSampler(Sampler):
    """Each language in proportion to its share of the pool (or to ``weights``, e.g. the training corpus's pair
    counts per language), uniform within a language.

    Quotas use largest-remainder rounding so they sum to exactly n; equal remainders go to the
    language that sorts first, so the quotas never depend on dict or pool order.
    """

    name: ClassVar[str] = "proportional"
    weights: dict[str, int] | None = Field(None, min_length=1, description="language -> weight (a count, >= 0); "
                                                                            "languages not named get none")

    def select(self, pool: Sequence[Sample], n: int, seed: int) -> list[int]:
        self._check(pool, n)
        if n > len(pool):
            raise self._fail(f"asked for {n} calibration samples, the pool has {len(pool)}")
        by_lang = _by_language(pool)
        size = {lang: len(idx) for lang, idx in by_lang.items()}
        if self.weights is not None:
            if any(w < 0 for w in self.weights.values()) or not sum(self.weights.values()):
                raise self._fail("weights must be counts >= 0, not all 0")
            by_lang = _only(self, by_lang, sorted(self.weights))
            size = dict(self.weights)
        N = sum(size.values())
        # Integer arithmetic: exact floors and remainders, no float ties misordered by rounding.
        quota = {lang: n * size[lang] // N for lang in by_lang}
        rem = {lang: n * size[lang] % N for lang in by_lang}
        left = n - sum(quota.values())
        for lang in sorted(by_lang, key=lambda g: (-rem[g], g))[:left]:
            quota[lang] += 1
        # Pool shares: n <= N means no quota exceeds its language's count (ceil(n*c/N) <= c). With weights a
        # quota can exceed what the pool holds of a language: _take_quotas names it.
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
