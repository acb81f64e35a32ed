"""qbench.report.shipping: paired latency ratios over interleaved rounds, ties, and the deployment target."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.report import shipping as sh
from qbench.backends.measure import ROUNDS, as_rows, interleaved


class _Sleep:
    """A session whose every call takes ``ms`` of real time."""

    def __init__(self, ms: float):
        self.ms = ms

    def infer(self, feeds):
        import time

        t = time.perf_counter()
        while time.perf_counter() - t < self.ms / 1e3:
            pass


def test_interleaved_records_one_p50_per_round_and_rows_leave_them_out():
    res = interleaved({"a": _Sleep(2), "b": _Sleep(6)}, {"x": np.zeros((1, 1))}, 0, 3, 4)
    assert len(res["a"][ROUNDS]) == 4 and all(r >= 2 for r in res["a"][ROUNDS])
    assert ROUNDS not in {m for m, *_ in as_rows(res["a"], 1)}
    m = {"latency_rounds": {v: {"batch=1": res[v][ROUNDS]} for v in res}}
    r = sh.ratio(m, "a", "b", "batch=1")
    assert r["ratio"] < 0.6 and not r["tie"]  # 2 ms vs 6 ms: a difference no noise explains


def test_ratio_is_the_geometric_mean_of_round_ratios_with_a_bootstrap_interval():
    a, b = [10.0, 12.0, 9.0, 11.0, 10.0], [10.0, 11.0, 10.0, 10.5, 9.0]
    m = {"latency_rounds": {"a": {"batch=1": a}, "b": {"batch=1": b}}}
    r = sh.ratio(m, "a", "b", "batch=1")
    logs = np.log(np.array(a) / np.array(b))
    assert r["ratio"] == pytest.approx(float(np.exp(logs.mean())))
    assert np.exp(logs.min()) <= r["lo"] <= r["ratio"] <= r["hi"] <= np.exp(logs.max())  # means of resamples
    assert r["tie"] and sh.ratio_text(r).startswith(f"{r['ratio']:.2f}× [")
    assert sh.ratio(m, "a", "missing", "batch=1") is None


def test_tied_candidates_rank_by_fewer_float_nodes_then_smaller_artifact():
    rounds = {"fast": [10.0, 10.2, 9.9, 10.1], "same": [10.1, 10.0, 10.0, 10.2], "slow": [20.0, 21.0, 19.5, 20.5]}
    m = {"latency_rounds": {v: {"batch=1": r} for v, r in rounds.items()}}
    p50 = {v: float(np.median(r)) for v, r in rounds.items()}
    floats = {"fast": 6, "same": 2, "slow": 0}
    ranked, rule = sh.rank_ort(m, ["slow", "fast", "same"], "batch=1", p50.get, floats.get, {}.get)
    assert ranked == ["same", "fast", "slow"]  # same ties fast (interval over 1.0) and keeps fewer float nodes
    assert "Latency ties: 2 candidates" in rule
    ranked, rule = sh.rank_ort({}, ["slow", "fast", "same"], "batch=1", p50.get, floats.get, {}.get)
    assert ranked == ["fast", "same", "slow"] and "no per-round latencies" in rule


def test_target_defaults_to_tensorrt_when_the_config_has_a_tensorrt_section():
    assert sh.target_of({"config": {"tensorrt": {"compute_capability": "SM89"}}}) == "tensorrt"
    assert sh.target_of({"config": {"tensorrt": None}}) == "ort"
    assert sh.target_of({"config": {"tensorrt": {}, "target": "ort"}}) == "ort"
