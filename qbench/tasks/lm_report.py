"""The causal_lm task's report: leaderboard rows, the Markdown table and the HTML section (perplexity per domain
with intervals, the gate's decision, top-1 agreement, KL, generation agreement, prefill and per-token decode
latency)."""

from __future__ import annotations

import html
import math


def _domains(val: dict) -> list[str]:
    return sorted({s.split("=", 1)[1] for (_, m, s) in val if m == "perplexity" and s.startswith("domain=")})


def lm_leaderboard(df, manifest: dict) -> list[dict]:
    from qbench.report.decision import gate_of
    from qbench.report.tables import _batches, _common, _gate, _values

    metric = (gate_of(manifest) or {}).get("metric", "perplexity")
    val = _values(df)
    batches = _batches(val)
    doms = _domains(val)
    rows = []
    for vid, info in manifest["variants"].items():
        g = lambda m, s="all": val.get((vid, m, s))  # noqa: E731
        top1 = g("top1_agreement")
        row = {**_common(vid, info, val, batches), "acc": top1, "mrr": None, "cos": None,
               "delta": None if top1 is None or math.isnan(top1) else (top1 - 1) * 100,
               "ppl": {d: g("perplexity", s) for d, s in [("all", "all")] + [(d, f"domain={d}") for d in doms]},
               "dppl": {}, "gate": _gate(val, vid, metric), "kl": g("kl_vs_fp32"), "gen": g("generation_exact"), "gen_prefix": g("generation_prefix"),
               "prefill": {b: g("prefill_p50_ms", b) for b in batches},
               "decode": {b: g("decode_p50_ms_per_token", b) for b in batches}}
        for d in ["all", *doms]:
            s = "all" if d == "all" else f"domain={d}"
            if g("ppl_change_pct", s) is not None:
                row["dppl"][d] = (g("ppl_change_pct", s), g("ppl_change_pct_lo", s), g("ppl_change_pct_hi", s))
        rows.append(row)
    return rows


def _f(x, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _dppl(t) -> str:
    return "" if not t else f"{t[0]:+.2f} [{t[1]:+.2f}, {t[2]:+.2f}]"


def _gate_cell(g: dict | None) -> str:
    """The report's decision (three states) where it made one, else the run's point-estimate gate."""
    if not g:
        return ""
    state = g.get("state") or ("" if g.get("pass") is None else "PASS" if g["pass"] else "FAIL")
    return f"{state} ({g['worst']})" if g.get("worst") else state


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) shared by the Markdown and HTML tables."""
    doms = [d for d in (rows[0]["ppl"] if rows else {}) if d != "all"]
    batches = list(rows[0]["lat"]) if rows else []
    gated = any(r.get("gate") for r in rows)
    head = ["variant", "ppl (all)", *[f"Δppl % {d} [95% CI]" for d in doms], "Δppl % all [95% CI]",
            *(["gate"] if gated else []), "top-1 agree", "KL nats/token", "greedy gen. identical",
            *[f"prefill ms, {b}" for b in batches],
            *[f"decode ms/token, {b}" for b in batches], "size MB", "MatMul int8/float"]
    trt = any(r["trt"] for r in rows)
    head += (["TensorRT engine (build-only)"] if trt else []) + ["status"]
    cells = []
    for r in rows:
        c = [r["variant"], _f(r["ppl"].get("all"), ".3f"), *[_dppl(r["dppl"].get(d)) for d in doms],
             _dppl(r["dppl"].get("all")), *([_gate_cell(r.get("gate"))] if gated else []), _f(r["acc"], ".4f"), _f(r["kl"], ".5f"), _f(r["gen"], ".3f"),
             *[_f(r["prefill"][b], ".1f") for b in batches], *[_f(r["decode"][b], ".1f") for b in batches],
             _f(r["size"], ".1f"), "" if r["mm_q"] is None else f"{int(r['mm_q'])}/{int(r['mm_f'])}"]
        c += ([r["trt"]] if trt else []) + [r["status"] + (f": {r['error']}" if r["error"] else "")]
        cells.append(c)
    return head, cells


def _ppl_line(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    if not base:
        return ""
    return "FP32 perplexity: " + ", ".join(f"{d} {_f(p, '.3f')}" for d, p in base["ppl"].items()) + "."


NOTE = ("Δppl: perplexity change against FP32 in percent, 95% paired-bootstrap interval over segments. top-1 agree "
        "and KL: next-token argmax agreement with FP32 and KL(FP32 || variant) at every scored position. Greedy gen. "
        "identical: continuations equal to FP32's. prefill: one forward pass over the latency prompt; decode: one "
        "step through the cache after it (p50).")
GATE_NOTE = ("the gate column is the release decision (PASS, FAIL or INCONCLUSIVE, from one-sided paired-bootstrap "
             "bounds over segments; qbench gate) with the deciding domain's perplexity rise in percent and its bounds.")


def _note(manifest: dict, rows: list[dict]) -> str:
    from qbench.report.decision import gate_of
    from qbench.report.tables import _gate_text

    gate = gate_of(manifest)
    return " ".join([NOTE, *([f"Gate: {_gate_text(gate)}; {GATE_NOTE}"] if gate else []), _ppl_line(rows)])


def markdown_lm(task, rows: list[dict], manifest: dict) -> str:
    from qbench.report.tables import _run_line, trt_tables
    from qbench.report.trt_md import trt_markdown

    head, cells = table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([f"`{c[0]}`", *(x.replace("|", "/") for x in c[1:])]) + " |")
    lines += ["", _note(manifest, rows), "", _run_line(manifest, f"evaluation {task.item_noun}"),
              *trt_markdown(trt_tables(manifest))]
    return "\n".join(lines)


def lm_context(df, manifest: dict, rows: list[dict] | None = None) -> dict:
    """The HTML section under the leaderboard (the template's ``mt.section_html``; ``rows``: the leaderboard as
    the report decided its gates)."""
    rows = lm_leaderboard(df, manifest) if rows is None else rows
    head, cells = table(rows)
    e = html.escape
    out = ["<h2>Perplexity, agreement and decode latency</h2>", f"<p class=\"muted\">{e(_note(manifest, rows))}</p>",
           "<div class=\"scroll\"><table id=\"lm\"><thead><tr>"]
    out += [f"<th>{e(h)}</th>" for h in head] + ["</tr></thead><tbody>"]
    for c in cells:
        out.append("<tr>" + "".join(f"<td class=\"{'l v' if i == 0 else ''}\">{e(x)}</td>" for i, x in enumerate(c))
                   + "</tr>")
    out.append("</tbody></table></div>")
    return {"section_html": "\n".join(out)}
