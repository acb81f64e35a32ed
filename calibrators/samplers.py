"""Calibration-set samplers: which samples of the calibration pool feed the statistics pass.

Every sampler is deterministic for a given seed; the chosen sample ids go into the manifest.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from qbench.errors import DataError


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]

    def select(self, languages: Sequence[str], n: int, seed: int) -> list[int]:  # pragma: no cover
        raise NotImplementedError


class RandomSampler(Sampler):
    """n samples uniformly without replacement."""

    name: ClassVar[str] = "random"

    def select(self, languages: Sequence[str], n: int, seed: int) -> list[int]:
        if n > len(languages):
            raise DataError(f"random sampler: asked for {n} calibration samples, the pool has {len(languages)}")
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(len(languages), size=n, replace=False))


class LangBalancedSampler(Sampler):
    """n // L samples from each of the L languages (the remainder to the first languages, sorted).

    A language short of its quota is an error: silent padding from other languages would make the
    set English-heavy, which is the failure this sampler exists to prevent.
    """

    name: ClassVar[str] = "lang_balanced"

    def select(self, languages: Sequence[str], n: int, seed: int) -> list[int]:
        by_lang: dict[str, list[int]] = defaultdict(list)
        for i, lang in enumerate(languages):
            by_lang[lang].append(i)
        langs = sorted(by_lang)
        if not langs:
            raise DataError("lang_balanced sampler: the calibration pool is empty")
        rng = np.random.default_rng(seed)
        chosen: list[int] = []
        for k, lang in enumerate(langs):
            quota = n // len(langs) + (1 if k < n % len(langs) else 0)
            pool = by_lang[lang]
            if quota > len(pool):
                raise DataError(
                    f"lang_balanced sampler: language '{lang}' has {len(pool)} samples, its quota is {quota}"
                )
            chosen.extend(int(pool[j]) for j in rng.choice(len(pool), size=quota, replace=False))
        return sorted(chosen)
