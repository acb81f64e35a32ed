"""The TensorRT table of ``qbench report RUN --markdown``: per variant and graph, what the engine runs, from the
rows ``qbench.report.trt_tables`` reads off the build log. Kept apart from qbench.report, which passes it the
rows, so that neither imports the other."""

from __future__ import annotations


def _cell(s: str, limit: int = 90) -> str:
    s = s.replace("|", "/").replace("\n", " ").replace("<", "&lt;")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def trt_markdown(rows: list[dict]) -> list[str]:
    """Markdown lines (a blank line, a title, the table), or none when the run built no engine."""
    if not rows:
        return []
    head = ["variant", "graph", "linear nodes by datatype", "INT8 FLOP share", "excluded held", "engine MB",
            "build s"]
    lines = ["", "TensorRT engines (built, not run here; layer datatypes from the build log):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["error"]:
            # a run made before per-graph engines has a summary, not a failure: its row says so as it is
            what = r["error"] if "older qbench format" in r["error"] else "build failed: " + r["error"]
            cells = [f"`{r['variant']}`", r["graph"], _cell(what), "", "", "", ""]
        else:
            held = f"{r['held']} / {r['held'] + r['unseen']}" if r["held"] or r["unseen"] else "–"
            cells = [f"`{r['variant']}`", r["graph"], r["dtypes"], f"{r['share']:.0f}%", held,
                     f"{r['engine_mb']:.1f}", f"{r['build_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    why = [f"- `{r['variant']}`: {r['why']}" for r in rows if r.get("why")]
    if why:  # runs that recorded why their builds failed (qbench.quantize.trt_rules)
        lines += ["", "Why the parser refused them:", "", *why]
    return lines
