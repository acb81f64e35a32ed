"""Release-pipeline verbs on a finished run: ``qbench gate`` (exit status) and ``qbench compare`` (a diff).

Both read ``results.parquet`` and ``manifest.json`` only, so they work on any run directory, copied or not.
"""

from __future__ import annotations

from pathlib import Path

from qbench.config.errors import ConfigError

# Exit codes of `qbench gate`: 0 the variant passes its gate, 1 it fails (or the variant itself failed),
# 2 the question cannot be answered (no such run or variant, no gate in the run): always raised as ConfigError,
# whose exit code is 2 (see qbench.config.errors); 10 the data cannot decide yet (INCONCLUSIVE): 10, not 3-8, so that a
# pipeline can tell "measure more" from every error code.
PASS, FAIL, INCONCLUSIVE = 0, 1, 10


def gate(run_dir: Path, variant: str | None = None) -> tuple[int, str]:
    """(exit code, one line) for ``variant``'s gate; by default the run's one ``exclude: auto`` variant."""
    from qbench.report.results import load

    df, manifest = load(run_dir)
    cfg_gate = (manifest.get("config") or {}).get("gate") or manifest.get("gate")
    if not cfg_gate:
        raise ConfigError(f"{run_dir}: the run has no gate (add a gate section to the config and run it again)")
    variants = manifest.get("variants", {})
    if manifest.get("complete") is False:  # runs before resumable sweeps have no "complete" key: finished
        raise ConfigError(f"{run_dir}: the run did not finish (killed or interrupted); finish it with "
                          f"qbench sweep --resume {run_dir}, then gate it")
    if variant is None:
        auto = [v for v, info in variants.items() if info.get("exclusion") == "auto"]
        if len(auto) != 1:
            gated = sorted(set(df[df.metric == "gate"].variant))
            raise ConfigError(f"{run_dir}: name the variant to gate with --variant (gated variants: "
                              f"{', '.join(gated) or 'none'})")
        variant = auto[0]
    if variant not in variants:
        raise ConfigError(f"{run_dir}: no variant '{variant}' (variants: {', '.join(variants)})")
    info = variants[variant]
    if info.get("status") != "ok":
        return FAIL, f"{variant}: FAIL (the variant failed: {info.get('error', 'no reason recorded')})"
    from qbench.report import decision as dn

    dec = dn.for_run(dn.load_samples(run_dir), manifest, variant)
    if dec is not None and dec.state != dn.UNKNOWN:
        if variant == "fp32":
            raise ConfigError(f"{run_dir}: variant 'fp32' has no gate result (fp32 is the reference, not gated)")
        code = {dn.PASS: PASS, dn.FAIL: FAIL, dn.INCONCLUSIVE: INCONCLUSIVE}[dec.state]
        return code, f"{variant}: {dec.summary()}"
    # No per-sample statistics (retrieval runs, older runs): the stored point-estimate gate, said as such.
    from qbench.report.render import _backend_values, _gate

    g = _gate(_backend_values(df, manifest), variant)  # the rows the report's verdict reads
    if g is None or g["pass"] is None:
        raise ConfigError(f"{run_dir}: variant '{variant}' has no gate result (fp32 is the reference, not gated)")
    passed = g["pass"]
    where = ""
    if g["lang"] is not None:
        unit = "points" if cfg_gate.get("metric") == "accuracy_at_1" else cfg_gate.get("metric", "")
        where = f": worst drop {g['drop']:.2f} {unit}" + ("" if g["lang"] == "all" else f" ({g['lang']})")
    line = (f"{variant}: {'PASS' if passed else 'FAIL'}{where}, budget {cfg_gate.get('max_drop')} "
            f"per {cfg_gate.get('per')}" + ("" if dec is None else " (point estimate: the run has no per-sample "
                                                                  "statistics, so no interval)"))
    return (PASS if passed else FAIL), line


def compare(run_a: Path, run_b: Path, metrics: list[str] | None = None) -> str:
    """The overall ('all' slice) metrics of the variants two runs share, side by side, with B - A."""
    import pandas as pd

    from qbench.report.results import load

    (da, ma), (db, mb) = load(run_a), load(run_b)
    keep = metrics or ["accuracy_at_1", "bleu", "chrf", "delta_bleu", "delta_chrf", "gate", "worst_lang_drop",
                       "exact_match_vs_fp32", "cosine_vs_fp32", "size_mb", "int8_linear_flop_share"]

    def pick(df):
        d = df[(df.status == "ok") & (df.slice == "all") & df.metric.isin(keep)]
        return d.groupby(["variant", "backend", "metric"]).value.first()

    a, b = pick(da), pick(db)
    both = pd.concat({"A": a, "B": b}, axis=1).dropna()
    lines = [f"A: {run_a} ({ma.get('run_id', Path(run_a).name)})", f"B: {run_b} ({mb.get('run_id', Path(run_b).name)})"]
    only_a = sorted(set(ma.get("variants", {})) - set(mb.get("variants", {})))
    only_b = sorted(set(mb.get("variants", {})) - set(ma.get("variants", {})))
    if only_a:
        lines.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        lines.append(f"only in B: {', '.join(only_b)}")
    if both.empty:
        lines.append("no shared variant metrics")
        return "\n".join(lines)
    w = max(7, *(len(v) for v, _, _ in both.index))
    lines.append(f"{'variant':{w}s}  {'backend':8s}  {'metric':22s}  {'A':>10s}  {'B':>10s}  {'B - A':>10s}")
    for (v, be, m), r in both.iterrows():
        lines.append(f"{v:{w}s}  {be:8s}  {m:22s}  {r.A:10.4f}  {r.B:10.4f}  {r.B - r.A:+10.4f}")
    return "\n".join(lines + _decisions(run_a, ma, run_b, mb))


def _decisions(run_a: Path, ma: dict, run_b: Path, mb: dict) -> list[str]:
    """Each shared variant's gate decision (qbench gate's) in A and in B: PASS, FAIL, INCONCLUSIVE, or '-'."""
    from qbench.report import decision as dn

    shared = [v for v in ma.get("variants", {}) if v in mb.get("variants", {}) and v != "fp32"]
    if not shared or not (dn.gate_of(ma) or dn.gate_of(mb)):
        return []
    sa, sb = dn.load_samples(run_a), dn.load_samples(run_b)

    def state(samples, m, v):
        if (m["variants"][v].get("status") != "ok"):
            return "FAIL (variant failed)"
        d = dn.for_run(samples, m, v)
        return "-" if d is None else "point estimate only" if d.state == dn.UNKNOWN else d.state

    w = max(7, *(len(v) for v in shared))
    out = ["", f"{'variant':{w}s}  {'decision A':22s}  decision B"]
    out += [f"{v:{w}s}  {state(sa, ma, v):22s}  {state(sb, mb, v)}" for v in shared]
    return out
