"""The translation task's report: its leaderboard (BLEU, chrF, deltas with paired-bootstrap intervals, exact match,
the gate), language x variant heatmaps, and its Markdown table."""

from __future__ import annotations

import math

from qbench.report.tables import (BASELINE, MT_METRICS, _batches, _colour, _common, _delta, _gate, _gate_text, _md,
                                  _node_counts, _num, _run_line, _scale, _values, languages, pvalue, signed)


def translation_leaderboard(df, manifest: dict) -> list[dict]:
    """Translation: one dict per variant, in manifest order (BLEU, chrF, deltas with CIs, exact match, gate)."""
    val = _values(df)
    batches = _batches(val)
    gate_metric = (manifest.get("gate") or {}).get("metric", "bleu")
    rows = []
    for vid, info in manifest["variants"].items():
        exact = val.get((vid, "exact_match_vs_fp32", "all"))
        rows.append({
            **_common(vid, info, val, batches), **_node_counts(val, vid),
            "bleu": val.get((vid, "bleu", "all")), "chrf": val.get((vid, "chrf", "all")),
            "d_bleu": _delta(val, vid, "bleu"), "d_chrf": _delta(val, vid, "chrf"),
            "exact": None if exact is None else f"{exact * 100:.1f}%", "gate": _gate(val, vid, gate_metric),
        })
    return rows


def _cell(val: dict, vid: str, metric: str, sl: str, scale: float) -> dict:
    dl = _delta(val, vid, metric, sl)
    if dl is None or math.isnan(dl["delta"]):
        return {"text": "", "sig": False, "bg": "#f4f6f8", "fg": "#68707a", "title": f"{vid}, {sl}: no result"}
    bg, fg = _colour(dl["delta"], scale)
    base, new = val.get((BASELINE, metric, sl)), val.get((vid, metric, sl))
    title = f"{sl.removeprefix('lang=')} · {vid}: Δ{MT_METRICS[metric]} {dl['ci']}, p {pvalue(dl['p'])}"
    if base is not None and new is not None:
        title += f"; FP32 {_num(base)} → {_num(new)}"
    return {"text": dl["text"], "sig": dl["sig"], "bg": bg, "fg": fg, "title": title}


def heatmap(val: dict, metric: str, variants: list[str], langs: list[str]) -> dict:
    """Rows: the macro mean ('all'), then one per language; columns: FP32's score, then one delta per variant."""
    deltas = [v for (vid, m, s), v in val.items() if m == f"delta_{metric}" and vid in variants and s != "all"]
    scale = _scale(deltas)
    rows = []
    for sl in ["all"] + [f"lang={c}" for c in langs]:
        rows.append({"lang": "all (macro)" if sl == "all" else sl.split("=", 1)[1], "macro": sl == "all",
                     "base": _num(val.get((BASELINE, metric, sl))),
                     "cells": [_cell(val, vid, metric, sl, scale) for vid in variants]})
    legend = [(signed(x * scale, 1), *_colour(x * scale, scale)) for x in (-1, -0.5, 0, 0.5, 1)]
    return {"metric": metric, "label": MT_METRICS[metric], "cols": variants, "rows": rows,
            "scale": _num(scale, 1), "legend": legend}


def translation_context(df, manifest: dict) -> dict:
    """What the translation sections of the template need, beyond the leaderboard."""
    val = _values(df)
    langs = languages(val)
    infos = manifest["variants"]
    cols = [v for v, i in infos.items() if v != BASELINE and i.get("status") == "ok"
            and any((v, m, "all") in val for m in ("delta_bleu", "delta_chrf"))]
    return {"langs": langs, "gate_text": _gate_text(manifest.get("gate")),
            "heatmaps": [heatmap(val, m, cols, langs) for m in MT_METRICS] if cols else [],
            "not_shown": [v for v, i in infos.items() if v != BASELINE and v not in cols]}


def markdown_translation(rows: list[dict], m: dict) -> str:
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", "BLEU", "ΔBLEU [95% CI]", "chrF", "worst-language drop", "gate"]
    head += [f"p50 ms, {b}" for b in batches] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = r["gate"] or {}
        gate = g.get("state") or ("" if g.get("pass") is None else "PASS" if g["pass"] else "FAIL")
        lang = g.get("drop_lang", g.get("lang"))  # the language of the drop shown, not the deciding one
        worst = "" if lang is None else f"{'macro' if lang == 'all' else lang} {_num(g['drop'])}"
        cells = [f"`{r['variant']}`", _num(r["bleu"]), (r["d_bleu"] or {}).get("ci", ""), _num(r["chrf"]), worst, gate]
        cells += [_num(r["lat"][b][0]) for b in batches]
        cells += [_md(r["status"] + (f": {r['error']}" if r["error"] else ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _run_line(m, "evaluation sentences")]
    if m.get("gate"):
        lines[-1] += f" Gate: {_gate_text(m['gate'])}."
    return "\n".join(lines)

