"""Where a sweep's variants run: the executor interface of the sweep runner (``executor:`` in the config).

Every executor takes one variant at a time (``submit``) and hands back finished ones (``wait``), in the
order they finish; the sweep runner (qbench.run.schedule.run_variants) records each as it comes: rows, manifest entry
marked ``done``, results and manifest rewritten. So a run written by one executor resumes with any other.

``InProcess``   ``kind: local`` (the default): build and evaluate in this process, one after another.
``LocalPool``   ``kind: local`` with ``isolate: true`` or ``workers: N``: each variant a child process
                (qbench.run.isolate), N at once.
``RayExecutor`` ``kind: ray``: each variant a Ray task that runs the same child on a worker node, with
                ``cpus_per_job``/``gpus_per_job``/``memory_mb`` as its resource request.

The unit of work is qbench.run.isolate's job: ``job_payload`` bytes in, ``run_job``'s answer bytes out,
``apply_result`` in the driver. A child dying (a signal, ``timeout_s``, ``memory_mb``), or on Ray the
worker or its node dying, is that variant's failed row with the reason; the sweep goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable

from qbench.run import isolate
from qbench.config.errors import BackendUnavailable, ConfigError, VariantFailed, first_line

RAY_HINT = 'pip install "qbench-workbench[ray]"'
_POLL_S = 0.5  # waits wake up this often, so that Ctrl-C and SIGTERM are handled at once


class Done:
    """A finished job. ``get()`` gives (artifact, build info, metrics) or raises the variant's failure (an
    in-process job runs inside ``get()``, so its exceptions and tracebacks are the variant's own).
    ``where``: what the executor knows about where it ran (``kind``, Ray's ``node``, ...)."""

    def __init__(self, variant, get: Callable[[], tuple], where: dict):
        self.variant, self.get, self.where = variant, get, where


class InProcess:
    """Build and evaluate in this process, one variant after another."""

    kind = "local"
    isolated = False
    slots = 1

    def __init__(self, ctx):
        self._queue: list = []

    def submit(self, ctx, v) -> None:
        self._queue.append(v)

    def wait(self, ctx) -> list[Done]:
        from qbench.run.context import build_and_evaluate

        v = self._queue.pop(0)
        return [Done(v, lambda: build_and_evaluate(ctx, v),
                     {"kind": "local", **isolate.where()})]

    def close(self, cancel: bool) -> None:
        self._queue.clear()


class LocalPool:
    """Each variant in its own child process (qbench.run.isolate), ``workers`` of them at once."""

    kind = "local"
    isolated = True

    def __init__(self, ctx, workers: int):
        from qbench.util.logs import log

        self.slots = workers
        threads = ctx.cfg.backend.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if workers > 1 and workers * threads > cores:  # measured: benchmarks/executor_walltime.py
            log(f"warning: executor.workers {workers} x backend.threads {threads} > {cores} cores: the variants' "
                f"sessions compete for them; backend.threads: {max(cores // workers, 1)} fits", warning=True)
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qbench-job")
        self._running = isolate.Running()
        self._futures: dict[cf.Future, object] = {}

    def submit(self, ctx, v) -> None:
        ex = ctx.cfg.executor
        fut = self._pool.submit(isolate.run_job, isolate.job_payload(ctx, v), ctx.run_dir / ".jobs",
                                f"variant {v.id}'s child process", ex.timeout_s, ex.memory_mb, self._running)
        self._futures[fut] = v

    def wait(self, ctx) -> list[Done]:
        while True:
            done, _ = cf.wait(list(self._futures), timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            if done:
                break
        out = []
        for fut in done:
            v = self._futures.pop(fut)
            out.append(Done(v, lambda fut=fut, v=v: isolate.apply_result(ctx, v, fut.result()), {"kind": "local"}))
        return out

    def close(self, cancel: bool) -> None:
        if cancel:
            for fut in self._futures:
                fut.cancel()
            self._running.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._futures.clear()


def ray_job(payload: bytes, what: str, timeout_s: int | None, memory_mb: int | None, fault: str = "") -> dict:
    """The Ray task: run one qbench.run.isolate job in a child process on this worker (in a temporary directory
    of its own), and return its answer. A child that died is an answer too (``error``, with its stderr), so
    that only the death of the worker itself reaches the driver as a Ray exception. The child inherits this
    worker's environment: CUDA_VISIBLE_DEVICES as Ray set it for the task's GPUs."""
    import ray

    # the worker's pid, beside the child's that the answer carries
    where = {"kind": "ray", "node": ray.get_runtime_context().get_node_id(), **isolate.where("worker_pid")}
    if fault:  # QBENCH_FAULT_INJECT=ray-worker-exit:<variant id>: this worker dies mid-task (tests only)
        os.kill(os.getpid(), signal.SIGKILL)
    with tempfile.TemporaryDirectory(prefix="qbench-jobs-") as d:
        try:
            return {"result": isolate.run_job(payload, Path(d), what, timeout_s, memory_mb), "where": where}
        except VariantFailed as e:
            stderr = [p.read_text(errors="replace") for p in Path(d).glob("*/stderr.txt")]
            return {"error": str(e), "stderr": stderr[0] if stderr else "", "where": where}


class RayExecutor:
    """Each variant a Ray task (``ray_job``) with ``cpus_per_job``, ``gpus_per_job`` and ``memory_mb`` as its
    resource request, spread over the cluster's nodes; no retries (a failure is the variant's row, as
    locally). The driver (this process) keeps the statistics pass, the searches, the results and the
    latency phase, so the workers must see ``output.cache_dir`` and the run directory at the same paths."""

    kind = "ray"
    isolated = True

    def __init__(self, ctx, n_jobs: int):
        try:
            import ray
        except ImportError:
            raise BackendUnavailable(f"executor.kind: ray needs Ray, which is not installed: {RAY_HINT}") from None
        import logging

        ex = ctx.cfg.executor
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._ray = ray
        self._own = not ray.is_initialized()
        if self._own:
            kw = {} if ex.address else {"include_dashboard": False}
            # ray.init installs its own SIGTERM handler: the sweep's (Interrupted: a resumable run) comes back.
            with _signals_deferred():
                try:
                    _reachable(ex.address)
                    ray.init(address=ex.address, logging_level=logging.WARNING, log_to_driver=False, **kw)
                except (OSError, ValueError, RuntimeError) as e:
                    raise ConfigError(f"executor.address: {ex.address or 'null (a local Ray instance)'}: "
                                      f"{first_line(e, None)}") from None
        self.cpus = ex.cpus_per_job or ctx.cfg.backend.threads
        opts = {"num_cpus": self.cpus, "num_gpus": ex.gpus_per_job, "max_retries": 0,
                "retry_exceptions": False, "scheduling_strategy": "SPREAD"}
        if ex.memory_mb:
            opts["memory"] = int(ex.memory_mb) << 20
        self._task = ray.remote(ray_job).options(**opts)
        self.slots = ex.workers or max(n_jobs, 1)
        self._refs: dict = {}
        self._warn_if_infeasible(ex)

    def _warn_if_infeasible(self, ex) -> None:
        from qbench.util.logs import log

        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= self.cpus and r.get("GPU", 0) >= ex.gpus_per_job for r in nodes):
            log(f"warning: no node of the Ray cluster has {self.cpus:g} CPU(s) and {ex.gpus_per_job:g} GPU(s) "
                f"for a variant (executor.cpus_per_job, gpus_per_job): the tasks wait until one joins", warning=True)
        else:
            log(f"ray: {len(nodes)} node(s), {sum(r.get('CPU', 0) for r in nodes):g} CPU(s), "
                f"{sum(r.get('GPU', 0) for r in nodes):g} GPU(s); {self.cpus:g} CPU(s) and "
                f"{ex.gpus_per_job:g} GPU(s) per variant")

    def submit(self, ctx, v) -> None:
        ex = ctx.cfg.executor
        fault = f"ray-worker-exit:{v.id}" in os.environ.get("QBENCH_FAULT_INJECT", "").split(",")
        ref = self._task.remote(isolate.job_payload(ctx, v), f"variant {v.id}'s child process", ex.timeout_s,
                                ex.memory_mb, "exit" if fault else "")
        self._refs[ref] = v

    def wait(self, ctx) -> list[Done]:
        ray = self._ray
        refs = list(self._refs)
        while True:
            with _signals_deferred():  # a handler that raises inside Ray's C++ wait breaks it (SystemError)
                ready, _ = ray.wait(refs, num_returns=1, timeout=_POLL_S)
            if ready:
                break
        with _signals_deferred():
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            return self._collect(ctx, ready)

    def _collect(self, ctx, ready: list) -> list[Done]:
        ray = self._ray
        out = []
        for ref in ready:
            v = self._refs.pop(ref)
            try:
                ans = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker, or its node, died: this variant fails
                err = VariantFailed(f"variant {v.id}'s Ray task failed ({type(e).__name__}): {first_line(e)}")
                out.append(Done(v, lambda err=err: _raise(err), {"kind": "ray"}))
                continue
            if "error" in ans:
                _keep_stderr(ctx, v, ans.get("stderr", ""))
                err = VariantFailed(ans["error"])
                out.append(Done(v, lambda err=err: _raise(err), ans["where"]))
            else:
                out.append(Done(v, lambda v=v, res=ans["result"]: isolate.apply_result(ctx, v, res), ans["where"]))
        return out

    def close(self, cancel: bool) -> None:
        ray = self._ray
        if cancel:
            for ref in self._refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
        self._refs.clear()
        if self._own and ray.is_initialized():
            ray.shutdown()


def _reachable(address: str | None, timeout_s: float = 10) -> None:
    """Raise ConnectionError unless HOST:PORT accepts a connection: ray.init waits for an unreachable
    cluster without end. (null and auto are Ray's to resolve.)"""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except ValueError:
        raise ValueError("not auto, null or HOST:PORT") from None
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers there ({e.strerror or e})") from None


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM are held while Ray's native code runs, then given to the handlers that were in
    place (the sweep's raise Interrupted). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []  # the handlers in place are put back afterwards, whatever the code inside installed
    old = {s: signal.signal(s, lambda signum, _frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            if h is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(s, h)
        for signum in got[:1]:
            h = old[signum]
            if callable(h):
                h(signum, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(signum)


def _raise(e: Exception):
    raise e


def _keep_stderr(ctx, v, text: str) -> None:
    """A failed remote job's stderr, kept in the run directory as a local one's is (.jobs/<variant>/)."""
    if text:
        from qbench.util.io import safe_name as _safe

        d = ctx.run_dir / ".jobs" / f"variant-{_safe(v.id)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "stderr.txt").write_text(text)


def check(cfg) -> None:
    """Fail before any work when the executor cannot exist here (Ray not installed)."""
    import importlib.util

    if cfg.executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise BackendUnavailable(f"executor.kind: ray needs Ray, which is not installed: {RAY_HINT}")


def make(ctx, n_jobs: int):
    """The executor ``ctx.cfg.executor`` asks for, for ``n_jobs`` variants."""
    ex = ctx.cfg.executor
    if ex.kind == "ray":
        return RayExecutor(ctx, n_jobs)
    if ex.isolate or (ex.workers or 1) > 1:
        return LocalPool(ctx, ex.workers or 1)
    return InProcess(ctx)

