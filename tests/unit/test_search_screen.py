"""The search's projected screen (qbench.run.search_screen) against a numpy bootstrap and hand-computed bounds, and
how the search uses it: a candidate passes on the subset only where its confirmation is predicted to show PASS."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qbench.config.schema import GateCfg, SearchCfg
from qbench.report import decision as dn
from qbench.run import search_screen as screening
from qbench.run.search import Search, Unit

GATE = GateCfg(metric="accuracy_at_1", max_drop=0.5, per="all")
ST = dn.Settings(alpha=0.05 / 4, resamples=2000, seed=0, correction="holm")  # 4 confirmations share alpha


def _hits(n: int, lost: int = 0, won: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """FP32 and candidate per-query correctness: FP32 finds all but ``won`` queries, the candidate loses ``lost``
    of FP32's and finds the ``won`` ones."""
    base, var = np.ones((n, 1)), np.ones((n, 1))
    var[:lost] = 0
    base[n - won:] = 0
    return base, var


def _numpy_hi(base: np.ndarray, var: np.ndarray, level: float) -> float:
    """The one-sided upper bound of the drop in points, from the decision's own resample draws (counts per sample),
    computed here without the decision module's code path."""
    n = len(base)
    counts = dn.counts_matrix(n, 2000, 0)
    res = counts @ (base[:, 0] - var[:, 0]) / n * 100
    return float(np.quantile(res, 1 - level))


@pytest.mark.parametrize("lost,won", [(1, 0), (1, 1), (3, 1), (0, 0)])
def test_projected_bound_is_the_subset_bound_narrowed_to_the_evaluation_set(lost, won):
    base, var = _hits(500, lost, won)
    ok, hi, where = screening.projected((base, var, ["all"] * 500), GATE, ST, {"all": 2000})
    drop = (lost - won) / 500 * 100
    want = drop + (_numpy_hi(base, var, 0.05 / 4) - drop) * math.sqrt(500 / 2000)
    assert hi == pytest.approx(want, abs=1e-9) and where == "all" and ok == (want < 0.5)


def test_projected_screen_by_hand_one_lost_query_fails_one_swap_passes():
    # One query of 500 lost (drop 0.2 points): it is drawn about Poisson(1) times per resample, and its 98.75%
    # quantile is 4 draws, an upper bound of 0.8; narrowed by sqrt(500/2000) = 1/2: 0.2 + 0.6 / 2 = 0.5, not
    # below the budget of 0.5. One lost and one won (drop 0): the bound is 3 draws, 0.6; projected 0.3: PASS.
    ok, hi, _ = screening.projected((*_hits(500, 1, 0), ["all"] * 500), GATE, ST, {"all": 2000})
    assert hi == pytest.approx(0.5) and not ok
    ok, hi, _ = screening.projected((*_hits(500, 1, 1), ["all"] * 500), GATE, ST, {"all": 2000})
    assert hi == pytest.approx(0.3) and ok
    # the point-estimate screen would pass both (0.2 and 0.0 points within 0.5)


def test_projection_widens_when_the_evaluation_set_is_smaller():
    base, var = _hits(500, 1, 1)
    _, narrow, _ = screening.projected((base, var, ["all"] * 500), GATE, ST, {"all": 2000})
    _, same, _ = screening.projected((base, var, ["all"] * 500), GATE, ST, {"all": 500})
    _, wide, _ = screening.projected((base, var, ["all"] * 500), GATE, ST, {"all": 125})
    assert narrow == pytest.approx(same / 2) and wide == pytest.approx(same * 2)


def test_per_language_each_scaled_to_its_own_evaluation_count_and_the_worst_reported():
    gate = GateCfg(metric="accuracy_at_1", max_drop=2.0, per="lang")
    b_de, v_de = _hits(100, 2, 0)
    b_fr, v_fr = _hits(100, 1, 0)
    base, var = np.vstack([b_de, b_fr]), np.vstack([v_de, v_fr])
    langs = ["de"] * 100 + ["fr"] * 100
    level = 0.05 / 4 / 2  # the decision's bounds: Bonferroni over the two languages
    ok, hi, where = screening.projected((base, var, langs), gate, ST, {"de": 400, "fr": 25, "all": 425})
    want = {"de": 2 + (_numpy_hi(b_de, v_de, level) - 2) * math.sqrt(100 / 400),
            "fr": 1 + (_numpy_hi(b_fr, v_fr, level) - 1) * math.sqrt(100 / 25)}
    assert where == max(want, key=want.get) == "fr" and hi == pytest.approx(want["fr"]) and ok == (want["fr"] < 2)
    # a language the evaluation set lacks cannot fail the confirmation: it is left out
    ok2, hi2, where2 = screening.projected((base, var, langs), gate, ST, {"de": 400, "all": 400})
    assert where2 == "de" and hi2 == pytest.approx(want["de"])


def test_confirmation_settings_share_alpha_over_the_looks():
    ctx = SimpleNamespace(cfg=SimpleNamespace(gate=GateCfg(metric="bleu", max_drop=1.0, alpha=0.1, resamples=500),
                                              search=SearchCfg(max_confirmations=5)))
    st = screening.settings(ctx)
    assert (st.alpha, st.resamples, st.seed, st.correction) == (pytest.approx(0.02), 500, 0, "holm")


def test_eval_counts_per_language_and_overall():
    samples = [SimpleNamespace(language=lang) for lang in ("de", "de", "fr")]
    assert screening.eval_counts(samples) == {"de": 2, "fr": 1, "all": 3}


# ------------------------------------------------------------------------------------- the search's use of it


class _Scorer:
    """Per k, the subset quality and per-query hits a scorer would report (500 queries, FP32 finds all)."""

    base_quality = {"all": 100.0}

    def __init__(self, lost: dict[int, int]):
        self.lost = lost

    def score(self, art: Path, quality: bool = True) -> dict:
        k = int(art.stem)
        base, var = _hits(500, self.lost[k])
        return {"error": 1.0 / (k + 1), "quality": {"all": float(var.mean()) * 100},
                "samples": (base, var, ["all"] * 500)}


def _search(lost: dict[int, int], screen: str) -> Search:
    ctx = SimpleNamespace(cfg=SimpleNamespace(gate=GATE, search=SearchCfg(screen=screen)))
    us = [Unit(f"u{i}", "model", (f"n{i}",)) for i in range(8)]
    s = Search(ctx, None, _Scorer(lost), us, screen=screen, n_eval={"all": 2000})
    s.build = lambda excl, out_dir=None: Path(f"{len(excl.names)}.onnx")  # one node per unit: k = len(names)
    return s


def test_the_search_passes_only_candidates_projected_to_pass_and_bisects_on_them():
    # lost queries of 500 by k: every k >= 1 is within budget by the point estimate (at most 0.4 points); only
    # k >= 5 (no query lost) is projected to show PASS on 2,000 evaluation pairs.
    lost = {0: 4, 1: 2, 2: 2, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}
    s = _search(lost, "projected")
    s.step(s.units, 0)
    found = s.search(s.units)
    assert [t["k"] for t in s.trace] == [0, 1, 2, 4, 8, 6, 5]  # doubling, then bisection between 4 and 8
    assert found == {"passing": [5, 6], "smallest": 5}
    for t in s.trace:
        assert t["point_pass"] == (t["worst_drop"] <= 0.5) and t["pass"] == (t["projected_hi"] < 0.5)
    assert s.evaluations == len(s.trace) == 7
    # the point-estimate screen stops at k = 1 on the same data
    p = _search(lost, "point")
    p.step(p.units, 0)
    assert p.search(p.units) == {"passing": [1], "smallest": 1} and "projected_hi" not in p.trace[0]


def test_with_no_projected_pass_the_point_estimate_passes_are_confirmed():
    lost = {k: 1 for k in range(8)} | {8: 0}  # one query lost up to k = 7: within budget, never projected to PASS
    s = _search(lost, "projected")
    s.step(s.units, 0)
    found = s.search(s.units)
    assert not any(t["pass"] for t in s.trace if t["k"] < 8) and found["passing"] == [0, 1, 2, 4, 6, 7]
