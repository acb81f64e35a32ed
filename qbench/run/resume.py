"""``qbench sweep CONFIG --resume RUN_DIR``: what a killed or interrupted run already finished.

A run directory is rewritten atomically after every variant (results.parquet, manifest.json,
samples.parquet, sensitivity.parquet), so whatever a kill leaves is a complete earlier state. A variant
counts as finished only when its manifest entry says ``done``; its rows are taken back from
results.parquet and nothing of it is recomputed. Latency is measured side by side over all variants
at the end, so a resumed run measures it again for every variant (the same as an uninterrupted run
would: latency rows are never mixed across sessions).

Resuming refuses a config that changed in anything but ``output`` and ``executor`` (it names the keys), and inputs whose
content changed (the dataset files' or the FP32 model's sha256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from qbench.config.errors import ConfigError, DataError, first_line

# Config keys that only say where things are written or how they are run: changing them does not change
# a result.
_IGNORED = {"output", "executor"}


@dataclass
class Previous:
    run_dir: Path
    manifest: dict
    rows: list[dict]
    samples: object = None                      # translation: samples.parquet as a DataFrame, or None
    sensitivity: list[dict] = field(default_factory=list)

    def finished(self, retry_failed: bool) -> dict[str, dict]:
        """Variant id -> manifest entry of every variant not to run again."""
        return {vid: e for vid, e in self.manifest.get("variants", {}).items()
                if e.get("done") and not (retry_failed and e.get("status") == "failed")}


def read_manifest(run_dir: Path, if_missing: str, if_unreadable: str) -> dict:
    """A run directory's manifest.json, parsed: a ConfigError when there is none (not a run directory), a
    DataError when it does not parse. The hints end the messages: what the user can do about it."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a qbench run directory (no manifest.json); {if_missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e}); {if_unreadable}") from e


_MISSING, _UNREADABLE = "nothing to resume", "run the sweep again without --resume"


def load(run_dir: str | Path) -> Previous:
    import pandas as pd

    d = Path(run_dir)
    manifest = read_manifest(d, _MISSING, _UNREADABLE)
    rows: list[dict] = []
    if (d / "results.parquet").is_file():
        try:
            rows = pd.read_parquet(d / "results.parquet").to_dict("records")
        except Exception as e:  # noqa: BLE001 - any parquet failure means the same thing here
            raise DataError(f"{d / 'results.parquet'}: unreadable ({first_line(e, None)}); run the sweep "
                            "again without --resume") from e
    for tmp in d.glob(".*.tmp"):  # atomic_write's temporaries of a killed run: never complete, never read
        tmp.unlink(missing_ok=True)
    prev = Previous(d, manifest, rows)
    if (d / "samples.parquet").is_file():
        prev.samples = pd.read_parquet(d / "samples.parquet")
    if (d / "sensitivity.parquet").is_file():
        prev.sensitivity = pd.read_parquet(d / "sensitivity.parquet").to_dict("records")
    return prev


def _diff(a, b, path: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            if not path and k in _IGNORED:
                continue
            p = f"{path}.{k}" if path else str(k)
            out += [p] if (k in a) != (k in b) else _diff(a[k], b[k], p)
        return out
    return [] if a == b else [path]


def check_config(prev: Previous, cfg, config_path: str) -> None:
    """Refuse to resume a run made from a config that differs in a way that matters."""
    old = prev.manifest.get("config")
    if old is None:
        raise ConfigError(f"{prev.run_dir}/manifest.json: records no config; cannot check it is the same run")
    try:
        # the run's config as this version reads it: a key a later version added takes its default, so a run
        # made before the key existed resumes unless the config now sets it to something else
        old = json.loads(type(cfg).model_validate(old).model_dump_json())
    except ValueError:  # pydantic's ValidationError: a key since removed or renamed shows in the diff below
        pass
    changed = _diff(old, json.loads(cfg.model_dump_json()))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(f"{config_path}: cannot resume {prev.run_dir}: the config changed since that run "
                          f"({shown}); run it without --resume for a new run")


def check_inputs(prev: Previous, manifest: dict) -> None:
    """Refuse to resume when the data files or the FP32 model have other content than the run used."""
    old, new = prev.manifest, manifest
    changed = [f"data file {k}" for k, v in new["data"].get("sha256", {}).items()
               if old.get("data", {}).get("sha256", {}).get(k) not in (None, v)]
    if old.get("model", {}).get("onnx_sha256") not in (None, new["model"].get("onnx_sha256")):
        changed.append(f"model {new['model'].get('source')} (its FP32 ONNX)")
    if changed:
        raise DataError(f"{prev.run_dir}: cannot resume: changed since that run: {', '.join(changed)}; "
                        "run the sweep without --resume for a new run")


def config_file(run_dir: str | Path) -> str:
    """The config file a run was made from (recorded in its manifest), for ``--resume`` without CONFIG."""
    path = read_manifest(Path(run_dir), _MISSING, _UNREADABLE).get("config_file")
    if not path:
        raise ConfigError(f"{run_dir}/manifest.json: records no config file; give it: qbench sweep CONFIG --resume ...")
    if not Path(path).is_file():
        raise ConfigError(f"{path}: the config file of {run_dir} is gone; give it: qbench sweep CONFIG --resume ...")
    return path


# ------------------------------------------------------------------ adopting a previous run's variants


def _same_artifact(ctx, vid: str, artifact: Path, want: str | None) -> None:
    """A resumed variant's rows were measured on the artifact its manifest entry hashed; the one about to be
    re-timed (and built as an engine) must be that same file. A rebuild from a pruned cache gives the same
    bytes unless qbench or a library it quantizes with changed since; then the run cannot be resumed."""
    from qbench.run.context import artifact_sha

    got = artifact_sha(ctx, artifact)
    if want and got != want:
        raise DataError(f"cannot resume: variant {vid}'s artifact, rebuilt from the cache, differs from the one "
                        f"its rows were measured on (sha256 {got[:12]}, recorded {want[:12]}): qbench or a "
                        "library changed since that run; run the sweep again without --resume")


def take_over(ctx, prev, retry_failed: bool, by_id: dict, rows: list, artifacts: dict) -> dict[str, dict]:
    """Adopt the finished variants of ``prev``: their manifest entries, rows, samples, sensitivity records
    and artifacts (rebuilt from the cache when it was cleared: the same table gives the same bytes). When
    anything is left to run, FP32 is evaluated again in memory: the reference every later variant is
    compared with; its rows stay the ones on disk."""
    from qbench.config.schema import ExclusionCfg

    done = {vid: e for vid, e in prev.finished(retry_failed).items() if vid in by_id}
    m = ctx.manifest
    m["created_utc"] = prev.manifest.get("created_utc", m["created_utc"])
    m["resumed"] = prev.manifest.get("resumed", []) + [
        {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kept": sorted(done),
         "retry_failed": retry_failed}]
    for key in ("metric_signatures", "statistics", "statistics_passes", "tensorrt"):
        if key in prev.manifest:
            m[key] = prev.manifest[key]
    rows += [r for r in prev.rows if r["variant"] in done]
    for vid, e in done.items():
        m["variants"][vid] = e
        if e.get("resolved_exclusion") is not None:
            by_id[vid] = replace(by_id[vid], exclusion_cfg=ExclusionCfg(**e["resolved_exclusion"]))
    if prev.samples is not None:
        for vid, frame in prev.samples.groupby("variant", sort=False):
            if vid in done:
                ctx.sample_frames[vid] = frame.reset_index(drop=True)
    for r in prev.sensitivity:
        if r["variant"] in done:
            ctx.search_sensitivity.setdefault(r["variant"], []).append(
                {k: v for k, v in r.items() if k != "variant"})
    ok = [vid for vid, e in done.items() if e.get("status") == "ok"]
    if len(done) < len(by_id) or not prev.manifest.get("complete"):
        for vid in ok:  # cache hits unless the cache was cleared
            artifacts[vid] = ctx.task.build_variant(ctx, by_id[vid])[0]
            _same_artifact(ctx, vid, artifacts[vid], done[vid].get("artifact_sha256"))
        if "fp32" in done and "fp32" in by_id:
            frames = dict(ctx.sample_frames)
            ctx.task.evaluate(ctx, by_id["fp32"], artifacts["fp32"])
            ctx.sample_frames.update(frames)  # the rows on disk stay as they are
    return done
