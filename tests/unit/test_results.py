"""qbench.report.results: pareto front and the results table round trip."""

from __future__ import annotations

import itertools

import pytest

from qbench.report.results import COLUMNS, metric_rows, pareto_front


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
    from qbench.report.results import load, write_manifest, write_results

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


# --------------------------------------------------------------------------- several runs, fronts, figures

def _desc(variant, kind="qbench"):
    return {"variant": variant, "kind": kind, "calibrator": "" if kind == "baseline" else "minmax",
            "exclusion": "none", "flavor": "s8s8", "calibration_set": "default", "backend": "ort"}


# run -> variant -> [(metric, slice, value)]; latency in ms, bleu in points
HAND = {
    "A": {"fp32": [("bleu", "all", 30.0), ("bleu", "lang=de", 32.0), ("bleu", "lang=fr", 28.0),
                   ("latency_p50_ms", "batch=1", 10.0), ("latency_p50_ms", "batch=4", 30.0)],
          "q1": [("bleu", "all", 29.0), ("bleu", "lang=de", 31.0), ("bleu", "lang=fr", 29.5),
                 ("delta_bleu", "lang=de", -1.0), ("delta_bleu", "lang=fr", 1.5),
                 ("latency_p50_ms", "batch=1", 6.0), ("latency_p50_ms", "batch=4", 18.0)],
          "q2": [("bleu", "all", 25.0), ("bleu", "lang=de", 20.0), ("bleu", "lang=fr", 30.0),
                 ("delta_bleu", "lang=de", -12.0), ("delta_bleu", "lang=fr", 2.0),
                 ("latency_p50_ms", "batch=1", 7.0), ("latency_p50_ms", "batch=4", 15.0)]},
    "B": {"fp32": [("bleu", "all", 30.5), ("bleu", "lang=de", 30.0), ("bleu", "lang=fr", 31.0),
                   ("latency_p50_ms", "batch=1", 12.0)],
          "q3": [("bleu", "all", 29.0), ("bleu", "lang=de", 33.0), ("bleu", "lang=fr", 27.0),
                 ("delta_bleu", "lang=de", 3.0), ("delta_bleu", "lang=fr", -4.0),
                 ("latency_p50_ms", "batch=1", 6.0)]},
}


def _write_run(d, run_id, sweep, variants, failed=()):
    from qbench.report.results import write_manifest, write_results

    rows = []
    for v, ms in variants.items():
        kind = "baseline" if v == "fp32" else "qbench"
        rows += metric_rows(_desc(v, kind), f"sig:{v}", run_id,
                            [(m, s, x, "ms" if m.startswith("latency") else "score") for m, s, x in ms])
    for v, ms in failed:  # a failed variant's rows must never reach a front, however good they look
        rows += metric_rows(_desc(v), f"sig:{v}", run_id, [(m, s, x, "") for m, s, x in ms], status="failed")
    write_results(rows, d)
    write_manifest({"run_id": run_id, "sweep": sweep, "task": "translation"}, d)
    return d


@pytest.fixture
def hand_runs(tmp_path):
    pytest.importorskip("pyarrow")
    bad = ("bad", [("bleu", "all", 99.0), ("bleu", "lang=de", 99.0), ("latency_p50_ms", "batch=1", 1.0)])
    return [_write_run(tmp_path / "a", "A", "sa", HAND["A"], failed=[bad]),
            _write_run(tmp_path / "b", "B", "sb", HAND["B"])]


def test_load_many_labels_and_rows(hand_runs, tmp_path):
    import os

    from qbench.report.results import load, load_many

    df, mans = load_many(hand_runs)
    assert list(df.columns) == ["run", *COLUMNS]
    assert list(mans) == ["sa", "sb"] and mans["sb"]["run_id"] == "B"
    a, _ = load(hand_runs[0])
    got = df[df.run == "sa"].drop(columns="run").reset_index(drop=True)
    assert got.equals(a)
    assert set(df[df.run == "sb"].run_id) == {"B"}
    # one string of os.pathsep-separated dirs (the notebook's QBENCH_RUNS), empty entries skipped
    df2, _ = load_many(os.pathsep.join(map(str, hand_runs)) + os.pathsep)
    assert df2.equals(df)
    # the same sweep twice: labels carry the run id
    other = _write_run(tmp_path / "c", "C", "sa", HAND["B"])
    _, mans3 = load_many([hand_runs[0], other])
    assert list(mans3) == ["sa/A", "sa/C"]
    with pytest.raises(ValueError, match="more than once: A"):
        load_many([hand_runs[0], hand_runs[0]])
    with pytest.raises(FileNotFoundError, match="not a qbench run directory"):
        load_many([tmp_path / "nope"])


def test_runs_table_and_quality_metric(hand_runs):
    import pandas as pd

    from qbench.report.results import load_many, quality_metric, runs_table

    df, mans = load_many(hand_runs)
    t = runs_table(df, mans)
    assert t.to_dict("records") == [
        {"run": "sa", "run_id": "A", "task": "translation", "variants": 4, "ok": 3, "languages": 2, "batches": "1, 4"},
        {"run": "sb", "run_id": "B", "task": "translation", "variants": 2, "ok": 2, "languages": 2, "batches": "1"}]
    assert quality_metric(df) == "bleu"
    retrieval = pd.DataFrame(metric_rows(_desc("fp32"), "s", "r", [("mrr", "all", 0.5, ""),
                                                                  ("accuracy_at_1", "all", 0.9, "")]))
    assert quality_metric(retrieval) == "accuracy_at_1"
    with pytest.raises(ValueError, match="no quality metric"):
        quality_metric(retrieval[retrieval.metric == "latency_p50_ms"])


def test_front_table_golden_across_runs(hand_runs):
    from qbench.report.results import FRONT_COLUMNS, front_table, frontier, load_many

    df, _ = load_many(hand_runs)
    pts = frontier(df)
    # every ok point, in order (batch, slice, latency, -quality, run, variant); the failed variant is absent
    assert [(p.batch, p.run, p.variant, p.latency, p.quality, p.on_front) for p in pts.itertuples()] == [
        (1, "sa", "q1", 6.0, 29.0, True), (1, "sb", "q3", 6.0, 29.0, True),  # equal points: both on the front
        (1, "sa", "q2", 7.0, 25.0, False), (1, "sa", "fp32", 10.0, 30.0, True),
        (1, "sb", "fp32", 12.0, 30.5, True),
        (4, "sa", "q2", 15.0, 25.0, True), (4, "sa", "q1", 18.0, 29.0, True), (4, "sa", "fp32", 30.0, 30.0, True)]
    assert set(pts.slice) == {"all"} and pts.lang.isna().all()
    assert set(pts.latency_metric) == {"latency_p50_ms"} and set(pts.quality_metric) == {"bleu"}
    front = front_table(pts)
    assert list(front.columns) == FRONT_COLUMNS
    assert [tuple(r) for r in front.itertuples(index=False)] == [
        (1, "all", "sa", "q1", "ort", 6.0, 29.0), (1, "all", "sb", "q3", "ort", 6.0, 29.0),
        (1, "all", "sa", "fp32", "ort", 10.0, 30.0), (1, "all", "sb", "fp32", "ort", 12.0, 30.5),
        (4, "all", "sa", "q2", "ort", 15.0, 25.0), (4, "all", "sa", "q1", "ort", 18.0, 29.0),
        (4, "all", "sa", "fp32", "ort", 30.0, 30.0)]


def test_frontier_per_run_per_language_and_batch_choice(hand_runs):
    from qbench.report.results import frontier, load_many

    df, _ = load_many(hand_runs)
    per_run = frontier(df, by=("run", "batch", "slice"), batch=1)
    assert {(p.run, p.variant): p.on_front for p in per_run.itertuples()} == {
        ("sa", "q1"): True, ("sa", "q2"): False, ("sa", "fp32"): True, ("sb", "q3"): True, ("sb", "fp32"): True}
    langs = frontier(df, slices="lang", batch="min")
    assert set(langs.batch) == {1} and list(dict.fromkeys(langs.lang)) == ["de", "fr"]
    fronts = {lang: sorted((p.run, p.variant) for p in g[g.on_front].itertuples())
              for lang, g in langs.groupby("lang")}
    assert fronts == {"de": [("sb", "q3")], "fr": [("sa", "q1"), ("sa", "q2"), ("sb", "fp32")]}
    assert len(langs) == 10  # 5 variants x 2 languages
    assert set(frontier(df, batch="max").batch) == {4}
    assert set(frontier(df, batch=4).variant) == {"fp32", "q1", "q2"}
    assert frontier(df, batch=3).empty
    only_de = frontier(df, slices=["lang=de"], quality="delta_bleu")
    assert sorted(only_de.variant) == ["q1", "q1", "q2", "q2", "q3"]  # fp32 has no delta row
    with pytest.raises(ValueError, match="unknown point columns"):
        frontier(df, by=("nope",))
    with pytest.raises(ValueError, match="slices"):
        frontier(df, slices="everything")


def _raw_oracle(df, quality, latency):
    """Front membership from the raw rows by brute force: {(run_id, variant, backend, batch, slice): on_front}."""
    import math

    q, lat = {}, {}
    for r in df.to_dict("records"):
        if r["status"] != "ok" or (isinstance(r["value"], float) and math.isnan(r["value"])):
            continue
        k = (r["run_id"], r["variant"], r["backend"])
        if r["metric"] == quality:
            q.setdefault(k, {})[r["slice"]] = r["value"]
        elif r["metric"] == latency and r["slice"].startswith("batch="):
            lat.setdefault(k, {})[int(r["slice"][6:])] = r["value"]
    pts = {(*k, b, s): (x, y) for k in q if k in lat for s, y in q[k].items() for b, x in lat[k].items()}
    out = {}
    for key, (x, y) in pts.items():
        rivals = [p for k2, p in pts.items() if k2[3:] == key[3:]]
        out[key] = not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in rivals)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_frontier_against_brute_force_on_random_tables(seed):
    import numpy as np
    import pandas as pd

    from qbench.report.results import frontier

    rng = np.random.default_rng(seed)
    rows = []
    for run in ("r1", "r2", "r3"):
        for i in range(int(rng.integers(3, 9))):
            for backend in ("ort", "tensorrt"):
                d = {**_desc(f"v{i}"), "backend": backend}
                ms = [("bleu", s, float(rng.integers(0, 6))) for s in ("all", "lang=de", "lang=ja")
                      if rng.random() < 0.9]
                ms += [("latency_p50_ms", f"batch={b}", float(rng.integers(1, 6))) for b in (1, 8)
                       if rng.random() < 0.85]
                ms += [("chrf", "all", 1.0), ("latency_p99_ms", "batch=1", 1.0), ("nodes_float", "op=MatMul", 3.0)]
                if rng.random() < 0.1:
                    ms.append(("bleu", "lang=fr", float("nan")))
                status = "failed" if rng.random() < 0.1 else "ok"
                rows += metric_rows(d, "s", run, [(m, s, v, "") for m, s, v in ms], status=status)
    df = pd.DataFrame(rows, columns=COLUMNS)
    want = _raw_oracle(df, "bleu", "latency_p50_ms")
    pts = frontier(df, slices=["all", "lang=de", "lang=ja", "lang=fr"])
    got = {(p.run_id, p.variant, p.backend, p.batch, p.slice): p.on_front for p in pts.itertuples()}
    assert len(got) == len(pts) and got == want
    assert any(want.values()) and not all(want.values())


def test_lang_matrix_golden(hand_runs):
    from qbench.report.results import lang_matrix, load_many

    df, _ = load_many(hand_runs)
    m = lang_matrix(df)
    assert m.columns.name == "delta_bleu" and list(m.columns) == ["de", "fr"]
    assert list(m.index) == [("sa", "q1"), ("sa", "q2"), ("sb", "q3")]
    assert m.to_numpy().tolist() == [[-1.0, 1.5], [-12.0, 2.0], [3.0, -4.0]]
    raw = lang_matrix(df, delta=False)
    assert raw.loc[("sb", "fp32")].tolist() == [30.0, 31.0] and len(raw) == 5  # failed 'bad' row left out
    assert lang_matrix(df[df.slice == "all"]).empty


def test_figures_and_outputs(hand_runs, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qbench.report.results import (front_table, frontier, heatmap_figure, lang_matrix, load_many, pareto_figure,
                                save_outputs)

    df, _ = load_many(hand_runs)
    pts = frontier(df)
    fig = pareto_figure(pts)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["batch=1, all", "batch=4, all"]
    # the dashed front line of batch 1 runs through the front's points in latency order
    line = axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [6.0, 6.0, 10.0, 12.0] and list(line.get_ydata()) == [29.0, 29.0, 30.0, 30.5]
    assert axes[0].get_xlabel() == "latency_p50_ms" and axes[0].get_ylabel() == "bleu"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sa", "sb"]
    langs = pareto_figure(frontier(df, slices="lang", batch="min"), panel="lang", ncols=1)
    assert [ax.get_title() for ax in langs.axes if ax.get_visible()] == ["lang=de, batch=1", "lang=fr, batch=1"]
    heat = heatmap_figure(lang_matrix(df))
    assert heat.axes[0].get_title() == "delta_bleu"
    empty = heatmap_figure(lang_matrix(df[df.slice == "all"]))
    nothing = pareto_figure(frontier(df, batch=3))
    assert save_outputs(None, {"x": fig}) == [] and save_outputs("", {"x": fig}) == []
    written = save_outputs(tmp_path / "out", {"overall": fig, "langs": langs, "heat": heat, "empty": empty,
                                              "nothing": nothing}, {"front": front_table(pts)})
    assert [p.name for p in written] == ["overall.png", "langs.png", "heat.png", "empty.png", "nothing.png",
                                         "front.csv"]
    for p in written[:-1]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_csv(written[-1]), front_table(pts), check_dtype=False)
    plt.close("all")
