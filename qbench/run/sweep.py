"""The sweep runner: collect once, derive every variant, measure everything.

Order: export (cached) -> data -> calibration sample -> statistics (cached) -> per variant:
table -> QDQ (cached) -> session -> quality + latency -> rows. A failing variant becomes a failed
row and the sweep goes on; results and manifest are rewritten atomically after each variant.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from qbench.config.schema import SweepConfig
from qbench.run.context import run_id_for, write_samples
from qbench.run.latency import latency_phase, make_latency_feeds
from qbench.run.resume import take_over
from qbench.run.schedule import run_variants
from qbench.run.variants import Variant, expand
from qbench.util import progress
from qbench.util.logs import log


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a sweep: a BaseException, so no variant's ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM: what a shell reports for the signal
        self.run_dir: Path | None = None  # set once the run directory holds the written, resumable run


@contextmanager
def _signals_raise():
    """Turn SIGINT/SIGTERM into ``Interrupted`` for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _is_latency_row(r: dict) -> bool:
    """A row of the side-by-side latency phase (re-measured for every variant when a run resumes)."""
    return r["backend"] != "tensorrt" and str(r["slice"]).startswith("batch=")


def run_sweep(cfg: SweepConfig, out_root: Path | None = None, resume: Path | None = None,
              retry_failed: bool = False, config_path: str = "") -> Path:
    """Run every variant of ``cfg`` into a new run directory, or finish the run ``resume``."""
    from qbench.run import executors
    from qbench.run import resume as resuming
    from qbench.run.context import prepare

    executors.check(cfg)
    from qbench.quantize import foreign

    foreign.check(cfg)  # a peer quantizer that is not installed: one line saying how, before any work
    prev = None
    if resume is not None:
        prev = resuming.load(resume)
        resuming.check_config(prev, cfg, config_path or cfg.name)
        run_dir = Path(resume)
    else:
        run_dir = Path(out_root or cfg.output.dir) / cfg.name / run_id_for(cfg)
    ctx = prepare(cfg, run_dir)
    if config_path:
        ctx.manifest["config_file"] = str(Path(config_path).resolve())
    if prev is not None:
        resuming.check_inputs(prev, ctx.manifest)
    with _signals_raise():
        return _run(ctx, prev, retry_failed)


def _run(ctx, prev, retry_failed: bool) -> Path:
    from qbench.run import executors

    variants = expand(ctx.cfg)
    # The executor first, before any directory is made: a Ray cluster that cannot be reached fails here.
    runner = executors.make(ctx, len(variants))
    try:
        return _run_on(ctx, prev, retry_failed, runner, variants)
    finally:
        runner.close(cancel=True)  # a no-op once the variants finished (closed then, before latency)


def _create_run_dir(ctx) -> None:
    """The run directory appears with its manifest in it, never empty: it is made under a hidden name and
    renamed, so a run killed at any moment is either absent or resumable."""
    from qbench.report.results import write_manifest

    tmp = ctx.run_dir.parent / f".{ctx.run_dir.name}.creating"
    tmp.mkdir(parents=True, exist_ok=True)
    write_manifest(ctx.manifest, tmp)
    os.rename(tmp, ctx.run_dir)


def _run_on(ctx, prev, retry_failed: bool, runner, variants: list[Variant]) -> Path:
    from qbench.report import render as report

    run_dir = ctx.run_dir
    variants.sort(key=lambda v: v.baseline != "fp32")  # fp32 first: every fidelity is measured against it
    make_latency_feeds(ctx)
    if not run_dir.exists():  # only once the model and data loaded: no empty runs
        _create_run_dir(ctx)
    rec = _Record(ctx, {v.id: v for v in variants})
    done: dict[str, dict] = {}
    if prev is not None:
        done = take_over(ctx, prev, retry_failed, rec.by_id, rec.rows, rec.artifacts)
        if len(done) == len(variants) and prev.manifest.get("complete"):
            log(f"{run_dir}: every variant finished already; nothing to resume")
            report.render(run_dir)
            return run_dir
        rec.rows[:] = [r for r in rec.rows if not _is_latency_row(r)]  # measured again, side by side, at the end
    todo = [v for v in variants if v.id not in done]
    if prev is not None:
        log(f"resuming {run_dir}: {len(done)} variant(s) finished, {len(todo)} to run")
    rec.flush()  # a run directory always holds a manifest, so even a run killed in its first variant resumes
    try:
        _phases(ctx, runner, todo, rec)
    except Interrupted as e:
        _interrupted(ctx, rec, e)
        raise
    ctx.manifest.pop("interrupted", None)
    ctx.manifest["complete"] = True
    rec.flush()
    report.render(run_dir)
    log(f"wrote {run_dir}/results.parquet, manifest.json, report.html")
    return run_dir


class _Record:
    """What a run has recorded so far: its rows, the artifacts of its finished variants, and how to write
    both (results.parquet, manifest.json, samples.parquet) or record a variant's failure."""

    def __init__(self, ctx, by_id: dict):
        sets = ctx.manifest["data"]["calibration_sets"]
        self.ctx, self.by_id = ctx, by_id
        self.rows: list[dict] = []
        self.artifacts: dict[str, Path] = {}
        self.set_sig = {k: f"{k}:{i['sampler']}[n={i['n']},s={i['seed']}]" for k, i in sets.items()}

    def fail(self, v: Variant, entry: dict, err: str) -> None:
        from qbench.report.results import metric_rows

        entry.update(status="failed", error=err)
        log(f"variant {v.id} failed: {err}", warning=True)
        self.rows[:] = [r for r in self.rows if r["variant"] != v.id]
        self.rows.extend(metric_rows(v.describe(), entry["signature"], self.ctx.run_dir.name,
                                     [("status", "all", float("nan"), "")], status="failed"))

    def flush(self) -> None:
        from qbench.report.results import write_manifest, write_results

        write_samples(self.ctx)
        write_results(self.rows, self.ctx.run_dir)
        write_manifest(self.ctx.manifest, self.ctx.run_dir)


def _phases(ctx, runner, todo: list[Variant], rec: _Record) -> None:
    """Statistics (for isolated executors), the variants, the TensorRT builds, then latency side by side."""
    from qbench.report.results import metric_rows

    if todo and runner.isolated:
        # One statistics pass per calibration set, here: the children read it from the cache.
        for name in {v.calib_set for v in todo if v.kind == "qbench"}:
            ctx.task.ensure_stats(ctx, name)
    run_variants(ctx, runner, todo, rec.by_id, rec.set_sig, rec.rows, rec.artifacts, rec.fail, rec.flush)
    runner.close(cancel=False)  # (on an exception, _run cancels what still runs)
    if ctx.cfg.tensorrt is not None:
        from qbench.run import trt_phase

        pending = {k: a for k, a in rec.artifacts.items() if "tensorrt" not in ctx.manifest["variants"][k]}
        with progress.task("tensorrt builds", total=len(pending), unit="variant") as t:
            def trt_flush() -> None:  # trt_phase calls it after each variant
                rec.flush()
                t.advance()

            trt_phase.run(ctx, rec.by_id, pending, rec.rows, trt_flush)
    for vid, lat in latency_phase(ctx, rec.artifacts).items():
        entry = ctx.manifest["variants"][vid]
        if isinstance(lat, str):
            rec.fail(rec.by_id[vid], entry, lat)
        else:
            rec.rows += metric_rows(rec.by_id[vid].describe(), entry["signature"], ctx.run_dir.name, lat)


def _interrupted(ctx, rec: _Record, e: Interrupted) -> None:
    """Abandon what was running: finished variants stay; the unfinished one has no rows and no "done"."""
    running = [vid for vid, en in ctx.manifest["variants"].items() if not en.get("done")]
    rec.rows[:] = [r for r in rec.rows if r["variant"] not in running and not _is_latency_row(r)]
    for vid in running:
        ctx.manifest["variants"][vid].update(status="interrupted")
    ctx.manifest["interrupted"] = {"signal": str(e), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rec.flush()
    log(f"interrupted by {e}: {sum(1 for en in ctx.manifest['variants'].values() if en.get('done'))} variant(s) "
        f"kept in {ctx.run_dir}; finish it with: qbench sweep CONFIG --resume {ctx.run_dir}", warning=True)
    e.run_dir = ctx.run_dir  # the CLI prints it on stdout, as after a finished run, for a script to resume
