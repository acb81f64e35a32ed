"""qbench.tasks.mt_metrics: statistics and scores against sacrebleu itself, the vectorized bootstrap against a
slow loop of sacrebleu calls, and the offline evaluate modules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sacrebleu

from qbench.tasks import mt_metrics as mt
from qbench.config.errors import ConfigError, DataError

# (hypothesis, reference) pairs; empty hypotheses, a hypothesis shorter than 4 tokens, accents, emoji.
DATA = {
    "en": [("The cat sat on the mat.", "The cat sat on the mat."),
           ("A quick brown fox jumps over a dog.", "The quick brown fox jumped over the lazy dog."),
           ("", "An empty hypothesis scores nothing."),
           ("Hello", "Hello world, how are you?")],
    "de": [("Über den Wolken muss die Freiheit grenzenlos sein.",
            "Über den Wolken muß die Freiheit wohl grenzenlos sein."),
           ("Die Straße ist naß 😀", "Die Straße ist nass 😀"),
           ("Ein Café in Köln.", "Ein Café in Köln.")],
    "zh": [("我爱北京天安门。", "我爱北京天安门！"), ("今天天气很好", "今天的天气非常好"), ("", "这句没有译文")],
    "ja": [("日本語の文です。", "これは日本語の文です。"), ("東京は大きい", "東京はとても大きい都市です")],
    "th": [("สวัสดีครับ ยินดีที่ได้รู้จัก", "สวัสดีค่ะ ยินดีที่ได้รู้จัก")],
}


def _split(lang):
    hyps, refs = zip(*DATA[lang])
    return list(hyps), list(refs)


def _corpus(n=24, seed=3):
    """A reference set, a clearly better system (one word dropped) and a worse one (words shuffled)."""
    rng = np.random.default_rng(seed)
    words = "the a cat dog sat ran on under mat house big small red blue quickly slowly".split()
    refs = [" ".join(rng.choice(words, size=rng.integers(5, 12))) for _ in range(n)]
    good = [" ".join(r.split()[1:]) for r in refs]
    bad = [" ".join(rng.permutation(r.split())) for r in refs]
    return refs, good, bad


def test_tokenizer_for():
    assert [mt.tokenizer_for(x) for x in ("en", "de-DE", "zh", "zh-Hant", "zho_Hans", "th", "km", "mya_Mymr")] == \
        ["13a", "13a", "zh", "zh", "zh", "char", "char", "char"]
    mecab = mt._importable("MeCab", "ipadic")
    assert mt.tokenizer_for("ja") == mt.tokenizer_for("jpn_Jpan") == ("ja-mecab" if mecab else "char")
    assert mt.tokenizer_for("ko") in ("ko-mecab", "char")
    with pytest.raises(DataError):
        mt.tokenizer_for("")


@pytest.mark.parametrize("lang", sorted(DATA))
def test_corpus_scores_equal_sacrebleu(lang):
    hyps, refs = _split(lang)
    stats = mt.sample_stats(hyps, refs, lang)
    assert stats["bleu"].shape == (len(hyps), 10) and stats["chrf"].shape == (len(hyps), 18)
    assert stats["bleu"].dtype == np.int64
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=mt.tokenizer_for(lang)).score
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
    assert mt.corpus_bleu_from_stats(stats) == bleu
    assert mt.corpus_chrf_from_stats(stats) == chrf
    # The vectorized formulas, used by the bootstrap, on the unresampled sums.
    assert mt.corpus_scores(stats["bleu"].sum(0), "bleu")[0] == pytest.approx(bleu, abs=1e-9)
    assert mt.corpus_scores(stats["chrf"].sum(0), "chrf")[0] == pytest.approx(chrf, abs=1e-9)


def test_char_tokenization_for_japanese_matches_sacrebleu():
    hyps, refs = _split("ja")
    stats = mt._metric("bleu", "char")._extract_corpus_statistics(hyps, [refs])
    assert mt.corpus_bleu_from_stats(np.array(stats)) == sacrebleu.corpus_bleu(hyps, [refs], tokenize="char").score
    assert mt.corpus_bleu_from_stats(np.array(stats)) > 0        # 13a would see each sentence as one word
    assert sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score == 0


def test_vectorized_formulas_on_edge_rows():
    hyps, refs = _split("en")
    rows = {m: [] for m in mt.METRICS}
    cases = [(hyps, refs), ([""], ["nothing"]), (["a b"], ["a b"]), (["x y z"], ["p q r"]), ([""], [""]),
             (["short"], ["a much longer reference sentence here"]), (["one two three four five"], ["one two"])]
    for h, r in cases:
        s = mt.sample_stats(h, r, "en")
        for m in mt.METRICS:
            rows[m].append(s[m].sum(0))
    for m, fn in (("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF())):
        want = [fn._compute_score_from_stats([int(v) for v in row]).score for row in rows[m]]
        np.testing.assert_allclose(mt.corpus_scores(np.array(rows[m]), m), want, rtol=0, atol=1e-9)


def test_score_rows_and_macro_average():
    hyps, refs, langs = [], [], []
    for lang in ("de", "zh", "en"):
        h, r = _split(lang)
        hyps += h
        refs += r
        langs += [lang] * len(h)
    df = mt.score(hyps, refs, langs)
    assert list(df.columns) == ["lang", "metric", "value", "n", "aggregate", "signature"]
    assert list(zip(df.lang, df.metric)) == [(x, m) for m in ("bleu", "chrf") for x in ("de", "en", "zh", "all")]
    for m in ("bleu", "chrf"):
        part = df[df.metric == m].set_index("lang")
        assert part.loc["all", "value"] == pytest.approx(part.value.drop("all").mean(), abs=1e-12)
        assert part.loc["all", "aggregate"] == "macro" and part.loc["all", "n"] == len(hyps)
        assert set(part["aggregate"].drop("all")) == {"corpus"}
    zh = df[(df.lang == "zh") & (df.metric == "bleu")].iloc[0]
    zh_hyps, zh_refs = _split("zh")
    assert zh.value == sacrebleu.corpus_bleu(zh_hyps, [zh_refs], tokenize="zh").score
    assert zh.n == 3 and "tok:zh" in zh.signature and "smooth:exp" in zh.signature
    all_bleu = df[(df.lang == "all") & (df.metric == "bleu")].signature.iloc[0]
    assert "tok:13a+zh" in all_bleu and "agg:macro[3]" in all_bleu


def test_samples_frame_round_trips_through_parquet(tmp_path):
    hyps, refs = _split("de")
    stats = mt.sample_stats(hyps, refs, "de")
    df = mt.samples_frame(["s0", "s1", "s2"], ["de"] * 3, hyps, refs, stats["bleu"], stats["chrf"])
    assert len(df.columns) == 4 + 10 + 18
    df.to_parquet(tmp_path / "samples.parquet", index=False)
    back = pd.read_parquet(tmp_path / "samples.parquet")
    assert back.bleu_match_1.dtype == np.int64 and list(back.hyp) == hyps
    again = mt.stats_from_samples(back)
    np.testing.assert_array_equal(again["bleu"], stats["bleu"])
    np.testing.assert_array_equal(again["chrf"], stats["chrf"])


def test_user_errors():
    with pytest.raises(DataError):
        mt.sample_stats(["a", "b"], ["a"], "en")
    with pytest.raises(DataError):
        mt.sample_stats([None], ["a"], "en")
    with pytest.raises(DataError):
        mt.sample_stats([], [], "en")
    with pytest.raises(DataError):
        mt.score(["a"], ["a"], ["all"])
    with pytest.raises(ConfigError):
        mt.paired_bootstrap(np.zeros((2, 10)), np.zeros((2, 10)), "ter")
    with pytest.raises(DataError):
        mt.paired_bootstrap(np.zeros((2, 10)), np.zeros((3, 10)), "bleu")


# ---------------------------------------------------------------- bootstrap

@pytest.mark.parametrize("metric", mt.METRICS)
def test_bootstrap_identical_systems(metric):
    refs, good, _ = _corpus()
    s = mt.sample_stats(good, refs, "en")
    assert mt.paired_bootstrap(s, s, metric, n=200) == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}


@pytest.mark.parametrize("metric", mt.METRICS)
def test_bootstrap_clearly_better_system(metric):
    refs, good, bad = _corpus()
    a, b = mt.sample_stats(bad, refs, "en"), mt.sample_stats(good, refs, "en")
    r = mt.paired_bootstrap(a, b, metric, n=500, seed=1)
    assert 0 < r["lo"] <= r["delta"] <= r["hi"] and r["p"] < 0.01
    back = mt.paired_bootstrap(b, a, metric, n=500, seed=1)     # the other direction mirrors it
    assert back["delta"] == -r["delta"] and back["hi"] == pytest.approx(-r["lo"], abs=1e-12)


@pytest.mark.parametrize("metric,lang", [("bleu", "en"), ("chrf", "en"), ("bleu", "zh")])
def test_bootstrap_equals_slow_sacrebleu_loop(metric, lang):
    if lang == "en":
        refs, good, bad = _corpus(n=12)
    else:
        refs = ["我爱北京天安门", "今天的天气非常好", "这是一个测试句子", "他们明天去上海", "猫坐在垫子上"]
        good, bad = [r[:-1] for r in refs], [r[::-1] for r in refs]
    n, seed = 30, 7
    a, b = mt.sample_stats(bad, refs, lang), mt.sample_stats(good, refs, lang)
    got = mt.paired_bootstrap(a, b, metric, n=n, seed=seed)

    def oracle(hyps, idx):
        h, r = [hyps[i] for i in idx], [[refs[i] for i in idx]]
        if metric == "bleu":
            return sacrebleu.corpus_bleu(h, r, tokenize=mt.tokenizer_for(lang)).score
        return sacrebleu.corpus_chrf(h, r).score

    idx = mt.resample_indices(len(refs), n, seed)
    deltas = np.array([oracle(good, row) - oracle(bad, row) for row in idx])
    # Per-resample scores of one system, not only the deltas.
    np.testing.assert_allclose(mt.corpus_scores(mt.resampled_sums(b[metric], idx), metric),
                               [oracle(good, row) for row in idx], rtol=0, atol=1e-9)
    assert got["delta"] == oracle(good, range(len(refs))) - oracle(bad, range(len(refs)))
    assert got["lo"] == pytest.approx(np.percentile(deltas, 2.5), abs=1e-9)
    assert got["hi"] == pytest.approx(np.percentile(deltas, 97.5), abs=1e-9)
    flips = np.mean(np.sign(deltas) != np.sign(got["delta"]))
    assert got["p"] == pytest.approx(min(1.0, 2 * flips))


def test_bootstrap_is_deterministic_for_a_seed():
    refs, good, bad = _corpus()
    a, b = mt.sample_stats(bad, refs, "en"), mt.sample_stats(good, refs, "en")
    first = mt.paired_bootstrap(a, b, "bleu", n=300, seed=5)
    assert mt.paired_bootstrap(a, b, "bleu", n=300, seed=5) == first
    assert mt.paired_bootstrap(a, b, "bleu", n=300, seed=6) != first


def test_bootstrap_by_lang():
    refs, good, bad = _corpus(n=20)
    zh_refs = ["我爱北京天安门", "今天的天气非常好", "这是一个测试句子", "他们明天去上海"]
    langs = ["en"] * 20 + ["zh"] * 4
    refs_all, good_all, bad_all = refs + zh_refs, good + [r[:-1] for r in zh_refs], bad + [r[::-1] for r in zh_refs]
    a = mt.sample_stats_by_lang(bad_all, refs_all, langs)
    b = mt.sample_stats_by_lang(good_all, refs_all, langs)
    df = mt.paired_bootstrap_by_lang(a, b, langs, n=200, seed=3)
    assert list(zip(df.lang, df.metric)) == [(x, m) for m in ("bleu", "chrf") for x in ("en", "zh", "all")]
    assert set(df.resamples) == {200} and set(df.seed) == {3}
    for m in mt.METRICS:
        part = df[df.metric == m].set_index("lang")
        for lang, sl in (("en", slice(0, 20)), ("zh", slice(20, 24))):
            alone = mt.paired_bootstrap(a[m][sl], b[m][sl], m, n=200, seed=3)
            assert part.loc[lang, ["delta", "lo", "hi", "p"]].to_dict() == alone
        assert part.loc["all", "delta"] == pytest.approx(part.delta.drop("all").mean(), abs=1e-12)
        assert part.loc["all", "lo"] > 0 and part.loc["all", "n"] == 24
    same = mt.paired_bootstrap_by_lang(a, a, langs, n=50)
    assert (same[["delta", "lo", "hi"]] == 0).all().all() and (same.p == 1).all()


# ---------------------------------------------------------------- evaluate modules

@pytest.fixture(scope="module")
def evaluate(tmp_path_factory):
    """evaluate, imported offline with its caches in a temporary folder (it reads both at import)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
            mp.setenv(var, "1")
        for var in ("HF_EVALUATE_CACHE", "HF_MODULES_CACHE", "HF_METRICS_CACHE"):
            mp.setenv(var, str(tmp_path_factory.mktemp(var.lower())))
        yield pytest.importorskip("evaluate")


def test_evaluate_modules_load_offline_and_match_sacrebleu(evaluate):
    hyps, refs = _split("zh")
    bleu = mt.load_metric("bleu").compute(predictions=hyps, references=refs, lang="zh")
    assert bleu["score"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    assert bleu["signature"] == mt.signature("bleu", "zh")
    hyps, refs = _split("en")
    chrf = mt.load_metric("chrf").compute(predictions=hyps, references=refs)
    assert chrf["score"] == sacrebleu.corpus_chrf(hyps, [refs]).score and "nc:6" in chrf["signature"]
    acc = mt.load_metric("accuracy")
    assert acc.compute(predictions=[1, 0, 2, 2], references=[1, 1, 2, 0]) == {"accuracy": 0.5}
    assert acc.compute(predictions=[1, 0], references=[1, 1], sample_weight=[3, 1]) == {"accuracy": 0.75}
    assert acc.compute(predictions=[1, 0], references=[1, 1], normalize=False) == {"accuracy": 1.0}


def test_load_metric_needs_the_hub_for_other_names(evaluate):
    with pytest.raises(ConfigError, match="needs the Hugging Face hub") as err:
        mt.load_metric("nonexistent-xyz")
    assert "\n" not in str(err.value)
