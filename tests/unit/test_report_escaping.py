"""Every string a report shows is escaped: dataset text, language codes, variant names and errors can
hold markup, and a release reviewer's browser must show it as text, never run it."""

import json
import shutil
from pathlib import Path

import pandas as pd

from qbench.report.render import render

ROOT = Path(__file__).resolve().parents[2]
EVIL = "<script>alert(1)</script>"


def test_markup_in_data_names_and_errors_renders_as_text(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ROOT / "reports" / "example-django-multi-auto", run)
    df = pd.read_parquet(run / "results.parquet")
    df["slice"] = df["slice"].replace({"lang=de": f"lang=de{EVIL}"})
    victim = "minmax+none+u8s8"
    df.loc[df.variant == victim, "variant"] = f"{victim}{EVIL}"
    df.to_parquet(run / "results.parquet", index=False)
    m = json.loads((run / "manifest.json").read_text())
    m["sweep"] = f"django{EVIL}"
    m["model"]["source"] = f"models/x{EVIL}"
    m["data"]["name"] = f"django_multi{EVIL}"
    m["variants"][f"{victim}{EVIL}"] = {**m["variants"].pop(victim), "status": "failed",
                                       "error": f"bad sentence {EVIL}"}
    df.loc[df.variant == f"{victim}{EVIL}", "status"] = "failed"
    df.to_parquet(run / "results.parquet", index=False)
    (run / "manifest.json").write_text(json.dumps(m))
    html = render(run).read_text()
    # Only the report's own script tag; every injected one is text.
    assert html.count("<script") == 1, html.count("<script")
    assert "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
