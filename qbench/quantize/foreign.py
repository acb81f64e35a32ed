"""Models qbench did not quantize: an external Q/DQ ONNX used as a variant, and the peer quantizers (NNCF,
ModelOpt) run as baselines in a child process (``qbench.quantize.peer_child``) through their own Python APIs.

What the manifest records of each: the file's sha256 (as for every variant), what the ONNX says produced it
(producer name and version, metadata), and the Q/DQ check against TensorRT's rules (qbench.quantize.trt_rules).
A peer also records its versions, its seconds and peak memory, and the calibration samples it was given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from qbench.config.errors import BackendUnavailable, VariantFailed, one_line
from qbench.config.external import INSTALL

CHILD = Path(__file__).with_name("peer_child.py")
MODULES = {"nncf": "nncf", "modelopt_int8": "modelopt"}


def describe(graphs: dict[str, Path]) -> dict:
    """Provenance and the TensorRT rule check of each graph of a foreign artifact (component -> file)."""
    from qbench.quantize import trt_rules
    from qbench.quantize.qdq import load_model

    out: dict = {}
    for comp, path in graphs.items():
        model = load_model(path)
        rep = trt_rules.check(model)
        out[comp] = {"producer": rep.producer, "qdq_check": rep.summary()}
    if list(out) == ["model"]:
        return out["model"]
    return {"producer": {c: o["producer"] for c, o in out.items()}, "qdq_check": {c: o["qdq_check"] for c, o in out.items()}}


def external(path: str, graphs: dict[str, Path]) -> tuple[Path, dict]:
    """An external variant's artifact (the file or folder as given) and what the manifest keeps of it."""
    p = Path(path)
    if not p.exists():
        raise VariantFailed(f"{p}: not found")
    return p, {"external_path": str(p), **describe(graphs)}


def _python(peer) -> str:
    return str(Path(peer.python).expanduser()) if peer.python else sys.executable


def check(cfg) -> None:
    """Before a sweep starts: every peer quantizer's package imports under its interpreter, else one line
    saying how to install it (exit 5)."""
    for b in cfg.sweep.baselines:
        if isinstance(b, str):
            continue
        py = _python(b) if not b.python or Path(b.python).is_absolute() else str(Path(cfg.base_dir) / b.python)
        code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({MODULES[b.name]!r}) else 3)"
        try:
            r = subprocess.run([py, "-c", code], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendUnavailable(one_line(f"sweep.baselines: {b.id}: cannot run {py} ({e})")) from None
        if r.returncode != 0:
            raise BackendUnavailable(f"sweep.baselines: {b.id}: {MODULES[b.name]} is not installed for {py}; "
                                     f"{INSTALL[b.name]}")


def save_samples(feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    """One unpadded sample per key prefix ``<i>/<input>``, as peer_child reads them."""
    np.savez(path, **{f"{i}/{k}": np.asarray(v) for i, f in enumerate(feeds) for k, v in f.items()})


def key(fp32_sha: str, peer, sample_ids: list[str]) -> str:
    """Cache key of a peer's output: the FP32 model, the tool and its options, the calibration samples."""
    return hashlib.sha256(json.dumps([fp32_sha, peer.name, peer.options(), sample_ids]).encode()).hexdigest()[:16]


def _renamed(info: dict) -> dict:
    """The child's ``seconds`` as ``quantize_seconds``: a manifest entry's ``seconds`` is the whole variant's."""
    if "seconds" in info:
        info["quantize_seconds"] = info.pop("seconds")
    return info


def run_peer(peer, fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]], base_dir: str = "") -> tuple[Path, dict]:
    """Quantize ``fp32`` with the peer into ``out`` (reused when it exists, with its recorded info)."""
    info_path = out.with_suffix(".json")
    if out.is_file() and info_path.is_file():
        info = _renamed(json.loads(info_path.read_text()))
        return out, {**info, "peer_cache_hit": True, **describe({"model": out})}
    work = out.parent / f".{out.stem}.work"
    work.mkdir(parents=True, exist_ok=True)
    save_samples(feeds, work / "calibration.npz")
    tmp = work / "model.onnx"
    spec = {"tool": peer.name, "fp32": str(fp32), "out": str(tmp), "calibration": str(work / "calibration.npz"),
            "options": peer.options()}
    (work / "spec.json").write_text(json.dumps(spec))
    py = _python(peer)
    if peer.python and not Path(py).is_absolute():
        py = str(Path(base_dir) / py)
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # the peer's environment, not this one's
    try:
        r = subprocess.run([py, str(CHILD), str(work / "spec.json")], capture_output=True, text=True,
                           timeout=peer.timeout_s, env=env, cwd=work)
    except subprocess.TimeoutExpired:
        raise VariantFailed(f"{peer.id}: still running after {peer.timeout_s}s (timeout_s)") from None
    (work / "stderr.txt").write_text(r.stderr)
    if r.returncode == 3:
        raise BackendUnavailable(f"{peer.id}: {r.stderr.strip().splitlines()[-1]}; {INSTALL[peer.name]}")
    if r.returncode != 0 or not tmp.is_file():
        last = next((ln for ln in reversed(r.stderr.strip().splitlines()) if ln.strip()), f"exit {r.returncode}")
        raise VariantFailed(one_line(f"{peer.id} failed (exit {r.returncode}; {work / 'stderr.txt'}): {last}"))
    info = _renamed({"peer": peer.id, "peer_options": peer.options(), **json.loads(r.stdout.strip().splitlines()[-1])})
    os.replace(tmp, out)
    info_path.write_text(json.dumps(info))
    shutil.rmtree(work, ignore_errors=True)  # kept only when the peer failed: its stderr is the evidence
    return out, {**info, "peer_cache_hit": False, **describe({"model": out})}
