"""qbench gate / qbench compare on run directories written with the real results writers."""

from __future__ import annotations

from pathlib import Path

import json
import pytest

from qbench.cli import main
from qbench.report.results import metric_rows, write_manifest, write_results

GATE = {"metric": "bleu", "max_drop": 1.0, "per": "lang"}
# Runs without samples.parquet keep the stored point-estimate gate, and say so.
POINT = " (point estimate: the run has no per-sample statistics, so no interval)"


def _run(d: Path, auto_drop: float, gate: dict | None = GATE, auto_status: str = "ok") -> Path:
    d.mkdir(parents=True)
    rows, variants = [], {}
    for vid, excl, drop in (("fp32", "", None), ("minmax+none+s8s8", "none", 1.6), ("minmax+auto+s8s8", "auto", auto_drop)):
        desc = {"variant": vid, "kind": "qbench" if excl else "baseline", "calibrator": "minmax", "exclusion": excl,
                "flavor": "s8s8", "calibration_set": "", "backend": "ort"}
        m = [("bleu", "all", 30.0 - (drop or 0) / 2, "score")]
        if drop is not None:
            m += [("gate", "all", float(drop <= 1.0), "pass"), ("worst_lang_drop", "lang=sv", drop, "score")]
        status = auto_status if excl == "auto" else "ok"
        rows += metric_rows(desc, "sig", d.name, m, status=status)
        variants[vid] = {**desc, "status": status, **({"error": "search: nothing passed"} if status != "ok" else {})}
    write_results(rows, d)
    write_manifest({"run_id": d.name, "config": {"gate": gate}, "variants": variants}, d)
    return d


@pytest.mark.parametrize("drop, code, line", [
    (0.4, 0, "minmax+auto+s8s8: PASS: worst drop 0.40 bleu (sv), budget 1.0 per lang" + POINT),
    (1.25, 1, "minmax+auto+s8s8: FAIL: worst drop 1.25 bleu (sv), budget 1.0 per lang" + POINT),
])
def test_gate_exit_codes_on_a_passing_and_a_failing_run(tmp_path, capsys, drop, code, line):
    run = _run(tmp_path / "r", drop)
    assert main(["gate", str(run)]) == code
    assert capsys.readouterr().out.strip() == line
    assert main(["gate", str(run), "--variant", "minmax+none+s8s8"]) == 1  # 1.6 > 1.0


def test_gate_fails_a_variant_that_failed(tmp_path, capsys):
    run = _run(tmp_path / "r", 0.2, auto_status="failed")
    assert main(["gate", str(run)]) == 1
    assert capsys.readouterr().out.strip() == "minmax+auto+s8s8: FAIL (the variant failed: search: nothing passed)"


def test_gate_cannot_tell_exits_2_with_one_line(tmp_path, capsys):
    assert main(["gate", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing: not a qbench run directory (no results.parquet and "
                                                    "manifest.json)")
    run = _run(tmp_path / "r", 0.2)
    assert main(["gate", str(run), "--variant", "nope"]) == 2
    assert "no variant 'nope'" in capsys.readouterr().err
    assert main(["gate", str(run), "--variant", "fp32"]) == 2
    assert "has no gate result" in capsys.readouterr().err
    ungated = _run(tmp_path / "u", 0.2, gate=None)
    assert main(["gate", str(ungated)]) == 2
    assert "the run has no gate" in capsys.readouterr().err


def test_compare_lists_shared_metrics_and_the_difference(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.4), _run(tmp_path / "b", 1.0)
    assert main(["compare", str(a), str(b), "--metric", "worst_lang_drop"]) == 0
    out = capsys.readouterr().out.splitlines()
    # worst_lang_drop lives in the lang=sv slice, not "all": nothing to compare at the 'all' level
    assert out[2:] == ["no shared variant metrics"]
    assert main(["compare", str(a), str(b), "--metric", "bleu"]) == 0
    out = capsys.readouterr().out.splitlines()
    blank = out.index("")  # the metrics, then each shared variant's decision in A and B
    table = {r.split()[0]: r.split()[3:] for r in out[3:blank]}
    assert table["minmax+auto+s8s8"] == ["29.8000", "29.5000", "-0.3000"]
    assert table["fp32"] == ["30.0000", "30.0000", "+0.0000"]
    # these hand-built runs have no samples.parquet: no interval, and compare says so
    assert [r.split(None, 1) for r in out[blank + 2:]] == [
        ["minmax+none+s8s8", "point estimate only     point estimate only"],
        ["minmax+auto+s8s8", "point estimate only     point estimate only"]]


def test_gate_refuses_an_unfinished_run(tmp_path, capsys):
    run = _run(tmp_path / "r", 0.2)
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    assert main(["gate", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"{run}: the run did not finish (killed or interrupted); finish it "
                                               f"with qbench sweep --resume {run}, then gate it")
    (run / "manifest.json").write_text(json.dumps({**m, "complete": True}))
    assert main(["gate", str(run)]) == 0
