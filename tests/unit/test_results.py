"""qbench.results: pareto front and the results table round trip."""

from __future__ import annotations

import itertools

import pytest

from qbench.results import COLUMNS, metric_rows, pareto_front


def _front_oracle(points):
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def test_pareto_front_golden():
    # (cost, quality): lower cost and higher quality are better.
    pts = [(1.0, 0.80), (2.0, 0.90), (1.5, 0.70), (3.0, 0.95), (2.5, 0.90), (0.5, 0.60), (3.0, 0.94)]
    assert pareto_front(pts) == [0, 1, 3, 5]


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]        # equal points do not dominate each other
    assert pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [1]           # same cost, better quality wins
    assert pareto_front([(2.0, 0.5), (1.0, 0.5)]) == [1]           # same quality, lower cost wins


def test_pareto_front_against_oracle():
    grid = [(c, q) for c, q in itertools.product([1.0, 2.0, 3.0], [0.1, 0.5, 0.9])]
    pts = grid[::2] + [(0.5, 0.05), (3.5, 0.95), (2.0, 0.5)]
    assert pareto_front(pts) == _front_oracle(pts)


def test_results_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    from qbench.results import load, write_manifest, write_results

    desc = {"variant": "minmax+none+s8s8", "kind": "qbench", "calibrator": "minmax", "exclusion": "none",
            "flavor": "s8s8", "calibration_set": "default", "backend": "ort"}
    rows = metric_rows(desc, "cal:minmax", "r1", [("recall@1", "all", 0.9, "ratio"), ("latency", "bs1", 3, "ms")])
    assert rows[1]["value"] == 3.0 and isinstance(rows[1]["value"], float)
    write_results(rows, tmp_path)
    write_manifest({"name": "x", "n": 2}, tmp_path)
    df, man = load(tmp_path)
    assert list(df.columns) == COLUMNS
    assert df.to_dict("records") == rows
    assert man == {"name": "x", "n": 2}
