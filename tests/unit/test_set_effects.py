"""Calibration-set effects (qbench.report.set_effects): pairing by everything but the set, effects equal to sacrebleu's
own corpus scores on the written outputs, pooled groups, Holm over languages, and the report section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sacrebleu

from qbench.report.set_effects import set_effects, set_pairs, set_sections
from qbench.tasks.mt_metrics import sample_stats_by_lang, samples_frame

REFS = {"de": [f"das ist der satz nummer {i} mit etwas text" for i in range(40)],
        "fr": [f"voici la phrase numero {i} avec du texte" for i in range(40)],
        "ru": [f"это предложение номер {i} с текстом" for i in range(40)]}


def _variant(name: str, damage: dict[str, float], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids, langs, hyps, refs = [], [], [], []
    for lang, rs in REFS.items():
        for i, r in enumerate(rs):
            words = r.split()
            if rng.random() < damage.get(lang, 0.0):
                words = words[: max(1, len(words) // 3)]  # a truncated translation
            ids.append(f"{lang}{i}"), langs.append(lang), hyps.append(" ".join(words)), refs.append(r)
    st = sample_stats_by_lang(hyps, refs, langs)
    f = samples_frame(ids, langs, hyps, refs, st["bleu"], st["chrf"])
    f.insert(0, "variant", name)
    return f


def _manifest(variants: dict[str, tuple[str, str]]) -> dict:
    return {"data": {"calibration_sets": {"balanced": {}, "german": {}, "russian": {}},
                     "language_groups": {"script": {"de": "Latn", "fr": "Latn", "ru": "Cyrl"}}},
            "gate": {"metric": "chrf", "alpha": 0.05, "resamples": 1000, "seed": 0},
            "variants": {v: {"status": "ok", "calibrator": cal, "exclusion": "none", "flavor": "s8s8",
                             "backend": "ort", "calibration_set": s} for v, (cal, s) in variants.items()}}


@pytest.fixture(scope="module")
def run():
    m = _manifest({"fp32": ("fp32", ""), "mm@balanced": ("minmax", "balanced"), "mm@german": ("minmax", "german"),
                   "mm@russian": ("minmax", "russian"), "ent@balanced": ("entropy", "balanced")})
    m["variants"]["fp32"]["calibration_set"] = None
    samples = pd.concat([_variant("fp32", {}, 0), _variant("mm@balanced", {"ru": 0.1}, 1),
                         _variant("mm@german", {"ru": 0.8}, 2), _variant("mm@russian", {"ru": 0.1}, 1),
                         _variant("ent@balanced", {}, 3)], ignore_index=True)
    return m, samples


def _chrf(f: pd.DataFrame) -> float:
    return sacrebleu.corpus_chrf(list(f.hyp), [list(f.ref)]).score


def test_pairs_differ_in_the_set_alone(run):
    m, _ = run
    ref, pairs = set_pairs(m)
    assert ref == "balanced"
    # entropy has no german/russian variant; fp32 has no set: neither is paired.
    assert pairs == [("german", "mm@german", "mm@balanced"), ("russian", "mm@russian", "mm@balanced")]
    assert set_pairs(m, "german")[1] == [("balanced", "mm@balanced", "mm@german"),
                                         ("russian", "mm@russian", "mm@german")]


def test_effects_against_sacrebleu(run):
    m, s = run
    e = set_effects(s, m, "chrf", groups=m["data"]["language_groups"]["script"]).set_index(["set", "slice"])
    for set_, vid in (("german", "mm@german"), ("russian", "mm@russian")):
        a, b = s[s.variant == "mm@balanced"], s[s.variant == vid]
        for lang in REFS:
            want = _chrf(b[b.lang == lang]) - _chrf(a[a.lang == lang])
            r = e.loc[(set_, f"lang={lang}")]
            assert r.effect == pytest.approx(want, abs=1e-9)
            assert r.lo <= r.effect <= r.hi and r.n == 40
        latn = ["de", "fr"]
        want = _chrf(b[b.lang.isin(latn)]) - _chrf(a[a.lang.isin(latn)])   # pooled, not averaged
        assert e.loc[(set_, "group=Latn")].effect == pytest.approx(want, abs=1e-9)
        assert e.loc[(set_, "group=Latn")].n == 80
    # Russian loses under German-only calibration (80% truncated vs 10%): significant after Holm; the identical
    # russian-set outputs give 0 everywhere, never significant.
    assert e.loc[("german", "lang=ru")].effect < -10 and e.loc[("german", "lang=ru")].significant
    assert e.loc[("german", "group=Cyrl")].significant
    assert not e.loc[("german", "lang=de")].significant
    rus = e.loc["russian"]
    assert (rus.effect == 0).all() and not rus.significant.any()
    # Holm over the three languages: adjusted p never below the raw one.
    langs = e[e.index.get_level_values(1).str.startswith("lang=")]
    assert (langs.p_holm >= langs.p - 1e-12).all()


def test_report_section(run):
    m, s = run
    secs = set_sections(m, s)
    assert len(secs) == 1 and secs[0]["reference"] == "balanced" and secs[0]["sets"] == ["german", "russian"]
    rows = {r["slice"]: r for r in secs[0]["rows"]}
    assert list(rows)[:3] == ["all (macro)", "Cyrl", "Latn"]
    assert rows["ru"]["cells"][0]["sig"] and rows["ru"]["cells"][0]["text"].startswith("-")
    assert secs[0]["svg"].startswith("<svg")
    assert set_sections({**m, "data": {"calibration_sets": {"balanced": {}}}}, s) == []
    assert set_sections(m, None) == []


def test_range_moves_rank_the_quantized_tensors_by_log_ratio(tmp_path):
    """The tensors a set moves most against the reference set's amax, from the run's tables: |log ratio| ranked,
    ratios as numpy computes them, and only the Q/DQ tensors when the variant records them."""
    import json
    import math

    from qbench.report.set_effects import range_moves

    ref = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.5}
    oth = {"a": 3.0, "b": 1.0, "c": 4.4, "d": 0.5}   # log ratios: a 1.10, b 0.69, c 0.10, d 0
    (tmp_path / "tables").mkdir()
    for name, amax in (("ref", ref), ("oth", oth)):
        (tmp_path / f"tables/{name}.encoder.json").write_text(json.dumps({"amax": amax}))
    manifest = {"variants": {
        "v@oth": {"calibration_set": "oth", "tables": {"encoder": "tables/oth.encoder.json"},
                  "quantized_tensor_names": {"encoder": ["b", "c", "d"]}},
        "v@ref": {"calibration_set": "ref", "tables": {"encoder": "tables/ref.encoder.json"},
                  "quantized_tensor_names": {"encoder": ["b", "c", "d"]}}}}
    [row] = range_moves(manifest, tmp_path, [("v@oth", "v@ref")], top=2)
    assert row["set"] == "oth" and row["n"] == 3 and row["quantized_only"]
    assert [t["tensor"] for t in row["tensors"]] == ["encoder:b", "encoder:c"]      # 'a' is not quantized
    assert row["tensors"][0]["ratio"] == pytest.approx(np.float64(1.0) / 2.0)
    assert abs(math.log(row["tensors"][1]["ratio"])) == pytest.approx(abs(np.log(4.4 / 4.0)))
    for v in manifest["variants"].values():   # a run that did not record the names: every calibrated tensor
        del v["quantized_tensor_names"]
    [row] = range_moves(manifest, tmp_path, [("v@oth", "v@ref")], top=1)
    assert row["n"] == 4 and not row["quantized_only"] and row["tensors"][0]["tensor"] == "encoder:a"
