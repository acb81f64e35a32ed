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

    from qbench.io import atomic_write

    df = pd.DataFrame(rows, columns=COLUMNS)
    return atomic_write(run_dir / "results.parquet", lambda p: df.to_parquet(p, index=False))


def write_manifest(manifest: dict, run_dir: Path) -> Path:
    from qbench.io import atomic_write_text

    return atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=1, sort_keys=False, default=str))


def load(run_dir: str | Path):
    """(results DataFrame, manifest dict) of one run directory."""
    import pandas as pd

    run_dir = Path(run_dir)
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
