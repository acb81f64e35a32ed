"""Calibrators (minmax, percentile, entropy), their signatures, and the plugin registry."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from pydantic import ValidationError

from calibrators.entropy import Entropy, kl_divergence_curve
from calibrators.minmax import MinMax
from calibrators.percentile import Percentile
from qbench.config import registry
from qbench.calib import CalibrationTable, TensorStats, scale_of
from qbench.config.errors import ConfigError, QuantizationError
from qbench.calib.stats import update

BINS = 2048


def _stats(x: np.ndarray, n_batches: int = 7) -> TensorStats:
    t = TensorStats()
    for b in np.array_split(x, n_batches):
        update(t, b, BINS)
    return t


def _hist_stats(hist: np.ndarray, bin_width: float, absmax: float) -> TensorStats:
    hist = np.asarray(hist, dtype=np.int64)
    return TensorStats(absmax=absmax, count=int(hist.sum()), hist=hist, bin_width=bin_width)


# --- percentile ------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["normal", "lognormal"])
def samples_100k(request):
    rng = np.random.default_rng(0)
    if request.param == "normal":
        return rng.standard_normal(100_000).astype(np.float32)
    return (rng.lognormal(0.0, 1.5, 100_000) * rng.choice([-1, 1], 100_000)).astype(np.float32)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(samples_100k, p):
    t = _stats(samples_100k)
    a = np.abs(samples_100k)
    lower = Percentile(percentile=p).amax(t)
    upper = Percentile(percentile=p, edge="upper").amax(t)
    ref = float(np.percentile(a, p))
    for amax in (lower, upper):
        assert ref - t.bin_width <= amax <= ref + t.bin_width
    # Exact-rank oracle (no float rounding in p*N/100): the smallest sample with rank >= p% of N.
    k = math.ceil(Fraction(str(p)) / 100 * a.size)
    v = float(np.sort(a)[k - 1])
    assert lower <= v <= upper == lower + t.bin_width


def test_percentile_100(samples_100k):
    t = _stats(samples_100k)
    absmax = float(np.abs(samples_100k).max())
    assert Percentile(percentile=100, edge="upper").amax(t) == t.absmax == absmax
    # The reference's lower edge: the last non-empty bin's, up to one bin below absmax.
    last = int(np.flatnonzero(t.hist)[-1])
    assert Percentile(percentile=100).amax(t) == last * t.bin_width > absmax - t.bin_width


def test_percentile_golden_on_handmade_histogram():
    # 10 values in bin 0, 80 in bin 3, 10 in bin 9: 50th pct -> bin 3; 95th -> bin 9.
    h = np.zeros(16, np.int64)
    h[0], h[3], h[9] = 10, 80, 10
    t = _hist_stats(h, 0.25, absmax=2.4)
    upper = {p: Percentile(percentile=p, edge="upper").amax(t) for p in (10, 50, 90, 95)}
    lower = {p: Percentile(percentile=p).amax(t) for p in (10, 50, 90, 95)}
    assert upper == {10: 1 * 0.25, 50: 4 * 0.25, 90: 4 * 0.25, 95: 2.4}   # 95: edge 2.5 clipped to absmax
    assert lower == {10: 0.0, 50: 3 * 0.25, 90: 3 * 0.25, 95: 9 * 0.25}


def test_percentile_rank_not_bumped_by_float_rounding():
    x = np.array([0.1] * 999 + [100.0], np.float32)
    t = _stats(x, 1)
    for edge in ("lower", "upper"):
        amax = Percentile(percentile=99.9, edge=edge).amax(t)
        assert amax <= float(np.percentile(x, 99.9)) + t.bin_width  # numpy: 0.1999


# --- minmax ------------------------------------------------------------------------------------

def test_minmax_is_absmax():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5000) * 3).astype(np.float32)
    t = _stats(x)
    assert MinMax().amax(t) == float(np.abs(x).max())


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_minmax_moving_average(c):
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal(300) * s).astype(np.float32) for s in (1, 4, 0.5, 2, 8, 1)]
    t = TensorStats()
    for b in batches:
        update(t, b, BINS)
    maxima = [float(np.abs(b).max()) for b in batches]
    ema = maxima[0]
    for m in maxima[1:]:
        ema = (1 - c) * ema + c * m
    got = MinMax(moving_average=True, averaging_constant=c).amax(t)
    assert got == pytest.approx(ema, rel=1e-12)
    if c == 1.0:
        assert got == maxima[-1]


def test_minmax_table_and_scale():
    t1, t2 = _stats(np.array([0.5, -2.0], np.float32), 1), _stats(np.array([127.0], np.float32), 1)
    table = MinMax().table({"b": t2, "a": t1})
    assert table.amax == {"a": 2.0, "b": 127.0}
    assert table.calibrator == "minmax"
    assert table.scale("b") == np.float32(1.0) and table.scale("a") == np.float32(2.0 / 127)
    assert scale_of(0.0) == np.float32(1e-8 / 127)   # an all-zero tensor still gets a positive scale
    again = CalibrationTable.from_json(table.to_json())
    assert again.amax == table.amax and again.calibrator == "minmax"


def test_calibration_table_check_finite():
    CalibrationTable({"a": 1.0}).check_finite()
    with pytest.raises(QuantizationError, match="bad_t"):
        CalibrationTable({"a": 1.0, "bad_t": float("nan")}).check_finite()


# --- entropy -----------------------------------------------------------------------------------

def _kl_oracle(hist: np.ndarray, i: int, levels: int = 128) -> float:
    """Loop version of TensorRT's EntropyCalibrator2 divergence for threshold bin count i."""
    hist = [float(h) for h in hist]
    p = hist[:i]
    p[i - 1] += sum(hist[i:])
    level_total = [0.0] * levels
    level_nonzero = [0] * levels
    for j in range(i):
        lv = (j * levels) // i
        level_total[lv] += hist[j]
        level_nonzero[lv] += hist[j] > 0
    q = [0.0] * i
    for j in range(i):
        if hist[j] > 0:
            lv = (j * levels) // i
            q[j] = level_total[lv] / level_nonzero[lv]
    sp, sq = sum(p), sum(q)
    kl = 0.0
    for pj, qj in zip(p, q):
        if pj > 0:
            if qj == 0:
                return math.inf
            kl += (pj / sp) * math.log((pj / sp) / (qj / sq))
    return kl


def test_kl_curve_matches_loop_oracle():
    rng = np.random.default_rng(11)
    bulk = np.abs(rng.standard_normal(50_000)) * 90
    hist = np.bincount(bulk.astype(np.int64), minlength=700)[:700].astype(np.int64)
    hist[650] += 3                     # a few outliers past a gap
    cands, kls = kl_divergence_curve(hist, start_bin=128)
    assert cands[0] == 128 and cands[-1] == len(hist)
    checked = 0
    for i in (128, 129, 200, 255, 256, 300, 333, 511, 512, 513, 600, 651, 700):
        k = int(np.flatnonzero(cands == i)[0])
        ref = _kl_oracle(hist, i)
        if math.isinf(ref):
            assert math.isinf(kls[k])
        else:
            assert kls[k] == pytest.approx(ref, abs=1e-9, rel=0)
            checked += 1
    assert checked >= 8


def test_kl_curve_stride():
    hist = np.arange(1, 401, dtype=np.int64)
    cands, kls = kl_divergence_curve(hist, start_bin=130, stride=7)
    np.testing.assert_array_equal(cands, np.arange(130, 401, 7))
    for i, kl in zip(cands[::9], kls[::9]):
        assert kl == pytest.approx(_kl_oracle(hist, int(i)), abs=1e-9, rel=0)


def test_entropy_uniform_covers_all_data():
    # Uniform over the first 512 of 2048 bins. For i = 512 each level merges 4 equal bins, so Q == P and
    # KL = 0; every i < 512 folds the tail into a spike that Q smears out (KL > 0). amax = 512 bins.
    w = 2.0 ** -8
    h = np.zeros(BINS, np.int64)
    h[:512] = 1000
    assert Entropy().amax(_hist_stats(h, w, absmax=512 * w)) == 512 * w
    # amax never exceeds absmax.
    assert Entropy().amax(_hist_stats(h, w, absmax=511.5 * w)) == 511.5 * w
    cands, kls = kl_divergence_curve(h[:512])
    assert kls[-1] == pytest.approx(0.0, abs=1e-12)
    assert (kls[:-1] > 1e-6).all()


def test_entropy_clips_sparse_tail():
    rng = np.random.default_rng(0)
    w = 2.0 ** -8
    h = np.bincount((np.abs(rng.standard_normal(200_000)) * 40).astype(np.int64), minlength=BINS)[:BINS]
    assert h[300:].sum() == 0
    for b in (400, 700, 1100, 1600, 2047):
        h[b] += 1
    absmax = 2047.5 * w
    amax = Entropy().amax(_hist_stats(h, w, absmax))
    assert amax <= 300 * w < absmax / 6        # the single outliers are clipped
    assert amax >= 128 * w                     # never below the first candidate
    # It is the argmin of the divergence curve (largest on ties), times the bin width.
    cands, kls = kl_divergence_curve(h)
    assert amax == cands[np.flatnonzero(kls == kls.min())[-1]] * w


def test_entropy_degenerate_inputs_fall_back_to_absmax():
    w = 2.0 ** -4
    h = np.zeros(BINS, np.int64)
    h[:100] = 5                                      # data ends before start_bin=128
    assert Entropy().amax(_hist_stats(h, w, absmax=99.2 * w)) == 99.2 * w
    assert Entropy().amax(TensorStats()) == 0.0
    zeros = TensorStats()
    update(zeros, np.zeros(10, np.float32), BINS)
    assert Entropy().amax(zeros) == 0.0


def test_entropy_on_real_stats_is_within_data_range():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(100_000), [60.0, -45.0]]).astype(np.float32)
    t = _stats(x)
    amax = Entropy().amax(t)
    assert 2.0 < amax < 20.0 < t.absmax      # clips the two outliers, keeps the normal bulk


# --- signatures & validation -----------------------------------------------------------------

def test_signatures():
    assert Percentile(percentile=99.99).signature() == "percentile[percentile=99.99]"
    assert Percentile().signature() == "percentile[percentile=99.99]"   # key param shown at its default
    assert Percentile(percentile=99.9).signature() == "percentile[percentile=99.9]"
    assert MinMax().signature() == "minmax"
    assert MinMax(moving_average=True).signature() == "minmax[moving_average=True]"
    assert (MinMax(moving_average=True, averaging_constant=0.5).signature()
            == "minmax[averaging_constant=0.5,moving_average=True]")
    assert Entropy().signature() == "entropy"
    assert Entropy(zero_bin="counted").signature() == "entropy[zero_bin=counted]"
    assert Percentile(edge="upper").signature() == "percentile[edge=upper,percentile=99.99]"
    assert Entropy(stride=4).signature() == "entropy[stride=4]"


@pytest.mark.parametrize("cls,kwargs", [
    (Percentile, {"percentle": 99.9}),
    (MinMax, {"movingaverage": True}),
    (Entropy, {"bins": 2048}),
    (Percentile, {"percentile": 0.0}),
    (Percentile, {"percentile": 100.5}),
    (MinMax, {"averaging_constant": 0.0}),
    (Entropy, {"start_bin": 0}),
])
def test_bad_params_rejected(cls, kwargs):
    with pytest.raises(ValidationError):
        cls(**kwargs)


# --- registry --------------------------------------------------------------------------------

def test_registry_did_you_mean():
    with pytest.raises(ConfigError) as ei:
        registry.calibrators.get("entropi")
    assert "Did you mean: entropy?" in str(ei.value)
    assert "'entropi'" in str(ei.value)


def test_registry_unknown_without_close_match_lists_known():
    with pytest.raises(ConfigError) as ei:
        registry.calibrators.get("zzzzzz")
    msg = str(ei.value)
    assert "Known:" in msg and all(n in msg for n in ("entropy", "minmax", "percentile"))


def test_registry_returns_classes():
    assert registry.calibrators.get("minmax") is MinMax
    assert registry.calibrators.get("percentile") is Percentile
    assert registry.calibrators.get("entropy") is Entropy
    assert registry.calibrators.get("minmax") is MinMax   # cached path
    from calibrators.samplers import LangBalancedSampler, RandomSampler
    assert registry.samplers.get("random") is RandomSampler
    assert registry.samplers.get("lang_balanced") is LangBalancedSampler
    assert {"entropy", "minmax", "percentile"} <= set(registry.calibrators.names())
    with pytest.raises(ConfigError, match="Did you mean: random?"):
        registry.samplers.get("randon")
