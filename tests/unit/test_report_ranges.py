"""The calibrator range comparison: each method's amax per tensor, ranked by disagreement, from the tables."""

import json
from pathlib import Path

from qbench.report.render import calibration_ranges, render
from html_doc import parse

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "reports" / "example-calibrators"


def test_ranges_equal_a_plain_computation_from_the_tables():
    manifest = json.loads((RUN / "manifest.json").read_text())
    got = {g["set"]: g for g in calibration_ranges(manifest, RUN, top=5)}
    assert sorted(got) == ["by_length", "random"]
    for cset, g in got.items():
        tables = {}
        for p in sorted((RUN / "tables").glob(f"*@{cset}.json")):
            d = json.loads(p.read_text())
            tables[d["calibrator"]] = d["amax"]
        assert len(tables) == 4 and set(g["methods"]) == {m["calibrator"] for m in
                                                       (e for e in manifest["variants"].values())
                                                       if m.get("calibration_set") == cset}
        names = set.intersection(*(set(a) for a in tables.values()))
        ratio = {n: max(a[n] for a in tables.values()) / min(a[n] for a in tables.values()) for n in names}
        want = sorted(names, key=lambda n: (-ratio[n], n))[:5]
        assert [r["tensor"] for r in g["rows"]] == want and g["n"] == len(names)
        for r in g["rows"]:
            assert r["ratio"] == ratio[r["tensor"]]
            assert "/model/" + r["short"] == r["tensor"]
    # Golden, from the committed tables: KL clips layer 1's attention probabilities to 1/16 of MinMax's range.
    top = got["by_length"]["rows"][0]
    assert top["short"] == "encoder/layer.1/attention/self/Softmax_output_0"
    assert top["lo"] == top["amax"]["entropy"] and round(top["ratio"], 1) == 16.0


def test_the_report_shows_them_and_a_run_without_two_methods_has_none(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    doc = parse(render(run).read_text())
    assert "ranges" in doc.ids
    one = ROOT / "reports" / "example-minilm-auto"  # one calibrator: nothing to compare
    assert calibration_ranges(json.loads((one / "manifest.json").read_text()), one) == []
