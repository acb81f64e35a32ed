"""The TensorRT table of ``qbench report RUN --markdown``, on the committed run reports/example-minilm-trt: each
row against the run's manifest.json, read here independently of qbench.report."""

from __future__ import annotations

import json
from pathlib import Path

from qbench.cli import main

RUN = Path(__file__).resolve().parents[2] / "reports" / "example-minilm-trt"


def test_tensorrt_rows_are_the_manifests_build_facts(capsys):
    assert main(["report", str(RUN), "--markdown"]) == 0
    out = capsys.readouterr().out
    table = out.split("TensorRT engines (built, not run here; layer datatypes from the build log):\n\n", 1)[1]
    rows = {line.split(" | ")[0].strip("| `"): line.rstrip(" |").split(" | ") for line in table.splitlines()[2:]
            if line.startswith("| `")}
    variants = json.loads((RUN / "manifest.json").read_text())["variants"]
    assert set(rows) == {v for v, e in variants.items() if e.get("tensorrt")}
    for vid, e in variants.items():
        trt = e.get("tensorrt")
        if not trt:
            continue
        cells = rows[vid]
        if trt["status"] != "ok":
            assert cells[2].startswith("build failed: "), cells
            continue
        (graph, g), = trt["graphs"].items()
        s = g["summary"]
        dtypes = ", ".join(f"{k} {n}" for k, n in sorted(s["linear_nodes_by_dtype"].items()))
        held = f"{s['excluded_held']} / {s['excluded_held'] + s['excluded_unseen']}" if s["excluded_held"] else "–"
        assert cells[1:7] == [graph, dtypes, f"{round(100 * s['int8_linear_flop_share'])}%", held,
                              f"{g['build']['engine_bytes'] / 1e6:.1f}", f"{g['build']['seconds']:.1f}"], vid
    # The figures the TensorRT page discusses: all-INT8 36 of 36 linear nodes, LayerNorm+Softmax 24 Float.
    assert rows["minmax+none+s8s8"][2:4] == ["Int8 36", "100%"]
    assert rows["minmax+layernorm+softmax+s8s8"][2:5] == ["Float 24, Int8 12", "42%", "19 / 19"]
