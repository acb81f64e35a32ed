"""``exclude: auto``: per-unit sensitivity, then the fastest variant whose quality drop stays in budget.

1. **Units.** The MatMul/Gemm nodes an all-INT8 variant quantizes, grouped by transformer sub-block
   (``.../layers.3/self_attn``, ``.../layer.0/intermediate``, ``/lm_head``) or one per node.
2. **Screen.** The all-INT8 model (k = 0) is scored on the scoring subset first; when it passes the screen
   there and its confirmation shows PASS, nothing is ranked and the search ends. The screen
   (``search.screen``, qbench.run.search_screen) is by default the interval decision on the subset, its bound
   projected to the evaluation set's size: a candidate passes where its confirmation is predicted to show PASS.
3. **Sensitivity**, on a ranking subset (the first ``search.rank_n`` samples of the scoring subset, held out
   of calibration and evaluation), against FP32: each unit alone kept float in an otherwise all-INT8 model
   (``exclude_only``) and, with ``search.quantize_only``, each unit alone quantized. Fidelity is the SQNR of
   the outputs (embeddings; decoder logits under teacher forcing on FP32's own greedy outputs or, for a
   decoder-only LM, on the text) and, for decoders, the KL divergence of the next-token distributions, per
   language (or domain). ``task_metric`` adds the task score of each ``exclude_only`` model. Every model
   reuses the sweep's calibration table, and FP32's outputs on the ranking subset come from the scoring
   subset's where the scorer can ``restrict`` itself.
4. **Search.** Units ranked by how much excluding them alone reduces the error of the all-INT8 model (with a
   per-language gate: in the language where it reduces it most). Candidate k excludes the top k.
   k = 0, 1, 2, 4, ... until one passes the screen on the scoring subset, then bisection between the last failing
   and the first passing k. Passing candidates are confirmed in order of measured latency
   (``prefer: latency``) or fewest exclusions, on the full evaluation set with the interval decision; the
   first PASS ends the search. The manifest records the trace, the ranking, the chosen exclusions and the
   cost (wall and CPU seconds by phase, models scored).

Everything is deterministic for a given config: the subset is drawn with ``search.seed``, ties in the
ranking break by unit name, and ONNX Runtime runs the same graphs on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qbench.config.schema import ExclusionCfg
from qbench.config.errors import ConfigError, DataError
from qbench.run import search_screen as screening
from qbench.tasks.common import sample_cap

# A transformer sub-block: the path up to the layer index and one component more.
_BLOCK = re.compile(r"^(.*?(?:layers?|blocks?|h)\.\d+/[^/]+)/")


@dataclass(frozen=True)
class Unit:
    id: str                  # "<graph>:<block path>" or "<block path>" for a one-graph model
    graph: str               # "model", "encoder", "decoder"
    nodes: tuple[str, ...]


def units(models: dict[str, object], granularity: str, only: list[str] = ()) -> list[Unit]:
    """The quantizable units of every graph, in graph order (``only``: ids matching one of these regexes)."""
    from qbench.quantize.qdq import plan

    out: list[Unit] = []
    for graph, model in models.items():
        chosen, _ = plan(model, ExclusionCfg())
        groups: dict[str, list[str]] = {}
        for n in chosen:
            if granularity == "node":
                key = n.name
            else:
                m = _BLOCK.match(n.name)
                key = m.group(1) if m else (n.name.rsplit("/", 1)[0] or n.name)
            groups.setdefault(key, []).append(n.name)
        pre = "" if graph == "model" else f"{graph}:"
        out += [Unit(f"{pre}{k}", graph, tuple(v)) for k, v in groups.items()]
    if only:
        rx = [re.compile(p) for p in only]
        out = [u for u in out if any(r.search(u.id) for r in rx)]
        if not out:
            raise ConfigError(f"search.units: no unit id matches {list(only)}")
    return out


def _exact(names) -> list[str]:
    return [f"^{re.escape(n)}$" for n in sorted(names)]


def benefit(all8: dict, ex: dict, per_lang: bool) -> float:
    """How much keeping one unit float lowers the all-INT8 model's error (``score`` results of both). With a
    per-language gate, in the language where it lowers it most: the gate fails on its worst language, and a
    unit that repairs one language can vanish in the pooled error of 30."""
    a, e = all8.get("error_by_lang") or {}, ex.get("error_by_lang") or {}
    langs = [lang for lang in a if lang != "all" and lang in e]
    if per_lang and langs:
        return max(a[lang] - e[lang] for lang in langs)
    return all8["error"] - ex["error"]


def exclusion_for(excluded: list[Unit], only: list[Unit] | None = None) -> ExclusionCfg:
    """The exclusion set that keeps ``excluded`` float (or quantizes ``only``)."""
    if only is not None:
        return ExclusionCfg(only=_exact(n for u in only for n in u.nodes))
    return ExclusionCfg(names=_exact(n for u in excluded for n in u.nodes))


def scratch_root(ctx) -> Path:
    """Where the ranking's throwaway models are built: a RAM-backed /dev/shm where it has room for four FP32
    models, else the cache. Each is written, read once by ONNX Runtime and deleted; on disk its write and fsync
    took about 0.3 s of a MiniLM model's second (build, write, session, 200 texts) on a loaded 2-core machine."""
    import os

    fp32 = Path(ctx.fp32)
    size = sum(p.stat().st_size for p in fp32.rglob("*") if p.is_file()) if fp32.is_dir() else fp32.stat().st_size
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if shm.is_dir() and os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > 4 * size:
            return shm
    except OSError:  # no /dev/shm (macOS, Windows): the cache
        pass
    return ctx.cache


# --------------------------------------------------------------------------------------- scoring subset


def ranking_subset(ctx, subset: list) -> list:
    """The samples the ranking scores each unit on: the first ``search.rank_n_per_language`` of each language,
    then the first ``search.rank_n`` of those (all of the scoring subset when neither is set). Fidelity (the
    relative MSE of the outputs, KL of next-token distributions) is a mean over every output value or token, so
    it ranks units on far fewer samples than the gate's accuracy or BLEU needs to decide."""
    sc = ctx.cfg.search
    out = sample_cap(subset, sc.rank_n_per_language) if ctx.task.per_language else list(subset)
    return out[:sc.rank_n] if sc.rank_n else out


def scoring_subset(ctx) -> list:
    """Samples of ``search.split`` that are in no calibration set and not in the evaluation set."""
    from qbench.data.manifest import load_manifest, load_split

    sc = ctx.cfg.search
    taken = {s.id for ss in ctx.calib_sets.values() for s in ss} | {s.id for s in ctx.evalset}
    pool = [s for s in load_split(load_manifest(ctx.cfg.manifest_path()), sc.split) if s.id not in taken]
    order = np.random.default_rng(sc.seed).permutation(len(pool))
    pool = [pool[i] for i in order]
    if ctx.task.per_language:
        pool = sample_cap(pool, sc.n_per_language)
    if sc.n:
        pool = pool[:sc.n]
    if len(pool) < 2:
        raise DataError(f"search: the scoring subset from split '{sc.split}' is empty once calibration and "
                        "evaluation samples are left out; set search.split to another split")
    return sorted(pool, key=lambda s: s.id)


# --------------------------------------------------------------------------------------------- the search


@dataclass
class Search:
    ctx: object
    variant: object
    scorer: object
    units: list[Unit]
    rank_scorer: object = None  # scores the ranking's models (default: ``scorer``, on the whole subset)
    screen: str = "point"       # search.screen; "projected" needs the scorer's per-sample statistics
    n_eval: dict = field(default_factory=dict)  # evaluation samples per language (the projection's target)
    evaluations: int = 0
    models: int = 0             # every model scored: the ranking's, the subset gate's, the confirmations'
    phases: dict = field(default_factory=dict)  # wall seconds by phase of the search
    trace: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    confirmations: list[dict] = field(default_factory=list)

    def build(self, excl: ExclusionCfg, out_dir: Path | None = None) -> Path:
        """The QDQ artifact of this variant with ``excl``: the sweep's table, cached by content (or in
        ``out_dir``)."""
        return self.ctx.task.build_variant(self.ctx, replace(self.variant, exclusion_cfg=excl), out_dir)[0]

    def score_throwaway(self, excl: ExclusionCfg, quality: bool) -> dict:
        """Score a sensitivity model, built in a scratch directory and deleted once scored. Two such models
        per unit are never an answer, so they stay out of the cache: on a 1 GB translation model with 30
        units, cached they would leave 60 GB behind."""
        with tempfile.TemporaryDirectory(prefix=".scratch-", dir=scratch_root(self.ctx)) as d:
            self.models += 1
            return (self.rank_scorer or self.scorer).score(self.build(excl, Path(d)), quality=quality)

    @contextmanager
    def phase(self, name: str):
        """Adds the wall time of the block to ``phases[name]`` (the manifest's cost breakdown)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 2)

    def gate(self, quality: dict[str, float], base: dict[str, float] | None = None) -> tuple[bool, float, str]:
        """(pass, worst drop, where) against FP32's ``base`` (default: on the scoring subset); the drop as the
        release decision defines it: points, or perplexity's rise in percent."""
        from qbench.report.decision import score_drop

        g = self.ctx.cfg.gate
        base = self.scorer.base_quality if base is None else base
        keys = [k for k in base if k != "all"] if g.per == "lang" and len(base) > 1 else ["all"]
        drops = {k: float(score_drop(g.metric, base[k], quality[k])) for k in keys}
        where = max(sorted(drops), key=lambda k: drops[k])
        return drops[where] <= g.max_drop, drops[where], where

    def run_sensitivity(self) -> list[Unit]:
        """Score every unit kept float alone (and, with ``search.quantize_only``, quantized alone); return the
        units ranked most sensitive first (``benefit``)."""
        with self.phase("ranking"):
            return self._rank()

    def _rank(self) -> list[Unit]:
        sc = self.ctx.cfg.search
        all8 = (self.rank_scorer or self.scorer).score(self.build(ExclusionCfg()), quality=False)
        self.models += 1
        self._record("all_int8", "", all8)
        gain = {}
        for u in self.units:
            if sc.quantize_only:
                self._record("quantize_only", u.id, self.score_throwaway(exclusion_for([], only=[u]), quality=False))
            ex = self.score_throwaway(exclusion_for([u]), quality=sc.task_metric)
            self._record("exclude_only", u.id, ex)
            gain[u.id] = benefit(all8, ex, self.ctx.cfg.gate.per == "lang")
        return sorted(self.units, key=lambda u: (-gain[u.id], u.id))

    def _record(self, mode: str, unit: str, res: dict) -> None:
        for metric, by in res["fidelity"].items():
            for lang, v in by.items():
                self.sensitivity.append({"mode": mode, "unit": unit, "metric": metric, "lang": lang, "value": v})
        for lang, v in res.get("quality", {}).items():
            self.sensitivity.append({"mode": mode, "unit": unit, "metric": "quality", "lang": lang, "value": v})

    def step(self, ranked: list[Unit], k: int) -> dict:
        with self.phase("subset_gate") if self.screen != "none" else nullcontext():  # none: build, confirmation apart
            return self._step(ranked, k)

    def exhausted(self) -> bool:  # screen: none, where every step is a confirmation: no more of them
        return self.screen == "none" and len(self.confirmations) >= self.ctx.cfg.search.max_confirmations

    def _step(self, ranked: list[Unit], k: int) -> dict:
        t0 = time.perf_counter()
        with self.phase("build") if self.screen == "none" else nullcontext():
            art = self.build(exclusion_for(ranked[:k]))
        if self.screen == "none":
            return self._step_on_evaluation(ranked, k, art, t0)
        res = self.scorer.score(art, quality=True)
        ok, drop, where = self.gate(res["quality"])
        self.evaluations += 1
        self.models += 1
        row = {"k": k, "excluded_units": [u.id for u in ranked[:k]],
               "excluded_linear_nodes": sum(len(u.nodes) for u in ranked[:k]),
               "quality_all": res["quality"].get("all"), "worst_drop": drop, "worst": where, "pass": ok,
               "error": res["error"]}
        if self.screen == "projected" and res.get("samples") is not None:
            # passes only where the confirmation is predicted to show PASS (qbench.run.search_screen)
            st = screening.settings(self.ctx)
            ok, hi, at = screening.projected(res["samples"], self.ctx.cfg.gate, st, self.n_eval)
            row.update({"pass": ok, "point_pass": row["pass"], "projected_hi": hi, "projected_where": at})
        row.update({"seconds": round(time.perf_counter() - t0, 2), "artifact": str(art)})
        self.trace.append(row)
        return row

    def _step_on_evaluation(self, ranked: list[Unit], k: int, art: Path, t0: float) -> dict:
        """``screen: none``: no subset screen; the candidate's confirmation on the evaluation set is its step."""
        row = {"k": k, "excluded_units": [u.id for u in ranked[:k]], "artifact": str(art),
               "excluded_linear_nodes": sum(len(u.nodes) for u in ranked[:k])}
        self.evaluations += 1
        self.trace.append(row)
        ok = False if self.exhausted() else self.confirm(k)
        c = next((c for c in self.confirmations if c["k"] == k), {})
        row.update({"quality_all": c.get("quality_all"), "worst_drop": c.get("worst_drop"), "worst": c.get("worst"),
                    "pass": ok, "error": None, "seconds": round(time.perf_counter() - t0, 2)})
        return row

    def confirm(self, k: int) -> bool:
        """The candidate's gate on the full evaluation set (the variant's own evaluation reuses its outputs)."""
        with self.phase("confirmation"):
            return self._confirm(k)

    def _confirm(self, k: int) -> bool:
        t0 = time.perf_counter()
        row = next(r for r in self.trace if r["k"] == k)
        self.models += 1
        quality, base = self.scorer.full_quality(Path(row["artifact"]))
        ok, drop, where = self.gate(quality, base)
        dec = confirm_decision(self, Path(row["artifact"]))
        if dec is not None:  # a candidate counts as passing only when its interval shows PASS
            ok = dec.state == "PASS"
        self.confirmations.append({"k": k, "worst_drop": drop, "worst": where, "pass": ok,
                                   "quality_all": quality.get("all"), "seconds": round(time.perf_counter() - t0, 2),
                                   **({} if dec is None else {"decision": dec.state, "summary": dec.summary()})})
        return ok

    def search(self, ranked: list[Unit]) -> dict:
        limit = self.ctx.cfg.search.max_evaluations
        n = len(ranked)
        tried: dict[int, dict] = {r["k"]: r for r in self.trace}  # k = 0, screened before the ranking

        def at(k: int) -> dict:
            if k not in tried:
                tried[k] = self.step(ranked, k)
            return tried[k]

        lo, hi, k = -1, None, 0
        while hi is None and self.evaluations < limit and not self.exhausted():  # 0, 1, 2, 4, ... until it passes
            if at(k)["pass"]:
                hi = k
            else:
                lo = k
                if k == n:
                    break
                k = min(n, max(1, 2 * k))
        while hi is not None and hi - lo > 1 and self.evaluations < limit and not self.exhausted():  # bisection
            mid = (lo + hi) // 2
            if at(mid)["pass"]:
                hi = mid
            else:
                lo = mid
        # k = n keeps every unit float: that is FP32 with extra steps, not an answer.
        passing = sorted(k for k, r in tried.items() if r["pass"] and k < n)
        if not passing:  # the projection predicts no PASS with INT8 left: confirm what is within budget on the subset
            passing = sorted(k for k, r in tried.items() if r.get("point_pass") and k < n)
        if not passing and self.screen == "none":
            raise DataError(f"search: no candidate with INT8 left showed PASS on the evaluation set "
                            f"({len(self.confirmations)} confirmations, up to {max(tried)} of {n} units float)")
        if not passing:
            raise DataError(f"search: no candidate with INT8 left passed the gate on the scoring subset "
                            f"({self.evaluations} evaluations, up to {max(tried)} of {n} units float)")
        return {"passing": passing, "smallest": passing[0]}


def confirm_decision(s: Search, art: Path):
    """The interval decision (qbench.report.decision) of a candidate on the full evaluation set, against FP32,
    with alpha shared by the at most ``search.max_confirmations`` looks (Bonferroni: whichever look succeeds, the
    chance that a wrong PASS was among them stays within gate.alpha). None where the task's scorer has no
    per-sample statistics for the candidate."""
    from qbench.report import decision as dn

    g = s.ctx.cfg.gate
    per_sample = getattr(s.scorer, "decision_stats", lambda art, metric: None)(art, g.metric)
    if per_sample is None:
        return None
    base, var, langs = per_sample
    return dn.decide_stats(base, var, langs, g.metric, g.max_drop, g.per, screening.settings(s.ctx))


def order(s: Search, passing: list[int]) -> tuple[list[int], dict]:
    """Passing candidates in the order to confirm them: fastest first by side-by-side latency, or fewest
    exclusions first."""
    ctx = s.ctx
    if ctx.cfg.search.prefer == "fewest_exclusions" or len(passing) == 1:
        return list(passing), {}
    from qbench.backends.measure import interleaved

    rows = {r["k"]: r for r in s.trace}
    b = min(ctx.latency_feeds)
    lat = ctx.cfg.measure.latency
    sessions = {}
    try:
        for k in passing:
            sessions[k] = ctx.task.latency_session(ctx, Path(rows[k]["artifact"]))
        res = interleaved(sessions, ctx.latency_feeds[b], lat.warmup, lat.runs, lat.rounds)
    finally:
        for sess in sessions.values():
            sess.close()
    p50 = {k: r["latency_p50_ms"] for k, r in res.items() if isinstance(r, dict)}
    ranked = sorted(p50, key=lambda k: (p50[k], k)) + [k for k in passing if k not in p50]
    return ranked, {f"k={k}": v for k, v in p50.items()} | {"batch": b}


def pick(s: Search, ranked: list[Unit], passing: list[int]) -> tuple[int, dict]:
    """Confirm candidates on the full evaluation set in preference order; when none holds there, keep more units
    float, one more than the largest candidate tried, then two, four, ... more (each screened on the subset
    first), and confirm what passes: the answer stays near the smallest k that holds, at a logarithmic cost."""
    sc = s.ctx.cfg.search
    with s.phase("latency"):
        cands, latency = order(s, passing)
    held = {c["k"] for c in s.confirmations if c["pass"]}
    for k in cands:
        if k in held:  # confirmed as its step (screen: none)
            return k, latency
        if len(s.confirmations) >= sc.max_confirmations:
            break
        if k not in {c["k"] for c in s.confirmations} and s.confirm(k):
            return k, latency
    lo, n, step = max(passing), len(ranked), 1
    while lo < n - 1 and s.evaluations < sc.max_evaluations and len(s.confirmations) < sc.max_confirmations:
        k = min(n - 1, lo + step)  # never every unit float: that is FP32 with extra steps
        row = next((r for r in s.trace if r["k"] == k), None) or s.step(ranked, k)
        if row["pass"] and k not in {c["k"] for c in s.confirmations} and s.confirm(k):
            return k, latency
        lo, step = k, 2 * step
    raise DataError(f"search: no candidate with INT8 left held the gate on the full evaluation set "
                    f"({len(s.confirmations)} confirmation(s), {s.evaluations} subset evaluations)")


def resolve(ctx, v) -> tuple[object, dict]:
    """Run the search for one ``exclude: auto`` variant: (the variant with its chosen exclusions, manifest info).

    The all-INT8 candidate (k = 0) is screened first: when it passes on the subset and its confirmation shows
    PASS, nothing needs ranking and the search stops there (as NNCF's accuracy control stops when the
    quantized model is within budget). Otherwise units are ranked, then searched and confirmed."""
    if ctx.cfg.gate is None:
        raise ConfigError("search: exclude: auto needs a gate (the quality budget)")
    t0, c0 = time.perf_counter(), time.process_time()
    sc = ctx.cfg.search
    subset = scoring_subset(ctx)
    rank = ranking_subset(ctx, subset)
    us = units(ctx.task.fp32_models(ctx), sc.granularity, sc.units)
    scorer = ctx.task.scorer(ctx, subset)
    rank_scorer = None
    if len(rank) < len(subset):  # a scorer that holds FP32's outputs of the ranking's samples reuses them
        rank_scorer = getattr(scorer, "restrict", lambda r: ctx.task.scorer(ctx, r))(rank)
    s = Search(ctx, v, scorer, us, rank_scorer=rank_scorer, screen=sc.screen,
               n_eval=screening.eval_counts(ctx.evalset))
    s.phases["fp32_reference"] = round(time.perf_counter() - t0, 2)
    info: dict = {
        "granularity": sc.granularity, "units": len(us),
        "scoring_subset": {"split": sc.split, "n": len(subset), "seed": sc.seed,
                           "ids_sha256": hashlib.sha256(json.dumps([x.id for x in subset]).encode()).hexdigest()},
        "ranking_subset": {"n": len(rank), "rank_by": "worst_language" if ctx.cfg.gate.per == "lang" else "all"},
        "base_quality": scorer.base_quality, "prefer": sc.prefer, "screen": sc.screen,
    }
    ctx.manifest["variants"][v.id]["search"] = info  # kept, with the trace so far, if the search fails
    ctx.search_sensitivity[v.id] = s.sensitivity
    ranked: list[Unit] = []
    try:
        if s.step(ranked, 0)["pass"] and (s.screen == "none" or s.confirm(0)):
            found, k, latency = {"passing": [0], "smallest": 0}, 0, {}
        else:
            ranked = s.run_sensitivity()
            info["ranking"] = [u.id for u in ranked]
            found = s.search(ranked)
            k, latency = pick(s, ranked, found["passing"])
    finally:
        info["trace"] = [{kk: vv for kk, vv in r.items() if kk != "artifact"} for r in s.trace]
        info["confirmations"] = s.confirmations
        info["evaluations"] = s.evaluations
        info["models_scored"] = s.models
        info["phases_s"] = s.phases
        info["seconds"] = round(time.perf_counter() - t0, 1)
        info["cpu_seconds"] = round(time.process_time() - c0, 1)
    info.setdefault("ranking", [u.id for u in ranked])
    excl = exclusion_for(ranked[:k])
    info.update({"passing": found["passing"], "smallest_passing": found["smallest"], "chosen_k": k,
                 "chosen_units": [u.id for u in ranked[:k]], "latency_p50_ms": latency})
    return replace(v, exclusion_cfg=excl), info
