"""The report's shared pieces: the run's values by (variant, metric, slice), the columns every task shows
(latency, size, quantized nodes, TensorRT), calibration ranges, TensorRT tables, number formatting, and the
default Markdown leaderboard. Tasks build their own rows and sections from these (qbench.tasks.base).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

QUALITY = "accuracy_at_1"  # the retrieval quality metric
BASELINE = "fp32"
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

    from qbench.report.results import pareto_front

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
    from qbench.backends.layer_report import combine

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


def table_paths(entry: dict) -> dict[str, str]:
    """A variant's calibration tables in its run, graph -> path ('' for a one-graph model's single table)."""
    return entry.get("tables") or ({"": entry["table"]} if entry.get("table") else {})


def calibration_ranges(manifest: dict, run_dir: Path, top: int = 12) -> list[dict]:
    """Per calibration set (and graph): the tensors whose amax the calibrators disagree on most.

    Read from the calibration tables the manifest lists (``tables/*.json`` of the run). Disagreement is
    the largest amax over the smallest, over the calibrators that ran on the same set; the top ``top``
    tensors are kept. A set calibrated by one method only has nothing to compare and is left out.
    """
    import json

    groups: dict[tuple[str, str], dict[str, str]] = {}
    for e in manifest.get("variants", {}).values():
        for graph, rel in table_paths(e).items():
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
    """Per variant and graph: what the engine runs, from the build log (see qbench.backends.layer_report)."""
    out = []
    for vid, info in manifest["variants"].items():
        e = info.get("tensorrt")
        if not e:
            continue
        if e.get("status") != "ok":
            from qbench.quantize.trt_rules import explain_recorded

            why = explain_recorded(e.get("error", ""), e.get("why", ""))
            out.append({"variant": vid, "graph": "", "error": e.get("error", ""), "why": why,
                        # what the graph shows, then the advice for the known producers (u8s8, ORT's quantizers)
                        "hint": " ".join(x for x in (why, trt_hint(e.get("error", ""), vid)) if x)})
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


# ---------------------------------------------------------------- formatting

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

    ``worst_lang_drop`` is sliced by its language ('lang=de', 'domain=bible'), or 'all' when the gate looks at
    the macro mean (perplexity: the pooled set) only.
    """
    from qbench.report.decision import SUMMED, words

    g = val.get((vid, "gate", "all"))
    worst = [(s.split("=", 1)[-1], v) for (v_, m, s), v in val.items() if v_ == vid and m == "worst_lang_drop"]
    if g is None and not worst:
        return None
    lang, drop = max(worst, key=lambda t: t[1]) if worst else (None, None)
    where = ("pooled" if metric in SUMMED else "macro mean") if lang == "all" else f"worst {lang}"
    label = MT_METRICS.get(metric, metric)
    return {"pass": None if g is None else g >= 0.5, "lang": lang, "drop": drop,
            "worst": "" if lang is None else f"{where}: {label} {words(metric).loss} {_num(drop)}"}


def _node_counts(val: dict, vid: str) -> dict:
    """MatMul/Gemm nodes int8 and float, summed over slices such as 'graph=encoder,op=MatMul'."""
    q = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_quantized"]
    f = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_float"]
    return {"mm_q": sum(q) if q else None, "mm_f": sum(f)}


# ---------------------------------------------------------------- languages and colours

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


GATE_METRICS = {**MT_METRICS, QUALITY: "accuracy@1"}


def _gate_words(g: dict) -> tuple[str, str]:
    """(the metric's name, 'in any language' | 'in any domain' | 'overall') of a gate config."""
    from qbench.report.decision import words

    metric = g.get("metric", "bleu")
    return (GATE_METRICS.get(metric, metric),
            f"in any {words(metric).stratum}" if g.get("per", "lang") == "lang" else "overall")


def _gate_text(g: dict | None) -> str:
    from qbench.report.decision import SUMMED

    if not g:
        return ""
    what, where = _gate_words(g)
    if g.get("metric") in SUMMED:  # lower is better: the budget is a rise in percent
        return f"a variant fails when its {what} rises by more than {g.get('max_drop')}% against FP32 {where}"
    return f"a variant fails when its {what} drops by more than {g.get('max_drop')} against FP32 {where}"


def _md(s: str) -> str:
    """A string made safe for one Markdown table cell (an error's '<tag>' would vanish as HTML)."""
    return s.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


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



def markdown_single(task, rows: list[dict], manifest: dict, cols: list[tuple[str, str, str]] | None = None) -> str:
    """A one-score leaderboard as Markdown: ``cols`` (header, row key, format) after the variant, then latency,
    size, quantized MatMuls, TensorRT and status; default: the task's quality metric and its change."""
    cols = cols or [(task.quality[1], "acc", ".4f"), ("Δ vs FP32", "delta", "+.4f")]
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", *(c[0] for c in cols)]
    trt = any(r["trt"] for r in rows)
    head += [f"p50 / p99 ms, {b}" for b in batches] + ["size MB", "MatMul int8/float"]
    head += ["TensorRT engine (build-only)"] if trt else []
    head += ["status"]
    f = lambda x, fmt: "" if x is None else format(x, fmt)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['variant']}`", *(f(r[key], fmt) for _, key, fmt in cols)]
        cells += [f"{f(r['lat'][b][0], '.2f')} / {f(r['lat'][b][1], '.2f')}" for b in batches]
        mm = "" if r["mm_q"] is None else f"{int(r['mm_q'])}/{int(r['mm_f'])}"
        cells += [f(r["size"], ".1f"), mm] + ([r["trt"].replace("|", "/")] if trt else [])
        cells += [r["status"] + (f": {r['error']}" if r["error"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    from qbench.report.trt_md import trt_markdown

    lines += ["", _run_line(manifest, f"evaluation {task.item_noun}"), *trt_markdown(trt_tables(manifest))]
    return "\n".join(lines)
