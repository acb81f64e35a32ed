"""Running a sweep's variants on an executor, recording each the moment it finishes."""

from __future__ import annotations

import time
import traceback

from qbench.config.errors import QbenchError, first_line
from qbench.run.context import artifact_sha
from qbench.run.variants import Variant
from qbench.util import progress
from qbench.util.logs import log


def run_variants(ctx, runner, todo: list[Variant], by_id: dict, set_sig: dict, rows: list,
                 artifacts: dict, fail, flush) -> None:
    """Run ``todo`` on ``runner`` (qbench.run.executors): FP32 alone first (every fidelity metric is measured
    against it), then as many at once as the executor has slots. A variant is recorded the moment it
    finishes, in the order they finish: its rows, its manifest entry marked ``done``, results and manifest
    rewritten (``flush``); so a killed run resumes, with any executor. A failure is the variant's failed row.
    ``exclude: auto`` variants run their search here, in this process, before their job is submitted."""
    _Schedule(ctx, runner, todo, by_id, set_sig, rows, artifacts, fail, flush).run()


class _Schedule:
    def __init__(self, ctx, runner, todo, by_id, set_sig, rows, artifacts, fail, flush):
        self.ctx, self.runner, self.todo, self.by_id, self.set_sig = ctx, runner, todo, by_id, set_sig
        self.rows, self.artifacts, self.fail, self.flush = rows, artifacts, fail, flush
        self.in_flight: dict[str, tuple[Variant, dict, float]] = {}  # id -> (variant, manifest entry, start)
        self.started = 0
        self.bar = None

    def run(self) -> None:
        queue, in_flight, runner = list(self.todo), self.in_flight, self.runner
        with progress.task("variants", total=len(self.todo), unit="variant") as self.bar:
            while queue or in_flight:
                while (queue and len(in_flight) < runner.slots
                       and not any(rv.baseline == "fp32" for rv, _, _ in in_flight.values())):
                    self.launch(queue.pop(0))
                if not in_flight:
                    continue
                self.bar.note = ", ".join(in_flight)
                for d in runner.wait(self.ctx):
                    v, entry, t0 = in_flight.pop(d.variant.id)
                    if self.settle(v, entry, t0, lambda: self.record(d, v, entry)):
                        if runner.slots > 1:
                            node = entry["executor"].get("node")
                            log(f"variant {v.id}: done{f' on node {node[:8]}' if node else ''} "
                                f"({time.perf_counter() - t0:.1f}s)")
                        self.end(entry, t0)

    def settle(self, v: Variant, entry: dict, t0: float, work) -> bool:
        """Run ``work`` (a submission, or taking a finished job's result); a failure becomes the variant's
        failed row and ends it. True if ``work`` went through."""
        from qbench.run import isolate

        try:
            work()
            return True
        except Exception as e:  # a crashing variant becomes a failed row; the sweep goes on
            if isinstance(e, isolate.ChildBug):
                entry["traceback"] = e.child_traceback
            elif not isinstance(e, QbenchError):
                entry["traceback"] = traceback.format_exc()
                traceback.print_exc()
            self.fail(v, entry, first_line(e, None))
            self.end(entry, t0)
            return False

    def end(self, entry: dict, t0: float) -> None:
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["done"] = True
        self.flush()
        self.bar.advance()

    def launch(self, v: Variant) -> None:
        self.started += 1
        t0 = time.perf_counter()
        log(f"variant {self.started}/{len(self.todo)}: {v.id}")
        entry = {"status": "ok", **v.describe(), "signature": v.signature(self.set_sig.get(v.calib_set, ""))}
        self.ctx.manifest["variants"][v.id] = entry
        resolved = [v]
        if self.settle(v, entry, t0, lambda: self.submit(v, entry, resolved)):
            self.in_flight[v.id] = (resolved[0], entry, t0)

    def submit(self, v: Variant, entry: dict, resolved: list) -> None:
        ctx = self.ctx
        if v.exclusion == "auto":  # the search decides this variant's exclusions first
            from qbench.run import search

            log(f"search for {v.id}: all-INT8 against the gate, then (if it fails) sensitivity of every unit")
            try:
                resolved[0], entry["search"] = search.resolve(ctx, v)
            finally:
                write_sensitivity(ctx)
            self.by_id[v.id] = resolved[0]
            entry["resolved_exclusion"] = resolved[0].exclusion_cfg.model_dump()
        self.runner.submit(ctx, resolved[0])

    def record(self, d, v: Variant, entry: dict) -> None:
        from qbench.report.results import metric_rows

        entry["executor"] = dict(d.where)
        artifact, info, metrics = d.get()
        info = dict(info)
        entry["executor"].update(info.pop("executor", {}))
        entry.update(info)
        entry["artifact"] = str(artifact)
        entry["artifact_sha256"] = artifact_sha(self.ctx, artifact)
        self.rows.extend(metric_rows(v.describe(), entry["signature"], self.ctx.run_dir.name, metrics))
        self.artifacts[v.id] = artifact


def write_sensitivity(ctx) -> None:
    """sensitivity.parquet: one tidy row per (search variant, mode, unit, metric, language)."""
    import pandas as pd

    from qbench.util.io import atomic_write

    rows = [{"variant": vid, **r} for vid, recs in ctx.search_sensitivity.items() for r in recs]
    if rows:
        df = pd.DataFrame(rows)
        atomic_write(ctx.run_dir / "sensitivity.parquet", lambda p: df.to_parquet(p, index=False))
