"""The search's ranking rule and ranking subset (qbench.run.search), against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qbench.config.schema import SearchCfg
from qbench.run.search import benefit, ranking_subset

ALL8 = {"error": 1.0, "error_by_lang": {"all": 1.0, "de": 1.5, "fr": 0.5}}


def test_benefit_is_the_pooled_error_reduction_without_a_per_language_gate():
    ex = {"error": 0.75, "error_by_lang": {"all": 0.75, "de": 1.4, "fr": 0.1}}
    assert benefit(ALL8, ex, per_lang=False) == pytest.approx(0.25)


def test_benefit_per_language_is_the_largest_reduction_in_any_language():
    # Pooled, unit a helps more (0.3 > 0.2); but b repairs fr by 0.4, which a per-language gate can fail on.
    a = {"error": 0.7, "error_by_lang": {"all": 0.7, "de": 1.2, "fr": 0.45}}
    b = {"error": 0.8, "error_by_lang": {"all": 0.8, "de": 1.45, "fr": 0.1}}
    assert benefit(ALL8, a, per_lang=True) == pytest.approx(0.3)   # de: 1.5 - 1.2
    assert benefit(ALL8, b, per_lang=True) == pytest.approx(0.4)   # fr: 0.5 - 0.1
    assert benefit(ALL8, b, per_lang=False) == pytest.approx(0.2)


def test_benefit_falls_back_to_the_pooled_error_without_languages():
    # retrieval's scorer reports no per-language error
    assert benefit({"error": 0.5}, {"error": 0.125}, per_lang=True) == pytest.approx(0.375)


def _ctx(per_language: bool, **search):
    return SimpleNamespace(cfg=SimpleNamespace(search=SearchCfg(**search)),
                           task=SimpleNamespace(per_language=per_language))


def test_ranking_subset_takes_the_first_per_language_then_the_first_n():
    subset = [SimpleNamespace(id=f"{lang}{i}", language=lang) for lang in ("de", "fr") for i in range(4)]
    ids = lambda xs: [x.id for x in xs]  # noqa: E731
    assert ids(ranking_subset(_ctx(True), subset)) == ids(subset)
    assert ids(ranking_subset(_ctx(True, rank_n_per_language=2), subset)) == ["de0", "de1", "fr0", "fr1"]
    assert ids(ranking_subset(_ctx(True, rank_n_per_language=2, rank_n=3), subset)) == ["de0", "de1", "fr0"]
    # pooled tasks ignore the per-language cap
    assert ids(ranking_subset(_ctx(False, rank_n_per_language=1, rank_n=5), subset)) == ids(subset[:5])


def test_retrieval_ranking_scorer_takes_fp32_embeddings_from_the_subset_scorer(monkeypatch):
    """The ranking's scorer (the first rank_n pairs) slices FP32's embeddings out of the subset scorer's instead of
    embedding them again; its scores equal a scorer built on those pairs from scratch."""
    import numpy as np

    from qbench.tasks import retrieval

    rng = np.random.default_rng(0)
    table = {i: rng.normal(size=(2, 8)) for i in range(6)}  # sample -> (query, document) embedding, FP32
    calls = []

    def fake_embed_pairs(ctx, art, samples):
        calls.append((art, [s.id for s in samples]))
        noise = 0.0 if art == "fp32" else 0.3
        q = np.stack([table[s.id][0] + noise * np.sin(s.id) for s in samples])
        d = np.stack([table[s.id][1] + noise * np.cos(s.id) for s in samples])
        return q, d, 0.0

    monkeypatch.setattr(retrieval, "embed_pairs", fake_embed_pairs)
    ctx = SimpleNamespace(fp32="fp32")
    subset = [SimpleNamespace(id=i) for i in range(6)]
    full = retrieval.RetrievalScorer(ctx, subset)
    rank = full.restrict(subset[:3])
    assert calls == [("fp32", list(range(6)))]  # FP32 embedded once, on the whole subset
    fresh = retrieval.RetrievalScorer(ctx, subset[:3])
    np.testing.assert_array_equal(rank.base, fresh.base)
    assert rank.base_quality == fresh.base_quality
    a, b = rank.score("int8"), fresh.score("int8")
    assert a["error"] == b["error"] and a["quality"] == b["quality"]
    # the per-query hits the projected screen decides on: FP32's and the candidate's, one column each
    base, var, langs = a["samples"]
    q, d, _ = fake_embed_pairs(ctx, "int8", subset[:3])
    np.testing.assert_array_equal(base, (retrieval.ranks(fresh.base[:3], fresh.base[3:]) == 1)[:, None])
    np.testing.assert_array_equal(var, (retrieval.ranks(q, d) == 1)[:, None])
    assert langs == ["all"] * 3 and a["quality"]["all"] == var.mean() * 100
