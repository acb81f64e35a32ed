"""One variant's build and evaluation in a child process (``executor: {isolate: true}``).

A segfault in a runtime, a hang or running out of memory then costs one variant, not the sweep: the
child's death becomes that variant's failed row, with the reason (the signal, "timed out after N s",
or the memory limit), and the sweep goes on.

The job is a directory: ``job.pkl`` in (the config, the variant, the FP32 reference the variant is
compared with, the sampled data sets), ``result.pkl`` out (the artifact, its build info and metric rows,
and what the parent's context learns from it). The child prepares its own context from the config and the
shipped data; the model export and the calibration statistics come from the cache the parent already
filled, so nothing is computed twice.
The same job format is what a remote executor ships.

The job is bytes (``job_payload``) and its answer is bytes (``run_job``): that is what every executor
moves (qbench.run.executors: in-process, a local pool of children, Ray tasks on a cluster); ``apply_result``
turns the answer into the variant's (artifact, info, metrics) and updates the parent's context.

``QBENCH_FAULT_INJECT=segv:<variant id>`` (several: comma-separated) makes the child kill itself with
SIGSEGV before building that variant: the only way to test a real crash path on demand (the tests that
use it say so in their names).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from pathlib import Path

from qbench.config.errors import VariantFailed, first_line
from qbench.util.proc import Running, run_limited  # noqa: F401 - executors and tests use them from here

# How failed allocations read in the messages of the libraries a variant runs (errno ENOMEM, C++).
_OOM_MARKS = ("Cannot allocate memory", "std::bad_alloc", "failed to map segment", "Failed to allocate memory",
              "Unable to allocate")  # the last: numpy's
# protobuf reports a failed allocation as a parse error: under a 400 MB limit, the 87 MB MiniLM export that
# loads fine without one reads as "not a readable ONNX model (DecodeError)". Under a limit, say both.
_PARSE_MARK = "not a readable ONNX model (DecodeError)"
# What the parent's context takes back from a child (the FP32 reference only from the fp32 baseline).
_FP32_STATE = ("fp32_ref",)
# Environment a job carries to wherever it runs (a Ray worker does not inherit the driver's environment).
_JOB_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class ChildBug(VariantFailed):
    """A child failed on a bug (not a user error): the row gets the message, the manifest the traceback."""

    def __init__(self, msg: str, child_traceback: str):
        super().__init__(msg)
        self.child_traceback = child_traceback


def job_payload(ctx, v) -> bytes:
    """One variant's job, as bytes: the config, the variant, the FP32 reference it is compared with, the data
    sets the parent loaded and sampled, the model's sha256, the run directory and cache (absolute: a remote
    worker has another working directory) and the environment the child needs (QBENCH_*, the Hugging Face
    offline switches)."""
    state = {k: getattr(ctx, k) for k in _FP32_STATE}
    env = {k: val for k, val in os.environ.items() if k.startswith("QBENCH_") or k in _JOB_ENV}
    env["QBENCH_CACHE"] = str(Path(ctx.cache).resolve())
    data = {"evalset": ctx.evalset, "calib_sets": ctx.calib_sets, "entry": ctx.manifest["data"]}
    return pickle.dumps({"cfg": ctx.cfg, "run_dir": Path(ctx.run_dir).resolve(), "variant": v, "fp32": state,
                         "data": data, "model_sha256": ctx.manifest["model"]["onnx_sha256"], "env": env})


def run_job(payload: bytes, jobs_dir: Path, what: str, timeout_s: int | None = None, memory_mb: int | None = None,
            running: Running | None = None) -> bytes:
    """Run one job (``job_payload``'s bytes) in a child process under ``jobs_dir``; the child's answer as bytes
    (``apply_result`` reads it). Raises VariantFailed when the child died (a signal, the timeout, no
    result). A failed job's directory keeps the child's stderr.txt for the post-mortem; anything else is
    removed."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="variant-", dir=jobs_dir))
    (job / "job.pkl").write_bytes(payload)
    failed = True
    try:
        run_limited([sys.executable, "-m", "qbench.run.isolate", str(job)], what, timeout_s, memory_mb,
                    stderr_file=job / "stderr.txt", running=running)
        res_path = job / "result.pkl"
        if not res_path.is_file():
            # It died before it could answer: in its imports, or reading its job (a MemoryError there is
            # the memory limit too)
            tail = (job / "stderr.txt").read_text().strip().splitlines()[-1:] if (job / "stderr.txt").is_file() else []
            last = tail[0][:300] if tail else ""
            why = _out_of_memory(last, memory_mb, last.split(":")[0] == "MemoryError") or last
            raise VariantFailed(f"{what} ended without a result" + (f": {why}" if why else ""))
        res = res_path.read_bytes()
        failed = bool(pickle.loads(res).get("error"))
        return res
    finally:
        for p in job.iterdir():
            if p.name != "stderr.txt":
                p.unlink()
        if not failed:
            shutil.rmtree(job, ignore_errors=True)
        elif not any(job.iterdir()):
            job.rmdir()


def _out_of_memory(msg: str, limit: int | None, memory_error: bool) -> str | None:
    """The reason to give for a failure whose message is ``msg`` when it reads as exhausted memory (None
    when it does not). Exhausted memory surfaces wherever an allocation failed (numpy, an mmap in pyarrow,
    ORT's arena, protobuf's parser): the cause goes first, the place after it, and ``limit`` (the
    executor's memory_mb) is named, as the signal path names it."""
    named = f" (executor.memory_mb: {limit} MB)" if limit else ""
    if memory_error or any(m in msg for m in _OOM_MARKS):
        detail = msg if msg and not (memory_error and msg.split(":")[0] == "MemoryError") else ""
        return f"out of memory{named}" + (f": {detail}" if detail else "")
    if limit and _PARSE_MARK in msg:
        return f"out of memory{named}, or an unreadable model: {msg}"
    return None


def apply_result(ctx, v, result: bytes) -> tuple[Path, dict, list]:
    """(artifact, build info, metrics) of ``v`` from its job's answer; raises the child's failure
    (ChildBug for a bug, with its traceback; VariantFailed otherwise). The parent's context gets the FP32
    reference (from the fp32 baseline), the variant's sample rows and metric signatures. ``info`` carries
    ``executor``: where the child ran (host, pid)."""
    res = pickle.loads(result)
    if res.get("error"):
        if res.get("traceback"):
            raise ChildBug(res["error"], res["traceback"])
        raise VariantFailed(res["error"])
    for k, val in res["fp32"].items():
        setattr(ctx, k, val)
    if res.get("frame") is not None:
        ctx.sample_frames[v.id] = res["frame"]
    for metric, by_lang in res.get("metric_signatures", {}).items():
        ctx.manifest.setdefault("metric_signatures", {}).setdefault(metric, {}).update(by_lang)
    return Path(res["artifact"]), {**res["info"], "executor": res.get("where", {})}, res["metrics"]


def _child(job: Path) -> int:
    from qbench.run.context import build_and_evaluate, prepare
    from qbench.util import progress

    with open(job / "job.pkl", "rb") as f:
        j = pickle.load(f)
    os.environ.update(j.get("env", {}))
    v = j["variant"]
    progress.configure(bars=False, quiet=True)
    out: dict = {}
    try:
        if f"segv:{v.id}" in os.environ.get("QBENCH_FAULT_INJECT", "").split(","):
            os.kill(os.getpid(), signal.SIGSEGV)
        ctx = prepare(j["cfg"], j["run_dir"], j["data"], j["model_sha256"])
        for k, val in j["fp32"].items():
            setattr(ctx, k, val)
        artifact, info, metrics = build_and_evaluate(ctx, v)
        out = {"artifact": str(artifact), "info": info, "metrics": metrics,
               "fp32": {k: getattr(ctx, k) for k in _FP32_STATE} if v.baseline == "fp32" else {},
               "frame": ctx.sample_frames.get(v.id),
               "metric_signatures": ctx.manifest.get("metric_signatures", {}),
               "where": where()}
    except Exception as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        from qbench.config.errors import QbenchError

        msg = first_line(e, None)
        oom = _out_of_memory(msg, j["cfg"].executor.memory_mb, isinstance(e, MemoryError))
        if oom:
            out = {"error": oom}
        else:
            out = {"error": msg}
            if not isinstance(e, QbenchError):
                out["traceback"] = traceback.format_exc()
    from qbench.util.io import atomic_write_bytes

    atomic_write_bytes(job / "result.pkl", pickle.dumps(out))  # the parent reads result.pkl only when whole
    return 0


def where(pid_key: str = "pid") -> dict:
    """Where this process runs: host and pid (under ``pid_key``), and the GPUs it was given
    (CUDA_VISIBLE_DEVICES), if any."""
    w = {"host": socket.gethostname(), pid_key: os.getpid()}
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        w["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return w


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
