"""``qbench cache``: what the content cache holds, and pruning the artifacts no kept run needs.

The cache (``output.cache_dir``, env ``QBENCH_CACHE``) holds four kinds of entries, each reused by content
key: ``models/`` (FP32 exports), ``stats/`` (calibration statistics), ``variants/`` (QDQ ONNX artifacts) and
``engines/`` (TensorRT engines, plus the timing caches). Artifacts and engines grow with every variant ever
built (about one FP32 model's size each), so they are what pruning removes; exports and statistics are few
and cost a re-export (torch) or a statistics pass to get back, so they stay.

A run references its artifacts by path in its manifest (``variants.<id>.artifact``) and its engines by the
artifact's sha256 (``engines/<sha256[:16]>-<CC>-<mode>``). ``--keep RUN_DIR`` keeps what those runs need to
be resumed or re-timed; everything else in ``variants/`` and ``engines/`` is rebuilt on demand by the next
sweep that wants it. Hidden entries (a build in progress, a search's scratch directory) are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from qbench.config.errors import ConfigError, DataError

KINDS = ("models", "stats", "variants", "engines")
PRUNABLE = ("variants", "engines")


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int


def _size(p: Path) -> int:
    if p.is_symlink() or not p.is_dir():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_symlink() or f.is_file())


def entries(cache: Path, kinds: tuple[str, ...] = KINDS) -> list[Entry]:
    """Every visible entry of the cache's ``kinds``, with its size on disk (apparent bytes)."""
    cache = Path(cache)
    if not cache.is_dir():
        raise ConfigError(f"{cache}: no such directory (give --cache-dir, or set QBENCH_CACHE)")
    if not any((cache / k).is_dir() for k in KINDS):
        raise ConfigError(f"{cache}: not a qbench cache (none of {', '.join(k + '/' for k in KINDS)} in it)")
    out = []
    for kind in kinds:
        d = cache / kind
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if not p.name.startswith("."):
                out.append(Entry(kind, p, _size(p)))
    return out


def needed_by(runs: list[Path], cache: Path) -> set[Path]:
    """The cache entries the given runs reference: their artifacts, and the engines built from them."""
    cache = Path(cache).resolve()
    from qbench.run.trt_phase import engine_key

    keep: set[Path] = set()
    keys: set[str] = set()
    for run in runs:
        for e in _manifest(Path(run)).get("variants", {}).values():
            if e.get("artifact"):
                keep.add(Path(e["artifact"]).resolve())
                # a peer quantizer's record of its run beside its output (qbench.quantize.foreign)
                keep.add(Path(e["artifact"]).with_suffix(".json").resolve())
            if e.get("artifact_sha256"):
                keys.add(engine_key(e["artifact_sha256"]))
    engines = cache / "engines"
    for p in engines.iterdir() if engines.is_dir() else []:
        if p.name.split("-", 1)[0] in keys:  # trt_phase.engine_dir_name: the key, then "-"
            keep.add(p.resolve())
    return keep


def _manifest(run: Path) -> dict:
    from qbench.run.resume import read_manifest

    m = read_manifest(run, "--keep takes run directories",
                      "cannot tell what this run needs, so nothing was pruned")
    if not isinstance(m, dict) or not isinstance(m.get("variants", {}), dict):
        raise DataError(f"{run / 'manifest.json'}: not a qbench manifest (no variants mapping); nothing was pruned")
    return m


def prune(cache: Path, keep_runs: list[Path], dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """(removed, kept) among the prunable entries: artifacts and engines that none of ``keep_runs`` needs are
    removed (with ``dry_run``, only listed). TensorRT timing caches (files in ``engines/``) are kept."""
    keep = needed_by(keep_runs, cache)
    removed, kept = [], []
    for e in entries(cache, PRUNABLE):  # exports and statistics are never pruned: not even sized
        if e.path.resolve() in keep or (e.kind == "engines" and e.path.is_file()):
            kept.append(e)
            continue
        if not dry_run:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path)
            else:
                e.path.unlink()
        removed.append(e)
    return removed, kept


def summary(cache: Path) -> str:
    """A table: per kind, the entries and their size; and the total."""
    rows = {k: [0, 0] for k in KINDS}
    for e in entries(cache):
        rows[e.kind][0] += 1
        rows[e.kind][1] += e.bytes
    lines = [f"{cache}", f"{'kind':10s} {'entries':>8s} {'MB':>10s}"]
    lines += [f"{k:10s} {n:8d} {b / 1e6:10.1f}" for k, (n, b) in rows.items()]
    total = sum(b for _, b in rows.values())
    lines.append(f"{'total':10s} {sum(n for n, _ in rows.values()):8d} {total / 1e6:10.1f}")
    return "\n".join(lines)


def prune_report(removed: list[Entry], kept: list[Entry], n_runs: int, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    mb = sum(e.bytes for e in removed) / 1e6
    return (f"{verb} {len(removed)} artifact(s) and engine(s), {mb:.1f} MB; kept {len(kept)} "
            f"({sum(e.bytes for e in kept) / 1e6:.1f} MB) for {n_runs} run(s) and the timing caches")
