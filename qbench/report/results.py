"""The tidy results table: one row per variant x metric x slice, plus the run manifest.

Both files are rewritten atomically after every finished variant, so a kill at any point leaves a
readable run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ["run_id", "variant", "kind", "calibrator", "exclusion", "flavor", "calibration_set", "backend",
           "metric", "slice", "value", "unit", "status", "signature"]


def metric_rows(desc: dict, signature: str, run_id: str, metrics: list[tuple[str, str, float, str]],
                status: str = "ok") -> list[dict[str, Any]]:
    """``metrics``: (metric, slice, value, unit) tuples for one variant."""
    return [
        {"run_id": run_id, **desc, "metric": m, "slice": s, "value": float(v), "unit": u,
         "status": status, "signature": signature}
        for m, s, v, u in metrics
    ]


def write_results(rows: list[dict], run_dir: Path) -> Path:
    import pandas as pd

    from qbench.util.io import atomic_write

    df = pd.DataFrame(rows, columns=COLUMNS)
    return atomic_write(run_dir / "results.parquet", lambda p: df.to_parquet(p, index=False))


def write_manifest(manifest: dict, run_dir: Path) -> Path:
    from qbench.util.io import atomic_write_text

    return atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=1, sort_keys=False, default=str))


def load(run_dir: str | Path):
    """(results DataFrame, manifest dict) of one run directory."""
    import pandas as pd

    from qbench.config.errors import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "results.parquet").is_file() or not (run_dir / "manifest.json").is_file():
        raise ConfigError(f"{run_dir}: not a qbench run directory (no results.parquet and manifest.json)")
    return pd.read_parquet(run_dir / "results.parquet"), json.loads((run_dir / "manifest.json").read_text())


def wide(df, metrics: list[str] | None = None):
    """Variant x (metric, slice) pivot of the ok rows, for reports and quick looks."""
    ok = df[df.status == "ok"]
    if metrics:
        ok = ok[ok.metric.isin(metrics)]
    col = ok.metric + ok.slice.map(lambda s: "" if s == "all" else f"[{s}]")
    return ok.assign(col=col).pivot_table(index="variant", columns="col", values="value", sort=False)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower cost (x) and higher quality (y) are better."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


# --------------------------------------------------------------------------- review: several runs, fronts, figures
# notebooks/pareto.ipynb calls these and holds no logic of its own; every shaping step is here, tested.

QUALITY_METRICS = ("bleu", "accuracy_at_1", "chrf", "mrr")  # higher is better; the first present is the default
POINT_COLUMNS = ["run", "run_id", "variant", "kind", "backend", "batch", "slice", "lang", "latency", "quality",
                 "latency_metric", "quality_metric", "on_front"]
FRONT_COLUMNS = ["batch", "slice", "run", "variant", "backend", "latency", "quality"]


def load_many(run_dirs):
    """(one results DataFrame with a ``run`` label column first, {run label: manifest}) of several runs.

    ``run_dirs``: paths, or one string of paths separated by ``os.pathsep`` (empty entries skipped). A run's
    label is its sweep name; sweeps loaded more than once are told apart as ``<sweep>/<run_id>``.
    """
    import os

    import pandas as pd

    if isinstance(run_dirs, str):
        run_dirs = [p for p in run_dirs.split(os.pathsep) if p.strip()]
    elif isinstance(run_dirs, Path):
        run_dirs = [run_dirs]
    loaded = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "results.parquet").is_file() or not (d / "manifest.json").is_file():
            raise FileNotFoundError(f"{d}: not a qbench run directory (no results.parquet and manifest.json)")
        df, man = load(d)
        run_id = man.get("run_id") or (str(df.run_id.iloc[0]) if len(df) else d.name)
        loaded.append((d, df, man, str(run_id), man.get("sweep") or d.name))
    ids = [x[3] for x in loaded]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"run loaded more than once: {', '.join(dup)}")
    sweeps = [x[4] for x in loaded]
    frames, manifests = [], {}
    for d, df, man, run_id, sweep in loaded:
        label = sweep if sweeps.count(sweep) == 1 else f"{sweep}/{run_id}"
        frames.append(df.assign(run=label)[["run", *df.columns]])
        manifests[label] = man
    if not frames:
        return pd.DataFrame(columns=["run", *COLUMNS]), {}
    return pd.concat(frames, ignore_index=True), manifests


def runs_table(df, manifests: dict | None = None):
    """One row per run: label, run_id, task, variants, languages and latency batch sizes."""
    import pandas as pd

    df = _with_run(df)
    rows = []
    for run, g in df.groupby("run", sort=False):
        man = (manifests or {}).get(run, {})
        langs = sorted({s.split("=", 1)[1] for s in g.slice if s.startswith("lang=")})
        rows.append({"run": run, "run_id": str(g.run_id.iloc[0]), "task": man.get("task") or "",
                     "variants": g.variant.nunique(), "ok": int(g[g.status == "ok"].variant.nunique()),
                     "languages": len(langs), "batches": ", ".join(str(b) for b in _batch_sizes(g.slice))})
    return pd.DataFrame(rows, columns=["run", "run_id", "task", "variants", "ok", "languages", "batches"])


def quality_metric(df) -> str:
    """The default quality metric of a results table: the first of QUALITY_METRICS with ok rows."""
    present = set(df[df.status == "ok"].metric)
    for m in QUALITY_METRICS:
        if m in present:
            return m
    raise ValueError(f"no quality metric ({', '.join(QUALITY_METRICS)}) in the results")


def frontier(df, quality: str | None = None, latency: str = "latency_p50_ms", slices="all", batch=None,
             by=("batch", "slice")):
    """Tidy (latency, quality) points of every ok variant, with ``on_front``: not dominated within its group.

    One point per run x variant x backend x latency batch size x quality slice; lower latency and higher
    quality are better. ``quality``: a metric name (default: ``quality_metric(df)``). ``slices``: "all" (the
    overall score), "lang" (every ``lang=xx`` slice) or a list of slice names. ``batch``: None (every batch
    size), an int, or "min"/"max" (the smallest/largest batch size in the table). ``by``: the point columns
    that make a group, e.g. ("batch", "slice") for one front across runs, ("run", "batch", "slice") for one
    per run. Rows are sorted by the group columns, then latency, then quality descending.
    """
    import pandas as pd

    df = _with_run(df)
    quality = quality or quality_metric(df)
    ok = df[df.status == "ok"]
    key = ["run", "run_id", "variant", "backend"]
    q = ok[(ok.metric == quality) & _slice_mask(ok.slice, slices)]
    q = q[key + ["kind", "slice", "value"]].rename(columns={"value": "quality"})
    lat = ok[(ok.metric == latency) & ok.slice.str.startswith("batch=")]
    lat = lat[key + ["slice", "value"]].rename(columns={"value": "latency", "slice": "batch"})
    lat = lat.assign(batch=lat.batch.str.split("=", n=1).str[1].astype(int))
    if batch is not None and len(lat):
        want = {"min": lat.batch.min(), "max": lat.batch.max()}.get(batch, batch)
        lat = lat[lat.batch == int(want)]
    pts = q.merge(lat, on=key, how="inner")
    pts = pts[pts.latency.notna() & pts.quality.notna()]
    pts = pts.assign(lang=pts.slice.map(lambda s: s.split("=", 1)[1] if s.startswith("lang=") else None),
                     latency_metric=latency, quality_metric=quality, on_front=False)
    by = list(by)
    unknown = [c for c in by if c not in POINT_COLUMNS]
    if unknown:
        raise ValueError(f"by: unknown point columns {unknown}; choose from {POINT_COLUMNS}")
    pts = pts.sort_values(by + ["latency", "quality", "run", "variant", "backend"],
                          ascending=[True] * len(by) + [True, False, True, True, True], kind="mergesort")
    pts = pts.reset_index(drop=True)
    if len(pts):
        groups = pts.groupby(by, sort=False, dropna=False).indices.values() if by else [range(len(pts))]
        on = pd.Series(False, index=pts.index)
        for idx in groups:
            idx = list(idx)
            front = pareto_front(list(zip(pts.latency.iloc[idx], pts.quality.iloc[idx])))
            on.iloc[[idx[i] for i in front]] = True
        pts["on_front"] = on
    return pts[POINT_COLUMNS]


def front_table(points):
    """The points on their front, one row each (FRONT_COLUMNS), in the frontier's order."""
    return points[points.on_front][FRONT_COLUMNS].reset_index(drop=True)


def lang_matrix(df, metric: str | None = None, delta: bool = True):
    """(run, variant) x language table of ``metric`` (``delta_<metric>`` against the baseline when ``delta``).

    ``metric``: default ``quality_metric(df)``. Empty when the runs have no per-language slices (retrieval).
    Rows in table order, languages sorted.
    """
    df = _with_run(df)
    metric = metric or quality_metric(df)
    name = f"delta_{metric}" if delta else metric
    ok = df[(df.status == "ok") & (df.metric == name) & df.slice.str.startswith("lang=")]
    ok = ok.assign(lang=ok.slice.str.split("=", n=1).str[1])
    m = ok.pivot_table(index=["run", "variant"], columns="lang", values="value", sort=False, aggfunc="first")
    m = m.reindex(columns=sorted(m.columns))
    m.columns.name = name
    return m


def plot_pareto(ax, points, annotate: bool = True, title: str | None = None):
    """One panel: every point coloured by run, its front ringed and joined by a dashed line."""
    runs = list(dict.fromkeys(points.run))
    colours = _colours(len(runs))
    for run, colour in zip(runs, colours):
        p = points[points.run == run]
        ax.scatter(p.latency, p.quality, s=22, color=colour, alpha=0.75, label=run, zorder=3)
        f = p[p.on_front]
        ax.scatter(f.latency, f.quality, s=70, facecolors="none", edgecolors="black", linewidths=1.1, zorder=4)
    front = points[points.on_front].sort_values("latency", kind="mergesort")
    if len(front):
        ax.plot(front.latency, front.quality, "--", color="black", lw=0.9, zorder=2)
    if annotate:
        for r in front.itertuples():
            name = r.variant if len(r.variant) < 30 else r.variant[:28] + "…"
            ax.annotate(name, (r.latency, r.quality), fontsize=6.5, xytext=(4, 3), textcoords="offset points")
    if len(points):
        ax.set_xlabel(str(points.latency_metric.iloc[0]))
        ax.set_ylabel(str(points.quality_metric.iloc[0]))
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def pareto_figure(points, panel: str = "batch", ncols: int | None = None, annotate: bool | None = None,
                  panel_size: tuple[float, float] = (5.0, 3.8)):
    """One panel per value of ``panel`` (a point column: batch, lang, run...), fronts as ``plot_pareto``.

    ``annotate``: name the front's points (default: when there are at most 6 panels).
    """
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(points[panel])) if len(points) else []
    n = max(1, len(values))
    ncols = min(n, ncols or 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    annotate = n <= 6 if annotate is None else annotate
    flat = list(axes.flat)
    for ax, v in zip(flat, values):
        sub = points[points[panel] == v]
        plot_pareto(ax, sub, annotate=annotate, title=_panel_title(sub, panel, v))
    if not values:
        flat[0].text(0.5, 0.5, "no points (no ok variant with both metrics)", ha="center", va="center")
    for ax in flat[len(values):] if values else flat[1:]:
        ax.set_visible(False)
    handles, labels = flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (panel_size[1] * nrows)))
    else:
        fig.tight_layout()
    return fig


def heatmap_figure(matrix, title: str | None = None):
    """``lang_matrix`` as a heatmap (diverging, centred on 0 for deltas), values written in the cells."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * cols + 3.5), max(2.0, 0.34 * rows + 1.4)))
    name = str(matrix.columns.name or "")
    if not rows or not cols:
        ax.text(0.5, 0.5, "no per-language results", ha="center", va="center")
        ax.set_axis_off()
        return fig
    vals = matrix.to_numpy(dtype=float)
    if name.startswith("delta_"):
        lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
        im = ax.imshow(vals, cmap="RdBu", vmin=-lim or -1.0, vmax=lim or 1.0, aspect="auto")
    else:
        im = ax.imshow(vals, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols), [str(c) for c in matrix.columns], fontsize=7, rotation=90)
    ax.set_yticks(range(rows), [f"{r}: {v}" for r, v in matrix.index], fontsize=7)
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.1f}", ha="center", va="center", fontsize=5.5)
    fig.colorbar(im, ax=ax, label=name)
    ax.set_title(title or name, fontsize=9)
    fig.tight_layout()
    return fig


def save_outputs(out_dir, figures: dict | None = None, tables: dict | None = None, dpi: int = 110) -> list[Path]:
    """Write ``<name>.png`` per figure and ``<name>.csv`` per table into ``out_dir``; nothing when it is empty/None."""
    if not out_dir:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (figures or {}).items():
        fig.savefig(out / f"{name}.png", dpi=dpi)
        written.append(out / f"{name}.png")
    for name, table in (tables or {}).items():
        table.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
    return written


def _panel_title(sub, panel: str, value) -> str:
    """"batch=1, lang=de": the panel's value, then batch and slice where one value holds the whole panel."""
    parts = [f"{panel}={value}"]
    if panel != "batch" and sub.batch.nunique() == 1:
        parts.append(f"batch={sub.batch.iloc[0]}")
    if panel not in ("slice", "lang") and sub.slice.nunique() == 1:
        parts.append(str(sub.slice.iloc[0]))
    return ", ".join(parts)


def _with_run(df):
    return df if "run" in df.columns else df.assign(run=df.run_id)


def _slice_mask(s, slices):
    if slices == "all":
        return s == "all"
    if slices == "lang":
        return s.str.startswith("lang=")
    if isinstance(slices, str):
        raise ValueError(f"slices: 'all', 'lang' or a list of slice names, not {slices!r}")
    return s.isin(list(slices))


def _batch_sizes(slices) -> list[int]:
    return sorted({int(s.split("=", 1)[1]) for s in slices if s.startswith("batch=")})


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
