"""qbench.calib.stats: the streaming |x| histogram, axis roles, token masks, save/load, collect."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qbench.calib import TensorStats
from qbench.config.errors import DataError
from qbench.calib.stats import MIN_BIN_WIDTH, _axis_roles, _lattice_width, collect, load, save, token_mask, update

BINS = 2048


def _feed(batches, bins=BINS) -> TensorStats:
    t = TensorStats()
    for b in batches:
        update(t, b, bins)
    return t


def _batches(kind: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        # Growing spread, so the lattice has to double several times along the way.
        return [(rng.standard_normal((16, 33)) * s).astype(np.float32) for s in (0.01, 0.5, 1.0, 3.0, 0.2)]
    if kind == "lognormal":
        return [(rng.lognormal(0.0, 2.0, size=(7, 101)) * rng.choice([-1, 1], size=(7, 101))).astype(np.float32)
                for _ in range(6)]
    raise AssertionError(kind)


def _is_pow2(x: float) -> bool:
    m, _ = math.frexp(x)
    return m == 0.5


@pytest.mark.parametrize("kind", ["normal", "lognormal"])
def test_update_matches_numpy_histogram(kind):
    batches = _batches(kind)
    t = _feed(batches)
    allv = np.abs(np.concatenate([b.ravel() for b in batches]))

    assert t.absmax == float(allv.max())
    assert t.count == allv.size
    assert t.hist.dtype == np.int64 and len(t.hist) == BINS
    assert int(t.hist.sum()) == t.count
    assert _is_pow2(t.bin_width)
    assert t.absmax <= BINS * t.bin_width
    assert t.absmax > BINS * t.bin_width / 2  # the smallest such power of two
    assert t.batch_absmax == [float(np.abs(b).max()) for b in batches]

    expected, _ = np.histogram(allv, bins=BINS, range=(0.0, BINS * t.bin_width))
    np.testing.assert_array_equal(t.hist, expected)


@pytest.mark.parametrize("kind", ["normal", "lognormal"])
def test_update_is_order_independent(kind):
    batches = _batches(kind, seed=3)
    fwd, rev = _feed(batches), _feed(batches[::-1])
    assert fwd.bin_width == rev.bin_width
    assert fwd.absmax == rev.absmax and fwd.count == rev.count
    np.testing.assert_array_equal(fwd.hist, rev.hist)


def test_update_power_of_two_absmax_is_strictly_inside_the_lattice():
    # 1.0 = 2048 * 2**-11 would sit on the top edge; the lattice takes the next width so that no value
    # ever does (that is what keeps width doubling exact).
    t = _feed([np.array([1.0, -1.0, 0.5, 0.0], np.float32)])
    assert t.bin_width == 2.0 ** -10
    assert t.hist[1024] == 2 and t.hist[512] == 1 and t.hist[0] == 1
    expected, _ = np.histogram([1.0, 1.0, 0.5, 0.0], bins=BINS, range=(0.0, 2.0))
    np.testing.assert_array_equal(t.hist, expected)


def test_update_top_edge_value_survives_width_doubling():
    a = np.array([0.5, 0.25], np.float32)   # 0.5 is the top edge of the 2**-12 lattice
    b = np.array([1.0, 0.75], np.float32)   # widens the lattice to 2**-11
    fwd, rev = _feed([a, b]), _feed([b, a])
    np.testing.assert_array_equal(fwd.hist, rev.hist)


def test_update_all_zero_input():
    t = _feed([np.zeros((4, 5), np.float32), np.zeros(3, np.float32)])
    assert t.absmax == 0.0
    assert t.count == 23
    assert t.hist[0] == 23 and int(t.hist.sum()) == 23
    assert t.bin_width == MIN_BIN_WIDTH


def test_update_zero_batch_then_data():
    x = np.array([0.25, -1.0, 0.0], np.float32)
    t = _feed([np.zeros(4, np.float32), x])
    assert t.absmax == 1.0 and t.count == 7
    expected, _ = np.histogram(np.abs(np.concatenate([np.zeros(4), x])), bins=BINS, range=(0, BINS * t.bin_width))
    np.testing.assert_array_equal(t.hist, expected)


def test_update_ignores_empty_batch():
    t = _feed([np.array([0.5], np.float32), np.zeros(0, np.float32)])
    assert t.count == 1 and t.batch_absmax == [0.5]


@pytest.mark.parametrize("absmax,bins,expected", [
    (1.0, 2048, 2.0 ** -10),          # exactly on a power of two: absmax must stay below the top edge
    (0.9999999, 2048, 2.0 ** -11),
    (1.0000001, 2048, 2.0 ** -10),
    (3.0, 2048, 2.0 ** -9),           # 3/2048 -> next power of two 2**-9 (4/2048)
    (2048.0, 2048, 2.0),
    (2047.5, 2048, 1.0),
    (5000.0, 1024, 8.0),
    (0.0, 2048, MIN_BIN_WIDTH),
    (1e-30, 2048, MIN_BIN_WIDTH),
])
def test_lattice_width_golden(absmax, bins, expected):
    assert _lattice_width(absmax, bins) == expected


def test_lattice_width_is_smallest_power_of_two():
    rng = np.random.default_rng(0)
    for a in np.float32(rng.lognormal(0, 6, size=300)):
        a = float(a)
        w = _lattice_width(a, BINS)
        assert _is_pow2(w)
        assert a <= BINS * w
        assert w == MIN_BIN_WIDTH or a > BINS * w / 2


def test_axis_roles_golden():
    assert _axis_roles((2, 5, 384), (3, 7, 384)) == ["b", "s", "."]
    assert _axis_roles((10, 384), (21, 384)) == ["bs", "."]
    assert _axis_roles((2, 12, 5, 5), (3, 12, 7, 7)) == ["b", ".", "s", "s"]
    assert _axis_roles((2, 4), (3, 9)) == ["b", "?"]


def test_token_mask_b_s_and_attention_scores():
    rng = np.random.default_rng(0)
    m = rng.random((3, 6)) > 0.4
    got = token_mask(["b", "s", "."], m, (3, 6, 4))
    np.testing.assert_array_equal(got, np.repeat(m[:, :, None], 4, axis=2))
    got = token_mask(["b", ".", "s", "s"], m, (3, 2, 6, 6))
    oracle = np.array([[[[m[b, i] and m[b, j] for j in range(6)] for i in range(6)] for _ in range(2)]
                       for b in range(3)])
    np.testing.assert_array_equal(got, oracle)


def test_token_mask_flattened_and_unmaskable():
    m = np.array([[1, 1, 0], [1, 0, 0]], bool)
    got = token_mask(["bs", "."], m, (6, 5))
    np.testing.assert_array_equal(got, np.repeat(m.reshape(-1)[:, None], 5, axis=1))
    assert token_mask([".", "."], m, (4, 5)) is None
    assert token_mask(["b", "."], m, (2, 5)) is None


def test_token_mask_sequence_first_layout():
    m = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)   # batch 2, seq 5
    got = token_mask(["s", "b"], m, (5, 2))
    np.testing.assert_array_equal(got, m.T)


def test_save_load_round_trip(tmp_path):
    a = _feed(_batches("lognormal"))
    b = _feed([np.array([0.0, 0.0], np.float32)])
    empty = TensorStats()
    path = tmp_path / "sub" / "stats.npz"
    save({"a": a, "b/x:0": b, "empty": empty}, path)
    got = load(path)
    assert list(got) == ["a", "b/x:0", "empty"]
    for name, ref in [("a", a), ("b/x:0", b)]:
        g = got[name]
        assert g.absmax == ref.absmax and g.count == ref.count and g.bin_width == ref.bin_width
        assert g.batch_absmax == ref.batch_absmax
        np.testing.assert_array_equal(g.hist, ref.hist)
    assert got["empty"].hist is None and got["empty"].count == 0 and got["empty"].batch_absmax == []
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp file left


def _masked_feeds(rng, b, s, lengths):
    x = rng.uniform(-1, 1, size=(b, s, 4)).astype(np.float32)
    mask = np.zeros((b, s), np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    x[mask == 0] = 1000.0  # garbage at padded positions must never reach the statistics
    return {"X": x, "attention_mask": mask}


def test_collect_masks_padding(masked_model):
    rng = np.random.default_rng(5)
    feeds = [_masked_feeds(rng, 4, 8, [8, 3, 5, 1]), _masked_feeds(rng, 3, 6, [6, 2, 4])]
    stats = collect(masked_model, ["Y"], feeds, bins=BINS, threads=1)
    valid = np.concatenate([2 * f["X"][f["attention_mask"].astype(bool)].ravel() for f in feeds])
    t = stats["Y"]
    assert t.count == valid.size
    assert t.absmax == float(np.abs(valid).max())
    expected, _ = np.histogram(np.abs(valid), bins=BINS, range=(0, BINS * t.bin_width))
    np.testing.assert_array_equal(t.hist, expected)


def test_collect_masks_padding_when_first_batch_is_short(masked_model):
    rng = np.random.default_rng(6)
    feeds = [_masked_feeds(rng, 3, 5, [5, 2, 3]), _masked_feeds(rng, 4, 8, [8, 3, 5, 1])]
    stats = collect(masked_model, ["Y"], feeds, bins=BINS, threads=1)
    valid = np.concatenate([2 * f["X"][f["attention_mask"].astype(bool)].ravel() for f in feeds])
    assert stats["Y"].absmax == float(np.abs(valid).max())


def test_collect_rejects_non_finite_and_empty(masked_model):
    rng = np.random.default_rng(8)
    f = _masked_feeds(rng, 4, 8, [8, 8, 8, 8])
    f["X"][1, 2, 3] = np.inf
    with pytest.raises(DataError, match=r"tensor 'Y': 1 non-finite value\(s\).*batch 0"):
        collect(masked_model, ["Y"], [f], bins=BINS, threads=1)
    with pytest.raises(DataError, match="empty"):
        collect(masked_model, ["Y"], [], bins=BINS, threads=1)


# --- TensorRT's fixed [0, absmax] layout -------------------------------------------------------------

def test_update_fixed_equals_numpy_histogram_over_0_absmax():
    from qbench.calib.stats import update_fixed

    rng = np.random.default_rng(5)
    batches = [rng.standard_t(3, 4000).astype(np.float32) * (1 + i) for i in range(4)]
    top = float(max(np.abs(b).max() for b in batches))
    t = TensorStats()
    for b in batches:
        update_fixed(t, b, 2048, top)
    want, _ = np.histogram(np.abs(np.concatenate(batches)), bins=2048, range=(0.0, top))
    np.testing.assert_array_equal(t.hist, want)
    assert t.bin_width == top / 2048 and t.absmax == top and t.hist[-1] >= 1 and t.count == 16000


def test_collect_with_fixed_top_masks_padding_too(masked_model):
    from qbench.calib.stats import collect

    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 9, 4)).astype(np.float32)
    mask = np.ones((4, 9), np.int64)
    mask[1, 5:] = 0
    x[1, 5:] = 1000.0  # garbage at padded positions must not set the range
    feeds = [{"X": x, "attention_mask": mask}]
    first = collect(masked_model, ["Y"], feeds, 2048, threads=1)
    fixed = collect(masked_model, ["Y"], feeds, 2048, threads=1, fixed_top={"Y": first["Y"].absmax})
    valid = np.abs(2 * x[mask.astype(bool)])
    assert first["Y"].absmax == fixed["Y"].absmax == pytest.approx(float(valid.max()))
    want, _ = np.histogram(valid, bins=2048, range=(0.0, fixed["Y"].absmax))
    np.testing.assert_array_equal(fixed["Y"].hist, want)
